//! `pk-appliance [--config PATH]`: the appliance daemon. See the library docs.
//! `pk-appliance health [--config PATH] [--timeout SECONDS]`: whether the daemon of this
//! boot is healthy (`appliance::health`), for the image's health check of a new slot.
//! `pk-appliance update FILE|--status ...`: installs an update bundle, or shows both root
//! slots (`appliance::update`).
//! `pk-appliance data open|recover|enrol-recovery|status ...`: the encrypted data volume,
//! run as root by the image's units (`appliance::data_command`, over `appliance::data`).
//! `pk-appliance config show|get|set|unset|apply ...`: the owner's settings
//! (`appliance::config_command`, over `appliance::settings`).
//! `pk-appliance screen ...`: the box's status on its own screen (`appliance::screen`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use appliance::config::{Config, DEFAULT_PATH};

/// sysexits: a configuration error.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut args = std::env::args().skip(1).peekable();
    if args.next_if(|a| a == "update").is_some() {
        return appliance::update::main(args);
    }
    if args.next_if(|a| a == "data").is_some() {
        return appliance::data_command::main(args);
    }
    if args.next_if(|a| a == "config").is_some() {
        return appliance::config_command::main(args);
    }
    if args.next_if(|a| a == "screen").is_some() {
        return appliance::screen::main(args);
    }
    let mut path = PathBuf::from(DEFAULT_PATH);
    let health = args.next_if(|a| a == "health").is_some();
    let mut timeout_s: u64 = 240;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" if health => match args.next().and_then(|t| t.parse().ok()) {
                Some(t) => timeout_s = t,
                None => {
                    eprintln!("pk-appliance: --timeout needs a number of seconds");
                    return ExitCode::from(64);
                }
            },
            "--config" => match args.next() {
                Some(p) => path = PathBuf::from(p),
                None => {
                    eprintln!("pk-appliance: --config needs a path");
                    return ExitCode::from(64);
                }
            },
            "--help" | "-h" => {
                print_help();
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
    // The owner's settings over the file's defaults; settings that cannot be read leave
    // the file's values (and the console, to fix them) in place.
    let (config, settings) = appliance::settings::effective(config);
    if health {
        return health_check(&config, timeout_s);
    }
    daemon_main(&path, config, settings)
}

/// The daemon: journald logging, then [`run`] until it stops or restarts.
fn daemon_main(
    path: &std::path::Path,
    config: Config,
    settings: Result<appliance::settings::Settings, appliance::settings::SettingsError>,
) -> ExitCode {
    if let Err(e) = appliance::daemon::init_logging(&config.log) {
        eprintln!("pk-appliance: {}: log: {e}", path.display());
        return ExitCode::from(EX_CONFIG);
    }
    let settings = settings.unwrap_or_else(|e| {
        tracing::error!(
            event = "settings.unreadable",
            "{e}: running with the configuration file's values"
        );
        eprintln!("pk-appliance: {e}: running with the configuration file's values");
        appliance::settings::Settings::default()
    });
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
    match runtime.block_on(run(config, settings)) {
        Ok(appliance::daemon::Exit::Stopped) => ExitCode::SUCCESS,
        // systemd starts it again (RestartForceExitStatus= in its unit).
        Ok(appliance::daemon::Exit::Restart) => ExitCode::from(appliance::daemon::EXIT_RESTART),
        Err(e) => {
            tracing::error!(event = "appliance.failed", "{e}");
            eprintln!("pk-appliance: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `pk-appliance health`: whether this boot's daemon is healthy within `timeout_s`.
fn health_check(config: &Config, timeout_s: u64) -> ExitCode {
    let dir = std::path::Path::new(appliance::health::DEFAULT_RUNTIME_DIR);
    let timeout = std::time::Duration::from_secs(timeout_s);
    match appliance::health::check(config, dir, timeout) {
        Ok(words) => {
            println!("pk-appliance: healthy: {words}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pk-appliance: not healthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--help`: the daemon and its commands.
fn print_help() {
    println!(
        "pk-appliance [--config PATH]: the pk appliance daemon (default config {DEFAULT_PATH})\n\
         pk-appliance health [--config PATH] [--timeout SECONDS]: exit 0 once this boot's daemon is healthy\n\
         \x20 (its node answered and its console accepts connections), 1 if it is not within the time (default 240)\n\
         {}\n{}\n{}\n{}",
        appliance::update::HELP,
        appliance::data_command::HELP,
        appliance::config_command::HELP,
        appliance::screen::HELP
    );
}

async fn run(
    config: Config,
    settings: appliance::settings::Settings,
) -> Result<appliance::daemon::Exit, String> {
    appliance::daemon::run(config, settings, |started| {
        tracing::info!(
            event = "appliance.ready",
            "ready: console at {}",
            started.console_urls.join(" ")
        );
    })
    .await
}
