//! The daemon's life: state directories, the console's certificate, the setup code, the
//! node's agent (started once the node exists), the console server, systemd
//! notifications, and a graceful stop on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use node::NodePath;

use crate::config::Config;
use crate::console::{self, Console, ConsoleConfig, FirstToken, SettingsPlace, tls};
use crate::settings::Settings;

/// How a run of the daemon ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped (SIGTERM, Ctrl-C, or the caller's `stop`).
    Stopped,
    /// The admin asked for a restart, to apply changed settings: start again.
    Restart,
}

/// The exit status with which `pk-appliance` asks systemd to start it again
/// (`RestartForceExitStatus=` in its unit): sysexits' EX_TEMPFAIL.
pub const EXIT_RESTART: u8 = 75;

/// What a started daemon tells its caller.
#[derive(Clone, Debug)]
pub struct Started {
    /// Where a browser reaches the console: the bound address, or with every address
    /// bound, this machine's own (loopback and IPv6 link-local ones left out).
    pub console_urls: Vec<String>,
    /// The console certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The one-time setup code, while the box is unclaimed.
    pub setup_code: Option<String>,
}

pub(crate) fn notify(state: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(state);
}

/// Runs the daemon with `config` (the owner's `settings` already over it) until SIGTERM,
/// Ctrl-C or a restart the admin asked for; `ready` is called once the console accepts
/// connections.
pub async fn run(
    config: Config,
    settings: Settings,
    ready: impl FnOnce(&Started),
) -> Result<Exit, String> {
    run_until(config, settings, ready, std::future::pending()).await
}

/// [`run`], stopping also when `stop` resolves.
pub async fn run_until(
    config: Config,
    settings: Settings,
    ready: impl FnOnce(&Started),
    stop: impl std::future::Future<Output = ()>,
) -> Result<Exit, String> {
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

    let tpm_tcti = tpm_tcti(&config);
    let first_token = first_token(&config, &node, tpm_tcti.as_deref())?;
    let tokens = token_config(&config, tpm_tcti);
    let console_config =
        console_config(&config, settings, &node, first_token, &tokens, &fingerprint);
    let setup_shown = console_config
        .setup_code
        .as_ref()
        .map(|c| c.as_str().to_owned());
    let console = Console::new(console_config);
    let agent = spawn_agent(&config, &node, tokens, &console);

    let (server, bound, urls_list) = serve_console(&config, &console, identity).await?;
    let screen = spawn_screen(
        &console,
        &node,
        bound,
        &fingerprint,
        config.time_sync_flag.clone(),
    );
    let urls = urls_list.join(" ");

    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("console at {urls}")),
    ]);
    ready(&Started {
        console_urls: urls_list,
        fingerprint: fingerprint.clone(),
        setup_code: setup_shown,
    });
    let health = spawn_boot_checks(&node, &console);
    let watchdog = watchdog_interval().map(|every| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });
    // What runs beside the console and stops with it.
    let mut beside = vec![server.abort_handle(), health.abort_handle()];
    beside.extend(screen.iter().chain(&watchdog).map(|t| t.abort_handle()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut restart = console.restart.subscribe();
    let exit = tokio::select! {
        _ = term.recv() => Exit::Stopped,
        _ = tokio::signal::ctrl_c() => Exit::Stopped,
        _ = stop => Exit::Stopped,
        _ = restart.wait_for(|asked| *asked) => Exit::Restart,
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(event = "appliance.stopping", "stopping");
    beside.iter().for_each(tokio::task::AbortHandle::abort);
    stop_agent(&node, agent).await;
    Ok(exit)
}

/// The console's configuration, from the daemon's.
fn console_config(
    config: &Config,
    settings: Settings,
    node: &NodePath,
    first_token: FirstToken,
    tokens: &node::tokens::TokenConfig,
    fingerprint: &str,
) -> ConsoleConfig {
    ConsoleConfig {
        first_token,
        tokens: tokens.clone(),
        lan: config.lan,
        node: node.clone(),
        dir: config.console_dir(),
        session_idle: Duration::from_secs(config.session_idle_s),
        fingerprint: fingerprint.to_owned(),
        setup_code: setup_code(config),
        update_socket: config.update_socket.clone(),
        data_enrol_socket: config.data_enrol_socket.clone(),
        time_sync_flag: config.time_sync_flag.clone(),
        settings: SettingsPlace {
            state_dir: config.state_dir.clone(),
            running: config.clone(),
            started_with: settings,
        },
    }
}

/// What each start checks about this boot: the health record for the check of a newly
/// installed slot (`crate::health`), and an update in the other slot that did not come up
/// healthy, logged once.
fn spawn_boot_checks(node: &NodePath, console: &Arc<Console>) -> tokio::task::JoinHandle<()> {
    let (node, console) = (node.clone(), console.clone());
    tokio::spawn(async move {
        tokio::join!(
            crate::health::record(node),
            console::installer::check_at_start(&console)
        );
    })
}

/// Serves the console on its configured address; returns the server's task and the URLs
/// a browser reaches it at (logged, and printed with the certificate's fingerprint).
async fn serve_console(
    config: &Config,
    console: &Arc<Console>,
    identity: tls::Identity,
) -> Result<
    (
        tokio::task::JoinHandle<std::io::Result<()>>,
        std::net::SocketAddr,
        Vec<String>,
    ),
    String,
> {
    let listener = tokio::net::TcpListener::bind(config.console_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.console_listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("the console's address: {e}"))?;
    let urls_list = crate::screen::console_urls(address);
    let urls = urls_list.join(" ");
    let fingerprint = identity.fingerprint();
    tracing::info!(event = "console.listening", address = %address, "console at {urls}");
    // The serial console (stderr under the unit) sees where to go and what to check.
    eprintln!("pk-appliance: console at {urls} (certificate SHA-256 {fingerprint})");
    let app = console::router(console.clone());
    let server = tokio::spawn(async move { tls::serve(listener, &identity, app).await });
    Ok((server, address, urls_list))
}

/// Keeps the screen's status file ([`crate::screen`]) current while the daemon runs:
/// every few seconds, what a person at the box needs. Only under systemd (in its runtime
/// directory).
fn spawn_screen(
    console: &Arc<Console>,
    node: &NodePath,
    bound: std::net::SocketAddr,
    fingerprint: &str,
    time_sync_flag: Option<std::path::PathBuf>,
) -> Option<tokio::task::JoinHandle<()>> {
    let dir = crate::screen::runtime_dir()?;
    let (console, node, fingerprint) = (console.clone(), node.clone(), fingerprint.to_owned());
    Some(tokio::spawn(async move {
        let client = node::client::Client::new(&node);
        let mut shown = None;
        loop {
            let state = if !node.keyslots().exists() {
                "unclaimed".to_owned()
            } else {
                match client.call(node::api::agent::Status).await {
                    Ok(s) => format!("{:?}", s.state).to_lowercase(),
                    Err(_) => "starting".to_owned(),
                }
            };
            let status = crate::screen::Status {
                state,
                console_urls: crate::screen::console_urls(bound),
                fingerprint: fingerprint.clone(),
                setup_code: console.setup_code_now(),
                clock_synchronized: time_sync_flag.as_deref().map(std::path::Path::exists),
                reason: None,
            };
            if shown.as_ref() != Some(&status) {
                if let Err(e) = crate::screen::write(&dir, &status) {
                    tracing::warn!(event = "screen.unwritten", error = %e, "cannot write the screen's status");
                }
                shown = Some(status);
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }))
}

/// How setup makes the first keyslot: with a TPM, bound to `tpm_pcrs` and, when the PCR
/// signing key is there (and the node not made yet), to PCR 11 values it signs.
fn first_token(config: &Config, node: &NodePath, tcti: Option<&str>) -> Result<FirstToken, String> {
    let Some(tcti) = tcti else {
        return Ok(FirstToken::Passphrase);
    };
    let signed_pcrs = match &config.tpm_pcr_public_key {
        Some(path) if path.exists() && !node.keyslots().exists() => Some(signed_pcr_policy(path)?),
        _ => None,
    };
    Ok(FirstToken::Tpm {
        tcti: tcti.to_owned(),
        pcrs: config.tpm_pcrs.clone(),
        signed_pcrs,
    })
}

/// The signed PCR policy of the image's PCR-signing public key at `path`, over PCR 11
/// (shared by the node's first TPM keyslot and the data volume's TPM slot).
pub(crate) fn signed_pcr_policy(
    path: &std::path::Path,
) -> Result<hsm::tpm::SignedPcrPolicy, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("tpm_pcr_public_key {}: {e}", path.display()))?;
    let pcrs = hsm::tpm::PcrPolicy {
        bank: hsm::tpm::PcrBank::Sha256,
        pcrs: hsm::tpm::DEFAULT_SIGNED_PCRS.to_vec(),
    };
    hsm::tpm::SignedPcrPolicy::from_pem(&pem, pcrs)
        .map_err(|e| format!("tpm_pcr_public_key {}: {e}", path.display()))
}

/// This machine's tokens: the hardware drivers, the TPM and the PKCS#11 module.
fn token_config(config: &Config, tcti: Option<String>) -> node::tokens::TokenConfig {
    node::tokens::TokenConfig {
        drivers: Some(std::sync::Arc::new(hsm::Hardware)),
        tcti,
        tpm_pcr_signature: Some(config.tpm_pcr_signature.clone()),
        pkcs11_module: config.pkcs11_module.clone(),
        yubikey_events: None,
    }
}

/// The TPM to use: the configured TCTI, or without one the kernel's TPM resource manager
/// if there is one.
pub(crate) fn tpm_tcti(config: &Config) -> Option<String> {
    config.tpm_tcti.clone().or_else(|| {
        std::path::Path::new("/dev/tpmrm0")
            .exists()
            .then(|| "device:/dev/tpmrm0".to_owned())
    })
}

/// A new one-time setup code while the box is unclaimed, logged and printed.
fn setup_code(config: &Config) -> Option<zeroize::Zeroizing<String>> {
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
    setup_code
}

/// Starts the node's agent in this process: at once if the node exists, else once the
/// console has created it.
fn spawn_agent(
    config: &Config,
    node: &NodePath,
    tokens: node::tokens::TokenConfig,
    console: &Arc<Console>,
) -> tokio::task::JoinHandle<Result<(), node::agent::AgentError>> {
    let agent_config = node::agent::AgentConfig {
        node: node.clone(),
        tokens: node::tokens::TokenConfig {
            // YubiKey touch prompts reach the console's unlock page.
            yubikey_events: Some(console.yubikey_events()),
            ..tokens
        },
        peer_listen: config.peer_listen,
        lan: config.lan.then_some(node::lan::Interfaces::Lan),
        github: node::provider::GitHubConfig {
            client_id: config
                .github_client_id
                .clone()
                .unwrap_or_else(|| node::provider::GitHubConfig::default().client_id),
            ..Default::default()
        },
    };
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
}

/// Asks the agent to stop and gives it 10 s; an agent still waiting for setup is
/// aborted.
async fn stop_agent(
    node: &NodePath,
    agent: tokio::task::JoinHandle<Result<(), node::agent::AgentError>>,
) {
    let client = node::client::Client::new(node);
    let _ = client.call(node::api::agent::Stop).await;
    if !node.keyslots().exists() {
        // Never claimed: the agent is still waiting for setup.
        agent.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
}

/// Half the watchdog interval systemd asked for, if it asked.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(500)))
}

/// The journal under systemd (structured fields), stderr otherwise; in both, what the
/// configuration's `log` filter lets through, the node library's events (`pk::agent`,
/// `pk::peer`, `pk::sync`, `pk::notify`) included. The default, INFO, keeps out the
/// libraries' DEBUG and TRACE events (one per HTTP/2 frame) that would flood the journal.
pub fn init_logging(filter: &str) -> Result<(), node::logging::BadFilter> {
    use tracing_subscriber::prelude::*;
    let filter = node::logging::filter(filter)?;
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(journald.with_filter(filter))
            .init();
        return Ok(());
    }
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a panic is a test failure
mod tests {
    use crate::screen::console_urls;

    #[test]
    fn a_specific_address_is_the_url() {
        assert_eq!(
            console_urls("127.0.0.1:8443".parse().unwrap()),
            ["https://127.0.0.1:8443/"]
        );
        assert_eq!(
            console_urls("[::1]:9443".parse().unwrap()),
            ["https://[::1]:9443/"]
        );
    }

    #[test]
    fn every_address_names_this_machines_own_but_loopback() {
        for url in console_urls("0.0.0.0:8443".parse().unwrap()) {
            let host = url
                .strip_prefix("https://")
                .and_then(|u| u.strip_suffix(":8443/"))
                .unwrap_or_else(|| panic!("{url}"));
            let ip: std::net::Ipv4Addr = host.parse().unwrap_or_else(|_| panic!("{url}"));
            assert!(!ip.is_loopback(), "{url}");
        }
        for url in console_urls("[::]:8443".parse().unwrap()) {
            assert!(
                !url.contains("127.0.0.1") && !url.contains("[::1]"),
                "{url}"
            );
            assert!(!url.contains("[fe80:"), "link-local cannot be a URL: {url}");
        }
    }
}
