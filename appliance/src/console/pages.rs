//! The console's pages, rendered on the server (maud escapes every value).

use maud::{DOCTYPE, Markup, html};

use super::FirstToken;
use super::actions::{NodeState, Outcome, PeersView, SlotView, StatusView, VaultDetail};

/// The one stylesheet (served from the console itself: the CSP allows nothing else).
pub(super) const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1d2125}\
h1{font-size:1.4rem}label{display:block;margin:.6rem 0 .2rem}input,select{font-size:1rem;padding:.3rem;width:100%;box-sizing:border-box}\
button{margin-top:.8rem;font-size:1rem;padding:.4rem 1rem}.note{background:#eef3f8;padding:.6rem;border-radius:4px}\
.error{background:#fbeaea;padding:.6rem;border-radius:4px}code{word-break:break-all}table{border-collapse:collapse}td,th{padding:.2rem .6rem;text-align:left}";

fn layout(title: &str, body: Markup) -> String {
    page(title, None, body)
}

/// A page; with `refresh`, the browser reloads it after that many seconds (a meta tag:
/// no script needed).
pub(super) fn page(title: &str, refresh: Option<u32>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · pk appliance" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                h1 { (title) }
                (body)
            }
        }
    }
    .into_string()
}

/// What an action did, or why it did nothing.
pub(super) fn outcome(note: Option<&Outcome>) -> Markup {
    match note {
        Some(Ok(text)) => message(Some(text), "note"),
        Some(Err(text)) => message(Some(text), "error"),
        None => html! {},
    }
}

fn message(text: Option<&str>, class: &str) -> Markup {
    html! {
        @if let Some(text) = text {
            p class=(class) { (text) }
        }
    }
}

pub(super) fn setup(fingerprint: &str, token: &FirstToken, error: Option<&str>) -> String {
    layout(
        "Set up this appliance",
        html! {
            (message(error, "error"))
            p class="note" {
                "Check that this page's certificate has the SHA-256 fingerprint "
                code { (fingerprint) } " (the appliance logs it at start)."
            }
            form method="post" action="/setup" {
                label for="setup_code" { "Setup code (printed on the appliance's console and in its journal)" }
                input id="setup_code" name="setup_code" autocomplete="off" required;
                label for="password" { "Admin password (at least 12 characters)" }
                input id="password" name="password" type="password" autocomplete="new-password" required;
                label for="confirm" { "Admin password again" }
                input id="confirm" name="confirm" type="password" autocomplete="new-password" required;
                @match token {
                    FirstToken::Tpm { pcrs, signed_pcrs, .. } => {
                        p {
                            "The node's data key will be sealed by this machine's TPM"
                            @if let Some(pcrs) = pcrs {
                                ", bound to PCRs " (pcrs)
                            }
                            @if let Some(signed) = signed_pcrs {
                                " and to PCR " (signed.pcr_policy()) " values signed by the image's key"
                            }
                            @if pcrs.is_some() || signed_pcrs.is_some() {
                                ": it unlocks by itself only while the boot chain is unchanged"
                                @if signed_pcrs.is_some() { " or updated by a signed image" }
                            }
                            "."
                        }
                    }
                    FirstToken::Passphrase => {
                        p { "No TPM was found: the node's data key is protected by a passphrase (not hardware)." }
                        label for="passphrase" { "Unlock passphrase (at least 12 characters)" }
                        input id="passphrase" name="passphrase" type="password" autocomplete="new-password" required;
                    }
                }
                button type="submit" { "Claim this appliance" }
            }
        },
    )
}

pub(super) fn recovery(words: &str, csrf: &str) -> String {
    layout(
        "Write down the recovery code",
        html! {
            p class="note" {
                "This is the only time the recovery code is shown. With it, the vaults can be "
                "opened even if every token is lost. Write it on paper and keep it safe."
            }
            p { code id="recovery-code" { (words) } }
            p { a href="/status" { "I have written it down: go to the status page" } }
            form method="post" action="/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Log out" }
            }
        },
    )
}

pub(super) fn login(fingerprint: &str, note: Option<&Outcome>) -> String {
    layout(
        "Log in",
        html! {
            (outcome(note))
            form method="post" action="/login" {
                label for="password" { "Admin password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
            p { a href="/reset" { "Forgot the password? Reset it with the recovery code." } }
            p { "Certificate fingerprint (SHA-256): " code { (fingerprint) } }
        },
    )
}

/// The reset page: a new admin password with the recovery code.
pub(super) fn reset(note: Option<&Outcome>) -> String {
    layout(
        "Reset the admin password",
        html! {
            (outcome(note))
            p {
                "The recovery code (the 24 words shown once at setup) proves you own this box. "
                "It unlocks the node if it is locked. Every session ends; wrong codes count "
                "towards the login throttle."
            }
            form method="post" action="/reset" {
                label for="recovery" { "Recovery code" }
                input id="recovery" name="recovery" type="password" autocomplete="off" required;
                (new_password_fields())
                button type="submit" { "Reset the password" }
            }
            p { a href="/login" { "Back to the login" } }
        },
    )
}

/// The answer to a session once the account on disk proved not to be the bound one.
pub(super) fn replaced() -> String {
    layout(
        "Admin account refused",
        html! {
            p class="error" { (super::REPLACED) }
            p {
                "The node keeps a fingerprint of the admin account under its data key; the "
                "account file on the disk does not match it, so someone changed it without "
                "the console, for instance with the disk in another machine."
            }
            p { a href="/reset" { "Reset the admin password with the recovery code" } }
        },
    )
}

/// `bytes` in the largest unit that keeps a number of 1 or more.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

fn pull_result(last: Option<&node::vault::PullOutcome>) -> Markup {
    html! {
        @match last {
            Some(pull) => {
                (if pull.ok { "ok" } else { "FAILED" }) ": " (pull.message) " (at " (pull.time) ")"
            }
            None => "not pulled yet",
        }
    }
}

/// The unlock methods a form offers.
fn method_options() -> Markup {
    html! {
        option value="passphrase" { "Passphrase" }
        option value="tpm" { "TPM" }
        option value="pkcs11" { "PKCS#11 token PIN" }
        option value="yubikey" { "YubiKey PIN (then touch the key)" }
        option value="recovery" { "Recovery code" }
    }
}

pub(super) fn status(view: &StatusView, csrf: &str, note: Option<&Outcome>) -> String {
    layout(
        "Status",
        html! {
            (nav())
            (outcome(note))
            @if view.clock.synchronized == Some(false) {
                p class="error" id="clock-unsynchronised" {
                    "The clock is not synchronised with network time: audit times and "
                    "certificate dates may be wrong. Check the network and the NTP servers in "
                    a href="/settings" { "Settings" } "."
                }
            }
            table {
                tr { th { "State" } td id="state" { (view.state) } }
                tr { th { "NodeId" } td { code { (view.node_id.as_deref().unwrap_or("(locked)")) } } }
                tr { th { "Peer endpoint" } td { (view.peer_addr.as_deref().unwrap_or("-")) } }
                tr { th { "Peers" } td id="peers" { (view.peers_known) " known, " (view.peers_connected) " connected" } }
                tr { th { "Disk" } td id="disk" { (size(view.disk_free_bytes)) " free of " (size(view.disk_total_bytes)) } }
                tr { th { "Uptime" } td { (view.uptime_s) " s" } }
                @if let Some(image) = &view.image_version {
                    tr { th { "Image version" } td { (image) " (" a href="/updates" { "updates" } ")" } }
                }
                tr { th { "pk-appliance version" } td { (view.version) } }
                tr { th { "Certificate" } td { code { (view.fingerprint) } } }
            }
            h2 { "Keyslots" }
            ul {
                @for slot in &view.keyslots {
                    li { (slot.id) ": " (slot.kind) " " (slot.label) }
                }
            }
            p { a href="/keyslots" { "Enrol, test or remove keyslots" } }
            h2 { "Last backups" }
            @if view.backups.is_empty() {
                p { "No scheduled pulls." }
            }
            ul {
                @for b in &view.backups {
                    li { (b.name) " from " code { (b.node) } ": " (pull_result(b.last.as_ref())) }
                }
            }
            @if view.state == NodeState::Unlocked {
                form method="post" action="/lock" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Lock (forget the keys)" }
                }
            } @else {
                form method="post" action="/unlock" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="method" { "Unlock with" }
                    select id="method" name="method" { (method_options()) }
                    label for="secret" { "PIN, passphrase or recovery code" }
                    input id="secret" name="secret" type="password" autocomplete="off";
                    button type="submit" { "Unlock" }
                }
            }
            form method="post" action="/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Log out" }
            }
        },
    )
}

/// A YubiKey unlock in progress: the page reloads itself every second until it is over.
pub(super) fn unlock_wait(touch: bool) -> String {
    page(
        "Unlocking with the YubiKey",
        Some(1),
        html! {
            @if touch {
                p class="note" id="touch" { strong { "Touch your key now." } " The YubiKey is blinking: touch its contact." }
            } @else {
                p id="waiting" { "Talking to the YubiKey..." }
            }
            p { "This page follows the unlock and shows its outcome." }
        },
    )
}

/// `name` as one URL path segment (percent-encoded but for unreserved characters).
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The navigation every signed-in page carries.
pub(super) fn nav() -> Markup {
    html! {
        nav {
            a href="/status" { "Status" } " · "
            a href="/vaults" { "Vaults" } " · "
            a href="/peers" { "Peers" } " · "
            a href="/backups" { "Backups" } " · "
            a href="/keyslots" { "Keyslots" } " · "
            a href="/audit" { "Audit log" } " · "
            a href="/updates" { "Updates" } " · "
            a href="/settings" { "Settings" } " · "
            a href="/account" { "Account" }
        }
    }
}

pub(super) fn vaults(
    list: &[node::vault::VaultRecord],
    csrf: &str,
    note: Option<&Outcome>,
) -> String {
    layout(
        "Vaults",
        html! {
            (nav())
            (outcome(note))
            form method="post" action="/vaults" {
                input type="hidden" name="csrf" value=(csrf);
                label for="name" { "New vault" }
                input id="name" name="name" required;
                button type="submit" { "Create" }
            }
            @if list.is_empty() {
                p { "No vaults yet." }
            }
            ul {
                @for v in list {
                    li {
                        a href={ "/vaults/" (segment(&v.name)) } { (v.name) }
                        " "
                        code { (v.id.to_string()) }
                        @if let Some(pull) = &v.sync.last_pull {
                            " · last pull " (if pull.ok { "ok" } else { "FAILED" }) ": " (pull.message)
                        }
                    }
                }
            }
        },
    )
}

pub(super) fn vault(
    view: &VaultDetail,
    csrf: &str,
    note: Option<&Outcome>,
    revealed: Option<(&str, &[u8])>,
) -> String {
    let action = |what: &str| format!("/vaults/{}/{what}", segment(&view.name));
    layout(
        &format!("Vault {}", view.name),
        html! {
            (nav())
            (outcome(note))
            @if let Some((path, value)) = revealed {
                h2 { "Value of " (path) }
                pre id="revealed" { (String::from_utf8_lossy(value)) }
            }
            h2 { "Secrets (top level; a value is shown only when you reveal it)" }
            table {
                @for e in &view.entries {
                    tr {
                        td { (e.name) @if e.kind == node::vault::EntryType::Dir { "/" } }
                        td {
                            @if e.kind != node::vault::EntryType::Dir {
                                form method="post" action=(action("reveal")) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="path" value=(e.name);
                                    button type="submit" id={ "reveal-" (e.name) } { "Reveal" }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action=(action("secrets")) {
                input type="hidden" name="csrf" value=(csrf);
                label for="path" { "New secret: path" }
                input id="path" name="path" required;
                label for="value" { "Value" }
                input id="value" name="value" type="password" autocomplete="off" required;
                button type="submit" { "Save secret" }
            }
            h2 { "Shared with" }
            ul {
                @for s in &view.shares {
                    li {
                        code { (s.node.to_string()) } ": "
                        (s.permissions.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "))
                    }
                }
            }
            form method="post" action=(action("share")) {
                input type="hidden" name="csrf" value=(csrf);
                label for="who" { "Share with (NodeId or provider:identity)" }
                input id="who" name="who" required;
                label for="action" { "Action" }
                select id="action" name="action" {
                    option value="grant" { "Grant clone and pull" }
                    option value="revoke" { "Revoke everything" }
                }
                button type="submit" { "Apply" }
            }
            h2 { "History" }
            table {
                @for c in &view.commits {
                    tr { td { code { (&c.oid[..12.min(c.oid.len())]) } } td { (c.message) } }
                }
            }
        },
    )
}

/// The peers page's pairing code and LAN listing.
pub(super) struct PeersExtra<'a> {
    /// `pk://NodeId@host:port`, when unlocked.
    pub(super) pairing: Option<&'a str>,
    /// Nodes found on the LAN, when asked for.
    pub(super) lan: Option<&'a Result<Vec<node::lan::Found>, String>>,
    /// Whether LAN discovery is on.
    pub(super) lan_enabled: bool,
}

pub(super) fn peers(
    view: &PeersView,
    extra: &PeersExtra<'_>,
    csrf: &str,
    note: Option<&Outcome>,
) -> String {
    layout(
        "Peers",
        html! {
            (nav())
            (outcome(note))
            @if let Some(pairing) = extra.pairing {
                h2 { "Pair a laptop" }
                p { "Scan this code, or run " code { "pk nodes add" } " with the NodeId and address in it:" }
                img id="pairing-qr" src="/peers/pair.svg" alt=(pairing) width="240" height="240";
                p { code id="pairing" { (pairing) } }
            }
            form method="post" action="/peers" {
                input type="hidden" name="csrf" value=(csrf);
                label for="node_id" { "Add a node: NodeId" }
                input id="node_id" name="node_id" required;
                label for="addr" { "Address (host:port)" }
                input id="addr" name="addr" required;
                button type="submit" { "Add node" }
            }
            h2 { "Known nodes" }
            table {
                @for n in &view.nodes {
                    tr {
                        td { code { (n.node_id.to_string()) } }
                        td { (n.addrs.join(", ")) }
                        td {
                            form method="post" action="/peers/ping" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="node_id" value=(n.node_id.to_string());
                                button type="submit" { "Ping" }
                            }
                        }
                    }
                }
            }
            h2 { "Open connections" }
            ul {
                @for c in &view.connections {
                    li { code { (c.node) } " " (c.addr) " (" (c.direction) ", rtt " (c.rtt_ms) " ms)" }
                }
            }
            (lan_section(extra, csrf))
        },
    )
}

/// The peers page's LAN part: the link that looks for nodes, or what it found, each
/// with a button that adds it.
fn lan_section(extra: &PeersExtra<'_>, csrf: &str) -> Markup {
    html! {
        h2 { "On the LAN" }
        @match extra.lan {
            None => {
                @if extra.lan_enabled {
                    p { a href="/peers?discover=1" id="discover" { "Look for nodes on the LAN" } " (listens for a moment)" }
                } @else {
                    p { "LAN discovery is off (lan = true in config.toml turns it on)." }
                }
            }
            Some(Err(e)) => p class="error" { (e) },
            Some(Ok(found)) => {
                @if found.is_empty() {
                    p { "No node answered on the LAN." }
                }
                table {
                    @for f in found {
                        @let addr = f.addrs.first().map(ToString::to_string).unwrap_or_default();
                        tr {
                            td { code { (f.node_id) } }
                            td { (addr) }
                            td {
                                form method="post" action="/peers" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="node_id" value=(f.node_id);
                                    input type="hidden" name="addr" value=(addr);
                                    button type="submit" { "Add" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn backups(
    list: &[node::api::backups::Backup],
    csrf: &str,
    note: Option<&Outcome>,
) -> String {
    layout(
        "Backups",
        html! {
            (nav())
            (outcome(note))
            p { "A scheduled pull keeps a local copy of another node's vault: it is cloned now and pulled again on the schedule." }
            form method="post" action="/backups" {
                input type="hidden" name="csrf" value=(csrf);
                label for="vault" { "Vault (its name on the other node)" }
                input id="vault" name="vault" required;
                label for="node_id" { "From node (NodeId)" }
                input id="node_id" name="node_id" required;
                label for="every_min" { "Every (minutes)" }
                input id="every_min" name="every_min" value="60" required;
                label for="name" { "Local name (optional)" }
                input id="name" name="name";
                button type="submit" { "Schedule" }
            }
            h2 { "Scheduled pulls" }
            @if list.is_empty() {
                p { "None yet." }
            }
            table {
                tr { th { "Local vault" } th { "From" } th { "Every" } th { "Last result" } th {} }
                @for b in list {
                    tr {
                        td { (b.name) }
                        td { code { (b.node) } " " (b.vault) }
                        td { (b.every_s / 60) " min" }
                        td class="result" { (pull_result(b.last.as_ref())) }
                        td {
                            form method="post" action="/backups/remove" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="name" value=(b.name);
                                button type="submit" { "Stop" }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The fields that say which existing token authorises a keyslot change.
fn authorisation(form: &str) -> Markup {
    let method = format!("{form}-auth_method");
    let secret = format!("{form}-auth_secret");
    html! {
        label for=(method) { "Authorise with" }
        select id=(method) name="auth_method" { (method_options()) }
        label for=(secret) { "Its PIN, passphrase or recovery code" }
        input id=(secret) name="auth_secret" type="password" autocomplete="off";
    }
}

pub(super) fn keyslots(
    slots: &[SlotView],
    pkcs11_configured: bool,
    csrf: &str,
    note: Option<&Outcome>,
) -> String {
    layout(
        "Keyslots",
        html! {
            (nav())
            (outcome(note))
            p { "Each keyslot opens the node's data key with one token. Adding or removing one needs a token that opens it now." }
            table {
                tr { th { "#" } th { "Kind" } th { "Label" } th { "Needs" } th {} }
                @for slot in slots {
                    tr {
                        td { (slot.id) }
                        td { (slot.kind) @if !slot.hardware { " (not hardware)" } }
                        td { (slot.label) }
                        td {
                            (slot.needs.unwrap_or("nothing"))
                            @if let Some(pcrs) = &slot.pcrs { " (while PCRs " (pcrs) " hold)" }
                            @if let Some(signed) = &slot.signed_pcrs { " (while PCRs " (signed) " hold signed values)" }
                        }
                        td {
                            form method="post" action="/keyslots/test" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="slot" value=(slot.id);
                                @if let Some(needs) = slot.needs {
                                    input name="secret" type="password" autocomplete="off" placeholder=(needs) aria-label=(needs);
                                }
                                button type="submit" id={ "test-" (slot.id) } { "Test" }
                            }
                        }
                    }
                }
            }
            h2 { "Enrol a keyslot" }
            form method="post" action="/keyslots" {
                input type="hidden" name="csrf" value=(csrf);
                label for="kind" { "Token" }
                select id="kind" name="kind" {
                    option value="tpm" { "TPM" }
                    option value="yubikey" { "YubiKey (PIV slot 9D, touch to unlock)" }
                    @if pkcs11_configured {
                        option value="pkcs11" { "PKCS#11 token" }
                    }
                    option value="passphrase" { "Passphrase (not hardware)" }
                }
                label for="secret" { "The token's PIN, or the new passphrase" }
                input id="secret" name="secret" type="password" autocomplete="off";
                label for="pcrs" { "TPM: bind to these PCRs (e.g. 7 or 0,7,12; empty for none). On an image that signs its kernels' PCR 11 values, the slot is also bound to those signatures." }
                input id="pcrs" name="pcrs";
                @if pkcs11_configured {
                    label for="token_label" { "PKCS#11: token label" }
                    input id="token_label" name="token_label";
                }
                label for="label" { "Label (optional)" }
                input id="label" name="label";
                (authorisation("enrol"))
                button type="submit" { "Enrol" }
            }
            h2 { "Remove a keyslot" }
            form method="post" action="/keyslots/remove" {
                input type="hidden" name="csrf" value=(csrf);
                label for="slot" { "Keyslot #" }
                select id="slot" name="slot" {
                    @for slot in slots {
                        option value=(slot.id) { (slot.id) ": " (slot.kind) " " (slot.label) }
                    }
                }
                (authorisation("remove"))
                button type="submit" { "Remove" }
            }
        },
    )
}

pub(super) fn audit(events: &[node::audit::AuditEvent]) -> String {
    layout(
        "Audit log",
        html! {
            (nav())
            table {
                tr { th { "#" } th { "Event" } th { "Details" } }
                @for e in events {
                    tr {
                        td { (e.seq) }
                        td { (e.event) }
                        td { code { (serde_json::Value::Object(e.fields.clone()).to_string()) } }
                    }
                }
            }
        },
    )
}

pub(super) fn locked() -> String {
    layout(
        "Locked",
        html! {
            (nav())
            p { "The node is locked: unlock it on the " a href="/status" { "status page" } " first." }
        },
    )
}

pub(super) fn account(csrf: &str, note: Option<&Outcome>) -> String {
    layout(
        "Admin account",
        html! {
            (nav())
            (outcome(note))
            h2 { "Change the admin password" }
            p { "Every other session is signed out. Wrong current passwords count towards the login throttle." }
            form method="post" action="/account/password" {
                input type="hidden" name="csrf" value=(csrf);
                label for="current" { "Current password" }
                input id="current" name="current" type="password" autocomplete="current-password" required;
                (new_password_fields())
                button type="submit" id="change-password" { "Change password" }
            }
            form method="post" action="/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Log out" }
            }
        },
    )
}

/// The new admin password, twice (the reset and the change forms).
fn new_password_fields() -> Markup {
    html! {
        label for="new" { "New admin password (at least " (super::MIN_PASSWORD) " characters)" }
        input id="new" name="new" type="password" autocomplete="new-password" minlength=(super::MIN_PASSWORD) required;
        label for="confirm" { "New password again" }
        input id="confirm" name="confirm" type="password" autocomplete="new-password" required;
    }
}
