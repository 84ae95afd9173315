//! The dispatch of every command, and the commands that use tokens: `init`, `keyslots`
//! and the agent process itself.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use hsm_core::soft::Argon2Params;
use hsm_core::tpm::{DEFAULT_SIGNED_PCRS, PcrBank, PcrPolicy, SignedPcrPolicy};
use hsm_core::yubikey::{PinRule, TouchRule};
use hsm_core::{Drivers, Kind, Protector, Sealed};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::NodePath;
use crate::api::keyslots::{Changed, KeyslotEvent};
use crate::client::{Client, ClientError};
use crate::keyslots::{Keyslot, Keyslots, Unlocked};
use crate::tokens::{NewSlot, TokenConfig};

use super::args::{
    AgentCommand, Cli, Command, EnrollArgs, InitArgs, KeyslotsCommand, RemoveArgs, TestArgs,
    TokenArgs, TokenKind, UnlockArgs,
};
use super::error::CliError;
use super::output::Output;
use super::secrets::SecretSource;
use super::unlock::unlock_flow;

/// The shortest passphrase accepted for a `soft` slot.
const MIN_PASSPHRASE: usize = 8;

/// The node path, token configuration and output format the command line gives.
fn context(
    cli: &Cli,
    drivers: Option<Arc<dyn Drivers>>,
) -> Result<(NodePath, TokenConfig, Output), CliError> {
    let node = match &cli.node_path {
        Some(path) => NodePath::new(path),
        None => NodePath::default_location()
            .ok_or_else(|| CliError::usage("no --node-path given and no HOME to default to"))?,
    };
    let config = TokenConfig {
        drivers,
        tcti: cli.tcti.clone(),
        tpm_pcr_signature: cli.tpm_pcr_signature.clone(),
        pkcs11_module: cli.pkcs11_module.clone(),
        // On the command line the touch prompt goes to the terminal.
        yubikey_events: Some(Arc::new(|event| {
            if let hsm_core::yubikey::YubiKeyEvent::TouchNeeded { serial } = event {
                eprintln!("Touch your YubiKey (serial {serial}) now");
            }
        })),
    };
    Ok((node, config, Output::new(cli.format)))
}

/// The commands served by the agent (everything `pk` runs itself).
pub(crate) fn run_client(cli: &Cli) -> Result<(), CliError> {
    let (node, _, out) = context(cli, None)?;
    match &cli.command {
        Command::Agent(c) => super::agent_cmds::agent(cli, &node, c, &out),
        Command::Keys(c) => super::agent_cmds::keys(&node, c, &out),
        Command::Vaults(c) => super::agent_cmds::vaults(&node, c, &out),
        Command::Secrets(c) => super::agent_cmds::secrets(&node, c, &out),
        Command::Audit(a) => super::agent_cmds::audit(&node, a, &out),
        Command::Nodes(c) => super::peer_cmds::nodes(&node, c, &out),
        Command::Notifications(c) => super::peer_cmds::notifications(&node, c, &out),
        Command::Identities(c) => super::trust_cmds::identities(&node, c, &out),
        Command::Init(_) | Command::Keyslots(_) => {
            Err(CliError::internal("this command runs in pk-node"))
        }
    }
}

/// Every command, including those that use tokens through `drivers` (what `pk-node`
/// runs).
pub(crate) fn run(cli: &Cli, drivers: Arc<dyn Drivers>) -> Result<(), CliError> {
    let (node, config, out) = context(cli, Some(drivers))?;
    match &cli.command {
        Command::Agent(AgentCommand::Start(args)) if args.foreground => {
            run_agent(&node, &config, args)
        }
        Command::Agent(_)
        | Command::Nodes(_)
        | Command::Notifications(_)
        | Command::Identities(_)
        | Command::Keys(_)
        | Command::Vaults(_)
        | Command::Secrets(_)
        | Command::Audit(_) => run_client(cli),
        Command::Init(args) => init(&node, &config, args, &out),
        Command::Keyslots(KeyslotsCommand::List) => keyslots_list(&node, &out),
        Command::Keyslots(KeyslotsCommand::Enroll(args)) => {
            keyslots_enroll(&node, &config, args, &out)
        }
        Command::Keyslots(KeyslotsCommand::Test(args)) => keyslots_test(&node, &config, args, &out),
        Command::Keyslots(KeyslotsCommand::Remove(args)) => {
            keyslots_remove(&node, &config, args, &out)
        }
    }
}

/// `pk init`: a new data key, its first keyslot and the recovery code, the store and
/// the identity.
fn init(
    node: &NodePath,
    config: &TokenConfig,
    args: &InitArgs,
    out: &Output,
) -> Result<(), CliError> {
    let source = SecretSource {
        file: args.password_file.as_deref(),
        env: "PK_PASSWORD",
        flag: "--password-file",
    };
    let protector = new_protector(&args.token, config, &source)?;
    let label = default_label(&args.token);
    let init = Keyslots::init(node, protector.as_ref(), &label)?;
    let node_id = create_store(node, &init)?;
    let words = init.recovery_code.to_words();
    let slots: Vec<Value> = init.keyslots.slots().iter().map(slot_json).collect();
    out.emit(
        json!({ "node_path": node.dir(), "node_id": node_id, "keyslots": slots, "recovery_code": words.as_str() }),
        || {
            let mut text = format!("Initialised a node at {node}\nNodeId: {node_id}\n");
            for slot in init.keyslots.slots() {
                text += &format!("  keyslot {}\n", slot_line(slot));
            }
            if init.keyslots.slots().iter().all(|s| !s.is_hardware()) {
                text += "\nWarning: no hardware token protects this node; the passphrase is all that stands between a copy of its data and your secrets.\n";
            }
            text += "\nRecovery code: shown this once, never stored. Write it down and keep it offline;\nit unlocks this node when every token is lost.\n\n";
            text += &numbered_words(&words);
            text
        },
    )
    .map_err(|e| {
        CliError::io(
            "the node was created but its recovery code could not be written to stdout",
            e,
        )
    })
}

/// `pk keyslots list`.
fn keyslots_list(node: &NodePath, out: &Output) -> Result<(), CliError> {
    let keyslots = Keyslots::open(node)?;
    let slots: Vec<Value> = keyslots.slots().iter().map(slot_json).collect();
    let _ = out.emit(json!(slots), || {
        keyslots
            .slots()
            .iter()
            .map(|s| slot_line(s) + "\n")
            .collect()
    });
    Ok(())
}

/// `pk keyslots enroll`: a new slot, authorised by unlocking an existing one.
fn keyslots_enroll(
    node: &NodePath,
    config: &TokenConfig,
    args: &EnrollArgs,
    out: &Output,
) -> Result<(), CliError> {
    let mut keyslots = Keyslots::open(node)?;
    let unlocked = unlock(&keyslots, &args.unlock, None, config)?;
    let source = SecretSource {
        file: args.password_new_file.as_deref(),
        env: "PK_PASSWORD_NEW",
        flag: "--password-new-file",
    };
    let protector = new_protector(&args.token, config, &source)?;
    let id = keyslots.enroll(&unlocked, protector.as_ref(), &default_label(&args.token))?;
    record_keyslot(
        node,
        &unlocked,
        KeyslotEvent::Enrolled,
        id,
        protector.kind(),
    );
    let slot = keyslots.slot(id).map(slot_json).unwrap_or(Value::Null);
    let _ = out.emit(json!({ "enrolled": slot }), || {
        format!(
            "Enrolled keyslot {}\n",
            keyslots.slot(id).map(slot_line).unwrap_or_default()
        )
    });
    Ok(())
}

/// `pk keyslots test`: whether a slot opens the data key.
fn keyslots_test(
    node: &NodePath,
    config: &TokenConfig,
    args: &TestArgs,
    out: &Output,
) -> Result<(), CliError> {
    let keyslots = Keyslots::open(node)?;
    let unlocked = unlock(&keyslots, &args.unlock, args.slot, config)?;
    let slot = keyslots.slot(unlocked.slot);
    let _ = out.emit(
        json!({ "slot": unlocked.slot, "ok": true, "kind": slot.map(|s| s.header.kind) }),
        || {
            format!(
                "keyslot {} opens this node's data key\n",
                slot.map(slot_line).unwrap_or_default()
            )
        },
    );
    Ok(())
}

/// `pk keyslots remove`, authorised by unlocking another slot.
fn keyslots_remove(
    node: &NodePath,
    config: &TokenConfig,
    args: &RemoveArgs,
    out: &Output,
) -> Result<(), CliError> {
    let mut keyslots = Keyslots::open(node)?;
    if keyslots.slot(args.slot).is_none() {
        return Err(crate::keyslots::KeyslotError::NoSuchSlot(args.slot).into());
    }
    let unlocked = unlock(&keyslots, &args.unlock, None, config)?;
    let kind = keyslots.slot(args.slot).map(|s| s.header.kind);
    keyslots.remove(&unlocked, args.slot)?;
    if let Some(kind) = kind {
        record_keyslot(node, &unlocked, KeyslotEvent::Removed, args.slot, kind);
    }
    let _ = out.emit(
        json!({ "removed": args.slot, "unlocked_with": unlocked.slot }),
        || {
            format!(
                "Removed keyslot {} (unlocked with keyslot {})\n",
                args.slot, unlocked.slot
            )
        },
    );
    Ok(())
}

/// Runs the agent in this process until it is stopped.
fn run_agent(
    node: &NodePath,
    config: &TokenConfig,
    args: &super::args::AgentStartArgs,
) -> Result<(), CliError> {
    let peer_listen = match args.peer_listen.as_str() {
        "off" | "" => None,
        text => Some(text.parse::<std::net::SocketAddr>().map_err(|_| {
            CliError::usage(format!(
                "--peer-listen {text:?} is not an address such as 0.0.0.0:1314 or 127.0.0.1:0, or `off`"
            ))
        })?),
    };
    let lan = args.lan.map(|mode| match mode {
        super::args::LanMode::Lan => crate::lan::Interfaces::Lan,
        super::args::LanMode::Loopback => crate::lan::Interfaces::LoopbackOnly,
    });
    log_to_stderr(&args.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::io("cannot start the runtime", e))?;
    let config = crate::agent::AgentConfig {
        node: node.clone(),
        tokens: config.clone(),
        peer_listen,
        lan,
        github: crate::provider::GitHubConfig {
            web_url: args.github_url.trim_end_matches('/').to_owned(),
            api_url: args.github_api_url.trim_end_matches('/').to_owned(),
            client_id: args.github_client_id.clone(),
        },
    };
    rt.block_on(crate::agent::run(config, || {
        eprintln!("pk agent: ready on {}", node.agent_socket().display());
    }))
    .map_err(CliError::from)
}

/// Sends the agent's log events to standard error (a background agent's is `agent.log`),
/// those `filter` lets through; a filter that cannot be used is an error before the agent
/// starts.
fn log_to_stderr(filter: &str) -> Result<(), CliError> {
    use std::io::IsTerminal as _;
    let filter =
        crate::logging::filter(filter).map_err(|e| CliError::usage(format!("--log: {e}")))?;
    // Only this process sets a subscriber, once; were one set already, it would do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}

/// Creates the node's encrypted store and identity right after `init`, and records the
/// first events. Returns the NodeId.
fn create_store(node: &NodePath, init: &crate::keyslots::Initialised) -> Result<String, CliError> {
    let store_err = |e: crate::store::StoreError| CliError::internal(e.to_string());
    let store = crate::store::Store::open(node, &init.unlocked.key).map_err(store_err)?;
    let mut tx = store.write().map_err(store_err)?;
    let identity = crate::identity::Identity::load_or_create(&mut tx).map_err(store_err)?;
    crate::audit::append(
        &mut tx,
        "node.initialised",
        json!({ "node_id": identity.node_id() }),
    )
    .map_err(store_err)?;
    for slot in init.keyslots.slots() {
        crate::audit::append(
            &mut tx,
            "keyslot.enrolled",
            json!({ "slot": slot.header.id, "kind": slot.header.kind }),
        )
        .map_err(store_err)?;
    }
    tx.commit().map_err(store_err)?;
    Ok(identity.node_id().to_string())
}

/// Records a keyslot change in the audit log: through the agent when one runs (it holds
/// the store), else directly with the DEK this command unlocked. A failure to record is
/// reported but does not undo the change, which is already on disk.
fn record_keyslot(
    node: &NodePath,
    unlocked: &Unlocked,
    event: KeyslotEvent,
    slot: u32,
    kind: Kind,
) {
    let changed = Changed { event, slot, kind };
    let via_agent = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Some(e.to_string()))
        .and_then(|rt| {
            rt.block_on(Client::new(node).call(changed))
                .map_err(|e| match e {
                    // No agent holds the store: this command may open it itself.
                    ClientError::NotRunning(_) => None,
                    other => Some(other.to_string()),
                })
        });
    let result = match via_agent {
        Ok(_) => Ok(()),
        Err(None) => crate::store::Store::open(node, &unlocked.key)
            .and_then(|store| {
                let mut tx = store.write()?;
                let name = match event {
                    KeyslotEvent::Enrolled => "keyslot.enrolled",
                    KeyslotEvent::Removed => "keyslot.removed",
                };
                crate::audit::append(&mut tx, name, json!({ "slot": slot, "kind": kind }))?;
                tx.commit()
            })
            .map_err(|e| e.to_string()),
        Err(Some(e)) => Err(e),
    };
    if let Err(e) = result {
        eprintln!(
            "pk: warning: the change is made but could not be recorded in the audit log: {e}"
        );
    }
}

fn default_label(token: &TokenArgs) -> String {
    if !token.label.is_empty() {
        return token.label.clone();
    }
    match token.token {
        TokenKind::Tpm => "TPM".into(),
        TokenKind::Pkcs11 => format!(
            "PKCS#11 token {}",
            token.pkcs11_token_label.as_deref().unwrap_or_default()
        ),
        TokenKind::Soft => "passphrase".into(),
        TokenKind::Yubikey => "YubiKey".into(),
    }
}

/// Builds the protector for a new keyslot from the command line.
fn new_protector(
    args: &TokenArgs,
    config: &TokenConfig,
    source: &SecretSource<'_>,
) -> Result<Box<dyn Protector>, CliError> {
    check_token_flags(args)?;
    let slot = match args.token {
        TokenKind::Yubikey => yubikey_slot(args, source)?,
        TokenKind::Tpm => tpm_slot(args, source)?,
        TokenKind::Pkcs11 => pkcs11_slot(args, config, source)?,
        TokenKind::Soft => soft_slot(args, source)?,
    };
    Ok(crate::tokens::new_protector(slot, config)?)
}

/// Refuses the flags of one token kind given with another.
fn check_token_flags(args: &TokenArgs) -> Result<(), CliError> {
    let misplaced =
        |flag: &str, kind: &str| CliError::usage(format!("{flag} applies to --token {kind} only"));
    if args.token != TokenKind::Tpm
        && (args.tpm_pcrs.is_some()
            || args.tpm_pin
            || args.tpm_pcr_bank.is_some()
            || args.tpm_pcr_public_key.is_some()
            || args.tpm_signed_pcrs.is_some())
    {
        return Err(misplaced("--tpm-*", "tpm"));
    }
    if args.token != TokenKind::Pkcs11 && args.pkcs11_token_label.is_some() {
        return Err(misplaced("--pkcs11-token-label", "pkcs11"));
    }
    if args.token != TokenKind::Soft
        && (args.argon2_memory_mib.is_some() || args.argon2_passes.is_some())
    {
        return Err(misplaced("--argon2-*", "soft"));
    }
    if args.token != TokenKind::Yubikey
        && (args.yubikey_serial.is_some()
            || args.yubikey_slot.is_some()
            || args.yubikey_pin_policy.is_some()
            || args.yubikey_touch_policy.is_some()
            || args.yubikey_management_key_file.is_some())
    {
        return Err(misplaced("--yubikey-*", "yubikey"));
    }
    Ok(())
}

/// `--token yubikey`: a key generated on the card, with its PIN and touch policies.
fn yubikey_slot(args: &TokenArgs, source: &SecretSource<'_>) -> Result<NewSlot, CliError> {
    let pin_rule = match args.yubikey_pin_policy.as_deref() {
        Some("never") => PinRule::Never,
        Some("always") => PinRule::Always,
        _ => PinRule::Once,
    };
    let touch_rule = match args.yubikey_touch_policy.as_deref() {
        Some("never") => TouchRule::Never,
        Some("cached") => TouchRule::Cached,
        _ => TouchRule::Always,
    };
    // The PIN authorises key generation now, and unlocking later (per policy).
    let pin = source.require("YubiKey PIN", false)?;
    let management_key = match &args.yubikey_management_key_file {
        Some(file) => Some(management_key(file)?),
        None => None,
    };
    Ok(NewSlot::YubiKey {
        serial: args.yubikey_serial,
        slot: args.yubikey_slot.unwrap_or(0x9d),
        pin_rule,
        touch_rule,
        pin,
        management_key,
    })
}

/// A YubiKey management key from a file of 48 hex digits.
fn management_key(file: &std::path::Path) -> Result<Zeroizing<[u8; 24]>, CliError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(file).map_err(|e| CliError::io(file.display(), e))?);
    let bytes = Zeroizing::new(
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim().as_bytes())
            .map_err(|_| CliError::usage("the management key file must hold 48 hex digits"))?,
    );
    let key: [u8; 24] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| CliError::usage("the management key file must hold 48 hex digits"))?;
    Ok(Zeroizing::new(key))
}

/// `--token tpm`: optionally with a PIN and bound to PCRs.
fn tpm_slot(args: &TokenArgs, source: &SecretSource<'_>) -> Result<NewSlot, CliError> {
    let pin = if args.tpm_pin {
        let pin = source.require("new TPM PIN", true)?;
        if pin.is_empty() {
            return Err(CliError::usage("the TPM PIN is empty"));
        }
        Some(pin)
    } else {
        None
    };
    if args.tpm_pcrs.is_none() && args.tpm_pcr_public_key.is_none() && args.tpm_pcr_bank.is_some() {
        return Err(CliError::usage(
            "--tpm-pcr-bank needs --tpm-pcrs or --tpm-pcr-public-key",
        ));
    }
    let bank = args.tpm_pcr_bank.unwrap_or(PcrBank::Sha256);
    let pcrs = match &args.tpm_pcrs {
        Some(list) => Some(PcrPolicy::parse_list(bank, list).map_err(CliError::usage)?),
        None => None,
    };
    Ok(NewSlot::Tpm {
        pin,
        pcrs,
        signed_pcrs: signed_pcr_policy(args, bank)?,
    })
}

/// `--tpm-pcr-public-key` and `--tpm-signed-pcrs`: the signed PCR policy, if any.
fn signed_pcr_policy(args: &TokenArgs, bank: PcrBank) -> Result<Option<SignedPcrPolicy>, CliError> {
    let Some(file) = &args.tpm_pcr_public_key else {
        if args.tpm_signed_pcrs.is_some() {
            return Err(CliError::usage(
                "--tpm-signed-pcrs needs --tpm-pcr-public-key",
            ));
        }
        return Ok(None);
    };
    let pcrs = match &args.tpm_signed_pcrs {
        Some(list) => PcrPolicy::parse_list(bank, list).map_err(CliError::usage)?,
        None => PcrPolicy {
            bank,
            pcrs: DEFAULT_SIGNED_PCRS.to_vec(),
        },
    };
    let pem = std::fs::read_to_string(file).map_err(|e| CliError::io(file.display(), e))?;
    SignedPcrPolicy::from_pem(&pem, pcrs)
        .map(Some)
        .map_err(|e| CliError::usage(format!("--tpm-pcr-public-key {}: {e}", file.display())))
}

/// `--token pkcs11`: a token found by its label in the configured module.
fn pkcs11_slot(
    args: &TokenArgs,
    config: &TokenConfig,
    source: &SecretSource<'_>,
) -> Result<NewSlot, CliError> {
    let label = args
        .pkcs11_token_label
        .as_deref()
        .ok_or_else(|| CliError::usage("--pkcs11-token-label is required with --token pkcs11"))?;
    let module = config.pkcs11_module.clone().ok_or_else(|| {
        CliError::usage("--pkcs11-module (or PK_PKCS11_MODULE) is required with --token pkcs11")
    })?;
    let pin = source.require("PKCS#11 token PIN", false)?;
    Ok(NewSlot::Pkcs11 {
        module,
        label: label.to_owned(),
        pin,
    })
}

/// `--token soft`: a passphrase under Argon2id.
fn soft_slot(args: &TokenArgs, source: &SecretSource<'_>) -> Result<NewSlot, CliError> {
    let passphrase = source.require("new passphrase", true)?;
    if passphrase.expose().len() < MIN_PASSPHRASE {
        return Err(CliError::usage(format!(
            "the passphrase is too short: use at least {MIN_PASSPHRASE} characters"
        )));
    }
    let mut params = Argon2Params::DEFAULT;
    if let Some(mib) = args.argon2_memory_mib {
        params.m_kib = mib.saturating_mul(1024);
    }
    if let Some(t) = args.argon2_passes {
        params.t = t;
    }
    Ok(NewSlot::Soft { passphrase, params })
}

/// Unlocks the DEK locally (no agent), as the user asked.
fn unlock(
    keyslots: &Keyslots,
    args: &UnlockArgs,
    only: Option<u32>,
    config: &TokenConfig,
) -> Result<Unlocked, CliError> {
    unlock_flow(keyslots, args, only, |choice| {
        Ok(crate::tokens::unlock(keyslots, choice, config)?)
    })
}

fn created(slot: &Keyslot) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(slot.header.created))
        .to_string()
}

fn details(sealed: &Sealed) -> Value {
    match sealed {
        Sealed::Tpm(t) => json!({
            "pcr_policy": t.pcr_policy.as_ref().map(|p| json!({ "bank": p.bank, "pcrs": p.pcrs })),
            "signed_pcr_policy": t.signed_pcr_policy.as_ref().map(|p| json!({
                "bank": p.bank,
                "pcrs": p.pcrs,
                "public_key_fingerprint": p.fingerprint,
            })),
            "pin": t.pin,
        }),
        Sealed::Pkcs11(p) => json!({ "token_label": p.token_label, "module": p.module }),
        Sealed::Soft(s) => json!({ "argon2id": s.argon2 }),
        Sealed::YubiKey(y) => json!({
            "serial": y.serial,
            "slot": format!("{:02x}", y.slot),
            "pin_policy": y.pin_policy,
            "touch_policy": y.touch_policy,
        }),
        _ => json!({}),
    }
}

fn slot_json(slot: &Keyslot) -> Value {
    json!({
        "id": slot.header.id,
        "kind": slot.header.kind,
        "hardware": slot.is_hardware(),
        "label": slot.header.label,
        "created": created(slot),
        "details": details(&slot.sealed),
    })
}

fn slot_line(slot: &Keyslot) -> String {
    let detail = match &slot.sealed {
        Sealed::Tpm(t) => {
            let mut parts = Vec::new();
            if let Some(p) = &t.pcr_policy {
                parts.push(format!("PCRs {p}"));
            }
            if let Some(p) = &t.signed_pcr_policy {
                let key = p.fingerprint.get(..16).unwrap_or(&p.fingerprint);
                parts.push(format!("signed PCRs {} (key {key})", p.pcr_policy()));
            }
            if t.pin {
                parts.push("PIN".into());
            }
            parts.join(", ")
        }
        Sealed::Pkcs11(p) => format!("token {:?}", p.token_label),
        Sealed::Soft(s) => format!(
            "Argon2id {} MiB, t={}, p={}",
            s.argon2.m_kib / 1024,
            s.argon2.t,
            s.argon2.p
        ),
        Sealed::YubiKey(y) => format!(
            "serial {}, slot {:02x}, PIN {}, touch {}",
            y.serial,
            y.slot,
            json!(y.pin_policy).as_str().unwrap_or(""),
            json!(y.touch_policy).as_str().unwrap_or("")
        ),
        _ => String::new(),
    };
    let hardware = if slot.is_hardware() {
        "hardware"
    } else {
        "not hardware"
    };
    let mut line = format!(
        "{}: {} ({hardware}) {:?} created {}",
        slot.header.id,
        slot.header.kind,
        slot.header.label,
        created(slot)
    );
    if !detail.is_empty() {
        line += &format!(" [{detail}]");
    }
    line
}

fn numbered_words(words: &str) -> String {
    let mut text = String::new();
    for (i, word) in words.split(' ').enumerate() {
        text += &format!("{:>4}. {word:<10}", i + 1);
        if i % 6 == 5 {
            text += "\n";
        }
    }
    text
}
