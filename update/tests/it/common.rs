//! The test machine: a GPT disk image made with sfdisk (esp, root-a, root-b, pk-data), an
//! ESP directory with the running slot's UKI, a kernel command line and an os-release;
//! and bundles built from random parts with a throwaway key.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::{SigningKey, VerifyingKey};
use pk_update::bundle::{self, Arch, BundleSpec, Digest, Version};
use pk_update::install::{self, Layout, PartUuid, Progress, Slot};
use sha2::{Digest as _, Sha256};

/// 512-byte sectors.
pub(crate) const SECTOR: u64 = 512;
/// Each partition: (name, first sector, sectors).
pub(crate) const PARTITIONS: [(&str, u64, u64); 4] = [
    ("esp", 2048, 2048),
    ("root-a", 4096, 8192),
    ("root-b", 12288, 8192),
    ("pk-data", 20480, 4096),
];
/// The disk's size: the partitions and the backup GPT.
pub(crate) const DISK_BYTES: u64 = (24576 + 2048) * SECTOR;
/// A slot's size in bytes (4 MiB).
pub(crate) const SLOT_BYTES: u64 = 8192 * SECTOR;

/// The empty PARTUUIDs the test disk uses.
pub(crate) const EMPTY_A: &str = "00000000-0000-4000-8000-00000000000a";
pub(crate) const EMPTY_B: &str = "00000000-0000-4000-8000-00000000000b";

/// A small deterministic generator (splitmix64): the same bytes every run.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    pub(crate) fn digest(&mut self) -> Digest {
        Digest(self.bytes(32).try_into().expect("32 bytes"))
    }
}

/// The program, wherever this system keeps it.
pub(crate) fn sbin(name: &str) -> PathBuf {
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
pub(crate) fn uki(version: &str, filler: &[u8]) -> Vec<u8> {
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
pub(crate) struct Parts {
    pub(crate) root: Vec<u8>,
    pub(crate) verity: Vec<u8>,
    pub(crate) uki: Vec<u8>,
    pub(crate) spec: BundleSpec,
}

impl Parts {
    /// Random parts for `version`: a root of `blocks` 4 KiB blocks, a verity tree of a few
    /// odd-sized KiB right after it, a small UKI.
    pub(crate) fn random(seed: u64, version: &str, blocks: u64) -> Parts {
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
    pub(crate) fn bundle(&self, key: &SigningKey, dir: &Path) -> Vec<u8> {
        let paths = self.write_files(dir);
        let mut out = Vec::new();
        bundle::make(key, &self.spec, [&paths[0], &paths[1], &paths[2]], &mut out)
            .expect("a bundle");
        out
    }

    /// The three parts as files in `dir`.
    pub(crate) fn write_files(&self, dir: &Path) -> [PathBuf; 3] {
        let paths = ["root.erofs", "root.verity", "uki.efi"].map(|n| dir.join(n));
        for (path, data) in paths.iter().zip([&self.root, &self.verity, &self.uki]) {
            std::fs::write(path, data).expect("a part file");
        }
        paths
    }
}

/// Signs `manifest_json` and appends `tail` (the parts, or anything).
pub(crate) fn signed(manifest_json: &[u8], key: &SigningKey, tail: &[u8]) -> Vec<u8> {
    let mut b = bundle::sign_header(manifest_json, key).expect("a header");
    b.extend_from_slice(tail);
    b
}

/// Where the header ends in a bundle made by `Parts::bundle`.
pub(crate) fn header_len(bundle: &[u8]) -> usize {
    let len = u32::from_le_bytes(bundle[12..16].try_into().expect("4 bytes"));
    16 + len as usize + 64
}

/// A machine: its disk image, ESP, command line, os-release, and the key its bundles are
/// signed with.
pub(crate) struct Machine {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) layout: Layout,
    pub(crate) key: SigningKey,
    pub(crate) public: VerifyingKey,
    /// The running slot's parts.
    pub(crate) running: Parts,
}

impl Machine {
    /// A machine running `version` from slot A, slot B empty.
    pub(crate) fn new(version: &str) -> Machine {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key();
        let running = Parts::random(1, version, 256);
        let disk = dir.path().join("disk.img");
        make_disk(&disk, &running);
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(esp.join("EFI/Linux")).expect("the ESP");
        std::fs::create_dir_all(esp.join("loader")).expect("the ESP");
        std::fs::write(esp.join("loader/loader.conf"), "timeout 0\n").expect("loader.conf");
        let running_uki = format!(
            "EFI/Linux/pk-appliance-{}.efi",
            running.spec.roothash.hex_prefix(8)
        );
        std::fs::write(esp.join(running_uki), &running.uki).expect("the running UKI");
        let machine = Machine {
            layout: Layout {
                disk,
                esp,
                cmdline: dir.path().join("cmdline"),
                os_release: dir.path().join("os-release"),
                tries: 3,
                arch: Some(Arch::Amd64),
                empty_partuuids: [
                    EMPTY_A.parse().expect("a UUID"),
                    EMPTY_B.parse().expect("a UUID"),
                ],
                sfdisk: sbin("sfdisk"),
                lock: dir.path().join("lock"),
            },
            dir,
            key,
            public,
            running,
        };
        machine.boot(Slot::A, &machine.running.spec.roothash, version);
        machine
    }

    /// Says the machine booted `roothash` (from `slot`) at `version`: the command line
    /// and os-release.
    pub(crate) fn boot(&self, _slot: Slot, roothash: &Digest, version: &str) {
        std::fs::write(
            &self.layout.cmdline,
            format!(
                "BOOT_IMAGE=x console=ttyS0 roothash={roothash} \
                 systemd.verity_root_options=hash-offset=1 ro\n"
            ),
        )
        .expect("cmdline");
        std::fs::write(
            &self.layout.os_release,
            format!(
                "PRETTY_NAME=\"pk appliance\"\nIMAGE_ID=pk-appliance\nIMAGE_VERSION={version}\n"
            ),
        )
        .expect("os-release");
    }

    /// A scratch directory for part files.
    pub(crate) fn scratch(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).expect("a directory");
        d
    }

    /// A bundle of `parts` signed with the machine's key.
    pub(crate) fn bundle(&self, parts: &Parts) -> Vec<u8> {
        parts.bundle(&self.key, &self.scratch("parts"))
    }

    /// Installs `bundle`, collecting the progress.
    pub(crate) fn install(
        &self,
        bundle: &[u8],
        allow_downgrade: bool,
    ) -> (
        Result<install::Installed, install::InstallError>,
        Vec<Progress>,
    ) {
        let mut seen = Vec::new();
        let result = install::install(
            &self.layout,
            &self.public,
            bundle,
            install::InstallOptions { allow_downgrade },
            &mut |p| seen.push(p),
        );
        (result, seen)
    }

    /// The bytes of partition `name`.
    pub(crate) fn partition(&self, name: &str) -> Vec<u8> {
        let (_, start, len) = PARTITIONS
            .iter()
            .find(|p| p.0 == name)
            .expect("a partition");
        let disk = std::fs::read(&self.layout.disk).expect("the disk");
        disk[(start * SECTOR) as usize..((start + len) * SECTOR) as usize].to_vec()
    }

    /// The PARTUUID of partition `name`, as sfdisk reads it.
    pub(crate) fn partuuid(&self, name: &str) -> PartUuid {
        let out = Command::new(&self.layout.sfdisk)
            .arg("--json")
            .arg(&self.layout.disk)
            .output()
            .expect("sfdisk runs");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let parts = json["partitiontable"]["partitions"]
            .as_array()
            .expect("partitions");
        let p = parts
            .iter()
            .find(|p| p["name"] == name)
            .expect("the partition");
        p["uuid"].as_str().expect("a uuid").parse().expect("a UUID")
    }

    /// Every file on the ESP with its SHA-256.
    pub(crate) fn esp_files(&self) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        walk(&self.layout.esp, &self.layout.esp, &mut files);
        files
    }

    /// What must never change: the running slot, the data partition, the ESP partition's
    /// bytes, and the running slot's UKI.
    pub(crate) fn untouchable(&self) -> Untouchable {
        let running_uki = format!(
            "EFI/Linux/pk-appliance-{}.efi",
            self.running.spec.roothash.hex_prefix(8)
        );
        Untouchable {
            running_slot: sha(&self.partition("root-a")),
            data: sha(&self.partition("pk-data")),
            esp_partition: sha(&self.partition("esp")),
            running_uki: self.esp_files().get(&running_uki).cloned(),
        }
    }

    /// Everything: the whole disk and the ESP.
    pub(crate) fn everything(&self) -> (String, BTreeMap<String, String>) {
        let disk = std::fs::read(&self.layout.disk).expect("the disk");
        (sha(&disk), self.esp_files())
    }
}

/// Hashes of what an install must never write.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Untouchable {
    pub(crate) running_slot: String,
    pub(crate) data: String,
    pub(crate) esp_partition: String,
    pub(crate) running_uki: Option<String>,
}

pub(crate) fn sha(data: &[u8]) -> String {
    data_encoding_hex(&Sha256::digest(data))
}

fn data_encoding_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("a directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("under the root");
            out.insert(
                rel.display().to_string(),
                sha(&std::fs::read(&path).expect("a file")),
            );
        }
    }
}

/// The disk image: GPT with the four partitions, slot A holding `running` (its
/// PARTUUID from its root hash), slot B empty, random bytes in every partition.
fn make_disk(path: &Path, running: &Parts) {
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

/// The version `s`.
pub(crate) fn v(s: &str) -> Version {
    s.parse().expect("a version")
}

impl Machine {
    /// The update key as a PEM file (what the image ships), written once.
    pub(crate) fn public_key_file(&self) -> PathBuf {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let path = self.dir.path().join("update-key.pub");
        let pem = self
            .public
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("PEM");
        std::fs::write(&path, pem).expect("the key file");
        path
    }

    /// `pk-update` with every path pointed at this machine.
    pub(crate) fn pk_update(&self) -> Command {
        let l = &self.layout;
        let mut c = Command::new(env!("CARGO_BIN_EXE_pk-update"));
        c.arg("--key")
            .arg(self.public_key_file())
            .arg("--disk")
            .arg(&l.disk)
            .arg("--esp")
            .arg(&l.esp)
            .arg("--cmdline")
            .arg(&l.cmdline)
            .arg("--os-release")
            .arg(&l.os_release)
            .arg("--lock")
            .arg(&l.lock)
            .arg("--sfdisk")
            .arg(&l.sfdisk)
            .args(["--arch", "amd64", "--empty-partuuid-a", EMPTY_A])
            .args(["--empty-partuuid-b", EMPTY_B]);
        c
    }
}
