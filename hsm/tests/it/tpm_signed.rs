//! Signed PCR policies (TPM2_PolicyAuthorize) against swtpm, with keys made and
//! signatures written by the `openssl` command, in systemd's `tpm2-pcr-signature.json`
//! format: a keyslot unlocks while PCR 11 holds a value the key signed, goes on unlocking
//! after a "kernel update" once the new value is signed, and refuses unsigned values,
//! other keys, changed static PCRs and broken signature files.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use hsm::tpm::{PcrBank, PcrPolicy, SignedPcrPolicy, TpmProtector, TpmSealed};
use hsm::{DataKey, PolicyFailure, Protector, Sealed, UnwrapError};
use libtest_mimic::{Failed, Trial};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::fixtures::TestTpm;
use crate::{TestResult, trial};

const AAD: &[u8] = b"slot header v1";

pub(crate) fn trials(trials: &mut Vec<Trial>) {
    trials.extend([
        trial(
            "tpm::signed::unlocks_with_a_signature_of_pcr11_and_after_a_signed_update",
            unlocks_with_a_signature_of_pcr11_and_after_a_signed_update,
        ),
        trial("tpm::signed::ec_p256_key_works_too", ec_p256_key_works_too),
        trial(
            "tpm::signed::another_keys_signature_is_refused",
            another_keys_signature_is_refused,
        ),
        trial(
            "tpm::signed::static_pcr_change_is_refused_despite_a_signature",
            static_pcr_change_is_refused_despite_a_signature,
        ),
        trial(
            "tpm::signed::missing_or_malformed_signature_file_is_a_clear_error",
            missing_or_malformed_signature_file_is_a_clear_error,
        ),
        trial(
            "tpm::signed::policy_digest_matches_the_documented_formula",
            policy_digest_matches_the_documented_formula,
        ),
        trial(
            "tpm::signed::systemd_measure_signs_what_unlocks",
            systemd_measure_signs_what_unlocks,
        ),
    ]);
}

/// A signing key made by `openssl`, in a temporary directory.
struct Signer {
    dir: TempDir,
}

impl Signer {
    /// An RSA 2048 key, as `systemd-measure sign` uses.
    fn rsa() -> Result<Signer, Failed> {
        Signer::generate(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
    }

    /// An ECC P-256 key.
    fn ec() -> Result<Signer, Failed> {
        Signer::generate(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    }

    fn generate(args: &[&str]) -> Result<Signer, Failed> {
        hsm::sim::require_program("openssl", "openssl").map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("key.pem");
        openssl(&[&["genpkey"], args, &["-out", path(&key)?]].concat())?;
        let public = dir.path().join("public.pem");
        openssl(&[
            "pkey",
            "-in",
            path(&key)?,
            "-pubout",
            "-out",
            path(&public)?,
        ])?;
        Ok(Signer { dir })
    }

    fn public_pem(&self) -> Result<String, Failed> {
        Ok(std::fs::read_to_string(self.dir.path().join("public.pem"))?)
    }

    /// The public key's DER (a SubjectPublicKeyInfo), as openssl writes it; with
    /// `pkcs1`, the RSA key's own PKCS#1 RSAPublicKey instead.
    fn public_der(&self, pkcs1: bool) -> Result<Vec<u8>, Failed> {
        let der = self.dir.path().join("public.der");
        let public = self.dir.path().join("public.pem");
        let (command, out): (&str, &[&str]) = match pkcs1 {
            true => ("rsa", &["-RSAPublicKey_out"]),
            false => ("pkey", &[]),
        };
        let input = [
            "-pubin",
            "-in",
            path(&public)?,
            "-outform",
            "DER",
            "-out",
            path(&der)?,
        ];
        openssl(&[&[command], &input[..], out].concat())?;
        Ok(std::fs::read(der)?)
    }

    /// The policy over `pcrs` that this key signs.
    fn policy(&self, pcrs: &str) -> Result<SignedPcrPolicy, Failed> {
        let pcrs = PcrPolicy::parse_list(PcrBank::Sha256, pcrs)?;
        Ok(SignedPcrPolicy::from_pem(&self.public_pem()?, pcrs)?)
    }

    /// `openssl dgst -sha256 -sign` over `pol`: what `systemd-measure sign` signs.
    fn sign(&self, pol: &[u8]) -> Result<Vec<u8>, Failed> {
        let message = self.dir.path().join("pol.bin");
        let signature = self.dir.path().join("sig.bin");
        std::fs::write(&message, pol)?;
        let key = self.dir.path().join("key.pem");
        openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            path(&key)?,
            "-out",
            path(&signature)?,
            path(&message)?,
        ])?;
        Ok(std::fs::read(signature)?)
    }
}

fn path(p: &Path) -> Result<&str, Failed> {
    Ok(p.to_str().ok_or("temporary path is not UTF-8")?)
}

fn openssl(args: &[&str]) -> Result<(), Failed> {
    let out = Command::new("openssl").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Extends a PCR of the SHA-256 bank with the digest of `what`.
fn extend(tpm: &TestTpm, pcr: u8, what: impl AsRef<[u8]>) -> TestResult {
    let digest = hex(&Sha256::digest(what.as_ref()));
    tpm.tool("tpm2_pcrextend", &[&format!("{pcr}:sha256={digest}")])?;
    Ok(())
}

/// The current values of `pcrs` (SHA-256 bank), concatenated.
fn pcr_values(tpm: &TestTpm, pcrs: &[u8]) -> Result<Vec<u8>, Failed> {
    let dir = tempfile::tempdir()?;
    let mut values = Vec::new();
    for pcr in pcrs {
        let out = dir.path().join(format!("pcr{pcr}"));
        tpm.tool(
            "tpm2_pcrread",
            &[&format!("sha256:{pcr}"), "-o", path(&out)?],
        )?;
        values.extend(std::fs::read(out)?);
    }
    Ok(values)
}

/// TPM2_PolicyPCR's digest from a fresh session over `pcrs` (SHA-256 bank, one
/// selection of three bytes) holding `values`, by the formula of TPM 2.0 part 3:
/// SHA-256(zeros || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(values)).
fn policy_pcr_digest(pcrs: &[u8], values: &[u8]) -> Vec<u8> {
    let mut select = [0u8; 3];
    for &pcr in pcrs {
        select[usize::from(pcr / 8)] |= 1 << (pcr % 8);
    }
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(0x0000_017Fu32.to_be_bytes());
    h.update(1u32.to_be_bytes()); // one selection
    h.update(0x000Bu16.to_be_bytes()); // TPM_ALG_SHA256
    h.update([3u8]);
    h.update(select);
    h.update(Sha256::digest(values));
    h.finalize().to_vec()
}

/// Writes a signature file with one entry per `(signer, pkfp, pol)`, as systemd does.
fn write_signatures(file: &Path, entries: &[(&Signer, &str, &[u8])]) -> TestResult {
    let mut list = Vec::new();
    for (signer, pkfp, pol) in entries {
        let sig = base64::engine::general_purpose::STANDARD.encode(signer.sign(pol)?);
        list.push(serde_json::json!({ "pcrs": [11], "pkfp": pkfp, "pol": hex(pol), "sig": sig }));
    }
    std::fs::write(file, serde_json::json!({ "sha256": list }).to_string())?;
    Ok(())
}

/// Signs the current PCR 11 with `signer` into `file`; returns the signed digest.
fn sign_current(tpm: &TestTpm, signer: &Signer, file: &Path) -> Result<Vec<u8>, Failed> {
    let pol = policy_pcr_digest(&[11], &pcr_values(tpm, &[11])?);
    let pkfp = signer.policy("11")?.fingerprint;
    write_signatures(file, &[(signer, &pkfp, &pol)])?;
    Ok(pol)
}

fn expect_policy_failure(
    result: Result<DataKey, UnwrapError>,
    want: fn(&PolicyFailure) -> bool,
) -> TestResult {
    match result {
        Err(UnwrapError::PolicyMismatch { reason }) if want(&reason) => Ok(()),
        other => Err(format!(
            "expected another PolicyMismatch, got {:?}",
            other.map(|_| ())
        )
        .into()),
    }
}

fn unsigned(reason: &PolicyFailure) -> bool {
    matches!(reason, PolicyFailure::Unsigned { pcrs } if pcrs == "sha256:11")
}

/// A protector for a slot bound to static PCRs 0,7 and PCR 11 signed by `signer`,
/// reading signatures from `file`.
fn protector(tpm: &TestTpm, signer: &Signer, file: &Path) -> Result<TpmProtector, Failed> {
    Ok(TpmProtector::new(tpm.tcti(), None)
        .with_pcr_policy(PcrPolicy::parse_list(PcrBank::Sha256, "0,7")?)
        .with_signed_pcr_policy(signer.policy("11")?)
        .with_pcr_signature(file))
}

fn signature_file(tpm: &TestTpm) -> PathBuf {
    tpm.dir().join("tpm2-pcr-signature.json")
}

fn unlocks_with_a_signature_of_pcr11_and_after_a_signed_update() -> TestResult {
    let tpm = TestTpm::start()?;
    let signer = Signer::rsa()?;
    let file = signature_file(&tpm);
    let protector = protector(&tpm, &signer, &file)?;
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, AAD)?;
    let Sealed::Tpm(TpmSealed {
        signed_pcr_policy: Some(recorded),
        ..
    }) = &sealed
    else {
        return Err("the record keeps no signed policy".into());
    };
    // The record keeps the DER SubjectPublicKeyInfo, and systemd's pkfp: SHA-256 of the
    // key's own PKCS#1 encoding.
    assert_eq!(recorded.public_key, signer.public_der(false)?);
    let pkcs1 = signer.public_der(true)?;
    assert_eq!(recorded.fingerprint, hex(&Sha256::digest(&pkcs1)));
    assert_eq!(recorded.pcrs, [11]);

    // The boot measures a kernel into PCR 11; its value is signed; the slot opens.
    extend(&tpm, 11, "kernel 1")?;
    sign_current(&tpm, &signer, &file)?;
    assert_eq!(protector.unwrap(&sealed, AAD)?.expose(), key.expose());

    // A new kernel: the old signature does not cover it.
    extend(&tpm, 11, "kernel 2")?;
    expect_policy_failure(protector.unwrap(&sealed, AAD), unsigned)?;
    // The update brings the new kernel's signature: the same slot opens, not re-enrolled,
    // through another protector (as after a reboot) with only the file's path.
    sign_current(&tpm, &signer, &file)?;
    let fresh = TpmProtector::new(tpm.tcti(), None).with_pcr_signature(&file);
    assert_eq!(fresh.unwrap(&sealed, AAD)?.expose(), key.expose());
    no_transients(&tpm)
}

fn ec_p256_key_works_too() -> TestResult {
    let tpm = TestTpm::start()?;
    let signer = Signer::ec()?;
    let file = signature_file(&tpm);
    let protector = protector(&tpm, &signer, &file)?;
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, AAD)?;
    extend(&tpm, 11, "kernel 1")?;
    sign_current(&tpm, &signer, &file)?;
    assert_eq!(protector.unwrap(&sealed, AAD)?.expose(), key.expose());
    extend(&tpm, 11, "kernel 2")?;
    expect_policy_failure(protector.unwrap(&sealed, AAD), unsigned)?;
    Ok(())
}

fn another_keys_signature_is_refused() -> TestResult {
    let tpm = TestTpm::start()?;
    let signer = Signer::rsa()?;
    let other = Signer::rsa()?;
    let file = signature_file(&tpm);
    let protector = protector(&tpm, &signer, &file)?;
    let sealed = protector.wrap(&DataKey::generate(), AAD)?;
    extend(&tpm, 11, "someone else's kernel")?;
    let pol = policy_pcr_digest(&[11], &pcr_values(&tpm, &[11])?);

    // Signed by another key, under its own fingerprint: no entry for the enrolled key.
    let other_fp = other.policy("11")?.fingerprint;
    write_signatures(&file, &[(&other, &other_fp, &pol)])?;
    expect_policy_failure(protector.unwrap(&sealed, AAD), unsigned)?;

    // Signed by another key but claiming the enrolled key's fingerprint: the TPM's
    // signature check refuses it.
    let fp = signer.policy("11")?.fingerprint;
    write_signatures(&file, &[(&other, &fp, &pol)])?;
    expect_policy_failure(protector.unwrap(&sealed, AAD), |r| {
        matches!(r, PolicyFailure::BadSignature { .. })
    })?;

    // The enrolled key's signature of another value: no entry for the current one.
    let elsewhere = policy_pcr_digest(&[11], &[0x5a; 32]);
    write_signatures(&file, &[(&signer, &fp, &elsewhere)])?;
    expect_policy_failure(protector.unwrap(&sealed, AAD), unsigned)?;
    no_transients(&tpm)
}

fn static_pcr_change_is_refused_despite_a_signature() -> TestResult {
    let tpm = TestTpm::start()?;
    let signer = Signer::rsa()?;
    let file = signature_file(&tpm);
    let protector = protector(&tpm, &signer, &file)?;
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, AAD)?;
    extend(&tpm, 11, "kernel 1")?;
    sign_current(&tpm, &signer, &file)?;
    assert_eq!(protector.unwrap(&sealed, AAD)?.expose(), key.expose());
    // Secure Boot state changes (PCR 7): the valid PCR 11 signature is not enough.
    extend(&tpm, 7, "another db key")?;
    expect_policy_failure(protector.unwrap(&sealed, AAD), |r| {
        *r == PolicyFailure::PcrsChanged
    })?;
    no_transients(&tpm)
}

fn missing_or_malformed_signature_file_is_a_clear_error() -> TestResult {
    let tpm = TestTpm::start()?;
    let signer = Signer::rsa()?;
    let file = signature_file(&tpm);
    let protector = protector(&tpm, &signer, &file)?;
    let sealed = protector.wrap(&DataKey::generate(), AAD)?;
    let file_error = |what: &str| -> TestResult {
        match protector.unwrap(&sealed, AAD) {
            Err(UnwrapError::PcrSignatureFile { path, problem }) => {
                assert_eq!(Path::new(&path), file);
                assert!(problem.contains(what), "{problem:?} should say {what:?}");
                Ok(())
            }
            other => Err(format!("expected PcrSignatureFile, got {:?}", other.map(|_| ())).into()),
        }
    };
    file_error("missing")?;
    std::fs::write(&file, "not json")?;
    file_error("format")?;
    std::fs::write(&file, r#"{"sha256":[{"pcrs":[11],"pkfp":1}]}"#)?;
    file_error("format")?;
    let fp = signer.policy("11")?.fingerprint;
    std::fs::write(
        &file,
        format!(r#"{{"sha256":[{{"pcrs":[11],"pkfp":"{fp}","pol":"zz","sig":"AA=="}}]}}"#),
    )?;
    file_error("hex")?;
    std::fs::write(&file, vec![b' '; 65 * 1024])?;
    file_error("larger than 64 KiB")?;
    std::fs::create_dir_all(file.with_extension("d"))?;
    let dir_protector = protector.with_pcr_signature(file.with_extension("d"));
    assert!(matches!(
        dir_protector.unwrap(&sealed, AAD),
        Err(UnwrapError::PcrSignatureFile { .. })
    ));
    // Well-formed, but nothing for the SHA-256 bank: unsigned, not malformed.
    std::fs::write(&file, r#"{"sha1":[]}"#)?;
    let protector = TpmProtector::new(tpm.tcti(), None).with_pcr_signature(&file);
    expect_policy_failure(protector.unwrap(&sealed, AAD), unsigned)?;
    no_transients(&tpm)
}

/// The formula the other tests sign by is the TPM's: a slot bound by PolicyPCR alone to
/// PCR 11 has exactly that digest as its authPolicy.
fn policy_digest_matches_the_documented_formula() -> TestResult {
    let tpm = TestTpm::start()?;
    extend(&tpm, 11, "kernel 1")?;
    let sealed = TpmProtector::new(tpm.tcti(), None)
        .with_pcr_policy(PcrPolicy::parse_list(PcrBank::Sha256, "11")?)
        .wrap(&DataKey::generate(), AAD)?;
    let Sealed::Tpm(record) = sealed else {
        return Err("not a TPM record".into());
    };
    let expected = policy_pcr_digest(&[11], &pcr_values(&tpm, &[11])?);
    // TPMT_PUBLIC: type, nameAlg, objectAttributes, then the TPM2B
    // authPolicy.
    let policy = &record.public[8..];
    assert_eq!(&policy[..2], &[0, 32]);
    assert_eq!(&policy[2..34], expected.as_slice());
    Ok(())
}

/// Nothing left loaded in the TPM, after successes and failures alike.
fn no_transients(tpm: &TestTpm) -> TestResult {
    for cap in ["handles-transient", "handles-loaded-session"] {
        let listed = tpm.tool("tpm2_getcap", &[cap])?;
        assert!(listed.trim().is_empty(), "{cap} left in the TPM: {listed}");
    }
    Ok(())
}

/// systemd-measure, from the systemd package (252 on Debian 12 signs through a TPM).
fn systemd_measure() -> Result<PathBuf, Failed> {
    [
        "/usr/lib/systemd/systemd-measure",
        "/lib/systemd/systemd-measure",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| "systemd-measure not found: install the systemd package".into())
}

/// Runs systemd-measure with `args`; its standard output.
fn measure(args: &[&str]) -> Result<String, Failed> {
    let out = Command::new(systemd_measure()?)
        .args(args)
        .env("TSS2_LOG", "all+NONE")
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("systemd-measure {args:?} failed: {err}").into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The whole chain with systemd's own tools: the TPM's PCR 11 is extended as systemd-stub
/// measures a UKI's sections (checked against `systemd-measure calculate --phase=:`), and
/// the signature file is `systemd-measure sign`'s output, unchanged: its `pkfp`, `pol` and
/// `sig` open the keyslot.
fn systemd_measure_signs_what_unlocks() -> TestResult {
    let tpm = TestTpm::start()?;
    let signer = Signer::rsa()?;
    let dir = signer.dir.path();
    let sections = [
        (".linux", "linux", "a kernel image"),
        (".osrel", "osrel", "ID=pk-appliance\nIMAGE_VERSION=2\n"),
        (".cmdline", "cmdline", "roothash=0123 ro"),
    ];
    let mut args = Vec::new();
    for (name, file, contents) in sections {
        std::fs::write(dir.join(file), contents)?;
        args.push(format!("--{file}={}", path(&dir.join(file))?));
        // systemd-stub: the section's name with its NUL, then its contents.
        extend(&tpm, 11, format!("{name}\0"))?;
        extend(&tpm, 11, contents)?;
    }
    args.extend(["--phase=:", "--bank=sha256", "--json=short"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let calculated: serde_json::Value =
        serde_json::from_str(&measure(&[&["calculate"], &args[..]].concat())?)?;
    let expected = calculated["sha256"][0]["hash"].as_str().unwrap_or_default();
    assert_eq!(hex(&pcr_values(&tpm, &[11])?), expected, "{calculated}");

    let file = signature_file(&tpm);
    let protector = protector(&tpm, &signer, &file)?;
    let key = DataKey::generate();
    let sealed = protector.wrap(&key, AAD)?;
    let (private, public) = (dir.join("key.pem"), dir.join("public.pem"));
    let private = format!("--private-key={}", path(&private)?);
    let public = format!("--public-key={}", path(&public)?);
    let device = format!("--tpm2-device={}", tpm.tcti());
    let sign = [&["sign", &private, &public, &device], &args[..]].concat();
    std::fs::write(&file, measure(&sign)?)?;
    assert_eq!(protector.unwrap(&sealed, AAD)?.expose(), key.expose());
    no_transients(&tpm)
}
