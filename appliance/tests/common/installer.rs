//! A real update installer for the console's tests: `pk_update::serve::serve` behind a
//! Unix socket in a temporary directory, one thread per connection (as systemd's
//! `Accept=yes` runs one `pk-update serve` per connection), over a test machine built
//! the way `update/tests/it/common.rs` builds it: a GPT disk image made with sfdisk
//! (esp, root-a, root-b, pk-data), an ESP directory with the running slot's UKI, a kernel
//! command line and an os-release; bundles of random parts signed with a throwaway
//! Ed25519 key made by `openssl genpkey`. Its reboot only counts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pk_update::bundle::{self, Arch, BundleSpec, Digest};
use pk_update::install::{Layout, PartUuid};
use pk_update::serve::{Server, serve};
use sha2::Digest as _;

const SECTOR: u64 = 512;
/// Each partition: (name, first sector, sectors).
const PARTITIONS: [(&str, u64, u64); 4] = [
    ("esp", 2048, 2048),
    ("root-a", 4096, 8192),
    ("root-b", 12288, 8192),
    ("pk-data", 20480, 4096),
];
const DISK_BYTES: u64 = (24576 + 2048) * SECTOR;
const EMPTY_A: &str = "00000000-0000-4000-8000-00000000000a";
const EMPTY_B: &str = "00000000-0000-4000-8000-00000000000b";

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The program, wherever this system keeps it.
fn sbin(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A PE32+ image with an `.osrel` section naming `version`: a UKI, as far as the
/// installer and its status look.
fn uki(version: &str, filler: &[u8]) -> Vec<u8> {
    use object::pe;
    use object::write::pe::{NtHeaders, Writer};
    let osrel = format!("ID=debian\nIMAGE_ID=pk-appliance\nIMAGE_VERSION={version}\n");
    let mut out = Vec::new();
    let mut w = Writer::new(true, 0x1000, 0x200, &mut out);
    w.reserve_dos_header_and_stub();
    w.reserve_nt_headers(16);
    w.reserve_section_headers(2);
    let flags = pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ;
    let len = |b: &[u8]| u32::try_from(b.len()).unwrap();
    let osrel_len = len(osrel.as_bytes());
    let osrel_range = w.reserve_section(*b".osrel\0\0", flags, osrel_len, osrel_len);
    let data_range = w.reserve_section(*b".data\0\0\0", flags, len(filler), len(filler));
    w.write_dos_header_and_stub().unwrap();
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

/// A slot's parts: a root of `blocks` 4 KiB blocks, a hash tree after it, a UKI.
struct Parts {
    root: Vec<u8>,
    verity: Vec<u8>,
    uki: Vec<u8>,
    spec: BundleSpec,
}

impl Parts {
    fn random(seed: u64, version: &str, blocks: u64) -> Parts {
        let mut rng = Rng(seed);
        let root = rng.bytes(usize::try_from(blocks * 4096).unwrap());
        let verity = rng.bytes(12_345);
        let uki = uki(version, &rng.bytes(70_001));
        Parts {
            root,
            verity,
            uki,
            spec: BundleSpec {
                version: version.parse().unwrap(),
                arch: Arch::Amd64,
                roothash: Digest(rng.bytes(32).try_into().unwrap()),
                data_blocks: blocks,
                hash_offset: blocks * 4096,
                allow_downgrade: false,
            },
        }
    }
}

/// An Ed25519 key pair made by OpenSSL: the private key (PKCS#8 PEM) and the public one.
fn openssl_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs (package openssl)");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

/// A box with a real installer listening on `socket`.
pub(crate) struct TestBox {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) layout: Layout,
    /// Reboots asked for.
    pub(crate) reboots: Arc<AtomicUsize>,
    key: PathBuf,
    other_key: PathBuf,
}

impl TestBox {
    /// A box running `version` from slot A, slot B empty, its installer listening.
    pub(crate) fn start(version: &str) -> TestBox {
        let dir = tempfile::tempdir().unwrap();
        let running = Parts::random(1, version, 256);
        let disk = dir.path().join("disk.img");
        make_disk(&disk, &running);
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        let running_uki = format!(
            "EFI/Linux/pk-appliance-{}.efi",
            running.spec.roothash.hex_prefix(8)
        );
        std::fs::write(esp.join(running_uki), &running.uki).unwrap();
        std::fs::write(
            dir.path().join("cmdline"),
            format!("console=ttyS0 roothash={} ro\n", running.spec.roothash),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("os-release"),
            format!("IMAGE_ID=pk-appliance\nIMAGE_VERSION={version}\n"),
        )
        .unwrap();
        let layout = Layout {
            disk,
            esp,
            cmdline: dir.path().join("cmdline"),
            os_release: dir.path().join("os-release"),
            tries: 3,
            arch: Some(Arch::Amd64),
            empty_partuuids: [EMPTY_A.parse().unwrap(), EMPTY_B.parse().unwrap()],
            sfdisk: sbin("sfdisk"),
            lock: dir.path().join("lock"),
        };
        let (key, public) = openssl_key(dir.path(), "update-key");
        let (other_key, _) = openssl_key(dir.path(), "someone-else");
        let socket = dir.path().join("pk-update.sock");
        let reboots = Arc::new(AtomicUsize::new(0));
        listen(&socket, &layout, &public, reboots.clone());
        TestBox {
            dir,
            socket,
            layout,
            reboots,
            key,
            other_key,
        }
    }

    /// A bundle of `version` (random parts from `seed`) signed with the box's update key.
    pub(crate) fn bundle(&self, seed: u64, version: &str) -> Vec<u8> {
        self.signed(&self.key, seed, version)
    }

    /// The same, signed with a key the box does not trust.
    pub(crate) fn foreign_bundle(&self, seed: u64, version: &str) -> Vec<u8> {
        self.signed(&self.other_key, seed, version)
    }

    fn signed(&self, key: &Path, seed: u64, version: &str) -> Vec<u8> {
        let key = pk_update::keys::read_signing_key(key).unwrap();
        let parts = Parts::random(seed, version, 300);
        let dir = self.dir.path().join(format!("parts-{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = ["root.erofs", "root.verity", "uki.efi"].map(|n| dir.join(n));
        for (path, data) in paths.iter().zip([&parts.root, &parts.verity, &parts.uki]) {
            std::fs::write(path, data).unwrap();
        }
        let mut out = Vec::new();
        bundle::make(
            &key,
            &parts.spec,
            [&paths[0], &paths[1], &paths[2]],
            &mut out,
        )
        .unwrap();
        out
    }

    /// A bundle file in the box's directory, for the command line.
    pub(crate) fn bundle_file(&self, name: &str, bundle: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bundle).unwrap();
        path
    }

    /// The SHA-256 of the whole disk image, and of every file on the ESP.
    pub(crate) fn disk(&self) -> (String, BTreeMap<String, String>) {
        let mut esp = BTreeMap::new();
        for entry in std::fs::read_dir(self.layout.esp.join("EFI/Linux")).unwrap() {
            let path = entry.unwrap().path();
            esp.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                sha(&std::fs::read(&path).unwrap()),
            );
        }
        (sha(&std::fs::read(&self.layout.disk).unwrap()), esp)
    }

    /// Says the box booted back into the running slot after the update in the other one
    /// used up its tries: its UKI is renamed `+0-3`, as systemd-boot leaves it.
    pub(crate) fn fail_the_update(&self) {
        let linux = self.layout.esp.join("EFI/Linux");
        for entry in std::fs::read_dir(&linux).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix("+3.efi") {
                std::fs::rename(linux.join(&name), linux.join(format!("{stem}+0-3.efi"))).unwrap();
            }
        }
    }
}

fn sha(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves each connection to `socket` on a thread of its own, for as long as the test
/// process lives; a reboot is counted in `reboots`, nothing more.
fn listen(socket: &Path, layout: &Layout, public: &Path, reboots: Arc<AtomicUsize>) {
    let listener = UnixListener::bind(socket).unwrap();
    let reboot = move || {
        reboots.fetch_add(1, Ordering::SeqCst);
        Ok(())
    };
    // The server lives as long as the process: its listening thread never ends.
    let server: &'static Server<'static> = Box::leak(Box::new(Server {
        layout: layout.clone(),
        key: pk_update::keys::read_verifying_key(public).unwrap(),
        reboot: Box::leak(Box::new(reboot)),
    }));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let input = conn.try_clone().unwrap();
                let _ = serve(server, input, &conn);
            });
        }
    });
}

/// The disk image: GPT with the four partitions, slot A holding `running` (its PARTUUID
/// from its root hash), slot B empty, random bytes in every partition.
fn make_disk(path: &Path, running: &Parts) {
    use std::os::unix::fs::FileExt as _;
    std::fs::File::create(path)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let running_uuid = PartUuid::of_roothash(&running.spec.roothash);
    let root = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    let script = format!(
        "label: gpt\nunit: sectors\nsector-size: 512\n\
         start=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n\
         start=4096, size=8192, type={root}, name=root-a, uuid={running_uuid}\n\
         start=12288, size=8192, type={root}, name=root-b, uuid={EMPTY_B}\n\
         start=20480, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=pk-data\n"
    );
    let mut child = Command::new(sbin("sfdisk"))
        .arg("--quiet")
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk runs (package fdisk)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk made the disk");
    let disk = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut rng = Rng(99);
    for (_, start, len) in PARTITIONS {
        disk.write_all_at(&rng.bytes((len * SECTOR) as usize), start * SECTOR)
            .unwrap();
    }
    let a = PARTITIONS[1].1 * SECTOR;
    disk.write_all_at(&running.root, a).unwrap();
    disk.write_all_at(&running.verity, a + running.spec.hash_offset)
        .unwrap();
}
