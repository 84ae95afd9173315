//! `pk-appliance config`: the owner's settings ([`crate::settings`]) from the command
//! line, and `apply`, which the image's `pk-appliance.service` runs as root before each
//! start to hand the settings the system carries out to it: the NTP servers to
//! systemd-timesyncd (a drop-in under `/run`), the console's port and mDNS to the firewall
//! (the `console_tcp` and `lan_udp` sets of the image's nftables table).
//!
//! ```text
//! pk-appliance config show|get KEY|set KEY VALUE|unset KEY|apply [--config PATH]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use crate::config::{Config, DEFAULT_PATH};
use crate::settings::{self, Settings};

/// sysexits: a usage error.
const EX_USAGE: u8 = 64;
/// sysexits: a configuration error.
const EX_CONFIG: u8 = 78;

/// Where `apply` puts the NTP servers: a drop-in systemd-timesyncd reads after its own
/// configuration.
pub const TIMESYNCD_DROPIN: &str = "/run/systemd/timesyncd.conf.d/50-pk-appliance.conf";
/// The image's nftables table that `apply` fills.
const NFT_TABLE: &str = "inet pk_appliance";
/// mDNS's port, opened while `lan` is on.
const MDNS_PORT: u16 = 5353;

/// The command's help.
pub const HELP: &str = "\
pk-appliance config show [--config PATH]
  every setting, its value in effect, and whether the settings file sets it
pk-appliance config get KEY [--config PATH]
pk-appliance config set KEY VALUE [--config PATH]
  store a setting on the data partition (checked first: a refusal names the key); it
  takes effect when the appliance restarts (the console's Settings page, or
  systemctl restart pk-appliance)
pk-appliance config unset KEY [--config PATH]
  return a setting to the configuration file's default
pk-appliance config apply [--config PATH]
  (root, run by pk-appliance.service before each start) give the NTP servers to
  systemd-timesyncd and the console's port and mDNS to the firewall
Exit status: 0 done, 1 refused or failed, 64 usage error, 78 bad configuration.";

/// What the command line asks.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Show,
    Get(String),
    Set(String, String),
    Apply,
    Help,
}

fn parse(args: impl Iterator<Item = String>) -> Result<(Request, PathBuf), String> {
    let mut words = Vec::new();
    let mut config = PathBuf::from(DEFAULT_PATH);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => {
                config = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a path")?
            }
            "--help" | "-h" => return Ok((Request::Help, config)),
            _ => words.push(arg),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let request = match words.as_slice() {
        ["show"] => Request::Show,
        ["get", key] => Request::Get((*key).to_owned()),
        ["set", key, value] => Request::Set((*key).to_owned(), (*value).to_owned()),
        ["unset", key] => Request::Set((*key).to_owned(), String::new()),
        ["apply"] => Request::Apply,
        _ => {
            return Err(format!(
                "expected show, get KEY, set KEY VALUE, unset KEY or apply; got {words:?}"
            ));
        }
    };
    Ok((request, config))
}

/// `pk-appliance config ...`: the arguments after `config`.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let (request, path) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("pk-appliance config: {e} (try --help)");
            return ExitCode::from(EX_USAGE);
        }
    };
    if request == Request::Help {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pk-appliance config: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match run(request, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pk-appliance config: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(request: Request, config: Config) -> Result<(), String> {
    let state_dir = config.state_dir.clone();
    match request {
        Request::Show | Request::Get(_) => {
            let (effective, stored) = settings::effective(config);
            let stored = stored.map_err(|e| e.to_string())?;
            for entry in settings::entries(&effective, &stored) {
                match &request {
                    Request::Get(key) if key == entry.key => println!("{}", entry.value),
                    Request::Get(_) => {}
                    _ => println!(
                        "{} = {:?}{}",
                        entry.key,
                        entry.value,
                        if entry.set { "" } else { "  (default)" }
                    ),
                }
            }
            match request {
                Request::Get(key) if !settings::KEYS.iter().any(|k| k.name == key) => {
                    Err(settings::unknown_key(&key).to_string())
                }
                _ => Ok(()),
            }
        }
        Request::Set(key, value) => {
            let mut stored = Settings::load(&state_dir).map_err(|e| e.to_string())?;
            stored.set(&key, &value).map_err(|e| e.to_string())?;
            stored.save(&state_dir).map_err(|e| e.to_string())?;
            same_owner_as_dir(&settings::path(&state_dir), &state_dir)?;
            println!(
                "{key}: stored; it takes effect when the appliance restarts (systemctl restart pk-appliance)"
            );
            Ok(())
        }
        Request::Apply => apply(&settings::effective(config).0, Path::new(TIMESYNCD_DROPIN)),
        Request::Help => Ok(()),
    }
}

/// A settings file root wrote stays readable and writable by the daemon that owns the
/// state directory.
fn same_owner_as_dir(file: &Path, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if rustix::process::geteuid().is_root() {
        rustix::fs::chown(
            file,
            Some(rustix::process::Uid::from_raw(meta.uid())),
            Some(rustix::process::Gid::from_raw(meta.gid())),
        )
        .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

/// The drop-in that gives systemd-timesyncd `servers`; `None` for none (its own
/// configuration then holds).
pub fn timesyncd_dropin(servers: &[String]) -> Option<String> {
    (!servers.is_empty()).then(|| {
        format!(
            "# Written by pk-appliance config apply from the appliance's settings.\n[Time]\nNTP={}\n",
            servers.join(" ")
        )
    })
}

/// The nftables commands that open the console's port and, with `lan`, mDNS.
pub fn firewall_script(config: &Config) -> String {
    let mut script = format!(
        "flush set {NFT_TABLE} console_tcp\nadd element {NFT_TABLE} console_tcp {{ {} }}\nflush set {NFT_TABLE} lan_udp\n",
        config.console_listen.port()
    );
    if config.lan {
        script.push_str(&format!(
            "add element {NFT_TABLE} lan_udp {{ {MDNS_PORT} }}\n"
        ));
    }
    script
}

/// Hands the NTP servers to systemd-timesyncd (restarting it when they changed) and the
/// ports to the firewall.
fn apply(config: &Config, dropin: &Path) -> Result<(), String> {
    let wanted = timesyncd_dropin(&config.ntp_servers);
    let present = std::fs::read_to_string(dropin).ok();
    if wanted != present {
        match &wanted {
            Some(text) => {
                if let Some(dir) = dropin.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                std::fs::write(dropin, text).map_err(|e| format!("{}: {e}", dropin.display()))?;
            }
            None => {
                std::fs::remove_file(dropin).map_err(|e| format!("{}: {e}", dropin.display()))?
            }
        }
        let restarted = Command::new("systemctl")
            .args(["try-restart", "--no-block", "systemd-timesyncd.service"])
            .status();
        if !restarted.is_ok_and(|s| s.success()) {
            eprintln!(
                "pk-appliance config: systemd-timesyncd was not restarted: the NTP servers apply at its next start"
            );
        }
        println!(
            "NTP servers: {}",
            if config.ntp_servers.is_empty() {
                "timesyncd's own".to_owned()
            } else {
                config.ntp_servers.join(" ")
            }
        );
    }
    let mut nft = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no nftables here (nft not found): the firewall is left alone");
            return Ok(());
        }
        Err(e) => return Err(format!("nft: {e}")),
    };
    let script = firewall_script(config);
    if let Some(mut stdin) = nft.stdin.take() {
        std::io::Write::write_all(&mut stdin, script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let status = nft.wait().map_err(|e| format!("nft: {e}"))?;
    if !status.success() {
        return Err(format!(
            "nft refused the firewall's ports ({status}): is the image's {NFT_TABLE} table loaded?"
        ));
    }
    println!(
        "firewall: console on TCP {}, mDNS {}",
        config.console_listen.port(),
        if config.lan { "open" } else { "closed" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = String> {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_command_line_reads_as_documented() {
        let (request, path) = parse(args("set lan true --config /tmp/c.toml")).unwrap();
        assert_eq!(request, Request::Set("lan".into(), "true".into()));
        assert_eq!(path, Path::new("/tmp/c.toml"));
        assert_eq!(
            parse(args("unset lan")).unwrap().0,
            Request::Set("lan".into(), String::new())
        );
        assert_eq!(parse(args("show")).unwrap().0, Request::Show);
        assert!(parse(args("set lan")).is_err());
        assert!(parse(args("frobnicate")).is_err());
    }

    #[test]
    fn the_system_gets_what_the_settings_say() {
        assert_eq!(timesyncd_dropin(&[]), None);
        let text = timesyncd_dropin(&["10.0.2.2".into(), "pool.example.org".into()]).unwrap();
        assert!(
            text.contains("[Time]\nNTP=10.0.2.2 pool.example.org\n"),
            "{text}"
        );
        let mut config = Config::default();
        config.console_listen.set_port(9443);
        let script = firewall_script(&config);
        assert!(
            script.contains("add element inet pk_appliance console_tcp { 9443 }"),
            "{script}"
        );
        assert!(!script.contains("5353"), "{script}");
        config.lan = true;
        assert!(firewall_script(&config).contains("lan_udp { 5353 }"));
    }

    #[test]
    fn set_stores_checked_values_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: dir.path().join("state"),
            ..Config::default()
        };
        run(
            Request::Set("ntp_servers".into(), "10.0.2.2".into()),
            config.clone(),
        )
        .unwrap();
        let err = run(
            Request::Set("console_port".into(), "22".into()),
            config.clone(),
        )
        .unwrap_err();
        assert!(err.starts_with("console_port:"), "{err}");
        let stored = Settings::load(&config.state_dir).unwrap();
        assert_eq!(stored.ntp_servers, Some(vec!["10.0.2.2".to_owned()]));
        assert_eq!(
            stored.console_port, None,
            "the refused value changed nothing"
        );
        let err = run(Request::Get("nope".into()), config).unwrap_err();
        assert!(err.contains("no such setting"), "{err}");
    }
}
