//! Unlock latency per backend: how long one `unwrap` of a keyslot takes.
//!
//! Real simulators (swtpm, SoftHSM2), the `soft` passphrase at its default Argon2id
//! parameters, and the recovery code. Prints a Markdown table; the figures recorded in
//! `docs/reference/benchmarks.md` come from this program:
//!
//! ```text
//! cargo bench -p hsm --bench unlock            # full run
//! cargo bench -p hsm --bench unlock -- --quick # a few iterations each (CI smoke run)
//! ```

use std::time::{Duration, Instant};

use hsm::pkcs11::Pkcs11Protector;
use hsm::recovery::{RecoveryCode, RecoveryProtector};
use hsm::sim::{SoftHsm, Swtpm};
use hsm::soft::{Argon2Params, SoftProtector};
use hsm::tpm::{PcrBank, PcrPolicy, TpmProtector};
use hsm::{DataKey, Pin, Protector};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir()?;
    let softhsm = SoftHsm::create(&dir.path().join("softhsm"))?;
    softhsm.init_token("pk-bench", "so-pin-4711", "user-pin-1234")?;
    // SAFETY: no other thread exists yet; SoftHSM2 reads SOFTHSM2_CONF at C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", softhsm.conf()) };
    let tpm = Swtpm::start(&dir.path().join("swtpm"))?;

    let (n_fast, n_slow) = if quick { (3, 1) } else { (50, 5) };
    let pcrs = PcrPolicy::parse_list(PcrBank::Sha256, "0,7")?;
    let cases: Vec<(&str, Box<dyn Protector>, usize)> = vec![
        (
            "tpm (swtpm), no PIN",
            Box::new(TpmProtector::new(tpm.tcti(), None)),
            n_fast,
        ),
        (
            "tpm (swtpm), PIN + PCR 0,7",
            Box::new(TpmProtector::new(tpm.tcti(), Some(Pin::from("2468"))).with_pcr_policy(pcrs)),
            n_fast,
        ),
        (
            "pkcs11 (SoftHSM2)",
            Box::new(Pkcs11Protector::new(
                SoftHsm::module()?,
                "pk-bench",
                Pin::from("user-pin-1234"),
            )),
            n_fast,
        ),
        (
            "soft, default Argon2id (64 MiB, t=3, p=1)",
            Box::new(SoftProtector::new(
                Pin::from("correct horse battery staple"),
                Argon2Params::DEFAULT,
            )),
            n_slow,
        ),
        (
            "recovery code",
            Box::new(RecoveryProtector::new(RecoveryCode::generate())),
            n_fast,
        ),
    ];

    println!("| backend | runs | median | min | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, protector, runs) in cases {
        let key = DataKey::generate();
        let sealed = protector.wrap(&key, b"bench")?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            let back = protector.unwrap(&sealed, b"bench")?;
            times.push(start.elapsed());
            assert_eq!(back.expose(), key.expose());
        }
        times.sort();
        println!(
            "| {name} | {runs} | {} | {} | {} |",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
