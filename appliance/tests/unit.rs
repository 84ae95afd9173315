//! The shipped systemd unit: `systemd-analyze security` must rate it 2.0 or better.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

#[test]
fn the_unit_file_is_sandboxed_to_an_exposure_of_two_or_less() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/pk-appliance.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", unit])
        .output()
        .expect("systemd-analyze (package systemd) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating: {text}{}", String::from_utf8_lossy(&out.stderr)));
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
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            std::fs::read_to_string(unit).unwrap().contains(setting),
            "{setting} is missing"
        );
    }
}
