//! `pk`: the command-line front end of a pk node (see `node::cli`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    node::cli::pk_main()
}
