//! The systemd units shipped for the image: the service rates 2.0 or better with
//! `systemd-analyze security`, and the settings the protocol depends on are there.

use std::path::PathBuf;

fn unit(name: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("the unit");
    (path, text)
}

#[test]
fn the_installer_service_is_sandboxed_to_an_exposure_of_two_or_less() {
    let (path, text) = unit("pk-update@.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd) runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no rating: {report}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable rating: {line}"));
    assert!(
        score <= 2.0,
        "exposure {score} (want 2.0 or better): {line}"
    );
    for setting in [
        "ExecStart=/usr/bin/pk-update serve",
        "StandardInput=socket",
        "StandardOutput=socket",
        "NoNewPrivileges=yes",
        "PrivateNetwork=yes",
        "RestrictAddressFamilies=AF_UNIX\n",
        "CapabilityBoundingSet=\n",
        "DevicePolicy=closed",
        "ReadWritePaths=/efi\n",
        "RuntimeDirectory=pk-update\n",
    ] {
        assert!(text.contains(setting), "{setting} is missing");
    }
}

#[test]
fn the_socket_is_the_client_s_path_for_group_pk_update_only() {
    let (_, socket) = unit("pk-update.socket");
    for setting in [
        &format!("ListenStream={}\n", pk_update::SOCKET_PATH)[..],
        "Accept=yes",
        "SocketGroup=pk-update",
        "SocketMode=0660",
    ] {
        assert!(socket.contains(setting), "{setting} is missing");
    }
    let (_, sysusers) = unit("pk-update.sysusers");
    assert!(sysusers.lines().any(|l| l == "g pk-update -"));
}
