//! `pk-bundle`: makes and inspects update bundles on the build host. Exit codes: 0 done,
//! 1 refused or failed, 64 a usage error.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pk_update::bundle::{self, Arch, BundleReader, BundleSpec, Digest, Version};
use pk_update::keys;

/// Makes and inspects pk-appliance update bundles.
#[derive(Parser)]
#[command(name = "pk-bundle", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a bundle from a root image, its verity hash tree and its UKI.
    Make(MakeArgs),
    /// Print a bundle's manifest; with --key, check its signature and every part too.
    Inspect {
        /// The update key (PEM Ed25519 public key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The bundle.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct MakeArgs {
    /// The image-signing key (PKCS#8 PEM Ed25519 private key).
    #[arg(long)]
    key: PathBuf,
    /// The image's IMAGE_VERSION.
    #[arg(long)]
    version: Version,
    /// The image's architecture (amd64, arm64).
    #[arg(long)]
    arch: Arch,
    /// The dm-verity root hash (64 hex digits).
    #[arg(long)]
    roothash: Digest,
    /// The root's length in 4 KiB blocks.
    #[arg(long)]
    data_blocks: u64,
    /// Where the hash tree starts in the slot, in bytes.
    #[arg(long)]
    hash_offset: u64,
    /// Let the bundle replace a higher version.
    #[arg(long)]
    allow_downgrade: bool,
    /// The erofs root image.
    #[arg(long)]
    root: PathBuf,
    /// Its dm-verity hash tree.
    #[arg(long)]
    verity: PathBuf,
    /// The unified kernel image.
    #[arg(long)]
    uki: PathBuf,
    /// The bundle to write.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli: Cli = match pk_update::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Cmd::Make(args) => make(&args),
        Cmd::Inspect { key, file } => inspect(key, &file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pk-bundle: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes the bundle next to `--out` and renames it into place, so a failed run leaves
/// no bundle behind.
fn make(args: &MakeArgs) -> anyhow::Result<()> {
    let key = keys::read_signing_key(&args.key)?;
    let spec = BundleSpec {
        version: args.version.clone(),
        arch: args.arch,
        roothash: args.roothash,
        data_blocks: args.data_blocks,
        hash_offset: args.hash_offset,
        allow_downgrade: args.allow_downgrade,
    };
    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = (|| -> anyhow::Result<bundle::Manifest> {
        let file = File::create(&partial).with_context(|| partial.display().to_string())?;
        let mut out = BufWriter::new(file);
        let parts = [
            args.root.as_path(),
            args.verity.as_path(),
            args.uki.as_path(),
        ];
        let manifest = bundle::make(&key, &spec, parts, &mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&partial, &args.out)?;
        Ok(manifest)
    })();
    let manifest = written.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    println!(
        "{}: {} {} for {}",
        args.out.display(),
        manifest.product,
        manifest.version,
        manifest.arch
    );
    Ok(())
}

/// Prints the manifest; with a key, checks the signature, reads every part against its
/// hash and checks that nothing follows.
fn inspect(key: Option<PathBuf>, file: &std::path::Path) -> anyhow::Result<()> {
    let mut input = BufReader::new(File::open(file).with_context(|| file.display().to_string())?);
    let (manifest, checked) = match key {
        None => (
            bundle::read_manifest_unverified(&mut input)?,
            "signature not checked (no --key)",
        ),
        Some(key) => {
            let key = keys::read_verifying_key(&key)?;
            let mut reader = BundleReader::open(input, &key, None)?;
            while let Some(mut part) = reader.next_part()? {
                io::copy(&mut part, &mut io::sink())?;
            }
            (reader.finish()?, "signature and parts: good")
        }
    };
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &manifest)?;
    writeln!(out)?;
    eprintln!("{checked}");
    Ok(())
}
