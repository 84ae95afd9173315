//! `pk-appliance-dev`: quick-start command 1. Brings up a local appliance in
//! `target/pk-dev-appliance`: the `pk-appliance` daemon in this process, with embedded
//! redb storage, a software TPM (swtpm) when one is installed (the `soft` passphrase
//! token otherwise, and it says so), its peer endpoint on loopback only, and the admin
//! console on `https://127.0.0.1:8443/` (`PK_DEV_CONSOLE_PORT` to change). It prints the
//! console's address, its certificate fingerprint, and the one-time setup code while the
//! appliance is unclaimed. On a terminal (or with `--serve`) it serves until Ctrl-C or
//! SIGTERM; with `--once` (or without a terminal) it stops once it has started and said
//! where it is.

#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::process::ExitCode;

use appliance::config::Config;
use node::dev_say as say;

fn main() -> ExitCode {
    node::dev::main("pk-appliance-dev", run)
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.iter().any(|a| a == "--serve");
    let once = args.iter().any(|a| a == "--once") || (!serve && !std::io::stdin().is_terminal());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    let base = node::dev::base_dir("pk-dev-appliance");
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    say!("pk-appliance-dev: local appliance in {}", base.display());
    let swtpm = node::dev::start_swtpm(&base, "soft passphrase, chosen at setup");
    let port: u16 = std::env::var("PK_DEV_CONSOLE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8443);
    let base_config = Config {
        state_dir: base.join("state"),
        console_listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        // Loopback only: the development appliance talks to nothing beyond this machine.
        peer_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        lan: false,
        tpm_tcti: swtpm.as_ref().map(|t| t.tcti()),
        ..Config::default()
    };
    let node = node::NodePath::new(base_config.node_dir());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // A restart asked for in the console (to apply changed settings) starts the daemon
    // again in this process, with the settings as they are now.
    loop {
        let (config, settings) = dev_settings(base_config.clone());
        let exit = runtime.block_on(run_daemon(config, settings, &node, once))?;
        if exit == appliance::daemon::Exit::Stopped {
            break;
        }
        say!("pk-appliance-dev: restarting, as the console asked");
    }
    drop(swtpm);
    Ok(())
}

/// The owner's settings over `config`, still on loopback only: the development appliance
/// talks to nothing beyond this machine, whatever the settings say of the LAN.
fn dev_settings(config: Config) -> (Config, appliance::settings::Settings) {
    let (mut config, settings) = appliance::settings::effective(config);
    config.lan = false;
    let settings = settings.unwrap_or_else(|e| {
        say!("pk-appliance-dev: {e}: running without the stored settings");
        appliance::settings::Settings::default()
    });
    (config, settings)
}

/// One run of the daemon: until Ctrl-C, SIGTERM or a restart (with `once`, until it has
/// started and said where it is).
async fn run_daemon(
    config: Config,
    settings: appliance::settings::Settings,
    node: &node::NodePath,
    once: bool,
) -> Result<appliance::daemon::Exit, String> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = ready_rx.await;
        if !once {
            std::future::pending::<()>().await;
        }
        // Let the agent finish its unattended unlock before reporting and stopping.
        report(node).await;
    };
    appliance::daemon::run_until(
        config,
        settings,
        |started| {
            announce(started, once);
            let _ = ready_tx.send(());
        },
        stop,
    )
    .await
}

/// Says where the started appliance's console is, and the setup code while unclaimed.
fn announce(started: &appliance::daemon::Started, once: bool) {
    say!(
        "  console: {} (self-signed; SHA-256 fingerprint {})",
        started.console_urls.join(" "),
        started.fingerprint
    );
    match &started.setup_code {
        Some(code) => say!(
            "  setup code: {code} (claim the appliance in the console with it; a new code at each start until then)"
        ),
        None => say!("  claimed already: log in with the admin password"),
    }
    if !once {
        say!("pk-appliance-dev: running; press Ctrl-C to stop");
    }
}

/// Says whether the node is unlocked (after a moment for the agent's unattended unlock).
async fn report(node: &node::NodePath) {
    if !node.keyslots().exists() {
        say!("  node: not created yet (setup creates it)");
        return;
    }
    let client = node::client::Client::new(node);
    for _ in 0..50 {
        if let Ok(s) = client.call(node::api::agent::Status).await
            && s.state == node::api::agent::AgentState::Unlocked
        {
            say!(
                "  node: unlocked through keyslot {} (NodeId {})",
                s.unlocked_with.unwrap_or(0),
                s.node_id.unwrap_or_default()
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    say!("  node: locked (unlock it in the console)");
}
