//! `pk-dev`: brings up a local development node in `target/pk-dev`.
//!
//! It starts a software TPM (swtpm) when one is installed and keeps the node's data key
//! in it; without swtpm it falls back to the `soft` passphrase token, with a generated
//! passphrase kept in a file next to the node (development only, and it says so). The
//! first run initialises the node and prints its recovery code once; later runs unlock
//! the same node. On a terminal it stays up, with the TPM running, until Ctrl-C, so `pk`
//! can be pointed at it; otherwise it exits after unlocking. The node's agent runs in this
//! process, so `pk` commands work against the development node while it is up.
//!
//! The appliance with its admin console is brought up by `pk-appliance-dev` (quick-start
//! command 1); this command is the bare node, for working with the `pk` CLI.

#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use hsm::soft::{Argon2Params, SoftProtector};
use hsm::tpm::TpmProtector;
use hsm::{Pin, Protector};
use node::NodePath;
use node::dev_say as say;
use node::keyslots::Keyslots;

fn main() -> ExitCode {
    node::dev::main("pk-dev", run)
}

fn run() -> Result<(), String> {
    let once = std::env::args().any(|a| a == "--once");
    let base = node::dev::base_dir("pk-dev");
    let node = NodePath::new(base.join("node"));
    say!("pk-dev: development node at {node}");

    let swtpm = node::dev::start_swtpm(&base, "soft passphrase");
    let dev_secret = match &swtpm {
        Some(_) => None,
        None => Some(dev_passphrase(&base)?),
    };
    let protector: Box<dyn Protector> = match (&swtpm, &dev_secret) {
        (Some(tpm), _) => Box::new(TpmProtector::new(tpm.tcti(), None)),
        (None, secret) => Box::new(SoftProtector::new(
            secret.clone().unwrap_or_else(|| Pin::from("")),
            Argon2Params::DEFAULT,
        )),
    };

    // An existing node is unlocked by its agent below; a new one is made here.
    let keyslots = if node.keyslots().exists() {
        Keyslots::open(&node).map_err(|e| e.to_string())?
    } else {
        let init =
            Keyslots::init(&node, protector.as_ref(), "pk-dev").map_err(|e| e.to_string())?;
        say!("  initialised a new node; recovery code (shown once, development only):");
        say!("    {}", init.recovery_code.to_words().as_str());
        init.keyslots
    };
    for s in keyslots.slots() {
        say!(
            "    keyslot {}: {} ({}) {:?}",
            s.header.id,
            s.header.kind,
            if s.is_hardware() {
                "hardware"
            } else {
                "not hardware"
            },
            s.header.label
        );
    }
    let tcti = swtpm.as_ref().map(|t| t.tcti());
    serve(&node, tcti.clone(), dev_secret.as_ref(), once)?;
    drop(swtpm);
    Ok(())
}

/// Runs the node's agent in this process (unlocked through the TPM, or with the
/// development passphrase), prints where it is, and serves until Ctrl-C; with `--once`
/// (or without a terminal) it stops again right away.
fn serve(
    node: &NodePath,
    tcti: Option<String>,
    secret: Option<&Pin>,
    once: bool,
) -> Result<(), String> {
    use node::api::SecretBytes;
    use node::api::agent::{Status, Stop, Unlock};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let config = node::agent::AgentConfig {
        node: node.clone(),
        tokens: node::tokens::TokenConfig {
            drivers: Some(std::sync::Arc::new(hsm::Hardware)),
            tcti: tcti.clone(),
            tpm_pcr_signature: None,
            pkcs11_module: None,
            yubikey_events: None,
        },
        // Loopback only: the development node talks to nothing beyond this machine.
        peer_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        lan: None,
        github: node::provider::GitHubConfig::default(),
    };
    rt.block_on(async move {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let agent = tokio::spawn(node::agent::run(config, move || {
            let _ = ready_tx.send(());
        }));
        if ready_rx.await.is_err() {
            return match agent.await {
                Ok(Err(e)) => Err(e.to_string()),
                _ => Err("the agent did not start".into()),
            };
        }
        let client = node::client::Client::new(node);
        if let Some(secret) = secret {
            let unlock = Unlock {
                slot: None,
                kind: Some(hsm::Kind::Soft),
                secret: Some(SecretBytes(secret.expose().to_vec())),
            };
            client.call(unlock).await.map_err(|e| e.to_string())?;
        }
        let status = client.call(Status).await.map_err(|e| e.to_string())?;
        say!("  agent: {} (pid {}) on {}", status.state.name(), status.pid, node.agent_socket().display());
        if let Some(slot) = status.unlocked_with {
            say!("  unlocked through keyslot {slot}");
        } else {
            say!("  the agent could not unlock this node; if it was made with another token, remove {} to start over", node.dir().display());
        }
        if let Some(id) = status.node_id {
            say!("  NodeId: {id}");
        }
        if let Some(addr) = status.peer_addr {
            say!("  peer endpoint (QUIC, loopback only): UDP {addr}");
        }
        say!("  admin console: run the appliance instead (bash .ci/dev) for it");
        let tcti_env = tcti.map(|t| format!(" PK_TPM_TCTI={t}")).unwrap_or_default();
        say!("  try: PK_NODE_PATH={node}{tcti_env} cargo run -q -p node --bin pk -- vaults list");
        if once || !std::io::stdin().is_terminal() {
            client.call(Stop).await.map_err(|e| e.to_string())?;
        } else {
            say!("pk-dev: running; press Ctrl-C to stop");
        }
        match agent.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the agent stopped unexpectedly".into()),
        }
    })
}

/// The development node's passphrase when no TPM simulator is available: generated once
/// and kept beside the node, which is exactly what a real node must never do.
fn dev_passphrase(base: &Path) -> Result<Pin, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = base.join("dev-passphrase");
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(Pin::new(bytes));
    }
    std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let code = hsm::recovery::RecoveryCode::generate();
    let words = code.to_words();
    let pass: String = words.split(' ').take(6).collect::<Vec<_>>().join("-");
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, pass.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    say!(
        "  generated a development passphrase in {} (never do this outside development)",
        path.display()
    );
    Ok(Pin::from(pass.as_str()))
}
