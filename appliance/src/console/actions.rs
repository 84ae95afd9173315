//! What the console does, shared by its pages and its JSON API. Each action calls the
//! node's agent (or, for keyslots, the keyslot file with a token) and says what happened
//! in words for the admin; each view reads what a page or an API route shows.
//!
//! Nothing here logs a secret: values, PINs and passphrases pass through zeroizing
//! buffers, and log lines carry names, slot numbers and NodeIds only.

use std::sync::Arc;

use hsm::Protector;
use node::api::agent::{AgentState, Audit, Lock, Status, Unlock};
use node::api::backups::{self, Backup};
use node::api::keyslots::{Changed, KeyslotEvent};
use node::api::nodes::{self, ConnectionInfo, Pong};
use node::api::secrets::{Cat, Ls, Via, Write, WriteKind};
use node::api::vaults::{self, Permissions};
use node::api::{Call, SecretBytes};
use node::client::ClientError;
use node::keyslots::Keyslots;
use node::tokens::{NewSlot, UnlockChoice};
use serde::Serialize;
use zeroize::Zeroizing;

use super::Console;

/// What an action did (`Ok`) or why it did nothing (`Err`), in words for the admin.
pub(super) type Outcome = Result<String, String>;

/// Why a view could not be read.
#[derive(Debug)]
pub(super) enum ViewError {
    /// The node is locked.
    Locked,
    /// No such vault, node or slot.
    NotFound(String),
    /// The agent is not answering, or answered something else.
    Unavailable(String),
}

/// Calls the agent for a view.
pub(super) async fn agent<C: Call>(c: &Console, call: C) -> Result<C::Reply, ViewError> {
    c.client.call(call).await.map_err(|e| match e {
        ClientError::Api(api) if api.code == node::api::ErrorCode::Locked => ViewError::Locked,
        ClientError::Api(api) if api.code == node::api::ErrorCode::NotFound => {
            ViewError::NotFound(api.message)
        }
        other => ViewError::Unavailable(other.to_string()),
    })
}

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViewError::Locked => f.write_str("the node is locked"),
            ViewError::NotFound(m) | ViewError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// Calls the agent for an action; `done` words the success, `failed` prefixes the error.
async fn act<C: Call>(c: &Console, call: C, done: String, failed: &str) -> Outcome {
    match c.client.call(call).await {
        Ok(_) => Ok(done),
        Err(e) => Err(format!("{failed}: {e}")),
    }
}

/// An unlock method's token kind, from its form name.
pub(super) fn method_kind(method: &str) -> Result<hsm::Kind, String> {
    Ok(match method {
        "tpm" => hsm::Kind::Tpm,
        "passphrase" => hsm::Kind::Soft,
        "recovery" => hsm::Kind::Recovery,
        "pkcs11" => hsm::Kind::Pkcs11,
        "yubikey" => hsm::Kind::YubiKey,
        other => {
            return Err(format!(
                "{other:?} is not an unlock method (tpm, passphrase, recovery, pkcs11, yubikey)"
            ));
        }
    })
}

fn pin(secret: &str) -> Option<hsm::Pin> {
    (!secret.is_empty()).then(|| hsm::Pin::from(secret))
}

pub(super) async fn lock(c: &Console) -> Outcome {
    let outcome = act(
        c,
        Lock,
        "Locked: the keys are gone from memory.".into(),
        "Could not lock",
    )
    .await;
    if outcome.is_ok() {
        tracing::info!(event = "console.lock", "locked from the console");
    }
    outcome
}

pub(super) async fn unlock(c: &Console, method: &str, secret: &str) -> Outcome {
    let kind = method_kind(method)?;
    let params = Unlock {
        slot: None,
        kind: Some(kind),
        secret: (!secret.is_empty()).then(|| SecretBytes(secret.as_bytes().to_vec())),
    };
    match c.client.call(params).await {
        Ok(_) => {
            tracing::info!(
                event = "console.unlock",
                method,
                "unlocked from the console"
            );
            Ok("Unlocked.".into())
        }
        Err(e) => {
            tracing::warn!(
                event = "console.unlock_failed",
                method,
                "unlock from the console failed"
            );
            Err(format!("Not unlocked: {e}"))
        }
    }
}

pub(super) async fn vault_create(c: &Console, name: &str) -> Outcome {
    let name = name.trim();
    let outcome = act(
        c,
        vaults::Create {
            name: name.to_owned(),
        },
        format!("Vault {name} created."),
        "Not created",
    )
    .await;
    if outcome.is_ok() {
        tracing::info!(event = "console.vault_created", vault = %name, "vault created from the console");
    }
    outcome
}

pub(super) async fn secret_write(c: &Console, vault: &str, path: &str, value: &[u8]) -> Outcome {
    let path = path.trim();
    let request = Write {
        vault: vault.to_owned(),
        path: path.to_owned(),
        kind: WriteKind::Write,
        size: Some(value.len() as u64),
    };
    match c.client.upload(request, value).await {
        Ok(_) => {
            tracing::info!(event = "console.secret_written", vault = %vault, path = %path, "secret written from the console");
            Ok(format!("Saved {vault}:{path}."))
        }
        Err(e) => Err(format!("Not saved: {e}")),
    }
}

/// Reads a secret's value; the agent records the reveal in the audit log first.
pub(super) async fn reveal(
    c: &Console,
    vault: &str,
    path: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let path = path.trim();
    let mut value = Zeroizing::new(Vec::new());
    let request = Cat {
        vault: vault.to_owned(),
        path: path.to_owned(),
        via: Via::Console,
    };
    match c.client.download(request, &mut *value).await {
        Ok(_) => {
            tracing::info!(event = "console.secret_revealed", vault = %vault, path = %path, "secret revealed in the console");
            Ok(value)
        }
        Err(e) => Err(format!("Not revealed: {e}")),
    }
}

pub(super) async fn share(c: &Console, vault: &str, who: &str, grant: bool) -> Outcome {
    use node::nodes::VaultPermission::{Clone, Pull, Push};
    let who = who.trim();
    let request = vaults::Share {
        vault: vault.to_owned(),
        node: who.to_owned(),
        permissions: if grant {
            vec![Clone, Pull]
        } else {
            vec![Clone, Pull, Push]
        },
        grant,
    };
    let done = if grant {
        format!("Shared {vault} with {who}.")
    } else {
        format!("{vault} is no longer shared with {who}.")
    };
    let outcome = act(c, request, done, "Not changed").await;
    if outcome.is_ok() {
        tracing::info!(event = "console.share", vault = %vault, peer = %who, grant, "sharing changed from the console");
    }
    outcome
}

pub(super) async fn peer_add(c: &Console, node_id: &str, addr: &str) -> Outcome {
    let node_id = node_id.trim();
    let request = nodes::Add {
        node: node_id.to_owned(),
        addr: addr.trim().to_owned(),
        no_notify: false,
        no_ping: false,
    };
    let outcome = act(c, request, format!("Added {node_id}."), "Not added").await;
    if outcome.is_ok() {
        tracing::info!(event = "console.node_added", peer = %node_id, "node added from the console");
    }
    outcome
}

pub(super) async fn peer_ping(c: &Console, node_id: &str) -> Outcome {
    let node_id = node_id.trim();
    let ping = nodes::Ping {
        node: node_id.to_owned(),
    };
    match c.client.call(ping).await {
        Ok(Pong { rtt_ms, addr, .. }) => {
            Ok(format!("{node_id} answered from {addr} in {rtt_ms} ms."))
        }
        Err(e) => Err(format!("No answer: {e}")),
    }
}

pub(super) async fn backup_add(
    c: &Console,
    vault: &str,
    node_id: &str,
    every_s: u64,
    name: &str,
) -> Outcome {
    let (vault, node_id, name) = (vault.trim(), node_id.trim(), name.trim());
    let request = backups::Add {
        vault: vault.to_owned(),
        node: node_id.to_owned(),
        every_s,
        name: (!name.is_empty()).then(|| name.to_owned()),
    };
    let outcome = act(
        c,
        request,
        format!("{vault} from {node_id} is pulled every {every_s} s."),
        "Not scheduled",
    )
    .await;
    if outcome.is_ok() {
        tracing::info!(event = "console.backup_added", vault = %vault, peer = %node_id, every_s, "scheduled pull added from the console");
    }
    outcome
}

pub(super) async fn backup_remove(c: &Console, name: &str) -> Outcome {
    let name = name.trim();
    act(
        c,
        backups::Remove {
            name: name.to_owned(),
        },
        format!("{name} is no longer pulled on a schedule."),
        "Not removed",
    )
    .await
}

/// A keyslot as the console shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SlotView {
    /// Its number.
    pub id: u32,
    /// Its token kind.
    pub kind: hsm::Kind,
    /// Its label.
    pub label: String,
    /// Whether the token is hardware.
    pub hardware: bool,
    /// What unlocking it needs (`TPM PIN`, `passphrase`...), if anything.
    pub needs: Option<&'static str>,
    /// A TPM slot's PCR binding (`sha256:0,4,7`), if any.
    pub pcrs: Option<String>,
    /// A TPM slot's signed PCR binding (`sha256:11`), if any: those PCRs may hold any
    /// value its key signed.
    pub signed_pcrs: Option<String>,
}

pub(super) fn keyslots(c: &Console) -> Vec<SlotView> {
    Keyslots::open(&c.config.node)
        .map(|k| {
            k.slots()
                .iter()
                .map(|s| SlotView {
                    id: s.header.id,
                    kind: s.header.kind,
                    label: s.header.label.clone(),
                    hardware: s.is_hardware(),
                    needs: node::tokens::secret_name(&s.sealed),
                    pcrs: match &s.sealed {
                        hsm::Sealed::Tpm(t) => t.pcr_policy.as_ref().map(|p| p.to_string()),
                        _ => None,
                    },
                    signed_pcrs: match &s.sealed {
                        hsm::Sealed::Tpm(t) => t
                            .signed_pcr_policy
                            .as_ref()
                            .map(|p| p.pcr_policy().to_string()),
                        _ => None,
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A new keyslot, and the existing token that authorises adding it.
#[derive(Default, serde::Deserialize, zeroize::Zeroize)]
pub struct Enrolment {
    /// `tpm`, `pkcs11`, `yubikey` or `passphrase`.
    pub kind: String,
    /// The new slot's PIN or passphrase (PKCS#11 and YubiKey: the token's PIN).
    #[serde(default)]
    pub secret: String,
    /// TPM: the PCRs to bind to (`7` or `0,4,7,11`); none binds to no PCR.
    #[serde(default)]
    pub pcrs: String,
    /// PKCS#11: the token's label.
    #[serde(default)]
    pub token_label: String,
    /// The slot's label.
    #[serde(default)]
    pub label: String,
    /// How to open the data key now: an unlock method.
    pub auth_method: String,
    /// Its PIN, passphrase or recovery code.
    #[serde(default)]
    pub auth_secret: String,
}

fn new_protector(c: &Console, form: &Enrolment) -> Result<Box<dyn Protector>, String> {
    let tokens = c.tokens();
    if form.kind != "tpm" && !form.pcrs.trim().is_empty() {
        return Err("PCRs apply to a TPM keyslot only.".into());
    }
    let slot = match form.kind.as_str() {
        "tpm" => NewSlot::Tpm {
            pin: None,
            // A box whose image signs its PCR 11 values binds every TPM keyslot to them, as
            // its first one: such a slot keeps opening after a signed update, and only then.
            signed_pcrs: match &c.config.first_token {
                super::FirstToken::Tpm { signed_pcrs, .. } => signed_pcrs.clone(),
                super::FirstToken::Passphrase => None,
            },
            pcrs: match form.pcrs.trim() {
                "" => None,
                list => Some(
                    hsm::tpm::PcrPolicy::parse_list(hsm::tpm::PcrBank::Sha256, list)
                        .map_err(|e| format!("PCRs: {e}"))?,
                ),
            },
        },
        "pkcs11" => {
            let module = tokens
                .pkcs11_module
                .clone()
                .ok_or("No PKCS#11 module is configured: set pkcs11_module in config.toml.")?;
            if form.token_label.trim().is_empty() {
                return Err("A PKCS#11 keyslot needs the token's label.".into());
            }
            NewSlot::Pkcs11 {
                module,
                label: form.token_label.trim().to_owned(),
                pin: pin(&form.secret).ok_or("A PKCS#11 keyslot needs the token's PIN.")?,
            }
        }
        "yubikey" => NewSlot::YubiKey {
            serial: None,
            slot: 0x9d,
            pin_rule: hsm::yubikey::PinRule::Once,
            touch_rule: hsm::yubikey::TouchRule::Always,
            pin: pin(&form.secret).ok_or("A YubiKey keyslot needs the YubiKey's PIN.")?,
            management_key: None,
        },
        "passphrase" => {
            if form.secret.chars().count() < super::MIN_PASSWORD {
                return Err(format!(
                    "The passphrase needs at least {} characters.",
                    super::MIN_PASSWORD
                ));
            }
            NewSlot::Soft {
                passphrase: hsm::Pin::from(form.secret.as_str()),
                params: hsm::soft::Argon2Params::DEFAULT,
            }
        }
        other => {
            return Err(format!(
                "{other:?} is not a token kind (tpm, pkcs11, yubikey, passphrase)"
            ));
        }
    };
    node::tokens::new_protector(slot, &tokens).map_err(|e| format!("{e}."))
}

pub(super) fn authorise(
    c: &Console,
    keyslots: &Keyslots,
    method: &str,
    secret: &str,
) -> Result<node::keyslots::Unlocked, String> {
    let choice = UnlockChoice {
        slot: None,
        kind: Some(method_kind(method)?),
        secret: pin(secret),
    };
    node::tokens::unlock(keyslots, choice, &c.tokens())
        .map_err(|e| format!("The existing keyslot did not open: {e}"))
}

/// Runs a keyslot operation off the async threads (tokens and Argon2 block).
async fn blocking(
    c: &Arc<Console>,
    job: impl FnOnce(&Console) -> Outcome + Send + 'static,
) -> Outcome {
    let c = c.clone();
    tokio::task::spawn_blocking(move || job(&c))
        .await
        .unwrap_or_else(|_| Err("the keyslot operation failed".into()))
}

async fn keyslot_changed(c: &Console, event: KeyslotEvent, slot: u32, kind: hsm::Kind) {
    // Recorded in the audit log now, or at the next unlock while locked.
    let _ = c.client.call(Changed { event, slot, kind }).await;
}

/// Keyslots change only for an admin account checked against the node (unlocked): a
/// token that needs no secret (a TPM) would otherwise let an account file written behind
/// the console's back enrol a passphrase of its own while the node is locked.
fn account_checked(c: &Console) -> Result<(), String> {
    if c.account_verified() {
        Ok(())
    } else {
        Err("Unlock the node first: keyslots change only once the admin account has been checked against the node.".into())
    }
}

pub(super) async fn keyslot_enroll(c: &Arc<Console>, form: Enrolment) -> Outcome {
    account_checked(c)?;
    let form = Zeroizing::new(form);
    let done = blocking(c, move |c| {
        let protector = new_protector(c, &form)?;
        let mut keyslots = Keyslots::open(&c.config.node).map_err(|e| e.to_string())?;
        let unlocked = authorise(c, &keyslots, &form.auth_method, &form.auth_secret)?;
        let label = match form.label.trim() {
            "" => format!("{} (console)", form.kind),
            label => label.to_owned(),
        };
        let id = keyslots
            .enroll(&unlocked, protector.as_ref(), &label)
            .map_err(|e| format!("Not enrolled: {e}"))?;
        Ok(id.to_string())
    })
    .await?;
    let id: u32 = done.parse().unwrap_or_default();
    let kind = keyslots(c)
        .iter()
        .find(|s| s.id == id)
        .map_or(hsm::Kind::Soft, |s| s.kind);
    keyslot_changed(c, KeyslotEvent::Enrolled, id, kind).await;
    tracing::info!(event = "console.keyslot_enrolled", slot = id, kind = %kind, "keyslot enrolled from the console");
    Ok(format!("Enrolled keyslot {id} ({kind})."))
}

pub(super) async fn keyslot_test(c: &Arc<Console>, slot: u32, secret: String) -> Outcome {
    let secret = Zeroizing::new(secret);
    blocking(c, move |c| {
        let keyslots = Keyslots::open(&c.config.node).map_err(|e| e.to_string())?;
        let choice = UnlockChoice {
            slot: Some(slot),
            kind: None,
            secret: pin(&secret),
        };
        match node::tokens::unlock(&keyslots, choice, &c.tokens()) {
            Ok(_) => {
                tracing::info!(
                    event = "console.keyslot_tested",
                    slot,
                    ok = true,
                    "keyslot tested from the console"
                );
                Ok(format!("Keyslot {slot} opens this node's data key."))
            }
            Err(e) => {
                tracing::warn!(
                    event = "console.keyslot_tested",
                    slot,
                    ok = false,
                    "keyslot tested from the console"
                );
                Err(format!("Keyslot {slot} did not open: {e}"))
            }
        }
    })
    .await
}

pub(super) async fn keyslot_remove(
    c: &Arc<Console>,
    slot: u32,
    auth_method: String,
    auth_secret: String,
) -> Outcome {
    account_checked(c)?;
    let auth_secret = Zeroizing::new(auth_secret);
    let kind = keyslots(c)
        .iter()
        .find(|s| s.id == slot)
        .map(|s| s.kind)
        .ok_or_else(|| format!("There is no keyslot {slot}."))?;
    blocking(c, move |c| {
        let mut keyslots = Keyslots::open(&c.config.node).map_err(|e| e.to_string())?;
        let unlocked = authorise(c, &keyslots, &auth_method, &auth_secret)?;
        keyslots
            .remove(&unlocked, slot)
            .map_err(|e| format!("Not removed: {e}"))?;
        Ok(String::new())
    })
    .await?;
    keyslot_changed(c, KeyslotEvent::Removed, slot, kind).await;
    tracing::info!(event = "console.keyslot_removed", slot, kind = %kind, "keyslot removed from the console");
    Ok(format!("Removed keyslot {slot} ({kind})."))
}

/// The node's state as the console shows it: the agent's, or `starting` until the agent
/// answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NodeState {
    /// The agent has not answered yet.
    Starting,
    /// No keys in memory.
    Locked,
    /// The node's keys are in memory.
    Unlocked,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Starting => "starting",
            NodeState::Locked => "locked",
            NodeState::Unlocked => "unlocked",
        })
    }
}

/// What the status page and `/api/status` show.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StatusView {
    /// `locked`, `unlocked`, or `starting`.
    pub state: NodeState,
    /// The NodeId when unlocked.
    pub node_id: Option<String>,
    /// The peer endpoint.
    pub peer_addr: Option<String>,
    /// Seconds since the console started.
    pub uptime_s: u64,
    /// pk version.
    pub version: String,
    /// The appliance image's version (`IMAGE_VERSION` in /usr/lib/os-release): the one an
    /// update changes. `None` off the image.
    pub image_version: Option<String>,
    /// The console certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The keyslots.
    pub keyslots: Vec<SlotView>,
    /// Free and total bytes on the state directory's file system.
    pub disk_free_bytes: u64,
    /// Total bytes there.
    pub disk_total_bytes: u64,
    /// Nodes in the node graph (when unlocked).
    pub peers_known: usize,
    /// Open peer connections.
    pub peers_connected: usize,
    /// The scheduled pulls and their last results.
    pub backups: Vec<Backup>,
    /// A YubiKey is waiting for a touch right now.
    pub touch_needed: bool,
    /// The box's clock: its time, and whether it is synchronised.
    pub clock: ClockView,
}

/// The box's clock as the status shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClockView {
    /// Seconds since the Unix epoch, by this box's clock.
    pub now_unix: u64,
    /// Whether network time has set the clock this boot; `None` where nothing says
    /// (no `time_sync_flag`: a laptop, a development box).
    pub synchronized: Option<bool>,
}

fn clock(c: &Console) -> ClockView {
    ClockView {
        now_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        synchronized: c
            .config
            .time_sync_flag
            .as_deref()
            .map(std::path::Path::exists),
    }
}

/// `IMAGE_VERSION` of the running system's os-release, if it has one.
fn image_version() -> Option<String> {
    let text = std::fs::read_to_string("/usr/lib/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("IMAGE_VERSION="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

pub(super) async fn status(c: &Console) -> StatusView {
    let (state, node_id, peer_addr) = match c.client.call(Status).await {
        Ok(s) => (Some(s.state), s.node_id, s.peer_addr),
        Err(_) => (None, None, None),
    };
    let (peers_known, peers_connected, backups) = if state == Some(AgentState::Unlocked) {
        (
            agent(c, nodes::GetAll).await.map_or(0, |n| n.len()),
            agent(c, nodes::Connections).await.map_or(0, |n| n.len()),
            agent(c, backups::List).await.unwrap_or_default(),
        )
    } else {
        (0, 0, Vec::new())
    };
    let (disk_free_bytes, disk_total_bytes) = rustix::fs::statvfs(c.config.dir.as_path())
        .map(|s| {
            (
                s.f_bavail.saturating_mul(s.f_frsize),
                s.f_blocks.saturating_mul(s.f_frsize),
            )
        })
        .unwrap_or((0, 0));
    StatusView {
        // Until the agent answers, the node is still starting.
        state: match state {
            None => NodeState::Starting,
            Some(AgentState::Locked) => NodeState::Locked,
            Some(AgentState::Unlocked) => NodeState::Unlocked,
        },
        node_id,
        peer_addr,
        uptime_s: c.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        image_version: image_version(),
        fingerprint: c.config.fingerprint.clone(),
        keyslots: keyslots(c),
        disk_free_bytes,
        disk_total_bytes,
        peers_known,
        peers_connected,
        backups,
        touch_needed: c.touch_needed(),
        clock: clock(c),
    }
}

/// A vault's page: top-level entries, recent history, shares.
#[derive(Clone, Debug, Serialize)]
pub(super) struct VaultDetail {
    pub(super) name: String,
    pub(super) entries: Vec<node::vault::Entry>,
    pub(super) commits: Vec<node::vault::CommitInfo>,
    pub(super) shares: Vec<node::nodes::Share>,
}

pub(super) async fn vaults(c: &Console) -> Result<Vec<node::vault::VaultRecord>, ViewError> {
    agent(c, vaults::List).await
}

pub(super) async fn vault(c: &Console, name: &str) -> Result<VaultDetail, ViewError> {
    let ls = Ls {
        vault: name.to_owned(),
        path: String::new(),
    };
    let entries = agent(c, ls).await?;
    let log = vaults::Log {
        vault: name.to_owned(),
        depth: Some(20),
        from: None,
    };
    let commits = agent(c, log).await?;
    let permissions = Permissions {
        vault: name.to_owned(),
    };
    let shares = agent(c, permissions).await?;
    Ok(VaultDetail {
        name: name.to_owned(),
        entries,
        commits,
        shares,
    })
}

/// The peers page: known nodes and open connections.
#[derive(Clone, Debug, Serialize)]
pub(super) struct PeersView {
    pub(super) nodes: Vec<node::nodes::NodeRecord>,
    pub(super) connections: Vec<ConnectionInfo>,
}

pub(super) async fn peers(c: &Console) -> Result<PeersView, ViewError> {
    let nodes = agent(c, nodes::GetAll).await?;
    let connections = agent(c, nodes::Connections).await?;
    Ok(PeersView { nodes, connections })
}

/// Nodes announcing themselves on the LAN (mDNS), listened for a moment.
pub(super) async fn lan_nodes(c: &Console) -> Result<Vec<node::lan::Found>, ViewError> {
    agent(c, nodes::Discover { wait_ms: 1500 }).await
}

pub(super) async fn backups(c: &Console) -> Result<Vec<Backup>, ViewError> {
    agent(c, backups::List).await
}

pub(super) async fn audit(c: &Console) -> Result<Vec<node::audit::AuditEvent>, ViewError> {
    let query = node::audit::AuditQuery {
        limit: Some(200),
        newest_first: true,
        ..Default::default()
    };
    agent(c, Audit(query)).await
}
