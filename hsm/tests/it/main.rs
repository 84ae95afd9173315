//! Backend test suite: one set of tests, instantiated once per protector, against real
//! simulators (swtpm, SoftHSM2), plus the tests only one backend can have (the TPM's
//! signed PCR policies and NV counter among them), and the emulated PIV card behind a
//! private pcscd.
//!
//! Custom harness (libtest-mimic) so that `SOFTHSM2_CONF` is set before any thread
//! exists: SoftHSM2 reads it once per process, at `C_Initialize`.

mod fixtures;
mod piv;
mod pkcs11;
mod suite;
mod tpm;
mod tpm_counter;
mod tpm_signed;

use libtest_mimic::{Arguments, Failed, Trial};

/// What a test returns: `Err` with a message fails it.
type TestResult = Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    fixtures::init_process();
    let mut trials = Vec::new();
    suite::trials(&mut trials);
    tpm::trials(&mut trials);
    tpm_signed::trials(&mut trials);
    tpm_counter::trials(&mut trials);
    pkcs11::trials(&mut trials);
    piv::trials(&mut trials);
    libtest_mimic::run(&args, trials).exit();
}

/// Builds a trial from a named test function.
fn trial(name: &str, test: fn() -> TestResult) -> Trial {
    Trial::test(name, test)
}
