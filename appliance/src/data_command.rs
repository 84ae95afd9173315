//! `pk-appliance data`: the data volume's commands, run as root by the image's units.
//!
//! ```text
//! pk-appliance data open --device DEV --name NAME [--config PATH]
//! pk-appliance data recover --device DEV --name NAME [--reseal] [--config PATH]
//! pk-appliance data gate --device DEV --name NAME [--config PATH]
//! pk-appliance data enrol-recovery --device DEV [--config PATH]
//! pk-appliance data status --device DEV
//! ```
//!
//! `recover` and `enrol-recovery` read the recovery code from standard input. Exit codes:
//! 0 done, 1 refused or failed (the reason on standard error), 64 a usage error, 78 a
//! configuration that cannot be read.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use hsm::Protector;
use hsm::recovery::{RecoveryCode, RecoveryProtector};
use zeroize::Zeroizing;

use crate::config::{Config, DEFAULT_PATH};
use crate::data::{Cipher, Contents, DataError, Volume, VolumeSlot};

/// sysexits: a usage error.
const EX_USAGE: u8 = 64;
/// sysexits: a configuration error.
const EX_CONFIG: u8 = 78;
/// The longest recovery code read from standard input.
const MAX_CODE: u64 = 4096;

/// The command's help.
pub const HELP: &str = "\
pk-appliance data open --device DEV --name NAME [--config PATH]
  open the encrypted data volume on DEV as /dev/mapper/NAME through its TPM slot (or its
  clear slot on a box without a TPM); on an empty DEV, make the volume and its ext4 first
pk-appliance data recover --device DEV --name NAME [--reseal] [--config PATH]
  open it with the recovery code read from standard input; --reseal then seals its TPM
  slot again to the machine as it is now (after a firmware change you made)
pk-appliance data gate --device DEV --name NAME [--config PATH]
  open it as `open` does; if that fails, serve the locked data console on the console's
  port (a certificate made for this start) until the recovery code opens it
pk-appliance data enrol-recovery --device DEV [--config PATH]
  add the recovery code read from standard input as a slot (the volume opened through its
  TPM or clear slot)
pk-appliance data status --device DEV
  print the volume's slots (kinds and labels) as JSON
Exit status: 0 done, 1 refused or failed, 64 usage error, 78 bad configuration.";

#[derive(Debug, Default)]
struct Args {
    action: String,
    device: Option<PathBuf>,
    name: Option<String>,
    reseal: bool,
    config: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        action: args
            .next()
            .ok_or("data needs an action (open, recover, enrol-recovery, status)")?,
        ..Args::default()
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--device" => parsed.device = Some(PathBuf::from(value("--device")?)),
            "--name" => parsed.name = Some(value("--name")?),
            "--config" => parsed.config = Some(PathBuf::from(value("--config")?)),
            "--reseal" => parsed.reseal = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

/// `pk-appliance data ...`, the arguments after `data`.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match parse(args) {
        Ok(args) if args.action == "--help" || args.action == "-h" => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(args) => args,
        Err(e) => {
            eprintln!("pk-appliance data: {e} (try --help)");
            return ExitCode::from(EX_USAGE);
        }
    };
    let Some(device) = args.device.clone() else {
        eprintln!("pk-appliance data: --device is needed");
        return ExitCode::from(EX_USAGE);
    };
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pk-appliance data: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let volume = Volume::new(device);
    let result = match (args.action.as_str(), args.name.as_deref()) {
        ("open", Some(name)) => open(&config, &volume, name),
        ("recover", Some(name)) => recover(&config, &volume, name, args.reseal),
        ("gate", Some(name)) => gate(&config, volume.clone(), name),
        ("enrol-recovery", _) => enrol_recovery(&config, &volume),
        ("status", _) => status(&volume),
        ("open" | "recover" | "gate", None) => {
            eprintln!("pk-appliance data: {} needs --name", args.action);
            return ExitCode::from(EX_USAGE);
        }
        (other, _) => {
            eprintln!("pk-appliance data: unknown action {other:?} (try --help)");
            return ExitCode::from(EX_USAGE);
        }
    };
    match result {
        Ok(words) => {
            println!("pk-appliance data: {words}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pk-appliance data: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The TPM protector with the node's options: sealing to `tpm_pcrs` and the signed PCR 11
/// policy when the image's key is there, unsealing with this boot's signature file.
fn tpm_protector(config: &Config) -> Result<Option<hsm::tpm::TpmProtector>, String> {
    let Some(tcti) = crate::daemon::tpm_tcti(config) else {
        return Ok(None);
    };
    let signed_pcrs = match &config.tpm_pcr_public_key {
        Some(path) if path.exists() => Some(crate::daemon::signed_pcr_policy(path)?),
        _ => None,
    };
    let pcrs = match &config.tpm_pcrs {
        Some(list) => Some(
            hsm::tpm::PcrPolicy::parse_list(hsm::tpm::PcrBank::Sha256, list)
                .map_err(|e| format!("tpm_pcrs: {e}"))?,
        ),
        None => None,
    };
    let options = hsm::tpm::TpmOptions {
        pcrs,
        signed_pcrs,
        pcr_signature: Some(config.tpm_pcr_signature.clone()),
    };
    Ok(Some(
        hsm::tpm::TpmProtector::new(tcti, None).with_options(options),
    ))
}

/// The TPM's rollback counter, defined at its first use; none without a TPM.
fn counter(config: &Config) -> Result<Option<hsm::tpm::NvCounter>, String> {
    let Some(tcti) = crate::daemon::tpm_tcti(config) else {
        return Ok(None);
    };
    hsm::tpm::NvCounter::open_or_define(&tcti, hsm::tpm::PK_ROLLBACK_COUNTER_INDEX)
        .map(Some)
        .map_err(|e| format!("the TPM's rollback counter: {e}"))
}

/// The rollback check before the volume is opened (`Volume::check_generation`); nothing
/// to check against without a TPM.
fn check_rollback(
    config: &Config,
    volume: &Volume,
    passphrase: &hsm::DataKey,
) -> Result<(), String> {
    if let Some(counter) = counter(config)? {
        volume
            .check_generation(passphrase, &counter)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Moves the volume's generation and the TPM's counter past the counter, whatever the
/// generation was (`Volume::accept_generation`); nothing to do without a TPM.
fn accept_as_it_is(
    config: &Config,
    volume: &Volume,
    passphrase: &hsm::DataKey,
) -> Result<(), String> {
    if let Some(counter) = counter(config)? {
        volume
            .accept_generation(passphrase, &counter)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `open`: makes the volume on an empty device, then opens it.
fn open(config: &Config, volume: &Volume, name: &str) -> Result<String, String> {
    // Opened already in this boot (by the locked data console): nothing to do.
    if std::path::Path::new("/dev/mapper").join(name).exists() {
        return Ok(format!("{name} is open already"));
    }
    let tpm = tpm_protector(config)?;
    let contents = volume.contents().map_err(|e| e.to_string())?;
    if contents == Contents::Empty {
        let protector = tpm
            .as_ref()
            .map(|t| (t as &dyn Protector, "TPM (first boot)"));
        let passphrase = volume
            .format(Cipher::for_this_machine(), protector)
            .map_err(|e| e.to_string())?;
        // A new volume starts where the TPM's counter is.
        accept_as_it_is(config, volume, &passphrase)?;
        volume.open(name, &passphrase).map_err(|e| e.to_string())?;
        mkfs(name)?;
        let how = if tpm.is_some() {
            "sealed by the TPM"
        } else {
            "NOT protected: this machine has no TPM"
        };
        return Ok(format!(
            "made a new data volume on {} ({how}), opened as {name}",
            volume.device().display()
        ));
    }
    if contents == Contents::Other("ext4".to_owned()) {
        // Made by an image from before the encryption: mounted as it is, never rewritten.
        volume.map_plain(name).map_err(|e| e.to_string())?;
        return Ok(format!(
            "the data partition {} is NOT encrypted (made by an older image): mapped as {name} as it is; to encrypt it, back the box up, write a new image and restore",
            volume.device().display()
        ));
    }
    if let Contents::Other(what) = contents {
        return Err(DataError::NotEmpty {
            device: volume.device().to_owned(),
            what,
        }
        .to_string());
    }
    if let Some(passphrase) = volume.unlock_clear().map_err(|e| e.to_string())? {
        check_rollback(config, volume, &passphrase)?;
        volume.open(name, &passphrase).map_err(|e| e.to_string())?;
        return Ok(format!(
            "opened {name} through its clear slot: the data volume is NOT protected"
        ));
    }
    let Some(tpm) = tpm else {
        return Err(
            "this machine has no TPM, and the data volume needs one or its recovery code"
                .to_owned(),
        );
    };
    let passphrase = volume.unlock(&tpm).map_err(|e| e.to_string())?;
    check_rollback(config, volume, &passphrase)?;
    volume.open(name, &passphrase).map_err(|e| e.to_string())?;
    Ok(format!("opened {name} through its TPM slot"))
}

/// `gate`: `open`, or else the locked data console until the recovery code opens it.
fn gate(config: &Config, volume: Volume, name: &str) -> Result<String, String> {
    let reason = match open(config, &volume, name) {
        Ok(words) => return Ok(words),
        Err(reason) => reason,
    };
    // The filter was checked when the configuration was read.
    let _ = crate::daemon::init_logging(&config.log);
    let reseal = tpm_protector(config)?.map(|t| Box::new(t) as Box<dyn Protector>);
    let counter = counter(config)?;
    let gate = crate::console::gate::Gate::new(volume, name, reason, reseal, counter);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(crate::console::gate::serve(gate, config.console_listen))?;
    Ok(format!("opened {name} with the recovery code"))
}

/// `recover`: opens with the recovery code; `--reseal` seals the TPM slot again.
fn recover(config: &Config, volume: &Volume, name: &str, reseal: bool) -> Result<String, String> {
    let code = read_code()?;
    let passphrase = volume
        .unlock(&RecoveryProtector::new(code))
        .map_err(|e| e.to_string())?;
    // The recovery code accepts the volume as it is, an older copy included.
    accept_as_it_is(config, volume, &passphrase)?;
    volume.open(name, &passphrase).map_err(|e| e.to_string())?;
    if !reseal {
        return Ok(format!("opened {name} with the recovery code"));
    }
    let tpm = tpm_protector(config)?.ok_or("--reseal: this machine has no TPM")?;
    volume
        .seal_again(&passphrase, &tpm, "TPM (sealed again after recovery)")
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "opened {name} with the recovery code and sealed its TPM slot to this machine again"
    ))
}

/// `enrol-recovery`: adds the recovery code as a slot.
fn enrol_recovery(config: &Config, volume: &Volume) -> Result<String, String> {
    let code = read_code()?;
    let passphrase = match volume.unlock_clear().map_err(|e| e.to_string())? {
        Some(passphrase) => passphrase,
        None => {
            let tpm =
                tpm_protector(config)?.ok_or("this machine has no TPM to open the volume with")?;
            volume.unlock(&tpm).map_err(|e| e.to_string())?
        }
    };
    let token = volume.token().map_err(|e| e.to_string())?;
    // Once only: whoever can reach this command must not be able to add a code of their
    // own later (the daemon that claims the box is its one caller).
    if token
        .slots
        .iter()
        .any(|s| s.kind() == Some(hsm::Kind::Recovery))
    {
        return Err(
            "the data volume has a recovery code already: it is added once, at setup".to_owned(),
        );
    }
    let had_clear = token.has_clear_slot();
    volume
        .enroll(&passphrase, &RecoveryProtector::new(code), "recovery code")
        .map_err(|e| e.to_string())?;
    Ok(if had_clear {
        "added the recovery code; the clear slot is gone: the volume now opens only with the recovery code".to_owned()
    } else {
        "added the recovery code".to_owned()
    })
}

/// `status`: the slots, as JSON.
fn status(volume: &Volume) -> Result<String, String> {
    let token = volume.token().map_err(|e| e.to_string())?;
    let slots: Vec<serde_json::Value> = token
        .slots
        .iter()
        .map(|slot| match slot {
            VolumeSlot::Sealed { label, sealed } => {
                serde_json::json!({ "kind": sealed.kind().to_string(), "label": label })
            }
            VolumeSlot::Clear { .. } => serde_json::json!({ "kind": "clear" }),
        })
        .collect();
    Ok(serde_json::json!({ "device": volume.device(), "slots": slots }).to_string())
}

/// The recovery code, from standard input (at most [`MAX_CODE`] bytes).
fn read_code() -> Result<RecoveryCode, String> {
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .take(MAX_CODE)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the recovery code from standard input: {e}"))?;
    RecoveryCode::parse(text.trim()).map_err(|e| format!("the recovery code: {e}"))
}

/// Makes the ext4 file system inside a new volume.
fn mkfs(name: &str) -> Result<(), String> {
    let mapper = format!("/dev/mapper/{name}");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-L", "pk-data", &mapper])
        .output()
        .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mkfs.ext4 {mapper}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
