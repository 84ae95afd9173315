//! `pk` is a thin client of the agent: an everyday call must not load the TPM or smart
//! card libraries (their loading costs every call, and a client has no use for them). The
//! token-side commands run in `pk-node`, the one binary built with `hsm`'s drivers.
//!
//! Two checks: by construction, the `node` crate that `pk` is built in does not depend on
//! any token driver crate (`cargo tree`); and on the binaries as built, with the dynamic
//! linker's own list (`ldd`, from libc-bin). Each check also finds the libraries where they
//! belong, in `pk-node`, so it can fail.
//!
//! Being this package's test is also what makes `cargo test --workspace` build `pk-node`
//! (and `pk`, for `node`'s tests) before any test runs: `node`'s tests run `pk`, which
//! executes the `pk-node` beside it.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that bind a token library: tss-esapi (libtss2), pcsc (libpcsclite, through
/// yubikey), cryptoki (PKCS#11 modules), and `hsm`, which holds the drivers.
const DRIVER_CRATES: [&str; 5] = ["hsm", "tss-esapi", "pcsc", "yubikey", "cryptoki"];

/// The crates in `package`'s normal (not dev, not build) dependency tree, by name.
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", package])
        .output()
        .expect("runs cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn drivers_in(crates: &[String]) -> Vec<&String> {
    crates
        .iter()
        .filter(|c| DRIVER_CRATES.contains(&c.as_str()))
        .collect()
}

#[test]
fn pk_is_built_without_token_drivers_and_pk_node_with_them() {
    let node = dependencies("node");
    assert!(
        drivers_in(&node).is_empty(),
        "the node crate, where pk is built, depends on token drivers: {:?}",
        drivers_in(&node)
    );
    assert!(node.iter().any(|c| c == "hsm-core"), "{node:?}");
    let pk_node = dependencies("pk-node");
    for driver in ["hsm", "tss-esapi", "pcsc"] {
        assert!(
            pk_node.iter().any(|c| c == driver),
            "pk-node should depend on {driver}"
        );
    }
}

/// The shared libraries `binary` needs, by name.
fn needed(binary: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(binary).output().expect("runs ldd");
    assert!(out.status.success(), "ldd {binary:?} failed: {out:?}");
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

/// `pk`, built beside `pk-node` by the same `cargo test --workspace`.
fn pk_beside(pk_node: &Path) -> PathBuf {
    let pk = pk_node.with_file_name("pk");
    assert!(
        pk.is_file(),
        "{pk:?} is not built: run the workspace's tests (cargo test --workspace) or cargo build -p node"
    );
    pk
}

#[test]
fn pk_links_no_token_library_and_pk_node_does() {
    let pk_node = Path::new(env!("CARGO_BIN_EXE_pk-node"));
    let pk = needed(&pk_beside(pk_node));
    assert!(
        token_libraries(&pk).is_empty(),
        "pk links token libraries: {pk:?}"
    );
    let pk_node = needed(pk_node);
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
