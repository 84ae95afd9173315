//! The test machine: a GPT disk image made with sfdisk (esp, root-a, root-b, pk-data), an
//! ESP directory with the running slot's UKI, a kernel command line and an os-release;
//! and bundles built from random parts with a throwaway key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::{SigningKey, VerifyingKey};
use pk_update::bundle::{self, Arch, Digest, Version};
use pk_update::install::{self, Layout, PartUuid, Progress, Slot};
use sha2::{Digest as _, Sha256};

pub(crate) use pk_update::testing::{
    EMPTY_A, EMPTY_B, PARTITIONS, Parts, SECTOR, SLOT_BYTES, make_disk, sbin,
};

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
