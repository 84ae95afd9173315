//! A real update installer for the console's tests: `pk_update::serve::serve` behind a
//! Unix socket in a temporary directory, one thread per connection (as systemd's
//! `Accept=yes` runs one `pk-update serve` per connection), over a test machine built
//! the way `update/tests/it/common.rs` builds it: a GPT disk image made with sfdisk
//! (esp, root-a, root-b, pk-data), an ESP directory with the running slot's UKI, a kernel
//! command line and an os-release; bundles of random parts signed with a throwaway
//! Ed25519 key made by `openssl genpkey`. Its reboot only counts.

use std::collections::BTreeMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pk_update::bundle::{self, Arch};
use pk_update::install::Layout;
use pk_update::serve::{Server, serve};
use pk_update::testing::{EMPTY_A, EMPTY_B, Parts, make_disk, sbin};
use sha2::Digest as _;

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
