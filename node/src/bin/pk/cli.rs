//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hsm::tpm::PcrBank;

/// pk: a hardware-token-backed, peer-to-peer secrets manager.
#[derive(Debug, Parser)]
#[command(name = "pk", version, propagate_version = true)]
pub(crate) struct Cli {
    /// The node's data directory [default: $XDG_DATA_HOME/pk or ~/.local/share/pk].
    #[arg(long = "node-path", alias = "np", global = true, env = "PK_NODE_PATH")]
    pub(crate) node_path: Option<PathBuf>,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub(crate) format: Format,

    /// TPM connection (TCTI), e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`
    /// [default: device:/dev/tpmrm0].
    #[arg(long, global = true, env = "PK_TPM_TCTI")]
    pub(crate) tcti: Option<String>,

    /// PKCS#11 module to load instead of the one a keyslot recorded.
    #[arg(long = "pkcs11-module", global = true, env = "PK_PKCS11_MODULE")]
    pub(crate) pkcs11_module: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Readable text.
    Human,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a node: a new data key, a first keyslot for a token, and a recovery code
    /// (shown once).
    Init(InitArgs),
    /// Manage the keyslots that unlock the node's data key.
    #[command(subcommand)]
    Keyslots(KeyslotsCommand),
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// The first slot's passphrase or PIN, read from this file (or PK_PASSWORD).
    #[arg(long = "password-file")]
    pub(crate) password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyslotsCommand {
    /// List the enrolled keyslots.
    List,
    /// Enrol another unlock method (unlocks the node first).
    Enroll(EnrollArgs),
    /// Check that a keyslot opens the node's data key.
    Test(TestArgs),
    /// Remove a keyslot. Unlock through another slot: that proves a working one remains.
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EnrollArgs {
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// The new slot's passphrase or PIN, read from this file (or PK_PASSWORD_NEW).
    #[arg(long = "password-new-file")]
    pub(crate) password_new_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) unlock: UnlockArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// The slot to test [default: the one unlocking would use].
    #[arg(long)]
    pub(crate) slot: Option<u32>,
    #[command(flatten)]
    pub(crate) unlock: UnlockArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    /// The slot to remove.
    pub(crate) slot: u32,
    #[command(flatten)]
    pub(crate) unlock: UnlockArgs,
}

/// The token a new keyslot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum TokenKind {
    /// TPM 2.0.
    Tpm,
    /// A PKCS#11 token (HSM, smart card, SoftHSM2).
    Pkcs11,
    /// A passphrase (Argon2id). Not hardware.
    Soft,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The token for the new keyslot.
    #[arg(long, value_enum)]
    pub(crate) token: TokenKind,
    /// A name for the keyslot.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// tpm: bind the slot to these PCRs, e.g. `7` or `0,2,4,7` (unseals only while they
    /// keep their current values).
    #[arg(long = "tpm-pcrs")]
    pub(crate) tpm_pcrs: Option<String>,
    /// tpm: the PCR bank the policy reads [default: sha256].
    #[arg(long = "tpm-pcr-bank", value_parser = parse_bank)]
    pub(crate) tpm_pcr_bank: Option<PcrBank>,
    /// tpm: protect the slot with a PIN as well (counts towards the TPM's lockout).
    #[arg(long = "tpm-pin")]
    pub(crate) tpm_pin: bool,
    /// pkcs11: the label of the token to keep the key in.
    #[arg(long = "pkcs11-token-label")]
    pub(crate) pkcs11_token_label: Option<String>,
    /// soft: Argon2id memory in MiB [default: 64].
    #[arg(long = "argon2-memory-mib")]
    pub(crate) argon2_memory_mib: Option<u32>,
    /// soft: Argon2id passes [default: 3].
    #[arg(long = "argon2-passes")]
    pub(crate) argon2_passes: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct UnlockArgs {
    /// Unlock through this keyslot [default: a TPM slot without PIN, else the only slot
    /// that needs a secret].
    #[arg(long = "unlock-slot")]
    pub(crate) unlock_slot: Option<u32>,
    /// The unlocking slot's passphrase or PIN, read from this file (or PK_PASSWORD).
    #[arg(long = "password-file")]
    pub(crate) password_file: Option<PathBuf>,
    /// Unlock with the recovery code, read from this file (or PK_RECOVERY_CODE).
    #[arg(long = "recovery-code-file")]
    pub(crate) recovery_code_file: Option<PathBuf>,
}

fn parse_bank(s: &str) -> Result<PcrBank, String> {
    s.parse()
}
