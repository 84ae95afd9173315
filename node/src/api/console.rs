//! What the appliance's admin console asks of the agent.

use serde::{Deserialize, Serialize};

use super::domain;

domain! {
    /// Calls from the admin console.
    ConsoleRequest in Console {
        Event -> (),
        Account -> AccountCheck,
    }
}

/// The console records one of its events in the audit log (now, or at the next unlock
/// if locked).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub event: ConsoleEvent,
    /// The browser's address.
    pub client: String,
}

/// Checks or binds the console's admin account (unlocked only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    /// A digest of the account's stored password hash.
    pub account: String,
    /// Check, change or reset.
    pub binding: AccountBinding,
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
    /// An update bundle was installed into the slot that is not running.
    UpdateInstalled,
    /// The installer refused an update bundle before writing anything.
    UpdateRefused,
    /// An install failed after writing started (the other slot was emptied), or the
    /// installer could not be reached.
    UpdateFailed,
    /// A downgrade's recovery code did not open the node.
    UpdateApprovalFailed,
    /// The admin asked the installer to reboot the box.
    RebootRequested,
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
            ConsoleEvent::UpdateInstalled => "console.update_installed",
            ConsoleEvent::UpdateRefused => "console.update_refused",
            ConsoleEvent::UpdateFailed => "console.update_failed",
            ConsoleEvent::UpdateApprovalFailed => "console.update_approval_failed",
            ConsoleEvent::RebootRequested => "console.reboot",
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

/// The agent's answer to [`Account`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCheck {
    /// The node held no account, or was told of a change: it holds this one now.
    Bound,
    /// The account is the one the node holds.
    Matches,
    /// Another account is bound: this one was not made through the console.
    Mismatch,
}
