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
