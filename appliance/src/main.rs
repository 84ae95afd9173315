//! `pk-appliance [--config PATH]`: the appliance daemon. See the library docs.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use appliance::config::{Config, DEFAULT_PATH};
use appliance::console::{self, Console, ConsoleConfig, FirstToken, tls};
use node::NodePath;

/// sysexits: a configuration error.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut args = std::env::args().skip(1);
    let mut path = PathBuf::from(DEFAULT_PATH);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => match args.next() {
                Some(p) => path = PathBuf::from(p),
                None => {
                    eprintln!("pk-appliance: --config needs a path");
                    return ExitCode::from(64);
                }
            },
            "--help" | "-h" => {
                println!(
                    "pk-appliance [--config PATH]: the pk appliance daemon (default config {DEFAULT_PATH})"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("pk-appliance: unknown argument {other:?} (try --help)");
                return ExitCode::from(64);
            }
        }
    }
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pk-appliance: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pk-appliance: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "appliance.failed", "{e}");
            eprintln!("pk-appliance: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The journal under systemd (structured fields), stderr otherwise.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry().with(journald).init();
        return;
    }
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(state);
}

async fn run(config: Config) -> Result<(), String> {
    for dir in [config.state_dir.clone(), config.console_dir()] {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let node = NodePath::new(config.node_dir());
    let identity = tls::load_or_create(
        &config.console_dir(),
        vec!["pk-appliance".into(), "localhost".into()],
    )
    .map_err(|e| format!("the console's certificate: {e}"))?;
    let fingerprint = identity.fingerprint();
    tracing::info!(event = "console.certificate", fingerprint = %fingerprint, "console certificate SHA-256 {fingerprint}");

    let first_token = match &config.tpm_tcti {
        Some(tcti) => FirstToken::Tpm(tcti.clone()),
        None => FirstToken::Passphrase,
    };
    let claimed = config.console_dir().join("admin.json").exists();
    let setup_code = (!claimed).then(console::new_setup_code);
    if let Some(code) = &setup_code {
        // The one-time code that claims the box: for whoever has the serial console or
        // the journal, and useless once setup is done.
        tracing::info!(
            event = "console.setup_code",
            "setup code: {}",
            code.as_str()
        );
        eprintln!("pk-appliance: setup code {}", code.as_str());
    }
    let console = Console::new(ConsoleConfig {
        node: node.clone(),
        dir: config.console_dir(),
        first_token,
        session_idle: Duration::from_secs(config.session_idle_s),
        fingerprint: fingerprint.clone(),
        setup_code,
    });

    let agent_config = node::agent::AgentConfig {
        node: node.clone(),
        tokens: node::tokens::TokenConfig {
            tcti: config.tpm_tcti.clone(),
            pkcs11_module: None,
            yubikey_events: None,
        },
        peer_listen: config.peer_listen,
        lan: config.lan.then_some(node::lan::Interfaces::Lan),
        github: node::provider::GitHubConfig::default(),
    };
    let agent = {
        let console = console.clone();
        let node = node.clone();
        tokio::spawn(async move {
            if !node.keyslots().exists() {
                console.node_created.notified().await;
            }
            let result = node::agent::run(agent_config, || {
                tracing::info!(event = "agent.ready", "the node's agent is serving");
            })
            .await;
            if let Err(e) = &result {
                tracing::error!(event = "agent.failed", error = %e, "the node's agent stopped");
            }
            result
        })
    };

    let listener = tokio::net::TcpListener::bind(config.console_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.console_listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("the console's address: {e}"))?;
    tracing::info!(event = "console.listening", address = %address, "console at https://{address}/");
    let app = console::router(console.clone());
    let server = tokio::spawn(async move { tls::serve(listener, &identity, app).await });

    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("console at https://{address}/")),
    ]);
    let watchdog = watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(event = "appliance.stopping", "stopping");
    server.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let client = node::client::Client::new(&node);
    let _ = client.call(&node::api::Request::Stop).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    let _ = Arc::strong_count(&console);
    Ok(())
}

/// Half the watchdog interval systemd asked for, if it asked.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(500)))
}
