//! A TPM 2.0 NV monotonic counter (`TPM_NT_COUNTER`), to detect a rolled-back data
//! partition.
//!
//! The appliance keeps a generation number on its data partition and the same number in
//! this counter, and the counter must never be ahead of the partition: a copy of the
//! partition from before the last bump holds a lower generation than the counter, and is
//! refused. To bump, write the new generation to the partition first, then
//! [`NvCounter::increment`]: a crash between the two leaves the counter behind, never
//! ahead.
//!
//! # The index
//!
//! [`NvCounter::open_or_define`] takes the index that is there if it is exactly what it
//! would define, and refuses anything else at that index
//! ([`CounterError::NotPkCounter`]) rather than redefine it. When the index is absent it
//! defines it in the owner hierarchy, with the owner's empty authorisation (as the
//! protector's primary key assumes), as:
//!
//! - `TPM_NT_COUNTER`: 8 bytes that only `TPM2_NV_Increment` changes, by one; SHA-256
//!   name, no policy;
//! - `AUTHREAD | AUTHWRITE` with an empty authValue: the boot-time check needs no secret;
//! - `NO_DA`: an empty authValue has nothing to guess, and without the attribute a
//!   dictionary-attack lockout (wrong PINs on a TPM keyslot) would make the TPM refuse
//!   even the empty authValue (`TPM_RC_LOCKOUT`), and the boot-time check with it;
//! - not `ORDERLY`: an orderly counter is kept in RAM, and after a power cut it comes back
//!   ahead of the last value it returned (the TPM sets the low bits, `MAX_ORDERLY_COUNT`,
//!   of the value it last saved), so ahead of the partition. Each increment is therefore
//!   a write to the TPM's NV memory, which wears and is rate-limited (`TPM_RC_NV_RATE`):
//!   bump once per update, not once per write.
//!
//! A counter cannot be read until it has been incremented once (`TPMA_NV_WRITTEN`), so
//! defining it increments it: on a TPM that never had a counter its first value is 1.
//! Indexes are taken from the owner's range of the TCG registry, [`OWNER_NV_INDEXES`];
//! [`PK_ROLLBACK_COUNTER_INDEX`] is the appliance's.
//!
//! # Who can move it
//!
//! Anyone who can send the TPM commands can increment the counter (its authValue is
//! empty); that puts it ahead of the partition, a refusal to boot rather than a hidden
//! rollback. Lowering it would take undefining it (owner authorisation, empty by default)
//! and defining it again, and that does not lower it: a TPM 2.0 counter's first increment
//! continues from the largest value any deleted counter of that TPM had, which the TPM
//! keeps in NV (`TPM2_NV_Increment` in the reference implementation reads it with
//! `NvReadMaxCount`). swtpm, built on that code (libtpms), does so, and counts the owner
//! indexes `TPM2_Clear` deletes as deleted: `hsm/tests/it/tpm_counter.rs` undefines a
//! counter at 5, and clears the TPM with another at 8, and each comes back one above.
//! On swtpm a counter that is still defined does not raise a new one's start (older
//! revisions of the reference code looked at those too); the rule protects this counter
//! from its own deletion, which is all it is needed for.
//!
//! # Connections
//!
//! Each operation opens its own connection, as the protector does. Nothing secret passes,
//! so commands are authorised in the password session (the empty authValue in the
//! clear), which is no TPM object: nothing is loaded and nothing is left to flush. Every
//! operation reads the index's public area and checks it again, so a counter replaced by
//! something else since it was opened is refused, not read.

use std::ops::RangeInclusive;

use tss_esapi::attributes::{NvIndexAttributes, NvIndexAttributesBuilder};
use tss_esapi::constants::{NvIndexType, Tss2ResponseCodeKind};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::NvPublicBuilder;
use tss_esapi::tss2_esys::TPMA_NV;
use tss_esapi::{Context, Error as TssError};

use super::{connect, tss_kind};

/// The NV index of the appliance's rollback counter: in [`OWNER_NV_INDEXES`], ending in
/// the bytes `50 4B` ("PK").
pub const PK_ROLLBACK_COUNTER_INDEX: u32 = 0x0180_504B;

/// The NV indexes the TCG's "Registry of Reserved TPM 2.0 Handles and Localities" leaves
/// to the TPM's owner. The rest of `0x01000000..=0x01FFFFFF` belongs, by convention, to
/// TPM and platform manufacturers and to the TCG (the EK certificates at `0x01C0xxxx`);
/// the TPM does not enforce that, [`NvCounter::open_or_define`] does.
pub const OWNER_NV_INDEXES: RangeInclusive<u32> = 0x0180_0000..=0x01BF_FFFF;

/// A counter's data: a big-endian `u64`.
const COUNTER_SIZE: u16 = 8;

/// Why the counter could not be opened, read or incremented.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CounterError {
    /// No TPM answers at the TCTI, or the TCTI string is not valid.
    #[error("TPM not available: {what}")]
    TpmAbsent {
        /// Which TPM was looked for, and why it was not reached.
        what: String,
    },
    /// The index is outside [`OWNER_NV_INDEXES`].
    #[error(
        "NV index {index:#010x} is outside the owner range 0x01800000..=0x01bfffff; \
         pick an index in that range"
    )]
    IndexOutOfRange {
        /// The index asked for.
        index: u32,
    },
    /// Something else is at the index (another type, other attributes, an authValue):
    /// it is left alone. Pick another index, or remove it if it is not needed.
    #[error("NV index {index:#010x} exists and is not a pk counter: {found}")]
    NotPkCounter {
        /// The index asked for.
        index: u32,
        /// What is there instead.
        found: String,
    },
    /// The counter is not there: the TPM was cleared, or someone removed it.
    /// [`NvCounter::open_or_define`] defines it again, above its last value.
    #[error("NV index {index:#010x} is not defined: the TPM was cleared or the counter removed")]
    Undefined {
        /// The index asked for.
        index: u32,
    },
    /// The TPM's owner hierarchy has a password; the counter is defined with the empty
    /// one, as the TPM protector's primary key is.
    #[error(
        "cannot define NV index {index:#010x}: the TPM's owner hierarchy has a password \
         (pk expects the empty one; tpm2_changeauth -c owner -p OLD clears it)"
    )]
    OwnerAuthRequired {
        /// The index asked for.
        index: u32,
    },
    /// Another TPM failure, as the TPM or libtss2 describes it.
    #[error("TPM error {doing} NV index {index:#010x}: {message}")]
    Tpm {
        /// The index asked for.
        index: u32,
        /// What was being done ("reading", "incrementing", ...).
        doing: &'static str,
        /// The TPM's or libtss2's message.
        message: String,
    },
}

/// The attributes of a pk counter; `written` as the TPM reports it, since it is state,
/// not definition.
fn counter_attributes(written: bool) -> Result<NvIndexAttributes, TssError> {
    NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_auth_read(true)
        .with_auth_write(true)
        .with_no_da(true)
        .with_written(written)
        .build()
}

/// A monotonic counter at one NV index of the TPM at a TCTI. It holds where the counter
/// is, not a connection: each operation opens one (see the module doc).
#[derive(Debug, Clone)]
pub struct NvCounter {
    tcti: String,
    index: u32,
}

impl NvCounter {
    /// The counter at `index` of the TPM at `tcti` (for example [`super::DEFAULT_TCTI`]),
    /// defined and incremented once if it is absent; an index that holds anything but a
    /// pk counter is refused ([`CounterError::NotPkCounter`]), never redefined.
    pub fn open_or_define(tcti: &str, index: u32) -> Result<NvCounter, CounterError> {
        let counter = NvCounter {
            tcti: tcti.to_owned(),
            index,
        };
        let handle = counter.handle()?;
        let mut ctx = counter.connect()?;
        let nv = match counter.find(&mut ctx, handle)? {
            Some(nv) => nv,
            None => counter.define(&mut ctx, handle)?,
        };
        if !counter.check(&mut ctx, nv)? {
            // Defined but never incremented (just now, or by a run that stopped there):
            // unreadable until it is.
            counter.run(&mut ctx, "incrementing", |ctx| {
                ctx.nv_increment(NvAuth::NvIndex(nv), nv)
            })?;
        }
        Ok(counter)
    }

    /// The NV index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The counter's value.
    pub fn read(&self) -> Result<u64, CounterError> {
        let mut ctx = self.connect()?;
        let nv = self.existing(&mut ctx)?;
        self.read_value(&mut ctx, nv)
    }

    /// Adds one to the counter and returns the value after it (other writers' increments
    /// in between included).
    pub fn increment(&self) -> Result<u64, CounterError> {
        let mut ctx = self.connect()?;
        let nv = self.existing(&mut ctx)?;
        self.run(&mut ctx, "incrementing", |ctx| {
            ctx.nv_increment(NvAuth::NvIndex(nv), nv)
        })?;
        self.read_value(&mut ctx, nv)
    }

    fn connect(&self) -> Result<Context, CounterError> {
        connect(&self.tcti).map_err(|what| CounterError::TpmAbsent { what })
    }

    /// The index as a TPM handle, if it is in the owner's range.
    fn handle(&self) -> Result<NvIndexTpmHandle, CounterError> {
        let out_of_range = CounterError::IndexOutOfRange { index: self.index };
        if !OWNER_NV_INDEXES.contains(&self.index) {
            return Err(out_of_range);
        }
        NvIndexTpmHandle::new(self.index).map_err(|_| out_of_range)
    }

    /// The index, if it is defined.
    fn find(
        &self,
        ctx: &mut Context,
        handle: NvIndexTpmHandle,
    ) -> Result<Option<NvIndexHandle>, CounterError> {
        match ctx.tr_from_tpm_public(TpmHandle::NvIndex(handle)) {
            Ok(object) => Ok(Some(object.into())),
            Err(e) if matches!(tss_kind(&e), Some(Tss2ResponseCodeKind::Handle)) => Ok(None),
            Err(e) => Err(self.error("looking up", e)),
        }
    }

    /// The defined counter, checked.
    fn existing(&self, ctx: &mut Context) -> Result<NvIndexHandle, CounterError> {
        let nv = self
            .find(ctx, self.handle()?)?
            .ok_or(CounterError::Undefined { index: self.index })?;
        self.check(ctx, nv)?;
        Ok(nv)
    }

    /// Defines the counter, not yet written.
    fn define(
        &self,
        ctx: &mut Context,
        handle: NvIndexTpmHandle,
    ) -> Result<NvIndexHandle, CounterError> {
        let public = counter_attributes(false).and_then(|attributes| {
            NvPublicBuilder::new()
                .with_nv_index(handle)
                .with_index_name_algorithm(HashingAlgorithm::Sha256)
                .with_index_attributes(attributes)
                .with_data_area_size(usize::from(COUNTER_SIZE))
                .build()
        });
        let public = public.map_err(|e| self.error("defining", e))?;
        let defined = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_define_space(Provision::Owner, None, public)
        });
        match defined {
            Ok(nv) => Ok(nv),
            Err(e) => match tss_kind(&e) {
                // Another process defined it since we looked: take that one, once checked.
                Some(Tss2ResponseCodeKind::NvDefined) => self
                    .find(ctx, handle)?
                    .ok_or(CounterError::Undefined { index: self.index }),
                Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                    Err(CounterError::OwnerAuthRequired { index: self.index })
                }
                _ => Err(self.error("defining", e)),
            },
        }
    }

    /// Whether the index holds exactly what [`NvCounter::define`] defines (else an error
    /// that says what it holds), and whether it has been written.
    fn check(&self, ctx: &mut Context, nv: NvIndexHandle) -> Result<bool, CounterError> {
        let (public, _name) = ctx
            .execute_without_session(|ctx| ctx.nv_read_public(nv))
            .map_err(|e| self.error("reading the public area of", e))?;
        let not_ours = |found: String| CounterError::NotPkCounter {
            index: self.index,
            found,
        };
        let attributes = public.attributes();
        match attributes.index_type() {
            Ok(NvIndexType::Counter) => {}
            Ok(other) => return Err(not_ours(format!("its type is {other:?}, not Counter"))),
            Err(e) => return Err(not_ours(format!("its type is not known: {e}"))),
        }
        let expected =
            counter_attributes(attributes.written()).map_err(|e| self.error("checking", e))?;
        if attributes != expected {
            let raw = |a: NvIndexAttributes| TPMA_NV::try_from(a).unwrap_or_default();
            return Err(not_ours(format!(
                "its attributes are {:#010x}, a pk counter's are {:#010x}",
                raw(attributes),
                raw(expected)
            )));
        }
        if public.name_algorithm() != HashingAlgorithm::Sha256
            || !public.authorization_policy().value().is_empty()
        {
            return Err(not_ours(
                "it has a policy or a name algorithm other than SHA-256".into(),
            ));
        }
        Ok(attributes.written())
    }

    fn read_value(&self, ctx: &mut Context, nv: NvIndexHandle) -> Result<u64, CounterError> {
        let data = self.run(ctx, "reading", |ctx| {
            ctx.nv_read(NvAuth::NvIndex(nv), nv, COUNTER_SIZE, 0)
        })?;
        let bytes = <[u8; 8]>::try_from(data.value()).map_err(|_| CounterError::Tpm {
            index: self.index,
            doing: "reading",
            message: format!("the TPM returned {} bytes, not 8", data.value().len()),
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// Runs `f` authorised by the index's empty authValue.
    fn run<T>(
        &self,
        ctx: &mut Context,
        doing: &'static str,
        f: impl FnOnce(&mut Context) -> Result<T, TssError>,
    ) -> Result<T, CounterError> {
        ctx.execute_with_session(Some(AuthSession::Password), f)
            .map_err(|e| self.error(doing, e))
    }

    /// What a TPM error means for this counter.
    fn error(&self, doing: &'static str, e: TssError) -> CounterError {
        let index = self.index;
        match tss_kind(&e) {
            Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                CounterError::NotPkCounter {
                    index,
                    found: "its authValue is not empty".into(),
                }
            }
            Some(Tss2ResponseCodeKind::Handle) => CounterError::Undefined { index },
            _ => CounterError::Tpm {
                index,
                doing,
                message: e.to_string(),
            },
        }
    }
}
