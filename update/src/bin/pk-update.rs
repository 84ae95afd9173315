//! `pk-update`: the appliance's privileged installer (run as root). `install` writes a
//! signed bundle into the root slot that is not running, `status` shows both slots, and
//! `serve` answers one connection of `pk-update.socket` on standard input and output.
//! Exit codes: 0 done, 1 refused or failed, 64 a usage error.

#![forbid(unsafe_code)]

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use pk_update::bundle::Arch;
use pk_update::install::{self, InstallOptions, Layout, OtherState, PartUuid, Progress, Status};
use pk_update::serve::{Outcome, Server};

/// Installs signed update bundles into the root slot that is not running.
#[derive(Parser)]
#[command(name = "pk-update", version)]
struct Cli {
    #[command(flatten)]
    machine: MachineArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install a bundle (a file, or `-` for standard input) into the other slot.
    Install {
        /// The bundle.
        file: PathBuf,
        /// Install even a lower version than the running one.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Show the running slot, the other slot and the UKIs on the ESP.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve one connection on standard input and output (pk-update@.service).
    Serve,
}

/// Where things are; the defaults are the appliance's. The tests point them elsewhere.
#[derive(Args)]
struct MachineArgs {
    /// The update key (PEM Ed25519 public key).
    #[arg(long, global = true, default_value = pk_update::UPDATE_KEY_PATH)]
    key: PathBuf,
    /// The whole disk holding the root slots [default: the disk of the running root].
    #[arg(long, global = true)]
    disk: Option<PathBuf>,
    /// The ESP's mount point [default: /efi].
    #[arg(long, global = true)]
    esp: Option<PathBuf>,
    /// The kernel command line [default: /proc/cmdline].
    #[arg(long, global = true)]
    cmdline: Option<PathBuf>,
    /// The running system's os-release [default: /usr/lib/os-release].
    #[arg(long, global = true)]
    os_release: Option<PathBuf>,
    /// The machine's architecture [default: this program's].
    #[arg(long, global = true)]
    arch: Option<Arch>,
    /// Boot tries a new UKI gets [default: 3].
    #[arg(long, global = true)]
    tries: Option<u32>,
    /// Slot A's empty PARTUUID.
    #[arg(long, global = true)]
    empty_partuuid_a: Option<PartUuid>,
    /// Slot B's empty PARTUUID.
    #[arg(long, global = true)]
    empty_partuuid_b: Option<PartUuid>,
    /// The lock file [default: /run/pk-update/lock].
    #[arg(long, global = true)]
    lock: Option<PathBuf>,
    /// The sfdisk to run [default: sfdisk, from PATH].
    #[arg(long, global = true)]
    sfdisk: Option<PathBuf>,
}

impl MachineArgs {
    fn layout(&self) -> anyhow::Result<Layout> {
        let cmdline = self
            .cmdline
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/cmdline"));
        let disk = match &self.disk {
            Some(disk) => disk.clone(),
            None => install::find_disk(&cmdline).context("finding the disk (try --disk)")?,
        };
        let mut layout = Layout::appliance(disk);
        layout.cmdline = cmdline;
        let set = |field: &mut PathBuf, value: &Option<PathBuf>| {
            if let Some(v) = value {
                field.clone_from(v);
            }
        };
        set(&mut layout.esp, &self.esp);
        set(&mut layout.os_release, &self.os_release);
        set(&mut layout.lock, &self.lock);
        set(&mut layout.sfdisk, &self.sfdisk);
        layout.arch = self.arch.or(layout.arch);
        layout.tries = self.tries.unwrap_or(layout.tries);
        layout.empty_partuuids = [
            self.empty_partuuid_a.unwrap_or(layout.empty_partuuids[0]),
            self.empty_partuuid_b.unwrap_or(layout.empty_partuuids[1]),
        ];
        Ok(layout)
    }
}

fn main() -> ExitCode {
    let cli: Cli = match pk_update::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pk-update: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the command; `false` when it was refused (and said so).
fn run(cli: &Cli) -> anyhow::Result<bool> {
    let layout = cli.machine.layout()?;
    match &cli.command {
        Cmd::Install {
            file,
            allow_downgrade,
        } => {
            let key = pk_update::keys::read_verifying_key(&cli.machine.key)?;
            let bundle: Box<dyn Read> = if file.as_os_str() == "-" {
                Box::new(io::stdin().lock())
            } else {
                Box::new(std::fs::File::open(file).with_context(|| file.display().to_string())?)
            };
            let options = InstallOptions {
                allow_downgrade: *allow_downgrade,
            };
            let mut shown = None;
            let mut progress = |p: Progress| show_progress(&mut shown, p);
            match install::install(&layout, &key, bundle, options, &mut progress) {
                Ok(done) => {
                    println!(
                        "installed {} in slot {} ({}); it boots at the next reboot",
                        done.version, done.slot, done.uki
                    );
                    Ok(true)
                }
                Err(e) => {
                    eprintln!("pk-update: {}", e.describe());
                    Ok(false)
                }
            }
        }
        Cmd::Status { json } => {
            let status = install::status(&layout)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(true)
        }
        Cmd::Serve => serve(layout, &cli.machine.key),
    }
}

fn serve(layout: Layout, key: &std::path::Path) -> anyhow::Result<bool> {
    let reboot = || {
        let status = std::process::Command::new("systemctl")
            .arg("reboot")
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("systemctl reboot: {status}")))
        }
    };
    let key = pk_update::keys::read_verifying_key(key)?;
    let server = Server {
        layout,
        key,
        reboot: &reboot,
    };
    // Standard error is the journal: one line per connection.
    match pk_update::serve::serve(&server, io::stdin().lock(), io::stdout().lock())? {
        Outcome::Done(summary) => {
            eprintln!("{summary}");
            Ok(true)
        }
        Outcome::Refused(message) => {
            eprintln!("refused: {message}");
            Ok(false)
        }
    }
}

/// Prints a stage's progress to standard error every 10 %.
fn show_progress(shown: &mut Option<(install::Stage, u64)>, p: Progress) {
    let step = (p.stage, p.done.saturating_mul(10) / p.total.max(1));
    if *shown != Some(step) {
        *shown = Some(step);
        let percent = p.done.saturating_mul(100) / p.total.max(1);
        eprintln!("{}: {percent} %", p.stage);
    }
}

fn print_status(s: &Status) {
    println!("running: slot {}, version {}", s.running, s.running_version);
    let unknown = |v: &Option<pk_update::bundle::Version>| {
        v.as_ref()
            .map_or("of unknown version".to_string(), |v| v.to_string())
    };
    let other = match &s.other_state {
        OtherState::Empty => "empty".to_string(),
        OtherState::Installed {
            version,
            tries: Some(t),
        } => format!(
            "{} installed, not yet booted well ({} tries left, {} done)",
            unknown(version),
            t.left,
            t.done
        ),
        OtherState::Installed { version, .. } => format!("{} installed", unknown(version)),
        OtherState::Failed { version } => {
            format!(
                "{} failed to boot (its tries are used up)",
                unknown(version)
            )
        }
        OtherState::Incomplete => "an install was cut off: it does not boot".to_string(),
    };
    println!("slot {}: {other}", s.other);
    for uki in &s.ukis {
        let slot = uki
            .slot
            .map_or("no slot".to_string(), |s| format!("slot {s}"));
        println!("  {}  {slot}  {}", uki.file, unknown(&uki.version));
    }
}
