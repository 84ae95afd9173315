//! `pk` is a thin client of the agent: an everyday call must not load the TPM or smart
//! card libraries (their loading costs every call, and a client has no use for them).
//! The token-side commands run in `pk-node`. Checked on the binaries as built, with the
//! dynamic linker's own list (`ldd`, from libc-bin).

use std::process::Command;

/// The shared libraries `binary` needs, by name.
fn needed(binary: &str) -> Vec<String> {
    let out = Command::new("ldd").arg(binary).output().expect("runs ldd");
    assert!(out.status.success(), "ldd {binary} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.rsplit('/').next().unwrap_or(name).to_owned())
        .collect()
}

const TOKEN_LIBRARIES: [&str; 2] = ["libtss2-", "libpcsclite"];

fn token_libraries(libs: &[String]) -> Vec<&String> {
    libs.iter()
        .filter(|l| TOKEN_LIBRARIES.iter().any(|t| l.starts_with(t)))
        .collect()
}

#[test]
fn pk_links_no_token_library_and_pk_node_does() {
    let pk = needed(env!("CARGO_BIN_EXE_pk"));
    assert!(
        token_libraries(&pk).is_empty(),
        "pk links token libraries: {pk:?}"
    );
    // The same check finds them where they belong, so it can fail.
    let pk_node = needed(env!("CARGO_BIN_EXE_pk-node"));
    let found = token_libraries(&pk_node);
    assert!(
        found.iter().any(|l| l.starts_with("libtss2-esys")),
        "pk-node should link the TPM library: {pk_node:?}"
    );
    assert!(
        found.iter().any(|l| l.starts_with("libpcsclite")),
        "pk-node should link the smart card library: {pk_node:?}"
    );
}
