//! `pk-node`: the half of `pk` that uses tokens: `pk init`, `pk keyslots ...`, and the
//! agent itself (`pk agent start --foreground`, also how a background agent runs).
//!
//! Users run `pk`, which executes this binary for those commands; it takes the same
//! arguments (see `node::cli`). Keeping the TPM and PKCS#11 libraries out of `pk` saves
//! every other call their loading time.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    node::cli::pk_node_main()
}
