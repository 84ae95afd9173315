//! The agent's API: the requests `pk` sends over the local socket and the replies.
//!
//! One connection carries one call: a [`Request`] frame, then for uploads a stream of
//! [`Upload`] frames; the agent answers with [`Response`] frames: data chunks for
//! downloads, then exactly one `Ok` or `Err`.

use serde::{Deserialize, Serialize};

use crate::audit::{AuditEvent, AuditQuery};
use crate::lan::Found;
use crate::nodes::{NodePermission, NodeRecord, Share, VaultPermission};
use crate::notifications::{Mailbox, Notification};
use crate::peer::SharedVault;
use crate::vault::{CommitInfo, Entry, FetchOutcome, Stat, VaultRecord};

/// The protocol version: the first field of every call. `pk` and an agent of another
/// version refuse each other with a clear error instead of misreading messages. Messages
/// are postcard-encoded, so enum variants go by position: a variant added anywhere but at
/// the end changes the layout, and this number with it (2: `Request::ConsoleAccount`
/// and `Reply::Account`).
pub const PROTOCOL: u32 = 2;

/// What a client sends first on a connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    /// [`PROTOCOL`] of the sender.
    pub protocol: u32,
    /// The request.
    pub request: Request,
}

/// Bytes that may be secret in transit (PINs, passphrases, secret contents, plaintexts):
/// zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default, Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SecretBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl SecretBytes {
    /// Moves the bytes out into a zeroizing buffer.
    pub fn take(mut self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(std::mem::take(&mut self.0))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// How the agent should unlock.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UnlockParams {
    /// This slot only.
    pub slot: Option<u32>,
    /// Every slot of this kind (when no slot is named).
    pub kind: Option<hsm::Kind>,
    /// The PIN, passphrase or recovery code.
    pub secret: Option<SecretBytes>,
}

/// A keyslot change for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyslotEvent {
    /// A slot was enrolled.
    Enrolled,
    /// A slot was removed.
    Removed,
}

/// Where a reveal came from, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// The `pk` CLI (or another client of the agent socket).
    Cli,
    /// The appliance's admin console.
    Console,
}

impl Via {
    /// The name in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Console => "console",
        }
    }
}

/// Something that happened in the appliance's admin console, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleEvent {
    /// The box was claimed with the setup code.
    SetupDone,
    /// The admin logged in.
    Login,
    /// A wrong admin password.
    LoginFailed,
    /// A login refused because of too many wrong passwords.
    LoginThrottled,
    /// The admin logged out.
    Logout,
    /// The admin password was changed (every other session ended).
    PasswordChanged,
    /// A password change with a wrong current password.
    PasswordChangeFailed,
    /// The admin password was reset with the recovery code.
    PasswordReset,
    /// A password reset with a recovery code that does not open the node.
    PasswordResetFailed,
    /// The admin account on disk is not the one bound to the node: refused.
    AccountReplaced,
}

impl ConsoleEvent {
    /// The event's name in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            ConsoleEvent::SetupDone => "console.setup",
            ConsoleEvent::Login => "console.login",
            ConsoleEvent::LoginFailed => "console.login_failed",
            ConsoleEvent::LoginThrottled => "console.login_throttled",
            ConsoleEvent::Logout => "console.logout",
            ConsoleEvent::PasswordChanged => "console.password_changed",
            ConsoleEvent::PasswordChangeFailed => "console.password_change_failed",
            ConsoleEvent::PasswordReset => "console.password_reset",
            ConsoleEvent::PasswordResetFailed => "console.password_reset_failed",
            ConsoleEvent::AccountReplaced => "console.account_replaced",
        }
    }
}

/// What the console asks of the agent about its admin account: the account lives in a
/// plain file beside the node, and binding it to the node (whose store is sealed under the
/// data key) lets the console notice a file replaced behind its back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountBinding {
    /// Does the account match the one the node holds? Binds it when the node holds none.
    Check,
    /// The admin changed the password: bind the new account in place of `from`.
    Change {
        /// The account bound until now.
        from: String,
    },
    /// The recovery code reset the password: bind the new account, whatever was bound.
    Reset,
}

/// The agent's answer to [`Request::ConsoleAccount`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCheck {
    /// The node held no account, or was told of a change: it holds this one now.
    Bound,
    /// The account is the one the node holds.
    Matches,
    /// Another account is bound: this one was not made through the console.
    Mismatch,
}

/// How a secret write is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteKind {
    /// `secrets create` (from a file).
    Create,
    /// `secrets write` (from stdin).
    Write,
    /// `secrets edit`.
    Edit,
    /// `secrets dir` (imported from a directory).
    Import,
}

/// A call to the agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Agent state.
    Status,
    /// Unlock through the keyslots.
    Unlock(UnlockParams),
    /// Forget the keys.
    Lock,
    /// Shut down.
    Stop,
    /// `pk keyslots` changed a slot (the CLI does that without the agent); record it in
    /// the audit log now, or at the next unlock if locked.
    KeyslotChanged {
        /// What happened.
        event: KeyslotEvent,
        /// The slot.
        slot: u32,
        /// Its kind.
        kind: hsm::Kind,
    },
    /// The admin console records one of its events in the audit log (now, or at the next
    /// unlock if locked).
    ConsoleEvent {
        /// What happened.
        event: ConsoleEvent,
        /// The browser's address.
        client: String,
    },
    /// Checks or binds the console's admin account (unlocked only). `account` is a digest
    /// of the account's stored password hash.
    ConsoleAccount {
        /// The account's digest.
        account: String,
        /// Check, change or reset.
        binding: AccountBinding,
    },
    /// This node's NodeId.
    KeysPublic,
    /// Sign bytes with the node key.
    KeysSign(SecretBytes),
    /// Encrypt bytes to a NodeId.
    KeysEncrypt {
        /// Recipient NodeId.
        to: String,
        /// Plaintext.
        data: SecretBytes,
    },
    /// Decrypt bytes encrypted to this node.
    KeysDecrypt(SecretBytes),
    /// A new node key certified by the current one.
    KeysRenew,
    /// A new node key with no link to the current one.
    KeysReset,
    /// The node's certificate (PEM), and with `chain` its renewal certificates.
    KeysCert {
        /// Include the renewal certificates.
        chain: bool,
    },
    /// Create a vault.
    VaultsCreate(String),
    /// List vaults.
    VaultsList,
    /// Rename a vault.
    VaultsRename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// Delete a vault.
    VaultsDelete(String),
    /// The vault's whole history as a git bundle; the bytes come back as
    /// [`Response::Chunk`] frames.
    VaultsExportBundle(String),
    /// A vault's history.
    VaultsLog {
        /// Vault name.
        vault: String,
        /// At most this many commits.
        depth: Option<u32>,
        /// Start from this commit.
        from: Option<String>,
    },
    /// Check out a version.
    VaultsVersion {
        /// Vault name.
        vault: String,
        /// Commit id, prefix, or `last`.
        target: String,
    },
    /// Write a secret; the content follows as [`Upload`] frames.
    SecretsWrite {
        /// Vault name.
        vault: String,
        /// Path in the vault.
        path: String,
        /// How it is recorded.
        kind: WriteKind,
        /// The content's length, when known in advance (a file): lets the agent hash it
        /// in one pass.
        size: Option<u64>,
    },
    /// Read a secret; the content comes back as [`Response::Chunk`] frames.
    SecretsCat {
        /// Vault name.
        vault: String,
        /// Path in the vault.
        path: String,
        /// Who asked, for the audit log.
        via: Via,
    },
    /// List a directory.
    SecretsLs {
        /// Vault name.
        vault: String,
        /// Path (empty for the root).
        path: String,
    },
    /// Make a directory.
    SecretsMkdir {
        /// Vault name.
        vault: String,
        /// Path.
        path: String,
        /// Create parents, and succeed if it exists.
        parents: bool,
    },
    /// Remove secrets or directories.
    SecretsRm {
        /// Vault name.
        vault: String,
        /// Paths.
        paths: Vec<String>,
        /// Remove directories with their contents.
        recursive: bool,
    },
    /// Rename within a vault.
    SecretsRename {
        /// Vault name.
        vault: String,
        /// Current path.
        from: String,
        /// New path.
        to: String,
    },
    /// Describe a path.
    SecretsStat {
        /// Vault name.
        vault: String,
        /// Path.
        path: String,
    },
    /// Create an empty secret if absent.
    SecretsTouch {
        /// Vault name.
        vault: String,
        /// Path.
        path: String,
    },
    /// Read the audit log.
    Audit(AuditQuery),
    /// Add a node to the graph, or give a known one a new address.
    NodesAdd {
        /// Its NodeId.
        node: String,
        /// `host:port`.
        addr: String,
        /// Do not let it send notifications.
        no_notify: bool,
        /// Add it without checking that it answers.
        no_ping: bool,
    },
    /// Remove a node and its shares.
    NodesRemove(String),
    /// Check that a node answers.
    NodesPing(String),
    /// Find a node's addresses: the graph, then the nodes connected to.
    NodesFind(String),
    /// The node graph.
    NodesGetAll,
    /// Open connections.
    NodesConnections,
    /// Grant or revoke node-wide permissions.
    NodesPermit {
        /// The node.
        node: String,
        /// Which.
        permissions: Vec<NodePermission>,
        /// Grant (else revoke).
        allow: bool,
    },
    /// Browse the LAN for nodes (mDNS).
    NodesDiscover {
        /// How long to listen, in milliseconds.
        wait_ms: u32,
    },
    /// Grant or revoke vault permissions of a node.
    VaultsShare {
        /// Vault name.
        vault: String,
        /// The node.
        node: String,
        /// Which.
        permissions: Vec<VaultPermission>,
        /// Grant (else revoke).
        grant: bool,
    },
    /// Who may do what with a vault.
    VaultsPermissions(String),
    /// The vaults a node shares with this one.
    VaultsScan(String),
    /// Clone a vault from a node.
    VaultsClone {
        /// Its name (or id) on that node.
        vault: String,
        /// The node.
        node: String,
        /// The local name [default: its name there].
        name: Option<String>,
    },
    /// Pull a vault's changes from its origin or a named node.
    VaultsPull {
        /// The local vault.
        vault: String,
        /// The node [default: the vault's origin].
        node: Option<String>,
    },
    /// Schedule pulls of a vault from a node (a backup).
    BackupsAdd {
        /// Its name (or id) on that node.
        vault: String,
        /// The node.
        node: String,
        /// Seconds between pulls.
        every_s: u64,
        /// The local name [default: its name there].
        name: Option<String>,
    },
    /// The scheduled pulls.
    BackupsList,
    /// Stop scheduled pulls of a local vault.
    BackupsRemove(String),
    /// Send a text notification.
    NotificationsSend {
        /// The node.
        node: String,
        /// The text.
        text: String,
    },
    /// Read a mailbox.
    NotificationsList {
        /// Which.
        mailbox: Mailbox,
        /// Inbox: unread only.
        unread: bool,
    },
    /// Mark inbox entries read (one, or all).
    NotificationsRead(Option<u64>),
    /// Remove entries (one, or all) of a mailbox.
    NotificationsRemove {
        /// Which.
        mailbox: Mailbox,
        /// The entry [default: all].
        id: Option<u64>,
    },
    /// Link this node with another into one gestalt (or invite it first).
    NodesClaim(String),
    /// Every gestalt this node knows.
    IdentitiesList,
    /// One gestalt, by any of its vertices.
    IdentitiesGet(String),
    /// Trust (grant `notify`) or stop trusting a gestalt.
    IdentitiesTrust {
        /// A NodeId or `provider:identity`.
        gestalt: String,
        /// Trust (else untrust).
        trust: bool,
    },
    /// Grant or revoke permissions of a gestalt vertex.
    IdentitiesPermit {
        /// A NodeId or `provider:identity`.
        gestalt: String,
        /// Which.
        permissions: Vec<NodePermission>,
        /// Grant (else revoke).
        allow: bool,
    },
    /// What a gestalt may do.
    IdentitiesPermissions(String),
    /// Invite a node to this node's gestalt.
    IdentitiesInvite(String),
    /// Discover a gestalt now.
    IdentitiesDiscover(String),
    /// The discovery queue.
    IdentitiesQueue,
    /// Start authenticating with an identity provider (device flow).
    IdentitiesAuthStart(String),
    /// Wait for the user to finish the device flow started under `handle`.
    IdentitiesAuthFinish {
        /// The provider.
        provider: String,
        /// From `IdentitiesAuthStart`.
        handle: u64,
    },
    /// The identities this node is authenticated as.
    IdentitiesAuthenticated,
    /// Claim an identity (`provider:identity`): publish a claim signed by this node.
    IdentitiesClaim(String),
    /// Search a provider for identities.
    IdentitiesSearch {
        /// The provider.
        provider: String,
        /// What to look for.
        term: String,
    },
}

/// One vertex of a gestalt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GestaltMember {
    /// A NodeId or `provider:identity`.
    pub vertex: String,
    /// Its own permissions here (`None`: no record of it, it is here through a link).
    pub permissions: Option<Vec<NodePermission>>,
}

/// A gestalt: its vertices, the links that join them, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GestaltInfo {
    /// The vertices.
    pub members: Vec<GestaltMember>,
    /// The verified links, as pairs of vertices.
    pub links: Vec<(String, String)>,
    /// What every vertex of it may do (the union).
    pub permissions: Vec<NodePermission>,
}

/// An open connection to a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The peer.
    pub node: String,
    /// Its address.
    pub addr: String,
    /// `outgoing` or `incoming`.
    pub direction: String,
    /// Seconds since it opened.
    pub age_s: u64,
    /// Round-trip time, milliseconds.
    pub rtt_ms: u64,
}

/// A scheduled pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The vault's name (or id) on the node.
    pub vault: String,
    /// The node pulled from.
    pub node: String,
    /// The local name.
    pub name: String,
    /// Seconds between pulls.
    pub every_s: u64,
    /// Unix milliseconds of the next pull.
    pub next_ms: u64,
    /// The last result.
    pub last: Option<crate::vault::PullOutcome>,
}

/// Secret content sent to the agent after a [`Request::SecretsWrite`].
#[derive(Clone, Serialize, Deserialize)]
pub enum Upload {
    /// A piece of the content.
    Chunk(SecretBytes),
    /// The end: commit what was sent.
    End,
}

/// The agent's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `locked` or `unlocked`.
    pub state: String,
    /// The process id.
    pub pid: u32,
    /// This node's NodeId, when unlocked.
    pub node_id: Option<String>,
    /// The keyslot that unlocked it.
    pub unlocked_with: Option<u32>,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// pk version.
    pub version: String,
    /// Where other nodes reach this one (the QUIC endpoint's UDP address), if it listens.
    pub peer_addr: Option<String>,
}

/// A successful reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to say.
    Done,
    /// The console's admin account, checked or bound.
    Account(AccountCheck),
    /// Agent state.
    Status(AgentStatus),
    /// A NodeId.
    NodeId(String),
    /// Bytes (signature, ciphertext, plaintext).
    Bytes(SecretBytes),
    /// Vault records.
    Vaults(Vec<VaultRecord>),
    /// One vault record.
    Vault(Box<VaultRecord>),
    /// Commits.
    Commits(Vec<CommitInfo>),
    /// One commit.
    Commit(CommitInfo),
    /// Maybe a commit (touch on an existing secret makes none).
    MaybeCommit(Option<CommitInfo>),
    /// Directory entries.
    Entries(Vec<Entry>),
    /// A stat.
    Stat(Stat),
    /// Audit events.
    Events(Vec<AuditEvent>),
    /// Nodes in the graph.
    Nodes(Vec<NodeRecord>),
    /// One node.
    Node(NodeRecord),
    /// A ping's answer.
    Pong {
        /// The node.
        node: String,
        /// Where it answered.
        addr: String,
        /// Round trip, milliseconds.
        rtt_ms: u64,
    },
    /// Addresses.
    Addresses(Vec<String>),
    /// Connections.
    Connections(Vec<ConnectionInfo>),
    /// A vault's shares.
    Shares(Vec<Share>),
    /// Vaults shared by a node.
    SharedVaults(Vec<SharedVault>),
    /// A clone's or pull's result.
    Fetch(Box<FetchOutcome>),
    /// Notifications.
    Notifications(Vec<Notification>),
    /// A notification queued (and whether it was delivered at once).
    Queued {
        /// The outbox entry.
        notification: Box<Notification>,
        /// Delivered now (else it is retried).
        delivered: bool,
    },
    /// How many entries changed.
    Count(u64),
    /// Nodes found on the LAN.
    Found(Vec<Found>),
    /// Scheduled pulls.
    Backups(Vec<Backup>),
    /// A claim made, or an invitation sent instead.
    Claimed {
        /// The other node.
        node: String,
        /// An invitation was sent (the nodes are not linked yet).
        invited: bool,
        /// The claim's place in this node's sigchain.
        seq: Option<u64>,
    },
    /// Gestalts.
    Gestalts(Vec<GestaltInfo>),
    /// The discovery queue.
    Queue(Vec<crate::gestalt::Queued>),
    /// A device authorisation started: what the user must do.
    DeviceAuth {
        /// Pass back to finish.
        handle: u64,
        /// The code and where to enter it.
        auth: crate::provider::DeviceAuth,
    },
    /// Identities (`provider:identity`).
    Identities(Vec<String>),
    /// PEM certificates, the node's own first.
    Certificates(Vec<String>),
    /// A key renewed or reset.
    KeyChanged {
        /// The NodeId before.
        was: String,
        /// The NodeId now.
        now: String,
        /// Whether peers can follow the change (a renewal) or not (a reset).
        certified: bool,
    },
    /// An identity claimed.
    IdentityClaimed {
        /// `provider:identity`.
        identity: String,
        /// Where the claim was published.
        url: String,
        /// Its place in this node's sigchain.
        seq: u64,
    },
}

/// Kinds of failure, each with its own exit code in `pk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or a name or path is invalid.
    BadInput,
    /// The agent is locked.
    Locked,
    /// No such vault, secret or commit.
    NotFound,
    /// It exists already.
    Exists,
    /// A credential or policy was refused.
    Denied,
    /// A token is not available.
    Unavailable,
    /// Stored data is damaged.
    Corrupt,
    /// Anything else.
    Internal,
}

/// A failed call: a code and a message for the user (never a secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// What the agent sends back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A piece of a secret's content.
    Chunk(SecretBytes),
    /// The call succeeded.
    Ok(Reply),
    /// The call failed.
    Err(ApiError),
}
