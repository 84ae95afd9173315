//! The settings an owner changes after flashing, kept on the data partition
//! (`<state_dir>/settings.toml`) over the defaults of the read-only configuration file
//! ([`crate::config`]). The console's Settings page and `pk-appliance config set` change
//! them; each value is checked before it is stored, and a refusal names the key. They
//! take effect when the appliance starts again (the console offers the restart), and the
//! ones the system applies (NTP servers, the console port in the firewall) through
//! `pk-appliance config apply`, which the image runs as root whenever the file changes.
//!
//! An update never touches them: they live on the data partition, not in a root slot.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The settings file's name in the state directory.
pub const FILE: &str = "settings.toml";

/// The longest value accepted for any key (the file stays small whatever is sent).
const MAX_VALUE: usize = 1024;

/// The settings stored on the data partition; a key left out keeps the configuration
/// file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Advertise the node on the LAN over mDNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lan: Option<bool>,
    /// The console's TCP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_port: Option<u16>,
    /// The PCRs a new TPM keyslot is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm_pcrs: Option<String>,
    /// The PKCS#11 module for PKCS#11 keyslots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs11_module: Option<PathBuf>,
    /// The NTP servers, in order of preference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntp_servers: Option<Vec<String>>,
    /// The GitHub OAuth app's client id, for identity claims.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_client_id: Option<String>,
    /// What goes to the journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Idle time after which a console session ends, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_idle_s: Option<u64>,
}

/// A key the owner may set: its name and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The key, as in the file and on the command line.
    pub name: &'static str,
    /// What it does and what it takes.
    pub help: &'static str,
}

/// Every key, in the order the console and `config show` list them.
pub const KEYS: &[Key] = &[
    Key {
        name: "lan",
        help: "advertise the node on the LAN over mDNS: true or false",
    },
    Key {
        name: "console_port",
        help: "the console's TCP port, 1024 to 65535 (the firewall follows)",
    },
    Key {
        name: "ntp_servers",
        help: "NTP servers, host names or addresses separated by spaces or commas; empty: the image's default servers",
    },
    Key {
        name: "tpm_pcrs",
        help: "the PCRs a new TPM keyslot is bound to, such as 0,7,12; empty: none",
    },
    Key {
        name: "pkcs11_module",
        help: "the PKCS#11 module (an absolute path to a .so) for PKCS#11 keyslots",
    },
    Key {
        name: "github_client_id",
        help: "the GitHub OAuth app's client id, for identity claims",
    },
    Key {
        name: "log",
        help: "what goes to the journal: error, warn, info, debug, or directives such as warn,pk::sync=debug",
    },
    Key {
        name: "session_idle_s",
        help: "idle seconds after which a console session ends, 60 to 86400",
    },
];

/// A value refused for a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingError {
    /// The key.
    pub key: String,
    /// Why the value was refused.
    pub message: String,
}

fn refuse(key: &str, message: impl Into<String>) -> SettingError {
    SettingError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The refusal of a key that is not a setting: it lists the settings.
pub fn unknown_key(key: &str) -> SettingError {
    let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    refuse(
        key,
        format!("no such setting (the settings: {})", known.join(", ")),
    )
}

/// Why the settings file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds what no setting accepts (it was edited by hand, or damaged).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
}

/// The settings file of a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl Settings {
    /// The settings stored in `state_dir`; none stored: all defaults.
    pub fn load(state_dir: &Path) -> Result<Settings, SettingsError> {
        let path = path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(source) => return Err(SettingsError::Io { path, source }),
        };
        let invalid = |message: String| SettingsError::Invalid {
            path: path.clone(),
            message,
        };
        let settings: Settings =
            toml::from_str(&text).map_err(|e| invalid(crate::config::toml_error(&text, &e)))?;
        settings.check().map_err(|e| invalid(e.to_string()))?;
        Ok(settings)
    }

    /// Writes the settings to `state_dir`, replacing the file whole: a crash leaves the
    /// old file or the new one, and a returned `Ok` survives power loss.
    pub fn save(&self, state_dir: &Path) -> Result<(), SettingsError> {
        let path = path(state_dir);
        let io = |source| SettingsError::Io {
            path: path.clone(),
            source,
        };
        let text = format!(
            "# pk appliance settings, changed with the console or `pk-appliance config set`.\n{}",
            toml::to_string(self).map_err(|e| io(std::io::Error::other(e)))?
        );
        crate::files::write_private(&path, text.as_bytes()).map_err(io)
    }

    /// Sets `key` from its text form (as typed in the console or on the command line); an
    /// empty value returns the key to the configuration file's default.
    /// A refused value leaves every setting as it was.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let mut next = self.clone();
        next.assign(key, value)?;
        next.check_key(key)?;
        *self = next;
        Ok(())
    }

    fn assign(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        if value.len() > MAX_VALUE {
            return Err(refuse(key, format!("longer than {MAX_VALUE} characters")));
        }
        let value = value.trim();
        let empty = value.is_empty();
        match key {
            "lan" => {
                self.lan = (!empty).then(|| parse_bool(key, value)).transpose()?;
            }
            "console_port" => {
                self.console_port = (!empty).then(|| parse_port(key, value)).transpose()?;
            }
            "ntp_servers" => {
                let servers: Vec<String> = value
                    .split([',', ' ', '\t', '\n'])
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                self.ntp_servers = (!servers.is_empty()).then_some(servers);
            }
            "tpm_pcrs" => self.tpm_pcrs = (!empty).then(|| value.to_owned()),
            "pkcs11_module" => self.pkcs11_module = (!empty).then(|| PathBuf::from(value)),
            "github_client_id" => self.github_client_id = (!empty).then(|| value.to_owned()),
            "log" => self.log = (!empty).then(|| value.to_owned()),
            "session_idle_s" => {
                self.session_idle_s = (!empty)
                    .then(|| {
                        value.parse().map_err(|_| {
                            refuse(key, format!("{value:?} is not a number of seconds"))
                        })
                    })
                    .transpose()?;
            }
            _ => return Err(unknown_key(key)),
        }
        Ok(())
    }

    /// Whether every stored value is one `set` accepts.
    pub fn check(&self) -> Result<(), SettingError> {
        KEYS.iter().try_for_each(|k| self.check_key(k.name))
    }

    fn check_key(&self, key: &str) -> Result<(), SettingError> {
        match key {
            "console_port" => match self.console_port {
                Some(port) if port < 1024 => Err(refuse(
                    key,
                    format!(
                        "{port} is below 1024: the appliance runs without the privilege to serve there"
                    ),
                )),
                _ => Ok(()),
            },
            "ntp_servers" => self.ntp_servers.as_deref().map_or(Ok(()), |servers| {
                crate::config::check_ntp_servers(servers).map_err(|e| refuse(key, e))
            }),
            "tpm_pcrs" => self.tpm_pcrs.as_deref().map_or(Ok(()), |text| {
                hsm::tpm::PcrPolicy::parse_list(hsm::tpm::PcrBank::Sha256, text)
                    .map(|_| ())
                    .map_err(|e| {
                        refuse(
                            key,
                            format!("{text:?} is not a PCR list such as 0,7,12: {e}"),
                        )
                    })
            }),
            "pkcs11_module" => self.pkcs11_module.as_deref().map_or(Ok(()), check_module),
            "github_client_id" => self.github_client_id.as_deref().map_or(Ok(()), |id| {
                let ok = id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if ok {
                    Ok(())
                } else {
                    Err(refuse(
                        key,
                        "at most 64 letters, digits, dots, dashes and underscores",
                    ))
                }
            }),
            "log" => self.log.as_deref().map_or(Ok(()), |text| {
                node::logging::filter(text)
                    .map(|_| ())
                    .map_err(|e| refuse(key, e.to_string()))
            }),
            "session_idle_s" => match self.session_idle_s {
                Some(s) if !(60..=86_400).contains(&s) => Err(refuse(
                    key,
                    format!("{s} is not between 60 and 86400 seconds"),
                )),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The stored value of `key` in its text form; `None` when the default holds.
    pub fn get(&self, key: &str) -> Option<String> {
        match key {
            "lan" => self.lan.map(|v| v.to_string()),
            "console_port" => self.console_port.map(|v| v.to_string()),
            "ntp_servers" => self.ntp_servers.as_ref().map(|v| v.join(" ")),
            "tpm_pcrs" => self.tpm_pcrs.clone(),
            "pkcs11_module" => self.pkcs11_module.as_ref().map(|p| p.display().to_string()),
            "github_client_id" => self.github_client_id.clone(),
            "log" => self.log.clone(),
            "session_idle_s" => self.session_idle_s.map(|v| v.to_string()),
            _ => None,
        }
    }

    /// `config` with these settings over it: what the appliance runs with.
    pub fn over(&self, mut config: Config) -> Config {
        if let Some(lan) = self.lan {
            config.lan = lan;
        }
        if let Some(port) = self.console_port {
            config.console_listen.set_port(port);
        }
        if let Some(pcrs) = &self.tpm_pcrs {
            config.tpm_pcrs = Some(pcrs.clone());
        }
        if let Some(module) = &self.pkcs11_module {
            config.pkcs11_module = Some(module.clone());
        }
        if let Some(servers) = &self.ntp_servers {
            config.ntp_servers = servers.clone();
        }
        if let Some(id) = &self.github_client_id {
            config.github_client_id = Some(id.clone());
        }
        if let Some(log) = &self.log {
            config.log = log.clone();
        }
        if let Some(s) = self.session_idle_s {
            config.session_idle_s = s;
        }
        config
    }
}

/// A key's value as the appliance runs with it, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The key.
    pub key: &'static str,
    /// What it does.
    pub help: &'static str,
    /// The value in effect, in text form (empty: none).
    pub value: String,
    /// True when the settings file sets it, false when it is the configuration file's.
    pub set: bool,
}

/// Every key's value in `config` (the settings already over it) and whether `settings`
/// set it.
pub fn entries(config: &Config, settings: &Settings) -> Vec<Entry> {
    KEYS.iter()
        .map(|k| Entry {
            key: k.name,
            help: k.help,
            value: config_value(config, k.name),
            set: settings.get(k.name).is_some(),
        })
        .collect()
}

fn config_value(config: &Config, key: &str) -> String {
    match key {
        "lan" => config.lan.to_string(),
        "console_port" => config.console_listen.port().to_string(),
        "ntp_servers" => config.ntp_servers.join(" "),
        "tpm_pcrs" => config.tpm_pcrs.clone().unwrap_or_default(),
        "pkcs11_module" => config
            .pkcs11_module
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        "github_client_id" => config
            .github_client_id
            .clone()
            .unwrap_or_else(|| node::provider::GitHubConfig::default().client_id),
        "log" => config.log.clone(),
        "session_idle_s" => config.session_idle_s.to_string(),
        _ => String::new(),
    }
}

/// The configuration file at `path` with the settings of its state directory over it.
/// Settings that cannot be read are reported beside the file's own configuration, which
/// then holds alone: a damaged settings file leaves the console reachable to fix it.
pub fn effective(config: Config) -> (Config, Result<Settings, SettingsError>) {
    match Settings::load(&config.state_dir) {
        Ok(settings) => (settings.over(config), Ok(settings)),
        Err(e) => (config, Err(e)),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, SettingError> {
    match value {
        "true" | "on" | "yes" => Ok(true),
        "false" | "off" | "no" => Ok(false),
        _ => Err(refuse(key, format!("{value:?} is not true or false"))),
    }
}

fn parse_port(key: &str, value: &str) -> Result<u16, SettingError> {
    value
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| refuse(key, format!("{value:?} is not a port number")))
}

fn check_module(module: &Path) -> Result<(), SettingError> {
    let key = "pkcs11_module";
    if !module.is_absolute() {
        return Err(refuse(
            key,
            format!("{:?} is not an absolute path", module.display().to_string()),
        ));
    }
    if !module.is_file() {
        return Err(refuse(
            key,
            format!("{} is not a file on this box", module.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_and_refusals_name_the_key() {
        let mut s = Settings::default();
        s.set("lan", "on").unwrap();
        s.set("console_port", "9443").unwrap();
        s.set("ntp_servers", "10.0.2.2, time.example.org").unwrap();
        s.set("session_idle_s", "600").unwrap();
        assert_eq!(s.lan, Some(true));
        assert_eq!(
            s.ntp_servers.as_deref(),
            Some(&["10.0.2.2".to_owned(), "time.example.org".to_owned()][..])
        );
        for (key, value, says) in [
            ("lan", "maybe", "not true or false"),
            ("console_port", "80", "below 1024"),
            ("console_port", "70000", "not a port"),
            ("ntp_servers", "bad_host!", "not a host name"),
            ("tpm_pcrs", "0,99", "PCR"),
            ("pkcs11_module", "libsofthsm2.so", "absolute"),
            ("pkcs11_module", "/nonexistent/lib.so", "not a file"),
            ("github_client_id", "a b", "letters"),
            ("log", "pk=loud", "log"),
            ("session_idle_s", "5", "between 60"),
            ("console_listen", "0.0.0.0:1", "no such setting"),
        ] {
            let before = s.clone();
            let err = s.set(key, value).unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.to_string().contains(says), "{key}={value}: {err}");
            // A refused value leaves every setting as it was.
            assert_eq!(s, before, "{key}={value}");
        }
        s.set("lan", "").unwrap();
        assert_eq!(s.lan, None, "an empty value returns to the default");
        assert!(s.set("log", &"x".repeat(2000)).is_err());
    }

    #[test]
    fn stored_settings_override_the_file_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let (same, loaded) = effective(config.clone());
        assert_eq!(same, config, "no settings file: the configuration alone");
        assert_eq!(loaded.unwrap(), Settings::default());

        let mut s = Settings::default();
        s.set("console_port", "9443").unwrap();
        s.set("log", "warn").unwrap();
        s.save(dir.path()).unwrap();
        let (effective_config, loaded) = effective(config.clone());
        assert_eq!(loaded.unwrap(), s);
        assert_eq!(effective_config.console_listen.port(), 9443);
        assert_eq!(effective_config.log, "warn");
        let shown = entries(&effective_config, &s);
        let port = shown.iter().find(|e| e.key == "console_port").unwrap();
        assert_eq!((port.value.as_str(), port.set), ("9443", true));
        let lan = shown.iter().find(|e| e.key == "lan").unwrap();
        assert_eq!((lan.value.as_str(), lan.set), ("false", false));

        // A file edited by hand into something no setting accepts: reported with the key,
        // and the configuration file holds alone.
        std::fs::write(path(dir.path()), "console_port = 22\n").unwrap();
        let (fallback, loaded) = effective(config.clone());
        assert_eq!(fallback, config);
        let err = loaded.unwrap_err().to_string();
        assert!(err.contains("console_port"), "{err}");
        std::fs::write(path(dir.path()), "console_prot = 9000\n").unwrap();
        let err = Settings::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("console_prot") && err.contains("line 1"),
            "{err}"
        );
    }
}
