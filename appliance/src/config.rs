//! The daemon's configuration: `/etc/pk-appliance/config.toml` (the path can be given
//! with `--config`). Every key has a secure default; an unknown key, or a value of the
//! wrong kind, is an error that names the key and its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/pk-appliance/config.toml";

/// The configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the node and the console keep their state.
    pub state_dir: PathBuf,
    /// The admin console's HTTPS address.
    pub console_listen: SocketAddr,
    /// The peer endpoint's UDP address (QUIC), or `"off"`.
    #[serde(deserialize_with = "address_or_off")]
    pub peer_listen: Option<SocketAddr>,
    /// Advertise the node on the LAN over mDNS.
    pub lan: bool,
    /// The TPM (TCTI), e.g. `device:/dev/tpmrm0`; none: no TPM.
    pub tpm_tcti: Option<String>,
    /// The PCRs (SHA-256 bank) the first TPM keyslot is bound to at setup, e.g.
    /// `"0,4,7,11"`: it then unlocks by itself only while the boot chain is unchanged.
    /// None: not bound to PCRs (the TPM alone opens it).
    #[serde(deserialize_with = "pcr_list")]
    pub tpm_pcrs: Option<String>,
    /// The public key (PEM) whose signatures of PCR 11 (`systemd-measure sign`, in each
    /// UKI's `.pcrsig`) the first TPM keyslot accepts, e.g.
    /// `/usr/share/pk-appliance/tpm2-pcr-public-key.pem`: when set and the file exists at
    /// setup, the keyslot opens while PCR 11 holds a value this key signed (and the
    /// `tpm_pcrs` hold their setup values), so a signed update keeps it working. None: no
    /// signed policy.
    pub tpm_pcr_public_key: Option<PathBuf>,
    /// Where the booted UKI's PCR signatures are (systemd's `tpm2-pcr-signature.json`):
    /// what a TPM keyslot with a signed policy unlocks with.
    pub tpm_pcr_signature: PathBuf,
    /// The PKCS#11 module for PKCS#11 keyslots, e.g. `/usr/lib/softhsm/libsofthsm2.so`:
    /// the console enrols PKCS#11 keyslots with it, and unlocking uses it instead of the
    /// module a slot recorded at enrolment. None: the console cannot enrol PKCS#11
    /// keyslots; existing ones open through the module they recorded.
    pub pkcs11_module: Option<PathBuf>,
    /// Idle time after which a console session ends, in seconds.
    pub session_idle_s: u64,
    /// What goes to the journal: a level (`error`, `warn`, `info`, `debug`, `trace`,
    /// `off`) or `RUST_LOG`-style directives such as `warn,pk::sync=debug`.
    #[serde(deserialize_with = "log_filter")]
    pub log: String,
    /// The update installer's socket (`pk-update.socket`): where the console and
    /// `pk-appliance update` send update bundles. Missing (a laptop, a development box):
    /// the console says updates are not available here.
    pub update_socket: PathBuf,
    /// Where setup hands the new recovery code to be added to the encrypted data volume as
    /// a slot (the image's `pk-data-enrol.socket`, which runs `pk-appliance data
    /// enrol-recovery` as root). None (a laptop, a development box): no data volume.
    pub data_enrol_socket: Option<PathBuf>,
    /// The NTP servers (host names or addresses) that `pk-appliance config apply` gives
    /// systemd-timesyncd; empty: the servers of timesyncd's own configuration.
    #[serde(deserialize_with = "ntp_servers")]
    pub ntp_servers: Vec<String>,
    /// The GitHub OAuth app's client id for identity claims; none: the project's.
    pub github_client_id: Option<String>,
    /// The file that says the clock is synchronised (systemd-timesyncd's
    /// `/run/systemd/timesync/synchronized`): while it is missing the console warns that
    /// times may be wrong. None (a laptop, a development box): no warning.
    pub time_sync_flag: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/pk-appliance"),
            console_listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            peer_listen: Some(SocketAddr::from(([0, 0, 0, 0], 1314))),
            lan: false,
            tpm_tcti: None,
            tpm_pcrs: None,
            tpm_pcr_public_key: None,
            tpm_pcr_signature: PathBuf::from(hsm::tpm::DEFAULT_PCR_SIGNATURE),
            pkcs11_module: None,
            session_idle_s: 15 * 60,
            log: node::logging::DEFAULT_FILTER.to_owned(),
            update_socket: PathBuf::from(pk_update::SOCKET_PATH),
            data_enrol_socket: None,
            ntp_servers: Vec::new(),
            github_client_id: None,
            time_sync_flag: None,
        }
    }
}

fn pcr_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    hsm::tpm::PcrPolicy::parse_list(hsm::tpm::PcrBank::Sha256, &text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a PCR list such as \"0,4,7,11\": {e}"
        ))
    })?;
    Ok(Some(text))
}

fn log_filter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    node::logging::filter(&text).map_err(serde::de::Error::custom)?;
    Ok(text)
}

fn ntp_servers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let servers = Vec::<String>::deserialize(d)?;
    check_ntp_servers(&servers).map_err(serde::de::Error::custom)?;
    Ok(servers)
}

/// The most NTP servers a box is given.
const MAX_NTP_SERVERS: usize = 8;

/// Whether `servers` is a short list of host names and IP addresses.
pub(crate) fn check_ntp_servers(servers: &[String]) -> Result<(), String> {
    if servers.len() > MAX_NTP_SERVERS {
        return Err(format!("at most {MAX_NTP_SERVERS} servers"));
    }
    for server in servers {
        let host_name = !server.is_empty()
            && server.len() <= 253
            && server.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !host_name && server.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("{server:?} is not a host name or an IP address"));
        }
    }
    Ok(())
}

fn address_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address such as \"0.0.0.0:1314\", or \"off\""
        ))
    })
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key and the line.
        message: String,
    },
}

impl Config {
    /// Reads the configuration at `path`; a missing file at the default path means the
    /// defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text).map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            }),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses configuration text; the error names the key and the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        if config.session_idle_s < 60 {
            return Err("session_idle_s: at least 60 seconds".into());
        }
        Ok(config)
    }

    /// The node's data directory.
    pub fn node_dir(&self) -> PathBuf {
        self.state_dir.join("node")
    }

    /// The console's own state directory (its TLS key, the admin account).
    pub fn console_dir(&self) -> PathBuf {
        self.state_dir.join("console")
    }
}

/// A TOML error as `line N: what`, for messages that name the key and its line.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let message = e.message().trim().to_owned();
    match line {
        Some(line) => format!("line {line}: {message}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_and_mistakes_name_the_key_and_line() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let config = Config::parse(
            "state_dir = \"/tmp/x\"\nconsole_listen = \"127.0.0.1:9443\"\nlan = true\n",
        )
        .unwrap();
        assert_eq!(config.console_listen.port(), 9443);
        assert!(config.lan);

        let err = Config::parse("lan = true\nconsole_port = 1\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("console_port"),
            "{err}"
        );
        let err = Config::parse("state_dir = \"/x\"\nlan = \"yes\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("console_listen = \"not an address\"\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert_eq!(
            Config::parse("tpm_pcrs = \"0,4,7,11\"\n")
                .unwrap()
                .tpm_pcrs
                .as_deref(),
            Some("0,4,7,11")
        );
        let err = Config::parse("lan = false\ntpm_pcrs = \"0,99\"\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("PCR"), "{err}");
        assert_eq!(
            Config::default().tpm_pcr_signature,
            Path::new("/run/pk-boot/tpm2-pcr-signature.json")
        );
        let signed = Config::parse(
            "tpm_pcrs = \"0,7\"\ntpm_pcr_public_key = \"/usr/share/pk-appliance/tpm2-pcr-public-key.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            signed.tpm_pcr_public_key.as_deref(),
            Some(Path::new("/usr/share/pk-appliance/tpm2-pcr-public-key.pem"))
        );
        assert!(
            Config::parse("session_idle_s = 5\n")
                .unwrap_err()
                .contains("session_idle_s")
        );
        assert_eq!(Config::default().log, "info");
        assert_eq!(
            Config::parse("log = \"warn,pk::sync=debug\"\n")
                .unwrap()
                .log,
            "warn,pk::sync=debug"
        );
        assert_eq!(
            Config::default().update_socket,
            Path::new("/run/pk-update.sock")
        );
        assert_eq!(
            Config::parse("update_socket = \"/tmp/u.sock\"\n")
                .unwrap()
                .update_socket,
            Path::new("/tmp/u.sock")
        );
        let err = Config::parse("lan = false\nlog = \"pk=loud\"\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("not a log filter"),
            "{err}"
        );
    }
}
