//! `pk-node`: the half of `pk` that uses tokens: `pk init`, `pk keyslots ...`, and the
//! agent itself (`pk agent start --foreground`, also how a background agent runs).
//!
//! Users run `pk`, which executes this binary for those commands; it takes the same
//! arguments (see `node::cli`). It is the node library's command line with `hsm`'s
//! drivers handed in: `pk` is built without them, in a crate that does not depend on
//! `hsm`, so it cannot link libtss2 or libpcsclite.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    node::cli::pk_node_main(std::sync::Arc::new(hsm::Hardware))
}
