//! The box's own screen: what a monitor on a PC or a Pi's HDMI shows on tty1, instead of
//! the kernel's messages (those stay on the serial console). The daemon, and the locked
//! data console before it, write a small status file in their runtime directory
//! ([`STATUS_FILE`]); `pk-appliance screen`, run on tty1 by the image's
//! `pk-appliance-screen.service`, draws it: the console's address or addresses, the
//! certificate's fingerprint, the setup code until the box is claimed, the lock state, a
//! warning while the clock is unsynchronised, and a QR code of the console's URL for a
//! phone.
//!
//! ```text
//! pk-appliance screen [--status FILE]... [--once]
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The status file's name in a runtime directory.
pub const STATUS_FILE: &str = "screen.json";

/// How often the screen looks at the status files again.
const REFRESH: Duration = Duration::from_secs(3);

/// The command's help.
pub const HELP: &str = "\
pk-appliance screen [--status FILE]... [--once]
  draw the box's status on this terminal (the image runs it on tty1): the console's
  address and QR code, the certificate's fingerprint, the setup code until claimed, the
  lock state; from the newest status FILE (default /run/pk-appliance/screen.json and
  /run/pk-data-gate/screen.json), again every 3 s (--once: one drawing)";

/// What the screen shows, as the daemon (or the locked data console) last wrote it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `starting`, `unclaimed`, `locked`, `unlocked` or `data_locked`.
    pub state: String,
    /// Where a browser reaches the console.
    pub console_urls: Vec<String>,
    /// The console certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The one-time setup code, while the box is unclaimed: shown to whoever is at the
    /// box, as on the serial console.
    pub setup_code: Option<String>,
    /// Whether the clock is synchronised; `None` where nothing says.
    pub clock_synchronized: Option<bool>,
    /// Why the data partition is locked (`data_locked`).
    pub reason: Option<String>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("state", &self.state)
            .field("console_urls", &self.console_urls)
            .field("fingerprint", &self.fingerprint)
            .field(
                "setup_code",
                &self.setup_code.as_ref().map(|_| "(redacted)"),
            )
            .field("clock_synchronized", &self.clock_synchronized)
            .field("reason", &self.reason)
            .finish()
    }
}

/// Writes `status` to `dir`'s status file, replacing it whole (mode 0600: the setup code
/// is for the person at the box; the screen's service reads it with
/// `CAP_DAC_READ_SEARCH`).
pub fn write(dir: &Path, status: &Status) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(status).map_err(std::io::Error::other)?;
    crate::files::write_private(&dir.join(STATUS_FILE), &bytes)
}

/// The runtime directory systemd gave this service (`RuntimeDirectory=`), if any.
pub fn runtime_dir() -> Option<PathBuf> {
    std::env::var_os("RUNTIME_DIRECTORY").map(PathBuf::from)
}

/// The console's URLs for a server bound to `bound`: the bound address, or with every
/// address bound, this machine's own addresses but loopback and IPv6 link-local ones (a
/// URL cannot name their interface). An unspecified IPv6 address also takes IPv4 (Linux's
/// dual stack). With no such address (no network yet), the bound address.
pub fn console_urls(bound: SocketAddr) -> Vec<String> {
    if !bound.ip().is_unspecified() {
        return vec![format!("https://{bound}/")];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|interface| interface.ip())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => bound.is_ipv6() && !v6.is_loopback() && !v6.is_unicast_link_local(),
        })
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return vec![format!("https://{bound}/")];
    }
    ips.into_iter()
        .map(|ip| format!("https://{}/", SocketAddr::new(ip, bound.port())))
        .collect()
}

/// A QR code of `text`, black on white on a terminal that draws white on black: two rows
/// of modules per line, with its quiet zone.
fn qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The text the screen shows for `status` (none: the appliance has not said anything yet).
pub fn render(status: Option<&Status>) -> String {
    let mut out = String::from("\n  pk appliance\n\n");
    let Some(status) = status else {
        out.push_str("  Starting...\n");
        return out;
    };
    let line = |out: &mut String, label: &str, value: &str| {
        out.push_str(&format!("  {label:<13} {value}\n"));
    };
    for (i, url) in status.console_urls.iter().enumerate() {
        line(&mut out, if i == 0 { "Console:" } else { "" }, url);
    }
    line(
        &mut out,
        "Certificate:",
        &format!("SHA-256 {}", status.fingerprint),
    );
    line(
        &mut out,
        "",
        "(your browser warns: check that it shows this fingerprint)",
    );
    let state = match status.state.as_str() {
        "unclaimed" => "not set up yet: open the console and enter the setup code".to_owned(),
        "locked" => "node locked: unlock it in the console".to_owned(),
        "unlocked" => "node unlocked".to_owned(),
        "data_locked" => format!(
            "data partition locked ({}): open the console and enter the recovery code",
            status
                .reason
                .as_deref()
                .unwrap_or("the TPM did not open it")
        ),
        _ => "starting".to_owned(),
    };
    line(&mut out, "State:", &state);
    if let Some(code) = &status.setup_code {
        line(&mut out, "Setup code:", code);
    }
    if status.clock_synchronized == Some(false) {
        line(&mut out, "Clock:", "not synchronised with network time yet");
    }
    if let Some(code) = status.console_urls.first().and_then(|url| qr(url)) {
        out.push('\n');
        for row in code.lines() {
            out.push_str("  ");
            out.push_str(row);
            out.push('\n');
        }
        out.push_str("  Scan to open the console.\n");
    }
    out
}

/// The newest readable status among `files`.
fn newest(files: &[PathBuf]) -> Option<Status> {
    files
        .iter()
        .filter_map(|f| {
            let modified = std::fs::metadata(f).and_then(|m| m.modified()).ok()?;
            let text = std::fs::read(f).ok()?;
            // A file is a few hundred bytes; one that is not the daemon's is ignored.
            let status: Status = serde_json::from_slice(&text).ok()?;
            Some((modified, status))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, status)| status)
}

/// `pk-appliance screen ...`: the arguments after `screen`.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let (mut files, mut once) = (Vec::new(), false);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--status" => match args.next() {
                Some(f) => files.push(PathBuf::from(f)),
                None => {
                    eprintln!("pk-appliance screen: --status needs a file");
                    return ExitCode::from(64);
                }
            },
            "--once" => once = true,
            "--help" | "-h" => {
                println!("{HELP}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("pk-appliance screen: unknown argument {other:?} (try --help)");
                return ExitCode::from(64);
            }
        }
    }
    if files.is_empty() {
        files = vec![
            PathBuf::from("/run/pk-appliance").join(STATUS_FILE),
            PathBuf::from("/run/pk-data-gate").join(STATUS_FILE),
        ];
    }
    let mut shown = None;
    loop {
        let text = render(newest(&files).as_ref());
        if shown.as_ref() != Some(&text) {
            // Clear the terminal, then draw from its top-left corner.
            print!("\x1b[2J\x1b[H{text}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            shown = Some(text);
        }
        if once {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(REFRESH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, code: Option<&str>) -> Status {
        Status {
            state: state.into(),
            console_urls: vec!["https://10.0.2.15:8443/".into()],
            fingerprint: "08:CD".into(),
            setup_code: code.map(str::to_owned),
            clock_synchronized: Some(false),
            reason: None,
        }
    }

    #[test]
    fn the_screen_names_the_console_the_code_and_the_state() {
        let text = render(Some(&status("unclaimed", Some("YUE6-HM98-CBX9"))));
        for expected in [
            "https://10.0.2.15:8443/",
            "SHA-256 08:CD",
            "YUE6-HM98-CBX9",
            "not set up yet",
            "not synchronised",
            "Scan to open the console.",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let claimed = render(Some(&status("unlocked", None)));
        assert!(!claimed.contains("Setup code"), "{claimed}");
        assert!(claimed.contains("node unlocked"));
        assert!(render(None).contains("Starting"));
        let debug = format!("{:?}", status("unclaimed", Some("YUE6-HM98-CBX9")));
        assert!(!debug.contains("YUE6"), "{debug}");
    }

    #[test]
    fn the_newest_status_file_wins_and_junk_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        write(&a, &status("data_locked", None)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write(&b, &status("unlocked", None)).unwrap();
        let files = [
            a.join(STATUS_FILE),
            b.join(STATUS_FILE),
            dir.path().join("none"),
        ];
        assert_eq!(newest(&files).unwrap().state, "unlocked");
        std::fs::write(b.join(STATUS_FILE), b"not json").unwrap();
        assert_eq!(newest(&files).unwrap().state, "data_locked");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(a.join(STATUS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
