//! Test support (feature `testing`), shared by this crate's tests and the console's: a
//! small test machine's pieces. A GPT disk image made with sfdisk (esp, root-a, root-b,
//! pk-data; slot A holding a running root, slot B empty), UKI-shaped PE files with an
//! `.osrel` section, and a slot's parts from a deterministic generator, to sign into
//! bundles with a throwaway key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::SigningKey;

use crate::bundle::{self, Arch, BundleSpec, Digest};
use crate::install::PartUuid;

/// 512-byte sectors.
pub const SECTOR: u64 = 512;
/// Each partition: (name, first sector, sectors).
pub const PARTITIONS: [(&str, u64, u64); 4] = [
    ("esp", 2048, 2048),
    ("root-a", 4096, 8192),
    ("root-b", 12288, 8192),
    ("pk-data", 20480, 4096),
];
/// The disk's size: the partitions and the backup GPT.
pub const DISK_BYTES: u64 = (24576 + 2048) * SECTOR;
/// A slot's size in bytes (4 MiB).
pub const SLOT_BYTES: u64 = 8192 * SECTOR;

/// The empty PARTUUID of slot A on the test disk.
pub const EMPTY_A: &str = "00000000-0000-4000-8000-00000000000a";
/// The empty PARTUUID of slot B on the test disk.
pub const EMPTY_B: &str = "00000000-0000-4000-8000-00000000000b";

/// A small deterministic generator (splitmix64): the same bytes every run.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// A random SHA-256-sized digest.
    pub fn digest(&mut self) -> Digest {
        Digest(self.bytes(32).try_into().expect("32 bytes"))
    }
}

/// The program, wherever this system keeps it.
pub fn sbin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// A PE32+ image with an `.osrel` section naming `version`, and `filler` as its data: the
/// shape of a UKI, as far as the installer and `status` look.
pub fn uki(version: &str, filler: &[u8]) -> Vec<u8> {
    use object::pe;
    use object::write::pe::{NtHeaders, Writer};
    let osrel = format!("ID=debian\nIMAGE_ID=pk-appliance\nIMAGE_VERSION={version}\n");
    let mut out = Vec::new();
    let mut w = Writer::new(true, 0x1000, 0x200, &mut out);
    w.reserve_dos_header_and_stub();
    w.reserve_nt_headers(16);
    w.reserve_section_headers(2);
    let flags = pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ;
    let len = |b: &[u8]| u32::try_from(b.len()).expect("small");
    let osrel_range = w.reserve_section(
        *b".osrel\0\0",
        flags,
        len(osrel.as_bytes()),
        len(osrel.as_bytes()),
    );
    let data_range = w.reserve_section(*b".data\0\0\0", flags, len(filler), len(filler));
    w.write_dos_header_and_stub().expect("a DOS header");
    w.write_nt_headers(NtHeaders {
        machine: pe::IMAGE_FILE_MACHINE_AMD64,
        time_date_stamp: 0,
        characteristics: pe::IMAGE_FILE_EXECUTABLE_IMAGE | pe::IMAGE_FILE_LARGE_ADDRESS_AWARE,
        major_linker_version: 0,
        minor_linker_version: 0,
        address_of_entry_point: 0,
        image_base: 0x1_0000_0000,
        major_operating_system_version: 0,
        minor_operating_system_version: 0,
        major_image_version: 0,
        minor_image_version: 0,
        major_subsystem_version: 0,
        minor_subsystem_version: 0,
        subsystem: pe::IMAGE_SUBSYSTEM_EFI_APPLICATION,
        dll_characteristics: Default::default(),
        size_of_stack_reserve: 0,
        size_of_stack_commit: 0,
        size_of_heap_reserve: 0,
        size_of_heap_commit: 0,
    });
    w.write_section_headers();
    w.write_section(osrel_range.file_offset, osrel.as_bytes());
    w.write_section(data_range.file_offset, filler);
    out
}

/// A bundle's parts and values.
#[derive(Clone)]
pub struct Parts {
    /// The root image (`spec.data_blocks` 4 KiB blocks).
    pub root: Vec<u8>,
    /// Its hash tree.
    pub verity: Vec<u8>,
    /// The UKI.
    pub uki: Vec<u8>,
    /// The manifest's values.
    pub spec: BundleSpec,
}

impl Parts {
    /// Random parts for `version`: a root of `blocks` 4 KiB blocks, a verity tree of a few
    /// odd-sized KiB right after it, a small UKI.
    pub fn random(seed: u64, version: &str, blocks: u64) -> Parts {
        let mut rng = Rng::new(seed);
        let root = rng.bytes(usize::try_from(blocks * 4096).expect("small"));
        let verity = rng.bytes(12_345);
        let uki = uki(version, &rng.bytes(70_001));
        Parts {
            root,
            verity,
            uki,
            spec: BundleSpec {
                version: version.parse().expect("a version"),
                arch: Arch::Amd64,
                roothash: rng.digest(),
                data_blocks: blocks,
                hash_offset: blocks * 4096,
                allow_downgrade: false,
            },
        }
    }

    /// The bundle's bytes, made by `bundle::make` from files in `dir`.
    pub fn bundle(&self, key: &SigningKey, dir: &Path) -> Vec<u8> {
        let paths = self.write_files(dir);
        let mut out = Vec::new();
        bundle::make(key, &self.spec, [&paths[0], &paths[1], &paths[2]], &mut out)
            .expect("a bundle");
        out
    }

    /// The three parts as files in `dir`.
    pub fn write_files(&self, dir: &Path) -> [PathBuf; 3] {
        let paths = ["root.erofs", "root.verity", "uki.efi"].map(|n| dir.join(n));
        for (path, data) in paths.iter().zip([&self.root, &self.verity, &self.uki]) {
            std::fs::write(path, data).expect("a part file");
        }
        paths
    }
}

/// The disk image: GPT with the four partitions, slot A holding `running` (its
/// PARTUUID from its root hash), slot B empty, random bytes in every partition.
pub fn make_disk(path: &Path, running: &Parts) {
    let file = std::fs::File::create(path).expect("the disk image");
    file.set_len(DISK_BYTES).expect("its size");
    drop(file);
    let running_uuid = PartUuid::of_roothash(&running.spec.roothash);
    let script = format!(
        "label: gpt\nunit: sectors\nsector-size: 512\n\
         start=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n\
         start=4096, size=8192, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-a, uuid={running_uuid}\n\
         start=12288, size=8192, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-b, uuid={EMPTY_B}\n\
         start=20480, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=pk-data\n"
    );
    let mut child = Command::new(sbin("sfdisk"))
        .arg("--quiet")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk runs (package fdisk)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("the script");
    assert!(
        child.wait().expect("sfdisk").success(),
        "sfdisk made the disk"
    );
    // Random bytes in every partition, then the running root and its hash tree in slot A.
    use std::os::unix::fs::FileExt as _;
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("the disk");
    let mut rng = Rng::new(99);
    for (_, start, len) in PARTITIONS {
        let bytes = rng.bytes((len * SECTOR) as usize);
        disk.write_all_at(&bytes, start * SECTOR)
            .expect("a partition");
    }
    let a = PARTITIONS[1].1 * SECTOR;
    disk.write_all_at(&running.root, a).expect("the root");
    disk.write_all_at(&running.verity, a + running.spec.hash_offset)
        .expect("the verity tree");
}
