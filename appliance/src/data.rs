//! The encrypted data partition (`docs/theory/data-at-rest.md`): a LUKS2 volume whose one
//! LUKS keyslot opens with a random 256-bit *volume passphrase*, and that passphrase
//! wrapped by our own keyslots (a TPM sealed with the node's policy, the recovery code; a
//! `clear` slot on a box with no TPM), kept in the LUKS2 header as a token of type
//! [`TOKEN_TYPE`].
//!
//! The LUKS work is done by Debian's `cryptsetup`, run as a program: formatting, the token,
//! checking a passphrase and opening. The passphrase goes to it on standard input, never on
//! a command line or in a file. Formatting refuses a device that holds anything (a file
//! system made by an older image, say): nothing on it is ever overwritten.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use hsm::{DataKey, Kind, Protector, Sealed, UnwrapError, WrapError};
use serde::{Deserialize, Serialize};

/// The LUKS2 token type that holds the volume's keyslots.
pub const TOKEN_TYPE: &str = "pk-keyslots";
/// The token's number in the LUKS2 header (the volume has no other).
const TOKEN_ID: &str = "0";
/// The LUKS keyslot the volume passphrase opens.
const LUKS_KEYSLOT: &str = "0";
/// The version of the token's `pk` fields.
const TOKEN_VERSION: u32 = 1;
/// The longest part of a `cryptsetup` message kept in an error.
const MAX_MESSAGE: usize = 400;

/// Why the data volume could not be made, read or opened. No variant carries a key.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// `cryptsetup` (or another tool) could not be run or failed.
    #[error("{tool} {action} failed on {device}: {message}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// What it was asked to do.
        action: &'static str,
        /// The device.
        device: PathBuf,
        /// What it said (bounded).
        message: String,
    },
    /// The device holds something that is not a LUKS2 volume: it is left alone.
    #[error("{device} holds {what}, not a pk data volume: it is left as it is")]
    NotEmpty {
        /// The device.
        device: PathBuf,
        /// What `blkid` found there.
        what: String,
    },
    /// The volume has no `pk-keyslots` token, or one this version cannot read.
    #[error("{device}: the volume's pk-keyslots token {reason}")]
    Token {
        /// The device.
        device: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No slot of the kind asked for.
    #[error("the data volume has no {0} slot")]
    NoSlot(Kind),
    /// A slot refused to give the volume passphrase.
    #[error("the data volume's {kind} slot: {source}")]
    Unwrap {
        /// The slot's kind.
        kind: Kind,
        /// Why.
        source: UnwrapError,
    },
    /// Wrapping the passphrase for a new slot failed.
    #[error("sealing the data volume's passphrase: {0}")]
    Wrap(#[from] WrapError),
    /// The volume's generation is behind the TPM's counter: an older copy of the partition.
    #[error(
        "an older copy of the data partition: its generation is {generation}, but the TPM's counter is at {counter} (the partition was written back from a copy)"
    )]
    RolledBack {
        /// The volume's generation.
        generation: u64,
        /// The TPM's counter.
        counter: u64,
    },
    /// The TPM's counter could not be read or moved.
    #[error("the TPM's rollback counter: {0}")]
    Counter(#[from] hsm::tpm::CounterError),
    /// The passphrase a slot gave does not open the LUKS keyslot: the token belongs to
    /// another volume or was edited.
    #[error("{device}: the passphrase from the token does not open the volume")]
    KeyRefused {
        /// The device.
        device: PathBuf,
    },
}

/// The cipher a new volume is formatted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// AES-XTS with a 512-bit key: for CPUs with AES instructions.
    AesXts,
    /// Adiantum (XChaCha12 and AES on one block): for CPUs without them (the
    /// Raspberry Pi 4), where it is several times faster than software AES.
    Adiantum,
}

impl Cipher {
    /// The right cipher for the CPU `/proc/cpuinfo` describes: AES-XTS where any CPU line
    /// lists the `aes` flag (x86's `flags`, arm64's `Features`), Adiantum otherwise.
    pub fn for_cpuinfo(cpuinfo: &str) -> Cipher {
        let has_aes = cpuinfo.lines().any(|line| {
            let Some((name, value)) = line.split_once(':') else {
                return false;
            };
            matches!(name.trim(), "flags" | "Features")
                && value.split_whitespace().any(|f| f == "aes")
        });
        if has_aes {
            Cipher::AesXts
        } else {
            Cipher::Adiantum
        }
    }

    /// This machine's: [`Cipher::for_cpuinfo`] of `/proc/cpuinfo`.
    pub fn for_this_machine() -> Cipher {
        Cipher::for_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    /// `cryptsetup luksFormat`'s arguments for it.
    fn args(self) -> [&'static str; 4] {
        match self {
            Cipher::AesXts => ["--cipher", "aes-xts-plain64", "--key-size", "512"],
            Cipher::Adiantum => [
                "--cipher",
                "xchacha12,aes-adiantum-plain64",
                "--key-size",
                "256",
            ],
        }
    }
}

/// One way to the volume passphrase.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "slot", rename_all = "lowercase")]
pub enum VolumeSlot {
    /// Wrapped by a token or the recovery code.
    Sealed {
        /// What the admin sees.
        label: String,
        /// The wrapped passphrase.
        sealed: Box<Sealed>,
    },
    /// In the clear, on a box with nothing to seal it with (no TPM): says so everywhere.
    Clear {
        /// The passphrase, base64.
        passphrase: ClearPassphrase,
    },
}

impl VolumeSlot {
    /// What kind of slot: the sealing token's, or `None` for a clear slot.
    pub fn kind(&self) -> Option<Kind> {
        match self {
            VolumeSlot::Sealed { sealed, .. } => Some(sealed.kind()),
            VolumeSlot::Clear { .. } => None,
        }
    }
}

/// A passphrase stored in the clear, printed redacted.
#[derive(Clone, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(transparent)]
pub struct ClearPassphrase(String);

impl std::fmt::Debug for ClearPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClearPassphrase(<redacted>)")
    }
}

/// The LUKS2 token holding the volume's keyslots.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeToken {
    /// Always [`TOKEN_TYPE`].
    #[serde(rename = "type")]
    token_type: String,
    /// The LUKS keyslots the token is for (LUKS2 requires the field).
    keyslots: Vec<String>,
    /// The version of the fields below.
    pk_version: u32,
    /// The ways to the passphrase.
    pub slots: Vec<VolumeSlot>,
    /// How many times the volume has been opened (or accepted after a rollback), with its
    /// MAC under a key derived from the passphrase; none: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<Generation>,
}

/// The volume's generation, authenticated: without the passphrase it cannot be raised.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Generation {
    value: u64,
    /// HMAC-SHA256, hex.
    mac: String,
}

impl VolumeToken {
    fn new(slots: Vec<VolumeSlot>) -> VolumeToken {
        VolumeToken {
            token_type: TOKEN_TYPE.to_owned(),
            keyslots: vec![LUKS_KEYSLOT.to_owned()],
            pk_version: TOKEN_VERSION,
            slots,
            generation: None,
        }
    }

    /// Whether any slot keeps the passphrase in the clear.
    pub fn has_clear_slot(&self) -> bool {
        self.slots.iter().any(|s| s.kind().is_none())
    }
}

/// A data volume: a block device (or, for tests, a file) that is or will be LUKS2.
#[derive(Clone, Debug)]
pub struct Volume {
    device: PathBuf,
}

/// What a device holds, as far as the data volume is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Nothing `blkid` recognises: a new volume may be made there.
    Empty,
    /// A LUKS volume.
    Luks,
    /// Something else (its `blkid` type, e.g. `ext4`).
    Other(String),
}

impl Volume {
    /// The volume on `device`.
    pub fn new(device: impl Into<PathBuf>) -> Volume {
        Volume {
            device: device.into(),
        }
    }

    /// The device.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// What the device holds (`blkid --probe`).
    pub fn contents(&self) -> Result<Contents, DataError> {
        let out = self.run(
            "blkid",
            "probe",
            &["--probe", "--output", "value", "--match-tag", "TYPE"],
            None,
        )?;
        match out.status.code() {
            // blkid's "nothing found".
            Some(2) => Ok(Contents::Empty),
            Some(0) => {
                // On a partition blkid also finds the partition table's entry, so it
                // succeeds with no TYPE when there is nothing else.
                let what = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                Ok(match what.as_str() {
                    "" => Contents::Empty,
                    "crypto_LUKS" => Contents::Luks,
                    _ => Contents::Other(what),
                })
            }
            _ => Err(self.failed("blkid", "probe", &out)),
        }
    }

    /// The volume's LUKS UUID, which every slot is bound to.
    pub fn uuid(&self) -> Result<String, DataError> {
        let out = self.cryptsetup("luksUUID", &["luksUUID"], None)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Makes a new volume on an empty device: a random passphrase in LUKS keyslot 0,
    /// wrapped by `protector` (or kept in a clear slot when there is none). Returns the
    /// passphrase, to open the volume with at once.
    pub fn format(
        &self,
        cipher: Cipher,
        protector: Option<(&dyn Protector, &str)>,
    ) -> Result<DataKey, DataError> {
        match self.contents()? {
            Contents::Empty => {}
            Contents::Luks => return Err(self.not_empty("a LUKS volume already")),
            Contents::Other(what) => return Err(self.not_empty(&what)),
        }
        let passphrase = DataKey::generate();
        let mut args = vec![
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--key-slot",
            LUKS_KEYSLOT,
            "--key-file=-",
            // The passphrase has full entropy: a slow key derivation protects only
            // guessable ones, and would slow every boot.
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--label",
            "pk-data",
        ];
        args.extend(cipher.args());
        self.cryptsetup("format", &args, Some(passphrase.expose()))?;
        let uuid = self.uuid()?;
        let slot = match protector {
            Some((protector, label)) => VolumeSlot::Sealed {
                label: label.to_owned(),
                sealed: Box::new(protector.wrap(&passphrase, &aad(&uuid))?),
            },
            None => VolumeSlot::Clear {
                passphrase: ClearPassphrase(b64().encode(passphrase.expose())),
            },
        };
        self.write_token(&VolumeToken::new(vec![slot]))?;
        Ok(passphrase)
    }

    /// The volume's keyslots.
    pub fn token(&self) -> Result<VolumeToken, DataError> {
        let out = self.cryptsetup(
            "token export",
            &["token", "export", "--token-id", TOKEN_ID],
            None,
        )?;
        let token: VolumeToken =
            serde_json::from_slice(&out.stdout).map_err(|e| DataError::Token {
                device: self.device.clone(),
                reason: format!("is unreadable: {e}"),
            })?;
        if token.token_type != TOKEN_TYPE || token.pk_version != TOKEN_VERSION {
            return Err(DataError::Token {
                device: self.device.clone(),
                reason: format!(
                    "is of type {:?} version {} (this pk reads {TOKEN_TYPE} version {TOKEN_VERSION})",
                    token.token_type, token.pk_version
                ),
            });
        }
        Ok(token)
    }

    /// Replaces the volume's keyslots.
    fn write_token(&self, token: &VolumeToken) -> Result<(), DataError> {
        let json = serde_json::to_vec(token).map_err(|e| DataError::Token {
            device: self.device.clone(),
            reason: format!("cannot be written: {e}"),
        })?;
        self.cryptsetup(
            "token import",
            &[
                "token",
                "import",
                "--token-id",
                TOKEN_ID,
                "--token-replace",
                "--json-file=-",
            ],
            Some(&json),
        )?;
        Ok(())
    }

    /// The volume passphrase, through the first slot of `protector`'s kind that gives it,
    /// checked against the LUKS keyslot.
    pub fn unlock(&self, protector: &dyn Protector) -> Result<DataKey, DataError> {
        let token = self.token()?;
        let uuid = self.uuid()?;
        let mut first_error = None;
        for slot in &token.slots {
            let VolumeSlot::Sealed { sealed, .. } = slot else {
                continue;
            };
            if sealed.kind() != protector.kind() {
                continue;
            }
            match protector.unwrap(sealed, &aad(&uuid)) {
                Ok(passphrase) => return self.checked(passphrase),
                Err(source) => {
                    first_error.get_or_insert(DataError::Unwrap {
                        kind: protector.kind(),
                        source,
                    });
                }
            }
        }
        Err(first_error.unwrap_or(DataError::NoSlot(protector.kind())))
    }

    /// The volume passphrase from a clear slot, if the volume has one.
    pub fn unlock_clear(&self) -> Result<Option<DataKey>, DataError> {
        let token = self.token()?;
        for slot in &token.slots {
            if let VolumeSlot::Clear { passphrase } = slot {
                let bytes =
                    zeroize::Zeroizing::new(b64().decode(&passphrase.0).unwrap_or_default());
                let key = DataKey::try_from_slice(&bytes).ok_or_else(|| DataError::Token {
                    device: self.device.clone(),
                    reason: "has a clear slot that is not a 32-byte key".to_owned(),
                })?;
                return self.checked(key).map(Some);
            }
        }
        Ok(None)
    }

    /// Adds a slot for `protector`, given the passphrase. A new sealed slot replaces the
    /// volume's clear slot, if it has one: the passphrase is then kept only sealed.
    pub fn enroll(
        &self,
        passphrase: &DataKey,
        protector: &dyn Protector,
        label: &str,
    ) -> Result<(), DataError> {
        self.add_slot(passphrase, protector, label, false)
    }

    /// Seals the passphrase with `protector` again, in place of every slot of its kind
    /// (the TPM slot after a firmware change the admin made), in one write.
    pub fn seal_again(
        &self,
        passphrase: &DataKey,
        protector: &dyn Protector,
        label: &str,
    ) -> Result<(), DataError> {
        self.add_slot(passphrase, protector, label, true)
    }

    fn add_slot(
        &self,
        passphrase: &DataKey,
        protector: &dyn Protector,
        label: &str,
        replace: bool,
    ) -> Result<(), DataError> {
        let mut token = self.token()?;
        let uuid = self.uuid()?;
        self.check(passphrase)?;
        let sealed = protector.wrap(passphrase, &aad(&uuid))?;
        let kind = protector.kind();
        token
            .slots
            .retain(|s| s.kind().is_some() && !(replace && s.kind() == Some(kind)));
        token.slots.push(VolumeSlot::Sealed {
            label: label.to_owned(),
            sealed: Box::new(sealed),
        });
        self.write_token(&token)
    }

    /// Removes every slot of `kind` (to seal the TPM slot again after a firmware change:
    /// remove, then enrol). Refuses to remove the last slot.
    pub fn remove(&self, kind: Kind) -> Result<(), DataError> {
        let mut token = self.token()?;
        let before = token.slots.len();
        token.slots.retain(|s| s.kind() != Some(kind));
        if token.slots.len() == before {
            return Err(DataError::NoSlot(kind));
        }
        if token.slots.is_empty() {
            return Err(DataError::Token {
                device: self.device.clone(),
                reason: format!("would have no slot left without its {kind} slot"),
            });
        }
        self.write_token(&token)
    }

    /// Whether `passphrase` opens the LUKS keyslot (`cryptsetup open --test-passphrase`).
    pub fn check(&self, passphrase: &DataKey) -> Result<(), DataError> {
        let out = self.run(
            "cryptsetup",
            "test-passphrase",
            &[
                "open",
                "--test-passphrase",
                "--key-slot",
                LUKS_KEYSLOT,
                "--key-file=-",
            ],
            Some(passphrase.expose()),
        )?;
        match out.status.code() {
            Some(0) => Ok(()),
            // cryptsetup's "wrong passphrase or no keyslot".
            Some(2) => Err(DataError::KeyRefused {
                device: self.device.clone(),
            }),
            _ => Err(self.failed("cryptsetup", "test-passphrase", &out)),
        }
    }

    /// Opens the volume as `/dev/mapper/<name>`.
    pub fn open(&self, name: &str, passphrase: &DataKey) -> Result<(), DataError> {
        self.cryptsetup(
            "open",
            &[
                "open",
                "--type",
                "luks2",
                "--key-slot",
                LUKS_KEYSLOT,
                "--key-file=-",
                "--allow-discards",
                name,
            ],
            Some(passphrase.expose()),
        )?;
        Ok(())
    }

    /// Maps a plain (unencrypted) partition as `/dev/mapper/<name>` (a device-mapper
    /// `linear` target over all of it), so a data partition made by an image from before
    /// the encryption mounts where an encrypted one would.
    pub fn map_plain(&self, name: &str) -> Result<(), DataError> {
        let out = self.run("blockdev", "getsz", &["--getsz"], None)?;
        if !out.status.success() {
            return Err(self.failed("blockdev", "getsz", &out));
        }
        let sectors = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let table = format!("0 {sectors} linear {} 0", self.device.display());
        let out = Command::new("dmsetup")
            .args(["create", name, "--table", &table])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DataError::Tool {
                tool: "dmsetup",
                action: "create",
                device: self.device.clone(),
                message: format!("cannot run dmsetup: {e}"),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failed("dmsetup", "create", &out))
        }
    }

    /// The volume's generation (0 if it has none), its MAC checked.
    pub fn generation(&self, passphrase: &DataKey) -> Result<u64, DataError> {
        let token = self.token()?;
        let Some(generation) = token.generation else {
            return Ok(0);
        };
        let uuid = self.uuid()?;
        let given: Vec<u8> = (0..generation.mac.len() / 2)
            .filter_map(|i| u8::from_str_radix(generation.mac.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let mac = generation_mac(passphrase, &uuid, generation.value);
        hmac::Mac::verify_slice(mac, &given).map_err(|_| DataError::Token {
            device: self.device.clone(),
            reason: "has a generation whose MAC does not match (it was edited)".to_owned(),
        })?;
        Ok(generation.value)
    }

    /// Sets the volume's generation.
    fn set_generation(&self, passphrase: &DataKey, value: u64) -> Result<(), DataError> {
        let mut token = self.token()?;
        let uuid = self.uuid()?;
        let mac = hmac::Mac::finalize(generation_mac(passphrase, &uuid, value)).into_bytes();
        token.generation = Some(Generation {
            value,
            mac: mac.iter().map(|b| format!("{b:02x}")).collect(),
        });
        self.write_token(&token)
    }

    /// The rollback check at an open: refuses a volume whose generation is behind the
    /// TPM's `counter` (an older copy); otherwise moves both one past the higher of the
    /// two, the volume first, so a crash in between leaves the volume ahead (accepted),
    /// never behind. Returns the new generation.
    pub fn check_generation(
        &self,
        passphrase: &DataKey,
        counter: &hsm::tpm::NvCounter,
    ) -> Result<u64, DataError> {
        let generation = self.generation(passphrase)?;
        let count = counter.read()?;
        if generation < count {
            return Err(DataError::RolledBack {
                generation,
                counter: count,
            });
        }
        self.advance(passphrase, counter, generation.max(count) + 1)
    }

    /// Accepts the volume as it is after a rollback (the admin gave the recovery code):
    /// its generation and the counter move one past the counter.
    pub fn accept_generation(
        &self,
        passphrase: &DataKey,
        counter: &hsm::tpm::NvCounter,
    ) -> Result<u64, DataError> {
        let count = counter.read()?;
        self.advance(passphrase, counter, count + 1)
    }

    fn advance(
        &self,
        passphrase: &DataKey,
        counter: &hsm::tpm::NvCounter,
        next: u64,
    ) -> Result<u64, DataError> {
        self.set_generation(passphrase, next)?;
        while counter.read()? < next {
            counter.increment()?;
        }
        Ok(next)
    }

    fn checked(&self, passphrase: DataKey) -> Result<DataKey, DataError> {
        self.check(&passphrase)?;
        Ok(passphrase)
    }

    /// Runs `cryptsetup ARGS... DEVICE` (the device goes before the mapping name for
    /// `open`), failing on a non-zero exit.
    fn cryptsetup(
        &self,
        action: &'static str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<std::process::Output, DataError> {
        let out = self.run("cryptsetup", action, args, stdin)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed("cryptsetup", action, &out))
        }
    }

    /// Runs `tool` with `args` and the device (before the last argument for `open`, whose
    /// last argument is the mapping's name), `stdin` written to it.
    fn run(
        &self,
        tool: &'static str,
        action: &'static str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<std::process::Output, DataError> {
        let mut command = Command::new(tool);
        match args.split_last() {
            Some((name, rest)) if action == "open" => {
                command.args(rest).arg(&self.device).arg(name);
            }
            _ => {
                command.args(args).arg(&self.device);
            }
        }
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |e: std::io::Error| DataError::Tool {
            tool,
            action,
            device: self.device.clone(),
            message: format!("cannot run {tool}: {e}"),
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes).map_err(spawn_error)?;
        }
        child.wait_with_output().map_err(spawn_error)
    }

    fn failed(
        &self,
        tool: &'static str,
        action: &'static str,
        out: &std::process::Output,
    ) -> DataError {
        let text = String::from_utf8_lossy(&out.stderr);
        let mut message: String = text.trim().chars().take(MAX_MESSAGE).collect();
        if message.is_empty() {
            message = format!("exit status {}", out.status);
        }
        DataError::Tool {
            tool,
            action,
            device: self.device.clone(),
            message,
        }
    }

    fn not_empty(&self, what: &str) -> DataError {
        DataError::NotEmpty {
            device: self.device.clone(),
            what: what.to_owned(),
        }
    }
}

/// What `pk-appliance data enrol-recovery` prints when it added the code.
pub const ENROLLED: &str = "pk-appliance data: added the recovery code";
/// How long the enrolment service may take (a real TPM unseals in seconds).
const ENROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// The most of its answer kept.
const MAX_ANSWER: u64 = 16 * 1024;

/// Sends the recovery code `words` to the enrolment service on `socket` (the image's
/// `pk-data-enrol.socket`: `pk-appliance data enrol-recovery` as root, standard input and
/// output on the connection) and waits for its answer.
pub fn enrol_over(socket: &Path, words: &str) -> Result<(), String> {
    use std::io::Read as _;
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(ENROL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ENROL_TIMEOUT)))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let line = zeroize::Zeroizing::new(format!("{words}\n"));
    stream
        .write_all(line.as_bytes())
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let mut answer = String::new();
    (&stream)
        .take(MAX_ANSWER)
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading from {}: {e}", socket.display()))?;
    if answer.lines().any(|l| l.starts_with(ENROLLED)) {
        Ok(())
    } else {
        Err(answer.trim().chars().take(MAX_MESSAGE).collect())
    }
}

/// What a slot's wrapping is bound to: this purpose and the volume's UUID, so a slot
/// copied from another volume's token does not open this one.
fn aad(uuid: &str) -> Vec<u8> {
    format!("pk-data volume v1 {uuid}").into_bytes()
}

/// The MAC of a generation: HMAC-SHA256 under a key derived (HKDF-SHA256) from the
/// passphrase, over the volume's UUID and the value.
fn generation_mac(passphrase: &DataKey, uuid: &str, value: u64) -> hmac::Hmac<sha2::Sha256> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 blocks: expand cannot fail.
    let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, passphrase.expose())
        .expand(b"pk-data generation mac v1", key.as_mut());
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key.as_ref())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    hmac::Mac::update(&mut mac, uuid.as_bytes());
    hmac::Mac::update(&mut mac, &value.to_be_bytes());
    mac
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_follows_the_cpus_aes_flag() {
        let x86 = "processor\t: 0\nflags\t\t: fpu vme sse2 aes avx\n";
        let x86_without = "processor\t: 0\nflags\t\t: fpu vme sse2 avx aesni_like\n";
        let pi5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n";
        let pi4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n";
        assert_eq!(Cipher::for_cpuinfo(x86), Cipher::AesXts);
        assert_eq!(Cipher::for_cpuinfo(x86_without), Cipher::Adiantum);
        assert_eq!(Cipher::for_cpuinfo(pi5), Cipher::AesXts);
        assert_eq!(Cipher::for_cpuinfo(pi4), Cipher::Adiantum);
        assert_eq!(Cipher::for_cpuinfo(""), Cipher::Adiantum);
    }

    #[test]
    fn a_clear_passphrase_prints_redacted() {
        let slot = VolumeSlot::Clear {
            passphrase: ClearPassphrase("c2VjcmV0LXZhbHVl".to_owned()),
        };
        assert!(!format!("{slot:?}").contains("c2VjcmV0"));
    }
}
