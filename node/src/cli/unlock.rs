//! The unlock flow shared by the commands that unlock locally (`pk keyslots`, in
//! `pk-node`) and those that unlock the agent (`pk agent start`, `pk agent unlock`):
//! which keyslot to try and with which secret. Prompts happen here, on the user's side.

use hsm_core::{Kind, Pin};

use crate::keyslots::{Keyslot, KeyslotError, Keyslots};
use crate::tokens::{UnlockChoice, secret_name};

use super::args::UnlockArgs;
use super::error::CliError;
use super::secrets::SecretSource;

/// Decides how to unlock (a named slot, the recovery code, the slots that need no
/// secret, or the one slot that takes a secret), reads the secret, and runs `attempt`
/// with that choice, locally or in the agent.
pub(crate) fn unlock_flow<T>(
    keyslots: &Keyslots,
    args: &UnlockArgs,
    only: Option<u32>,
    attempt: impl FnMut(UnlockChoice) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let sources = Sources {
        password: SecretSource {
            file: args.password_file.as_deref(),
            env: "PK_PASSWORD",
            flag: "--password-file",
        },
        recovery: SecretSource {
            file: args.recovery_code_file.as_deref(),
            env: "PK_RECOVERY_CODE",
            flag: "--recovery-code-file",
        },
    };
    let target = only.or(args.unlock_slot);
    let recovery_env = std::env::var_os(sources.recovery.env).is_some_and(|v| !v.is_empty());
    if args.recovery_code_file.is_some() || (recovery_env && args.password_file.is_none()) {
        return with_recovery_code(keyslots, &sources.recovery, target, attempt);
    }
    match target {
        Some(id) => with_slot(keyslots, &sources, id, attempt),
        None => with_any_slot(keyslots, &sources, attempt),
    }
}

/// Where the secrets come from: the passphrase or PIN, and the recovery code.
struct Sources<'a> {
    password: SecretSource<'a>,
    recovery: SecretSource<'a>,
}

impl Sources<'_> {
    /// The source of `slot`'s secret.
    fn of(&self, slot: &Keyslot) -> &SecretSource<'_> {
        if slot.header.kind == Kind::Recovery {
            &self.recovery
        } else {
            &self.password
        }
    }

    /// `slot`'s secret, if it takes one and one is supplied.
    fn secret_for(&self, slot: &Keyslot) -> Result<Option<Pin>, CliError> {
        match secret_name(&slot.sealed) {
            Some(name) => self
                .of(slot)
                .read(&format!("{name} for keyslot {}", slot.header.id), false),
            None => Ok(None),
        }
    }
}

/// The error for a slot whose secret was not supplied.
fn needs(slot: &Keyslot, source: &SecretSource<'_>) -> CliError {
    let name = secret_name(&slot.sealed).unwrap_or("secret");
    CliError::usage(format!(
        "keyslot {} needs its {name}: pass {} <file>, set {}, or run on a terminal",
        slot.header.id, source.flag, source.env
    ))
}

/// With the recovery code given: the recovery slot (the one `target` names, which must
/// be it).
fn with_recovery_code<T>(
    keyslots: &Keyslots,
    recovery: &SecretSource<'_>,
    target: Option<u32>,
    mut attempt: impl FnMut(UnlockChoice) -> Result<T, CliError>,
) -> Result<T, CliError> {
    if let Some(id) = target {
        let slot = keyslots.slot(id).ok_or(KeyslotError::NoSuchSlot(id))?;
        if slot.header.kind != Kind::Recovery {
            return Err(CliError::usage(format!(
                "keyslot {id} is a {} slot, not the recovery slot",
                slot.header.kind
            )));
        }
    }
    let slot = keyslots
        .slots()
        .iter()
        .find(|s| s.header.kind == Kind::Recovery && target.is_none_or(|t| t == s.header.id))
        .ok_or(KeyslotError::NoSlotOfKind(Kind::Recovery))?;
    let code = recovery.require("recovery code", false)?;
    attempt(UnlockChoice {
        slot: Some(slot.header.id),
        kind: None,
        secret: Some(code),
    })
}

/// The slot the user named, with its secret.
fn with_slot<T>(
    keyslots: &Keyslots,
    sources: &Sources<'_>,
    id: u32,
    mut attempt: impl FnMut(UnlockChoice) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let slot = keyslots.slot(id).ok_or(KeyslotError::NoSuchSlot(id))?;
    let secret = sources.secret_for(slot)?;
    if secret.is_none() && slot.sealed.needs_secret() {
        return Err(needs(slot, sources.of(slot)));
    }
    attempt(UnlockChoice {
        slot: Some(id),
        kind: None,
        secret,
    })
}

/// No slot named: the slots that need no secret first, then the one slot that takes a
/// secret (or one passphrase for all passphrase slots).
fn with_any_slot<T>(
    keyslots: &Keyslots,
    sources: &Sources<'_>,
    mut attempt: impl FnMut(UnlockChoice) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let mut first_error = None;
    if keyslots.slots().iter().any(|s| !s.sealed.needs_secret()) {
        match attempt(UnlockChoice::default()) {
            Ok(done) => return Ok(done),
            Err(e) => first_error = Some(e),
        }
    }
    let with_secret: Vec<&Keyslot> = keyslots
        .slots()
        .iter()
        .filter(|s| s.sealed.needs_secret() && s.header.kind != Kind::Recovery)
        .collect();
    match with_secret.as_slice() {
        [] => Err(first_error.unwrap_or_else(|| {
            CliError::usage("only the recovery slot is left: pass --recovery-code-file")
        })),
        [slot] => match sources.secret_for(slot)? {
            Some(secret) => attempt(UnlockChoice {
                slot: Some(slot.header.id),
                kind: None,
                secret: Some(secret),
            }),
            // Nothing to ask with: the failure of the slots that needed nothing says more.
            None => Err(first_error.unwrap_or_else(|| needs(slot, &sources.password))),
        },
        // Passphrases cost no token retries, so one passphrase may be tried on all.
        many if many.iter().all(|s| s.header.kind == Kind::Soft) => {
            let secret = sources.password.require("passphrase", false)?;
            attempt(UnlockChoice {
                slot: None,
                kind: Some(Kind::Soft),
                secret: Some(secret),
            })
        }
        many => Err(CliError::usage(format!(
            "several keyslots need a secret ({}); choose one with --unlock-slot",
            many.iter()
                .map(|s| format!("{}: {}", s.header.id, s.header.kind))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
