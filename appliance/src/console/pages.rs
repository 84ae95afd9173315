//! The console's pages, rendered on the server (maud escapes every value).

use maud::{DOCTYPE, Markup, html};

use super::{FirstToken, StatusView};

/// The one stylesheet (served from the console itself: the CSP allows nothing else).
pub(super) const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1d2125}\
h1{font-size:1.4rem}label{display:block;margin:.6rem 0 .2rem}input,select{font-size:1rem;padding:.3rem;width:100%;box-sizing:border-box}\
button{margin-top:.8rem;font-size:1rem;padding:.4rem 1rem}.note{background:#eef3f8;padding:.6rem;border-radius:4px}\
.error{background:#fbeaea;padding:.6rem;border-radius:4px}code{word-break:break-all}table{border-collapse:collapse}td,th{padding:.2rem .6rem;text-align:left}";

fn layout(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
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
                    FirstToken::Tpm(_) => {
                        p { "The node's data key will be sealed by this machine's TPM." }
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

pub(super) fn login(fingerprint: &str, error: Option<&str>) -> String {
    layout(
        "Log in",
        html! {
            (message(error, "error"))
            form method="post" action="/login" {
                label for="password" { "Admin password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
            p { "Certificate fingerprint (SHA-256): " code { (fingerprint) } }
        },
    )
}

pub(super) fn status(view: &StatusView, csrf: &str, note: Option<&str>) -> String {
    layout(
        "Status",
        html! {
            (nav())
            (message(note, "note"))
            table {
                tr { th { "State" } td id="state" { (view.state) } }
                tr { th { "NodeId" } td { code { (view.node_id.as_deref().unwrap_or("(locked)")) } } }
                tr { th { "Peer endpoint" } td { (view.peer_addr.as_deref().unwrap_or("-")) } }
                tr { th { "Uptime" } td { (view.uptime_s) " s" } }
                tr { th { "Version" } td { (view.version) } }
                tr { th { "Certificate" } td { code { (view.fingerprint) } } }
            }
            h2 { "Keyslots" }
            ul {
                @for (id, kind, label) in &view.keyslots {
                    li { (id) ": " (kind) " " (label) }
                }
            }
            @if view.state == "unlocked" {
                form method="post" action="/lock" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Lock (forget the keys)" }
                }
            } @else {
                form method="post" action="/unlock" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="method" { "Unlock with" }
                    select id="method" name="method" {
                        option value="passphrase" { "Passphrase" }
                        option value="tpm" { "TPM" }
                        option value="pkcs11" { "PKCS#11 token PIN" }
                        option value="yubikey" { "YubiKey PIN (then touch the key)" }
                        option value="recovery" { "Recovery code" }
                    }
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
fn nav() -> Markup {
    html! {
        nav {
            a href="/status" { "Status" } " · "
            a href="/vaults" { "Vaults" } " · "
            a href="/peers" { "Peers" } " · "
            a href="/audit" { "Audit log" }
        }
    }
}

pub(super) fn vaults(list: &[node::vault::VaultRecord], csrf: &str, note: Option<&str>) -> String {
    layout(
        "Vaults",
        html! {
            (nav())
            (message(note, "note"))
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

pub(super) struct VaultView<'a> {
    pub(super) name: &'a str,
    pub(super) entries: &'a [node::vault::Entry],
    pub(super) commits: &'a [node::vault::CommitInfo],
    pub(super) shares: &'a [node::nodes::Share],
}

pub(super) fn vault(view: &VaultView<'_>, csrf: &str, note: Option<&str>) -> String {
    layout(
        &format!("Vault {}", view.name),
        html! {
            (nav())
            (message(note, "note"))
            h2 { "Secrets (top level; values are not shown)" }
            ul {
                @for e in view.entries {
                    li { (e.name) @if e.kind == node::vault::EntryType::Dir { "/" } }
                }
            }
            form method="post" action={ "/vaults/" (segment(view.name)) "/secrets" } {
                input type="hidden" name="csrf" value=(csrf);
                label for="path" { "New secret: path" }
                input id="path" name="path" required;
                label for="value" { "Value" }
                input id="value" name="value" type="password" autocomplete="off" required;
                button type="submit" { "Save secret" }
            }
            h2 { "Shared with" }
            ul {
                @for s in view.shares {
                    li {
                        code { (s.node.to_string()) } ": "
                        (s.permissions.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "))
                    }
                }
            }
            form method="post" action={ "/vaults/" (segment(view.name)) "/share" } {
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
                @for c in view.commits {
                    tr { td { code { (&c.oid[..12.min(c.oid.len())]) } } td { (c.message) } }
                }
            }
        },
    )
}

pub(super) fn peers(
    nodes: &[node::nodes::NodeRecord],
    connections: &[node::api::ConnectionInfo],
    csrf: &str,
    note: Option<&str>,
) -> String {
    layout(
        "Peers",
        html! {
            (nav())
            (message(note, "note"))
            form method="post" action="/peers" {
                input type="hidden" name="csrf" value=(csrf);
                label for="node_id" { "Add a node: NodeId" }
                input id="node_id" name="node_id" required;
                label for="addr" { "Address (host:port)" }
                input id="addr" name="addr" required;
                button type="submit" { "Add node" }
            }
            h2 { "Known nodes" }
            ul {
                @for n in nodes {
                    li {
                        code { (n.node_id.to_string()) } " at " (n.addrs.join(", "))
                    }
                }
            }
            h2 { "Open connections" }
            ul {
                @for c in connections {
                    li { code { (c.node) } " " (c.addr) " (" (c.direction) ", rtt " (c.rtt_ms) " ms)" }
                }
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
