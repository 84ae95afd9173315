//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hsm_core::tpm::PcrBank;

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

    /// The PCR signatures (systemd's tpm2-pcr-signature.json) that TPM keyslots with a
    /// signed PCR policy unlock with [default: /run/pk-boot/tpm2-pcr-signature.json].
    #[arg(
        long = "tpm-pcr-signature",
        global = true,
        env = "PK_TPM_PCR_SIGNATURE"
    )]
    pub(crate) tpm_pcr_signature: Option<PathBuf>,

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
    /// Start, stop, lock and unlock the agent that holds the unlocked keys.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Use the node's identity key: NodeId, signatures, encryption.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create, list, rename and delete vaults; browse and restore their history.
    #[command(subcommand)]
    Vaults(VaultsCommand),
    /// Read and write secrets, written `vault:path`.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Show the agent's audit log.
    Audit(AuditArgs),
    /// Other nodes: the node graph, connections, LAN discovery.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Notifications between nodes (vault shares, messages).
    #[command(subcommand)]
    Notifications(NotificationsCommand),
    /// Gestalts: the nodes and identities that stand for one person or team.
    #[command(subcommand)]
    Identities(IdentitiesCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum IdentitiesCommand {
    /// List every gestalt this node knows, with its members and permissions.
    List,
    /// Show one gestalt (by any of its NodeIds or identities).
    Get {
        /// A NodeId or `provider:identity`.
        gestalt_id: String,
    },
    /// Trust a gestalt: it may send notifications here; its links are discovered.
    Trust {
        /// A NodeId or `provider:identity`.
        gestalt_id: String,
    },
    /// Stop trusting a gestalt: no vertex of it may send notifications any more.
    Untrust {
        /// A NodeId or `provider:identity`.
        gestalt_id: String,
    },
    /// Grant a gestalt a permission (every vertex of it gets it).
    Allow {
        /// A NodeId or `provider:identity`.
        gestalt_id: String,
        /// What it may do.
        #[arg(value_enum)]
        permission: NodePermissionArg,
    },
    /// Revoke a permission from one vertex of a gestalt.
    Disallow {
        /// A NodeId or `provider:identity`.
        gestalt_id: String,
        /// What it may no longer do.
        #[arg(value_enum)]
        permission: NodePermissionArg,
    },
    /// What a gestalt may do here.
    Permissions {
        /// A NodeId or `provider:identity`.
        gestalt_id: String,
    },
    /// Invite a node to this node's gestalt (it accepts with `pk nodes claim`).
    Invite {
        /// The NodeId.
        node_id: String,
    },
    /// Discover a gestalt now: fetch and verify its sigchains and claims.
    Discover {
        /// A NodeId or `provider:identity`.
        gestalt_id: String,
    },
    /// Show the discovery queue.
    Queue,
    /// Authenticate this node with an identity provider (OAuth device flow): prints a
    /// code to enter on the provider's site, then waits for your approval.
    Authenticate {
        /// The provider: `github.com`.
        provider_id: String,
    },
    /// The identities this node is authenticated as.
    Authenticated,
    /// Claim an identity you are authenticated as: a claim signed by this node goes into
    /// its sigchain and is published on the provider (a public gist on GitHub).
    Claim {
        /// `provider:identity`, e.g. `github.com:alice`.
        identity: String,
    },
    /// Search a provider for identities.
    Search {
        /// The provider: `github.com`.
        provider_id: String,
        /// What to look for.
        term: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodesCommand {
    /// Add a node to the graph (it must answer as that NodeId), or give a known node a new
    /// address. A node added may send notifications unless --no-notify.
    Add {
        /// Its NodeId, or a pairing address `pk://NODEID@HOST:PORT` (the appliance
        /// console's peers page shows one, with a QR code), which then stands for all three.
        node_id: String,
        /// Host name or IP address.
        host: Option<String>,
        /// UDP port of its peer endpoint.
        port: Option<u16>,
        /// Add it without checking that it answers.
        #[arg(long)]
        no_ping: bool,
        /// Do not take notifications from it.
        #[arg(long)]
        no_notify: bool,
    },
    /// Remove a node from the graph, with every vault permission it held.
    Remove {
        /// Its NodeId.
        node_id: String,
    },
    /// Check that a node answers (and is who it says).
    Ping {
        /// Its NodeId.
        node_id: String,
    },
    /// Find a node's addresses: in the graph, else by asking the nodes this one knows.
    Find {
        /// Its NodeId.
        node_id: String,
    },
    /// List the node graph.
    Getall,
    /// List open connections.
    Connections,
    /// Let a node send notifications or list the vaults shared with it.
    Allow {
        /// Its NodeId.
        node_id: String,
        /// What it may do.
        #[arg(required = true, value_enum)]
        permissions: Vec<NodePermissionArg>,
    },
    /// Revoke what `allow` granted.
    Disallow {
        /// Its NodeId.
        node_id: String,
        /// What it may no longer do.
        #[arg(required = true, value_enum)]
        permissions: Vec<NodePermissionArg>,
    },
    /// Link this node and another into one gestalt: both sign the claim. Without an
    /// invitation from that node, this sends it one instead.
    Claim {
        /// Its NodeId.
        node_id: String,
    },
    /// List nodes advertising themselves on the local network (mDNS).
    Discover {
        /// Browse the LAN (the only discovery there is today; required so that nothing is
        /// sent on the network unasked).
        #[arg(long, required = true)]
        lan: bool,
        /// How long to listen.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
}

/// Node-wide permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum NodePermissionArg {
    /// Send notifications.
    Notify,
    /// List the vaults shared with it.
    Scan,
}

/// Vault permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum VaultPermissionArg {
    /// Make a first copy.
    Clone,
    /// Fetch new versions.
    Pull,
    /// Send changes (reserved).
    Push,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NotificationsCommand {
    /// Send a text message to a node.
    Send {
        /// Its NodeId.
        node_id: String,
        /// The message.
        message: String,
    },
    /// Received notifications.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Sent notifications and their delivery.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum InboxCommand {
    /// Show received notifications (and mark them read).
    Read {
        /// Only those not read before.
        #[arg(long)]
        unread: bool,
    },
    /// Remove one notification.
    Remove {
        /// Its number.
        id: u64,
    },
    /// Remove every notification.
    Clear,
}

#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Show sent notifications and whether they were delivered.
    Read,
    /// Remove one (a pending one is no longer retried).
    Remove {
        /// Its number.
        id: u64,
    },
    /// Remove every notification.
    Clear,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Pull a vault from a node on a schedule (cloning it first if it is not here).
    Add {
        /// Its name (or id) on that node.
        vault: String,
        /// The node.
        node_id: String,
        /// Time between pulls, e.g. `15m`, `1h` (at least 10s).
        #[arg(long, value_parser = humantime::parse_duration)]
        every: std::time::Duration,
        /// The local name [default: its name there].
        #[arg(long)]
        name: Option<String>,
    },
    /// List scheduled pulls and their last result.
    List,
    /// Stop pulling into a local vault.
    Remove {
        /// The local vault name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Start the agent (in the background unless --foreground) and unlock it.
    Start(AgentStartArgs),
    /// Stop the agent.
    Stop,
    /// Is an agent running, and is it unlocked?
    Status,
    /// Forget the unlocked keys (zeroized); the agent keeps running.
    Lock,
    /// Unlock the agent through a keyslot.
    Unlock(UnlockArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AgentStartArgs {
    /// Run in this process instead of the background; stop with Ctrl-C or SIGTERM.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// UDP address of the peer endpoint other nodes dial (QUIC), or `off`.
    #[arg(
        long = "peer-listen",
        env = "PK_PEER_LISTEN",
        default_value = "0.0.0.0:1314"
    )]
    pub(crate) peer_listen: String,
    /// Advertise this node over mDNS: on every interface but loopback (`--lan`, the same
    /// as `--lan=lan`), or on loopback only (`--lan=loopback`, for tests inside a network
    /// namespace). Off unless given.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "lan")]
    pub(crate) lan: Option<LanMode>,
    /// GitHub's web address (the device authorisation).
    #[arg(
        long = "github-url",
        env = "PK_GITHUB_URL",
        default_value = "https://github.com"
    )]
    pub(crate) github_url: String,
    /// GitHub's API address.
    #[arg(
        long = "github-api-url",
        env = "PK_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub(crate) github_api_url: String,
    /// The client id of the OAuth app pk authenticates as on GitHub.
    #[arg(
        long = "github-client-id",
        env = "PK_GITHUB_CLIENT_ID",
        default_value = "Iv1.pk-secrets-manager"
    )]
    pub(crate) github_client_id: String,
    /// What the agent logs (to standard error; a background agent's goes to agent.log in
    /// the node directory): a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or
    /// directives such as `warn,pk::sync=debug`.
    #[arg(
        long = "log",
        env = "PK_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub(crate) log: String,
    #[command(flatten)]
    pub(crate) unlock: UnlockArgs,
}

/// Where to advertise the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LanMode {
    /// Every interface except loopback.
    Lan,
    /// Loopback only.
    Loopback,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Print this node's NodeId (its public key).
    Public,
    /// Sign a file; prints the base64 Ed25519 signature.
    Sign {
        /// The file to sign.
        file: PathBuf,
    },
    /// Verify a base64 signature of a file by a NodeId (default: this node).
    Verify {
        /// The signed file.
        file: PathBuf,
        /// The signature, base64.
        signature: String,
        /// The signer [default: this node].
        #[arg(long = "node-id")]
        node_id: Option<String>,
    },
    /// Encrypt a file to a NodeId; prints base64.
    Encrypt {
        /// The file to encrypt.
        file: PathBuf,
        /// The recipient.
        node_id: String,
    },
    /// Decrypt a base64 file encrypted to this node; writes the plaintext to stdout.
    Decrypt {
        /// The file holding the base64 ciphertext.
        file: PathBuf,
    },
    /// Make a new node key certified by the current one: peers that knew the old NodeId
    /// follow the certificate to the new one, and nothing shared with the node is lost.
    Renew,
    /// Make a new node key with no link to the current one: a fresh identity (peers must
    /// add the new NodeId; links and the sigchain start over).
    Reset,
    /// Print the node's certificate (PEM).
    Cert,
    /// Print the node's certificate and the renewal certificates back to its first key.
    Certchain,
}

#[derive(Debug, Subcommand)]
pub(crate) enum VaultsCommand {
    /// Create a vault.
    Create {
        /// Its name.
        name: String,
    },
    /// List vaults.
    List,
    /// Rename a vault.
    Rename {
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Delete a vault and its history.
    Delete {
        /// The vault.
        name: String,
    },
    /// Show a vault's history, newest first.
    Log {
        /// The vault.
        name: String,
        /// At most this many commits.
        #[arg(long, short = 'd')]
        depth: Option<u32>,
        /// Start from this commit instead of the current version.
        #[arg(long = "commit-id", short = 'c')]
        commit_id: Option<String>,
    },
    /// Check out an earlier version (a commit id or prefix), or `last` for the newest.
    /// Writes made there become the new head; newer history is kept.
    Version {
        /// The vault.
        name: String,
        /// Commit id, prefix (4+ hex digits), or `last`.
        #[arg(value_name = "VERSION")]
        version_id: String,
    },
    /// Export a vault for your own backup: its current version as a plain directory, or
    /// (--bundle) its whole history as a git bundle that `git clone` reads.
    Export {
        /// The vault.
        name: String,
        /// A directory (or, with --bundle, a file) to create; it must not exist.
        destination: PathBuf,
        /// Write a git bundle with the whole history instead of a directory.
        #[arg(long)]
        bundle: bool,
    },
    /// Let a node, or every node of a gestalt, clone and pull a vault (the nodes are sent
    /// a notification).
    Share {
        /// The vault.
        name: String,
        /// A NodeId, or a gestalt by one of its identities (`github.com:alice`).
        node_id: String,
        /// What it may do [default: clone and pull].
        #[arg(long = "permission", short = 'p', value_enum, value_delimiter = ',')]
        permissions: Vec<VaultPermissionArg>,
    },
    /// Revoke what `share` granted.
    Unshare {
        /// The vault.
        name: String,
        /// A NodeId or `provider:identity`, as it was shared with.
        node_id: String,
        /// What to revoke [default: everything].
        #[arg(long = "permission", short = 'p', value_enum, value_delimiter = ',')]
        permissions: Vec<VaultPermissionArg>,
    },
    /// Which nodes may do what with a vault.
    Permissions {
        /// The vault.
        name: String,
    },
    /// List the vaults a node shares with this one.
    Scan {
        /// The node.
        node_id: String,
    },
    /// Copy a vault from a node (with its whole history). An interrupted clone resumes
    /// when run again.
    Clone {
        /// Its name (or id) on that node.
        vault: String,
        /// The node.
        node_id: String,
        /// The local name [default: its name there].
        #[arg(long)]
        name: Option<String>,
    },
    /// Fetch a vault's changes from the node it was cloned from (or another one) and merge
    /// them with the changes made here. When both sides changed the same secret, both
    /// versions are kept: the incoming one as `<name>.conflict-<node>`.
    Pull {
        /// The local vault.
        name: String,
        /// The node [default: the one it was cloned from].
        node_id: Option<String>,
    },
    /// Scheduled pulls from another node (a backup node's job).
    #[command(subcommand)]
    Backup(BackupCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum SecretsCommand {
    /// Create (or replace) a secret from a file.
    Create {
        /// The file to read.
        file: PathBuf,
        /// Where: `vault:path`.
        secret_path: String,
    },
    /// Write a secret from standard input.
    Write {
        /// Where: `vault:path`.
        secret_path: String,
    },
    /// Print secrets to standard output.
    Cat {
        /// `vault:path`, one or more.
        #[arg(required = true)]
        secret_paths: Vec<String>,
    },
    /// List a directory (`vault` or `vault:dir`).
    Ls {
        /// `vault` or `vault:dir`.
        path: String,
    },
    /// Make directories.
    Mkdir {
        /// `vault:dir`, one or more.
        #[arg(required = true)]
        secret_paths: Vec<String>,
        /// Make parents as needed; no error if it exists.
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Rename a secret or directory: a new name in the same directory, or `vault:newpath`.
    Rename {
        /// `vault:path`.
        secret_path: String,
        /// New name or `vault:newpath`.
        new_name: String,
    },
    /// Remove secrets or directories.
    Rm {
        /// `vault:path`, one or more (same vault).
        #[arg(required = true)]
        secret_paths: Vec<String>,
        /// Remove directories and their contents.
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Describe a secret or directory.
    Stat {
        /// `vault:path`.
        secret_path: String,
    },
    /// Create an empty secret if nothing is there.
    Touch {
        /// `vault:path`.
        secret_path: String,
    },
    /// Edit a secret in $EDITOR (a private temporary file, wiped afterwards).
    Edit {
        /// `vault:path`.
        secret_path: String,
    },
    /// Import a local directory's files into a vault.
    Dir {
        /// The local directory.
        directory: PathBuf,
        /// `vault` or `vault:dir`.
        destination: String,
    },
    /// Print secrets as environment variables, or run a command with them.
    Env(EnvArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EnvArgs {
    /// `vault`, `vault:path` or `vault:path=NAME` (a directory includes every secret
    /// below it).
    #[arg(required = true)]
    pub(crate) paths: Vec<String>,
    /// After `--`: a command to run with the variables set, instead of printing them.
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
    /// Output format.
    #[arg(long = "env-format", value_enum, default_value_t = EnvFormat::Unix)]
    pub(crate) env_format: EnvFormat,
    /// What to do with a secret whose name is not a valid variable name.
    #[arg(long = "env-invalid", value_enum, default_value_t = EnvInvalid::Error)]
    pub(crate) env_invalid: EnvInvalid,
    /// What to do when two secrets give the same variable.
    #[arg(long = "env-duplicate", value_enum, default_value_t = EnvDuplicate::Overwrite)]
    pub(crate) env_duplicate: EnvDuplicate,
}

/// How `secrets env` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EnvFormat {
    /// `export NAME='value'`.
    Unix,
    /// A JSON object.
    Json,
    /// `set "NAME=value"` (Windows cmd).
    Cmd,
    /// `$env:NAME = 'value'`.
    Powershell,
}

/// Invalid variable names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EnvInvalid {
    /// Fail.
    Error,
    /// Skip it and say so on stderr.
    Warn,
    /// Skip it silently.
    Ignore,
}

/// Duplicate variable names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EnvDuplicate {
    /// Keep the first.
    Keep,
    /// Keep the last.
    Overwrite,
    /// Keep the last and say so on stderr.
    Warn,
    /// Fail.
    Error,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Keep printing new events as they happen.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// Only these event types or prefixes (e.g. `vault`, `secret.revealed`); repeatable.
    #[arg(long = "event", short = 'e')]
    pub(crate) events: Vec<String>,
    /// At most this many events.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Oldest first (`asc`) or newest first (`desc`).
    #[arg(long, value_enum, default_value_t = Order::Asc)]
    pub(crate) order: Order,
}

/// Sort order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Order {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    pub(crate) token: TokenArgs,
    /// The first slot's passphrase or PIN, read from this file (or PK_PASSWORD).
    #[arg(long = "password-file")]
    pub(crate) password_file: Option<PathBuf>,
}

// Parsed once per process: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
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
    /// A YubiKey (PIV: a P-256 key generated on the card; PIN and touch).
    Yubikey,
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
    /// tpm: also accept any values of the signed PCRs (--tpm-signed-pcrs) that this key
    /// has signed (a PEM public key, as `systemd-measure sign` uses): a signed kernel
    /// update keeps the slot working.
    #[arg(long = "tpm-pcr-public-key")]
    pub(crate) tpm_pcr_public_key: Option<PathBuf>,
    /// tpm: the PCRs the --tpm-pcr-public-key signs [default: 11].
    #[arg(long = "tpm-signed-pcrs")]
    pub(crate) tpm_signed_pcrs: Option<String>,
    /// tpm: protect the slot with a PIN as well (counts towards the TPM's lockout).
    #[arg(long = "tpm-pin")]
    pub(crate) tpm_pin: bool,
    /// pkcs11: the label of the token to keep the key in.
    #[arg(long = "pkcs11-token-label")]
    pub(crate) pkcs11_token_label: Option<String>,
    /// yubikey: the card's serial number [default: the only card present].
    #[arg(long = "yubikey-serial")]
    pub(crate) yubikey_serial: Option<u32>,
    /// yubikey: the PIV slot, `9d` or a retired slot `82`-`95` [default: 9d].
    #[arg(long = "yubikey-slot", value_parser = parse_slot)]
    pub(crate) yubikey_slot: Option<u8>,
    /// yubikey: when the card asks for the PIN: never, once (per session), always
    /// [default: once].
    #[arg(long = "yubikey-pin-policy", value_parser = ["never", "once", "always"])]
    pub(crate) yubikey_pin_policy: Option<String>,
    /// yubikey: when the card asks for a touch: never, always, cached (15 s)
    /// [default: always].
    #[arg(long = "yubikey-touch-policy", value_parser = ["never", "always", "cached"])]
    pub(crate) yubikey_touch_policy: Option<String>,
    /// yubikey: a file holding the card's 3DES management key in hex (48 digits)
    /// [default: the factory default key].
    #[arg(long = "yubikey-management-key-file")]
    pub(crate) yubikey_management_key_file: Option<PathBuf>,
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

fn parse_slot(s: &str) -> Result<u8, String> {
    let slot = u8::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| format!("{s:?} is not a PIV slot (hex, e.g. 9d)"))?;
    if slot == 0x9d || (0x82..=0x95).contains(&slot) {
        Ok(slot)
    } else {
        Err(format!(
            "slot {s} cannot hold a keyslot: use 9d or a retired slot 82-95"
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
