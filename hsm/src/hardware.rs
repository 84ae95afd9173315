//! [`Hardware`]: this crate's drivers behind hsm-core's [`Drivers`] trait.

use hsm_core::drivers::{PivKey, Pkcs11Key};
use hsm_core::tpm::TpmOptions;
use hsm_core::yubikey::EventSink;
use hsm_core::{Drivers, Pin, Protector};

use crate::pkcs11::Pkcs11Protector;
use crate::tpm::TpmProtector;
use crate::yubikey::YubiKeyProtector;

/// The real token drivers: libtss2 for the TPM, the PKCS#11 module a keyslot names,
/// libpcsclite for YubiKeys. What a program that uses tokens hands the node library.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hardware;

impl Drivers for Hardware {
    fn tpm(&self, tcti: &str, pin: Option<Pin>, options: TpmOptions) -> Box<dyn Protector> {
        Box::new(TpmProtector::new(tcti, pin).with_options(options))
    }

    fn pkcs11(&self, key: Pkcs11Key<'_>, pin: Pin) -> Box<dyn Protector> {
        Box::new(match key {
            Pkcs11Key::New { module, label } => Pkcs11Protector::new(module, label, pin),
            Pkcs11Key::Stored { module: None } => Pkcs11Protector::for_unlock(pin),
            Pkcs11Key::Stored {
                module: Some(module),
            } => Pkcs11Protector::for_unlock(pin).with_module(module),
        })
    }

    fn yubikey(
        &self,
        serial: Option<u32>,
        pin: Option<Pin>,
        new_key: Option<PivKey>,
        events: Option<EventSink>,
    ) -> Box<dyn Protector> {
        let mut yk = YubiKeyProtector::new(serial, pin);
        if let Some(key) = new_key {
            yk = yk.with_key(key.slot, key.pin_rule, key.touch_rule);
            if let Some(management) = key.management_key {
                yk = yk.with_management_key(*management);
            }
        }
        if let Some(events) = events {
            yk = yk.with_events(events);
        }
        Box::new(yk)
    }
}
