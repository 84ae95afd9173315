//! Commands served by the agent: `agent`, `keys`, `vaults`, `secrets`, `audit`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::NodePath;
use crate::agent;
use crate::api::agent::{AgentState, AgentStatus};
use crate::api::secrets::{Via, WriteKind};
use crate::api::{
    ErrorCode, SecretBytes, agent as agent_api, keys as keys_api, secrets as secrets_api,
    vaults as vaults_api,
};
use crate::audit::AuditQuery;
use crate::client::Client;
use crate::keyslots::Keyslots;
use crate::vault::{CommitInfo, EntryType};

use super::args::{
    AgentCommand, AgentStartArgs, AuditArgs, Cli, EnvArgs, EnvDuplicate, EnvFormat, EnvInvalid,
    Format, KeysCommand, LanMode, Order, SecretsCommand, UnlockArgs, VaultsCommand,
};
use super::call::{call, runtime};
use super::error::CliError;
use super::output::{Output, time};
use super::unlock::unlock_flow;

/// The largest file `pk keys` sends to the agent (one frame, with room for the envelope).
const KEYS_MAX_FILE: u64 = (crate::rpc::MAX_FRAME as u64 * 3 / 4) - 1024;

/// Splits `vault:path`; `allow_bare` accepts `vault` alone (the root).
fn split(secret_path: &str, allow_bare: bool) -> Result<(String, String), CliError> {
    match secret_path.split_once(':') {
        Some((vault, path)) if !vault.is_empty() => Ok((vault.to_owned(), path.to_owned())),
        None if allow_bare && !secret_path.is_empty() => {
            Ok((secret_path.to_owned(), String::new()))
        }
        _ => Err(CliError::usage(format!(
            "{secret_path:?} is not a secret path; write it as vault:path"
        ))),
    }
}

pub(crate) fn agent(
    cli: &Cli,
    node: &NodePath,
    command: &AgentCommand,
    out: &Output,
) -> Result<(), CliError> {
    let client = Client::new(node);
    match command {
        AgentCommand::Start(args) => {
            if args.foreground {
                return Err(CliError::internal("the agent runs in pk-node"));
            }
            start_background(cli, node, &client, args)?;
            if call(&client, agent_api::Status)?.state == AgentState::Locked {
                let keyslots = Keyslots::open(node)?;
                match unlock_via_agent(&keyslots, &args.unlock, &client) {
                    Ok(()) => {}
                    Err(e) if e.exit_code() == super::error::USAGE => {
                        let _ = writeln!(
                            std::io::stderr(),
                            "pk: the agent is running but locked: {e}"
                        );
                    }
                    Err(e) => return Err(e.context("the agent is running but stays locked")),
                }
            }
            print_status(&client, out)
        }
        AgentCommand::Stop => {
            let pid = std::fs::read(node.agent_status())
                .ok()
                .and_then(|b| serde_json::from_slice::<agent::StatusFile>(&b).ok())
                .map(|s| s.pid);
            call(&client, agent_api::Stop)?;
            // Wait for the socket to go away, so a following start does not race it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while node.agent_socket().exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = out.emit(json!({ "stopped": true, "pid": pid }), || {
                "Agent stopped\n".into()
            });
            Ok(())
        }
        AgentCommand::Status => match print_status(&client, out) {
            Err(e) if e.exit_code() == super::error::UNAVAILABLE => {
                let _ = out.emit(json!({ "state": "stopped" }), || {
                    "Agent is not running\n".into()
                });
                Err(e)
            }
            other => other,
        },
        AgentCommand::Lock => {
            call(&client, agent_api::Lock)?;
            let _ = out.emit(json!({ "state": "locked" }), || {
                "Agent locked; keys forgotten\n".into()
            });
            Ok(())
        }
        AgentCommand::Unlock(args) => {
            let keyslots = Keyslots::open(node)?;
            if call(&client, agent_api::Status)?.state == AgentState::Unlocked {
                // Say so rather than pretend a secret was checked.
                let _ = writeln!(std::io::stderr(), "pk: the agent is already unlocked");
            } else {
                unlock_via_agent(&keyslots, args, &client)?;
            }
            print_status(&client, out)
        }
    }
}

fn unlock_via_agent(
    keyslots: &Keyslots,
    args: &UnlockArgs,
    client: &Client,
) -> Result<(), CliError> {
    unlock_flow(keyslots, args, None, |choice| {
        // The agent cannot reach this terminal: say here that the card waits for a touch.
        if let Some(hsm_core::Sealed::YubiKey(y)) = choice
            .slot
            .and_then(|id| keyslots.slot(id))
            .map(|s| &s.sealed)
            && y.touch_policy != hsm_core::yubikey::TouchRule::Never
        {
            let _ = writeln!(
                std::io::stderr(),
                "Touch your YubiKey (serial {}) now",
                y.serial
            );
        }
        call(
            client,
            agent_api::Unlock {
                slot: choice.slot,
                kind: choice.kind,
                secret: choice
                    .secret
                    .as_ref()
                    .map(|p| SecretBytes(p.expose().to_vec())),
            },
        )
    })
}

fn print_status(client: &Client, out: &Output) -> Result<(), CliError> {
    let status: AgentStatus = call(client, agent_api::Status)?;
    let _ = out.emit(json!(status), || {
        let mut text = format!(
            "Agent is running (pid {}), {}\n",
            status.pid,
            status.state.name()
        );
        if let Some(id) = &status.node_id {
            // `null` when no keyslot is recorded, as the JSON value reads.
            text += &format!(
                "NodeId: {id}\nUnlocked with keyslot {}\n",
                json!(status.unlocked_with)
            );
        }
        if let Some(addr) = &status.peer_addr {
            text += &format!("Peer endpoint: UDP {addr}\n");
        }
        text
    });
    Ok(())
}

fn start_background(
    cli: &Cli,
    node: &NodePath,
    client: &Client,
    args: &AgentStartArgs,
) -> Result<(), CliError> {
    use std::os::unix::process::CommandExt as _;
    Keyslots::open(node)?;
    // Checked here too, so that a mistake is a usage error even when an agent runs.
    crate::logging::filter(&args.log).map_err(|e| CliError::usage(format!("--log: {e}")))?;
    if runtime()?.block_on(client.call(agent_api::Status)).is_ok() {
        return Ok(());
    }
    let exe = pk_node()?;
    let dir = std::fs::canonicalize(node.dir()).map_err(|e| CliError::io(node, e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.agent_log())
        .map_err(|e| CliError::io(node.agent_log().display(), e))?;
    let mut command = agent_command(cli, args, &exe, &dir)?;
    let child = command
        // The agent must not carry the user's secrets in its environment for its whole
        // life (readable in /proc/<pid>/environ); pk unlocks it over the socket instead.
        .env_remove("PK_PASSWORD")
        .env_remove("PK_PASSWORD_NEW")
        .env_remove("PK_RECOVERY_CODE")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| CliError::io("agent log", e))?)
        .stderr(log)
        // Its own process group: Ctrl-C in this terminal does not reach the agent.
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::io("cannot start the agent", e))?;
    wait_until_ready(node, client, child)
}

/// `pk-node agent start --foreground` for the node in `dir`, with this command's options.
fn agent_command(
    cli: &Cli,
    args: &AgentStartArgs,
    exe: &Path,
    dir: &Path,
) -> Result<std::process::Command, CliError> {
    let mut command = std::process::Command::new(exe);
    command.arg("--node-path").arg(dir);
    if let Some(tcti) = &cli.tcti {
        command.arg("--tcti").arg(tcti);
    }
    if let Some(file) = &cli.tpm_pcr_signature {
        command.arg("--tpm-pcr-signature").arg(file);
    }
    if let Some(module) = &cli.pkcs11_module {
        command.arg("--pkcs11-module").arg(module);
    }
    if args.peer_listen != "off" && args.peer_listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(CliError::usage(format!(
            "--peer-listen {:?} is not an address such as 0.0.0.0:1314 or 127.0.0.1:0, or `off`",
            args.peer_listen
        )));
    }
    command.arg("agent").arg("start").arg("--foreground");
    command.arg("--peer-listen").arg(&args.peer_listen);
    command.arg("--github-url").arg(&args.github_url);
    command.arg("--github-api-url").arg(&args.github_api_url);
    command
        .arg("--github-client-id")
        .arg(&args.github_client_id);
    command.arg("--log").arg(&args.log);
    if let Some(lan) = args.lan {
        command.arg(match lan {
            LanMode::Lan => "--lan=lan",
            LanMode::Loopback => "--lan=loopback",
        });
    }
    Ok(command)
}

/// Waits up to 15 s for the agent just started to answer; its last log line if it exits.
fn wait_until_ready(
    node: &NodePath,
    client: &Client,
    mut child: std::process::Child,
) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let rt = runtime()?;
    loop {
        if rt.block_on(client.call(agent_api::Status)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(node.agent_log()).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").to_owned();
            return Err(CliError::internal(format!(
                "the agent exited ({status}): {last}"
            )));
        }
        if Instant::now() > deadline {
            return Err(CliError::internal(format!(
                "the agent did not become ready within 15 s; see {}",
                node.agent_log().display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `pk-node` binary, installed next to `pk`.
pub(crate) fn pk_node() -> Result<std::path::PathBuf, CliError> {
    let exe =
        std::env::current_exe().map_err(|e| CliError::io("cannot find the pk executable", e))?;
    let node = exe.with_file_name("pk-node");
    if node.is_file() {
        Ok(node)
    } else {
        Err(CliError::unavailable(format!(
            "{} is missing: pk-node is installed next to pk and runs init, keyslots and the agent",
            node.display()
        )))
    }
}

pub(crate) fn keys(node: &NodePath, command: &KeysCommand, out: &Output) -> Result<(), CliError> {
    let client = Client::new(node);
    match command {
        KeysCommand::Public => {
            let id = call(&client, keys_api::Public)?;
            let _ = out.emit(json!({ "node_id": id }), || format!("{id}\n"));
        }
        KeysCommand::Sign { file } => {
            let sig = call(&client, keys_api::Sign(SecretBytes(read_keys_file(file)?)))?;
            let sig = STANDARD.encode(&sig.0);
            let _ = out.emit(json!({ "signature": sig }), || format!("{sig}\n"));
        }
        KeysCommand::Verify {
            file,
            signature,
            node_id,
        } => verify(&client, file, signature, node_id.as_deref(), out)?,
        KeysCommand::Encrypt { file, node_id } => {
            let c = call(
                &client,
                keys_api::Encrypt {
                    to: node_id.clone(),
                    data: SecretBytes(read_keys_file(file)?),
                },
            )?;
            let c = STANDARD.encode(&c.0);
            let _ = out.emit(json!({ "ciphertext": c }), || format!("{c}\n"));
        }
        KeysCommand::Decrypt { file } => decrypt(&client, file, out)?,
        KeysCommand::Renew | KeysCommand::Reset => {
            renew(&client, matches!(command, KeysCommand::Renew), out)?;
        }
        KeysCommand::Cert | KeysCommand::Certchain => {
            let chain = matches!(command, KeysCommand::Certchain);
            let certs = call(&client, keys_api::Cert { chain })?;
            let _ = out.emit(json!({ "certificates": certs }), || certs.concat());
        }
    }
    Ok(())
}

/// A file for a `keys` command: its operations carry their data in one message, so files
/// are limited to what fits.
fn read_keys_file(file: &Path) -> Result<Vec<u8>, CliError> {
    let len = std::fs::metadata(file)
        .map_err(|e| CliError::io(file.display(), e))?
        .len();
    if len > KEYS_MAX_FILE {
        return Err(CliError::usage(format!(
            "{} is {len} bytes; keys commands take files up to {KEYS_MAX_FILE} bytes (sign a hash of a larger file)",
            file.display()
        )));
    }
    std::fs::read(file).map_err(|e| CliError::io(file.display(), e))
}

/// `pk keys verify`: checked here, against the signer's NodeId (this node's by default).
fn verify(
    client: &Client,
    file: &Path,
    signature: &str,
    node_id: Option<&str>,
    out: &Output,
) -> Result<(), CliError> {
    let signer = match node_id {
        Some(id) => id.to_owned(),
        None => call(client, keys_api::Public)?,
    };
    let signer: crate::identity::NodeId = signer
        .parse()
        .map_err(|e: crate::identity::IdentityError| CliError::usage(e.to_string()))?;
    let sig = STANDARD
        .decode(signature.trim())
        .map_err(|_| CliError::usage("the signature is not base64"))?;
    let ok = crate::identity::verify_user(&signer, &read_keys_file(file)?, &sig)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let _ = out.emit(json!({ "valid": ok, "node_id": signer }), || {
        if ok {
            "Signature is valid\n".into()
        } else {
            "Signature is NOT valid\n".into()
        }
    });
    if !ok {
        return Err(CliError::denied("the signature does not verify"));
    }
    Ok(())
}

/// `pk keys decrypt`: the plaintext as it is, or in JSON (base64 if it is not text).
fn decrypt(client: &Client, file: &Path, out: &Output) -> Result<(), CliError> {
    let text = read_keys_file(file)?;
    let data = STANDARD
        .decode(String::from_utf8_lossy(&text).trim())
        .map_err(|_| CliError::usage("the file does not hold base64 ciphertext"))?;
    let plain = call(client, keys_api::Decrypt(SecretBytes(data)))?;
    let plain = plain.take();
    if out.format() == Format::Json {
        let line = Zeroizing::new(match std::str::from_utf8(&plain) {
            Ok(text) => json!({ "plaintext": text }).to_string(),
            Err(_) => json!({ "plaintext_base64": STANDARD.encode(&*plain) }).to_string(),
        });
        out.raw(line.as_bytes())?;
        out.raw(b"\n")?;
    } else {
        out.raw(&plain)?;
    }
    Ok(())
}

/// `pk keys renew` (certified by the old key) and `pk keys reset` (a fresh identity).
fn renew(client: &Client, renew: bool, out: &Output) -> Result<(), CliError> {
    let keys_api::KeyChanged {
        was,
        now,
        certified,
    } = if renew {
        call(client, keys_api::Renew)?
    } else {
        call(client, keys_api::Reset)?
    };
    let _ = out.emit(
        json!({ "was": was, "node_id": now, "certified": certified }),
        || {
            if certified {
                format!(
                    "New NodeId: {now}\nCertified by the old key ({was}): peers that knew it follow the certificate to the new NodeId\n"
                )
            } else {
                format!(
                    "New NodeId: {now}\nA fresh identity: peers must add the new NodeId; the sigchain and gestalt links start over\n"
                )
            }
        },
    );
    Ok(())
}

pub(crate) fn vaults(
    node: &NodePath,
    command: &VaultsCommand,
    out: &Output,
) -> Result<(), CliError> {
    if let Some(done) = super::peer_cmds::vaults(node, command, out) {
        return done;
    }
    let client = Client::new(node);
    match command {
        VaultsCommand::Create { name } => {
            let v = call(&client, vaults_api::Create { name: name.clone() })?;
            let _ = out.emit(json!(v), || {
                format!("Vault {} created ({})\n", v.name, v.id)
            });
        }
        VaultsCommand::List => vault_list(&client, out)?,
        VaultsCommand::Rename { name, new_name } => {
            call(
                &client,
                vaults_api::Rename {
                    from: name.clone(),
                    to: new_name.clone(),
                },
            )?;
            let _ = out.emit(json!({ "renamed": name, "to": new_name }), || {
                format!("Vault {name} renamed to {new_name}\n")
            });
        }
        VaultsCommand::Delete { name } => {
            call(&client, vaults_api::Delete { name: name.clone() })?;
            let _ = out.emit(json!({ "deleted": name }), || {
                format!("Vault {name} deleted\n")
            });
        }
        VaultsCommand::Log {
            name,
            depth,
            commit_id,
        } => vault_log(&client, name, *depth, commit_id.clone(), out)?,
        VaultsCommand::Version { name, version_id } => {
            let c = call(
                &client,
                vaults_api::Version {
                    vault: name.clone(),
                    target: version_id.clone(),
                },
            )?;
            let _ = out.emit(json!(c), || {
                format!("Vault {name} is now at commit {} ({})\n", c.oid, c.message)
            });
        }
        VaultsCommand::Export {
            name,
            destination,
            bundle: true,
        } => export_bundle(&client, name, destination, out)?,
        VaultsCommand::Export {
            name,
            destination,
            bundle: false,
        } => export_tree(&client, name, destination, out)?,
        _ => {
            return Err(CliError::internal(
                "a sharing command reached the local vault commands",
            ));
        }
    }
    Ok(())
}

/// `pk vaults list`, with each vault's last pull.
fn vault_list(client: &Client, out: &Output) -> Result<(), CliError> {
    let list = call(client, vaults_api::List)?;
    let _ = out.emit(json!(list), || {
        list.iter()
            .map(|v| {
                let pulled = match &v.sync.last_pull {
                    Some(p) => format!(
                        "\tlast pull {} at {}: {}",
                        if p.ok { "ok" } else { "FAILED" },
                        time(p.time as i64),
                        p.message
                    ),
                    None => String::new(),
                };
                format!("{}\t{}{pulled}\n", v.name, v.id)
            })
            .collect()
    });
    Ok(())
}

/// `pk vaults log`.
fn vault_log(
    client: &Client,
    name: &str,
    depth: Option<u32>,
    commit_id: Option<String>,
    out: &Output,
) -> Result<(), CliError> {
    let commits = call(
        client,
        vaults_api::Log {
            vault: name.to_owned(),
            depth,
            from: commit_id,
        },
    )?;
    let _ = out.emit(json!(commits), || {
        commits
            .iter()
            .map(|c| {
                format!(
                    "commit {}\nAuthor: {}\nDate:   {}\n\n    {}\n\n",
                    c.oid,
                    c.author,
                    time(c.time),
                    terminal_safe(&c.message)
                )
            })
            .collect()
    });
    Ok(())
}

/// `pk vaults export --bundle`: the history as a git bundle, in a new 0600 file (removed
/// again if the export fails).
fn export_bundle(
    client: &Client,
    name: &str,
    destination: &Path,
    out: &Output,
) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(destination)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                CliError::exists(format!("{} already exists", destination.display()))
            }
            _ => CliError::io(destination.display(), e),
        })?;
    let mut file = tokio::fs::File::from_std(file);
    let result = runtime()?.block_on(client.download(
        vaults_api::ExportBundle {
            vault: name.to_owned(),
        },
        &mut file,
    ));
    if let Err(e) = result {
        drop(file);
        let _ = std::fs::remove_file(destination);
        return Err(e.into());
    }
    let _ = out.emit(json!({ "vault": name, "bundle": destination }), || {
        format!(
            "Exported the history of {name} as a git bundle: {}\n",
            destination.display()
        )
    });
    Ok(())
}

/// `pk vaults export`: the secrets as files in a new directory.
fn export_tree(
    client: &Client,
    name: &str,
    destination: &Path,
    out: &Output,
) -> Result<(), CliError> {
    if destination.exists() {
        return Err(CliError::exists(format!(
            "{} already exists",
            destination.display()
        )));
    }
    let count = export_dir(client, name, "", destination)?;
    let _ = out.emit(
        json!({ "vault": name, "destination": destination, "secrets": count }),
        || {
            format!(
                "Exported {count} secret{} of {name} to {}\n",
                if count == 1 { "" } else { "s" },
                destination.display()
            )
        },
    );
    Ok(())
}

/// The entries of a directory.
fn ls(client: &Client, vault: &str, path: &str) -> Result<Vec<crate::vault::Entry>, CliError> {
    call(
        client,
        secrets_api::Ls {
            vault: vault.to_owned(),
            path: path.to_owned(),
        },
    )
}

/// Writes the vault's tree below `path` into `dest` (created 0700, files 0600).
/// Text from a vault (which may hold what a peer sent) as it may reach a terminal: control
/// characters, escape sequences among them, are shown escaped (`\u{1b}`), not obeyed.
fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return text.into();
    }
    text.chars()
        .map(|c| match c {
            '\n' => "\n".to_owned(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

fn export_dir(client: &Client, vault: &str, path: &str, dest: &Path) -> Result<usize, CliError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|e| CliError::io(dest.display(), e))?;
    let entries = ls(client, vault, path)?;
    let mut count = 0;
    for entry in entries {
        let child = if path.is_empty() {
            entry.name.clone()
        } else {
            format!("{path}/{}", entry.name)
        };
        // The names come from the vault, which may hold what a peer sent: each must be one
        // plain component, or the export could write outside `dest`.
        if let Some(reason) = crate::vault::bad_name(entry.name.as_bytes()) {
            return Err(CliError::data(format!(
                "the vault holds an entry named {:?} under {:?}: {reason}; nothing more was exported",
                entry.name, path
            )));
        }
        let target = dest.join(&entry.name);
        match entry.kind {
            EntryType::Dir => count += export_dir(client, vault, &child, &target)?,
            EntryType::File => {
                let file = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|e| CliError::io(target.display(), e))?;
                let mut file = tokio::fs::File::from_std(file);
                runtime()?
                    .block_on(client.download(
                        secrets_api::Cat {
                            vault: vault.to_owned(),
                            path: child,
                            via: Via::Cli,
                        },
                        &mut file,
                    ))
                    .map_err(CliError::from)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

pub(crate) fn secrets(
    node: &NodePath,
    command: &SecretsCommand,
    out: &Output,
) -> Result<(), CliError> {
    let client = Client::new(node);
    match command {
        SecretsCommand::Create { file, secret_path } => create(&client, file, secret_path, out)?,
        SecretsCommand::Write { secret_path } => write(&client, secret_path, out)?,
        SecretsCommand::Cat { secret_paths } if out.format() == Format::Json => {
            cat_json(&client, secret_paths, out)?;
        }
        SecretsCommand::Cat { secret_paths } => cat(&client, secret_paths)?,
        SecretsCommand::Ls { path } => {
            let (vault, path) = split(path, true)?;
            let entries = ls(&client, &vault, &path)?;
            let _ = out.emit(json!(entries), || {
                entries
                    .iter()
                    .map(|e| match e.kind {
                        EntryType::Dir => format!("{}/\n", terminal_safe(&e.name)),
                        EntryType::File => format!("{}\n", terminal_safe(&e.name)),
                    })
                    .collect()
            });
        }
        SecretsCommand::Mkdir {
            secret_paths,
            parents,
        } => mkdir(&client, secret_paths, *parents, out)?,
        SecretsCommand::Rename {
            secret_path,
            new_name,
        } => rename(&client, secret_path, new_name, out)?,
        SecretsCommand::Rm {
            secret_paths,
            recursive,
        } => rm(&client, secret_paths, *recursive, out)?,
        SecretsCommand::Stat { secret_path } => stat(&client, secret_path, out)?,
        SecretsCommand::Touch { secret_path } => {
            let (vault, path) = split(secret_path, false)?;
            let _ = match call(&client, secrets_api::Touch { vault, path })? {
                Some(c) => out.emit(json!(c), || format!("Created {secret_path}\n")),
                None => out.emit(json!(null), || format!("{secret_path} exists; unchanged\n")),
            };
        }
        SecretsCommand::Edit { secret_path } => edit(&client, secret_path, out)?,
        SecretsCommand::Dir {
            directory,
            destination,
        } => {
            let (vault, base) = split(destination, true)?;
            let mut count = 0;
            import_dir(&client, directory, &vault, &base, &mut count)?;
            let _ = out.emit(json!({ "imported": count }), || {
                format!(
                    "Imported {count} secret{} into {destination}\n",
                    if count == 1 { "" } else { "s" }
                )
            });
        }
        SecretsCommand::Env(args) => env(&client, args, out)?,
    }
    Ok(())
}

/// `pk secrets create`: a new secret from a file.
fn create(client: &Client, file: &Path, secret_path: &str, out: &Output) -> Result<(), CliError> {
    let (vault, path) = split(secret_path, false)?;
    let f = std::fs::File::open(file).map_err(|e| CliError::io(file.display(), e))?;
    let reply = runtime()?
        .block_on(client.upload(
            secrets_api::Write {
                vault,
                path,
                kind: WriteKind::Create,
                size: known_size(&f),
            },
            tokio::fs::File::from_std(f),
        ))
        .map_err(CliError::from)?;
    let (j, h) = commit_text(&reply, format!("Created {secret_path}"));
    let _ = out.emit(j, || h);
    Ok(())
}

/// `pk secrets write`: a secret's content from stdin.
fn write(client: &Client, secret_path: &str, out: &Output) -> Result<(), CliError> {
    let (vault, path) = split(secret_path, false)?;
    let request = secrets_api::Write {
        vault,
        path,
        kind: WriteKind::Write,
        size: None,
    };
    let rt = runtime()?;
    let reply = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // Typed by hand: take it all (up to Ctrl-D) before talking to the agent,
        // so a slow typist does not hold the store's write transaction.
        let mut typed = Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut typed)
            .map_err(|e| CliError::io("reading the secret from the terminal", e))?;
        rt.block_on(client.upload(request, &typed[..]))
    } else {
        rt.block_on(client.upload(request, tokio::io::stdin()))
    }
    .map_err(CliError::from)?;
    let (j, h) = commit_text(&reply, format!("Wrote {secret_path}"));
    let _ = out.emit(j, || h);
    Ok(())
}

/// `pk secrets cat --format json`: one JSON object per secret; contents that are not
/// UTF-8 come as base64.
fn cat_json(client: &Client, secret_paths: &[String], out: &Output) -> Result<(), CliError> {
    for secret_path in secret_paths {
        let (vault, path) = split(secret_path, false)?;
        let content = read_secret(client, &vault, &path)?;
        let line = Zeroizing::new(match std::str::from_utf8(&content) {
            Ok(text) => json!({ "secret_path": secret_path, "content": text }).to_string(),
            Err(_) => {
                json!({ "secret_path": secret_path, "content_base64": STANDARD.encode(&content) })
                    .to_string()
            }
        });
        out.raw(line.as_bytes())?;
        out.raw(b"\n")?;
    }
    Ok(())
}

/// `pk secrets cat`: the contents streamed to stdout, one after the other.
fn cat(client: &Client, secret_paths: &[String]) -> Result<(), CliError> {
    let rt = runtime()?;
    let mut stdout = tokio::io::stdout();
    for secret_path in secret_paths {
        let (vault, path) = split(secret_path, false)?;
        rt.block_on(client.download(
            secrets_api::Cat {
                vault,
                path,
                via: Via::Cli,
            },
            &mut stdout,
        ))
        .map_err(CliError::from)?;
    }
    Ok(())
}

/// `pk secrets mkdir`.
fn mkdir(
    client: &Client,
    secret_paths: &[String],
    parents: bool,
    out: &Output,
) -> Result<(), CliError> {
    let mut done = Vec::new();
    for secret_path in secret_paths {
        let (vault, path) = split(secret_path, false)?;
        call(
            client,
            secrets_api::Mkdir {
                vault,
                path,
                parents,
            },
        )?;
        done.push(secret_path.clone());
    }
    let _ = out.emit(json!({ "created": done }), || {
        done.iter()
            .map(|d| format!("Created directory {d}\n"))
            .collect()
    });
    Ok(())
}

/// `pk secrets rename`: within one vault; a bare new name stays in the same directory.
fn rename(
    client: &Client,
    secret_path: &str,
    new_name: &str,
    out: &Output,
) -> Result<(), CliError> {
    let (vault, from) = split(secret_path, false)?;
    let to = match new_name.split_once(':') {
        Some((v, p)) if v == vault => p.to_owned(),
        Some(_) => return Err(CliError::usage("rename stays within one vault")),
        None if new_name.contains('/') => new_name.to_owned(),
        None => match from.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{new_name}"),
            None => new_name.to_owned(),
        },
    };
    let reply = call(
        client,
        secrets_api::Rename {
            vault: vault.clone(),
            from,
            to: to.clone(),
        },
    )?;
    let (j, h) = commit_text(&reply, format!("Renamed {secret_path} to {vault}:{to}"));
    let _ = out.emit(j, || h);
    Ok(())
}

/// `pk secrets rm`: paths in one vault, removed in one commit.
fn rm(
    client: &Client,
    secret_paths: &[String],
    recursive: bool,
    out: &Output,
) -> Result<(), CliError> {
    let mut vault = None;
    let mut paths = Vec::new();
    for secret_path in secret_paths {
        let (v, p) = split(secret_path, false)?;
        if vault.get_or_insert_with(|| v.clone()) != &v {
            return Err(CliError::usage("rm takes paths in one vault at a time"));
        }
        paths.push(p);
    }
    let vault = vault.unwrap_or_default();
    let reply = call(
        client,
        secrets_api::Rm {
            vault,
            paths,
            recursive,
        },
    )?;
    let (j, h) = commit_text(&reply, format!("Removed {}", secret_paths.join(" ")));
    let _ = out.emit(j, || h);
    Ok(())
}

/// `pk secrets stat`.
fn stat(client: &Client, secret_path: &str, out: &Output) -> Result<(), CliError> {
    let (vault, path) = split(secret_path, true)?;
    let s = call(client, secrets_api::Stat { vault, path })?;
    let _ = out.emit(json!(s), || {
        let (kind, unit) = match s.kind {
            EntryType::Dir => ("directory", "entries"),
            EntryType::File => ("secret", "bytes"),
        };
        format!(
            "{secret_path}: {kind}, {} {unit}\nobject: {}\ncommit: {}\n",
            s.size, s.oid, s.commit
        )
    });
    Ok(())
}

fn import_dir(
    client: &Client,
    dir: &Path,
    vault: &str,
    base: &str,
    count: &mut usize,
) -> Result<(), CliError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| CliError::io(dir.display(), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::io(dir.display(), e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| CliError::usage(format!("{:?} is not UTF-8; rename it first", n)))?;
        let path = if base.is_empty() {
            name
        } else {
            format!("{base}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|e| CliError::io(entry.path().display(), e))?;
        if kind.is_dir() {
            import_dir(client, &entry.path(), vault, &path, count)?;
        } else if kind.is_file() {
            let f = std::fs::File::open(entry.path())
                .map_err(|e| CliError::io(entry.path().display(), e))?;
            runtime()?
                .block_on(client.upload(
                    secrets_api::Write {
                        vault: vault.to_owned(),
                        path,
                        kind: WriteKind::Import,
                        size: known_size(&f),
                    },
                    tokio::fs::File::from_std(f),
                ))
                .map_err(CliError::from)?;
            *count += 1;
        }
    }
    Ok(())
}

/// Reads a secret fully into memory (zeroized on drop).
fn read_secret(client: &Client, vault: &str, path: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut buf = Zeroizing::new(Vec::new());
    runtime()?
        .block_on(client.download(
            secrets_api::Cat {
                vault: vault.to_owned(),
                path: path.to_owned(),
                via: Via::Cli,
            },
            &mut *buf,
        ))
        .map_err(CliError::from)?;
    Ok(buf)
}

fn edit(client: &Client, secret_path: &str, out: &Output) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let (vault, path) = split(secret_path, false)?;
    let current = match read_secret(client, &vault, &path) {
        Ok(c) => c,
        Err(e) if e.api_code() == Some(ErrorCode::NotFound) => Zeroizing::new(Vec::new()),
        Err(e) => return Err(e),
    };
    // Prefer memory-backed storage for the plaintext copy.
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(|| Some(std::path::PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let mut random = [0u8; 8];
    rand_fill(&mut random);
    let dir = base.join(format!("pk-edit-{}", hex(&random)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| CliError::io(dir.display(), e))?;
    let file = dir.join(path.rsplit('/').next().unwrap_or("secret"));
    let result = (|| -> Result<Option<Zeroizing<Vec<u8>>>, CliError> {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&file)
            .map_err(|e| CliError::io(file.display(), e))?;
        f.write_all(&current)
            .map_err(|e| CliError::io(file.display(), e))?;
        drop(f);
        let editor = std::env::var("VISUAL")
            .or_else(|_| std::env::var("EDITOR"))
            .unwrap_or_else(|_| "vi".into());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("pk-edit")
            .arg(&file)
            .status()
            .map_err(|e| CliError::io(format!("running {editor}"), e))?;
        if !status.success() {
            return Err(CliError::internal(format!(
                "{editor} exited with {status}; the secret was not changed"
            )));
        }
        let edited =
            Zeroizing::new(std::fs::read(&file).map_err(|e| CliError::io(file.display(), e))?);
        Ok((edited.as_slice() != current.as_slice()).then_some(edited))
    })();
    wipe(&file);
    let _ = std::fs::remove_dir_all(&dir);
    match result? {
        None => {
            let _ = out.emit(json!({ "changed": false }), || "No change\n".into());
        }
        Some(edited) => {
            let reply = runtime()?
                .block_on(client.upload(
                    secrets_api::Write {
                        vault,
                        path,
                        kind: WriteKind::Edit,
                        size: Some(edited.len() as u64),
                    },
                    &edited[..],
                ))
                .map_err(CliError::from)?;
            let (j, h) = commit_text(&reply, format!("Saved {secret_path}"));
            let _ = out.emit(j, || h);
        }
    }
    Ok(())
}

/// The length of a regular file; nothing for pipes and devices, whose length is not
/// known until they end.
fn known_size(file: &std::fs::File) -> Option<u64> {
    file.metadata()
        .ok()
        .filter(|m| m.file_type().is_file())
        .map(|m| m.len())
}

/// A write's result: the commit as JSON, and a line naming it.
fn commit_text(commit: &CommitInfo, what: String) -> (Value, String) {
    (
        json!(commit),
        format!("{what} (commit {})\n", &commit.oid[..12]),
    )
}

/// Overwrites a file with zeros before it is removed.
fn wipe(file: &Path) {
    if let Ok(meta) = std::fs::metadata(file)
        && let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(file)
    {
        let zeros = vec![0u8; 64 * 1024];
        let mut left = meta.len();
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if f.write_all(&zeros[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = f.sync_all();
    }
    let _ = std::fs::remove_file(file);
}

fn rand_fill(buf: &mut [u8]) {
    use rand_core::RngCore as _;
    rand_core::OsRng.fill_bytes(buf);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Collects (name, path) for a path: itself if a secret, every secret below it if a dir.
fn env_targets(
    client: &Client,
    vault: &str,
    path: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), CliError> {
    let stat = call(
        client,
        secrets_api::Stat {
            vault: vault.to_owned(),
            path: path.to_owned(),
        },
    )?;
    match stat.kind {
        EntryType::File => {
            let name = path.rsplit('/').next().unwrap_or(path).to_owned();
            out.push((name, path.to_owned()));
        }
        EntryType::Dir => {
            let entries = ls(client, vault, path)?;
            for e in entries {
                let child = if path.is_empty() {
                    e.name
                } else {
                    format!("{path}/{}", e.name)
                };
                env_targets(client, vault, &child, out)?;
            }
        }
    }
    Ok(())
}

fn env(client: &Client, args: &EnvArgs, out: &Output) -> Result<(), CliError> {
    // First decide every variable (names checked, duplicates resolved), then read only
    // the secrets that will be used: a refusal reveals nothing.
    let (chosen, order) = env_choose(client, args)?;
    let mut vars: BTreeMap<String, Zeroizing<String>> = BTreeMap::new();
    for (name, (vault, secret)) in &chosen {
        let value = read_secret(client, vault, secret)?;
        let text = String::from_utf8(value.to_vec()).map_err(|_| {
            CliError::usage(format!(
                "{vault}:{secret} is not text; it cannot be an environment variable"
            ))
        })?;
        vars.insert(name.clone(), Zeroizing::new(text));
    }
    if let Some((program, rest)) = args.command.split_first() {
        use std::os::unix::process::CommandExt as _;
        let err = std::process::Command::new(program)
            .args(rest)
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .exec();
        return Err(CliError::io(format!("cannot run {program}"), err));
    }
    let text = env_text(out.format(), args.env_format, &order, &vars)?;
    out.raw(text.as_bytes())
}

/// Variables by name, each `(vault, path)`, and their names in the order given.
type EnvChoice = (BTreeMap<String, (String, String)>, Vec<String>);

/// Decides the variables `pk secrets env` sets, invalid and duplicate names handled as
/// the flags say.
fn env_choose(client: &Client, args: &EnvArgs) -> Result<EnvChoice, CliError> {
    let mut chosen: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for spec in &args.paths {
        let (spec, rename) = match spec.rsplit_once('=') {
            Some((p, n)) if valid_env_name(n) => (p, Some(n.to_owned())),
            _ => (spec.as_str(), None),
        };
        let (vault, path) = split(spec, true)?;
        let mut targets = Vec::new();
        env_targets(client, &vault, &path, &mut targets)?;
        if rename.is_some() && targets.len() != 1 {
            return Err(CliError::usage(format!(
                "{spec}=NAME needs a single secret, not a directory"
            )));
        }
        for (name, secret) in targets {
            let name = rename.clone().unwrap_or(name);
            if !env_name_usable(args, &name, &vault, &secret)? {
                continue;
            }
            if chosen.contains_key(&name) {
                if !env_duplicate_replaces(args, &name, &vault, &secret)? {
                    continue;
                }
            } else {
                order.push(name.clone());
            }
            chosen.insert(name, (vault.clone(), secret));
        }
    }
    Ok((chosen, order))
}

/// Whether `name` may be used, per `--env-invalid`: an error, or skipped with or without
/// a warning, when it is not a valid variable name.
fn env_name_usable(
    args: &EnvArgs,
    name: &str,
    vault: &str,
    secret: &str,
) -> Result<bool, CliError> {
    if valid_env_name(name) {
        return Ok(true);
    }
    match args.env_invalid {
        EnvInvalid::Error => Err(CliError::usage(format!(
            "{name:?} ({vault}:{secret}) is not a valid environment variable name"
        ))),
        EnvInvalid::Warn => {
            let _ = writeln!(
                std::io::stderr(),
                "pk: skipping {vault}:{secret}: {name:?} is not a valid environment variable name"
            );
            Ok(false)
        }
        EnvInvalid::Ignore => Ok(false),
    }
}

/// Whether a second secret for `name` replaces the first, per `--env-duplicate`.
fn env_duplicate_replaces(
    args: &EnvArgs,
    name: &str,
    vault: &str,
    secret: &str,
) -> Result<bool, CliError> {
    match args.env_duplicate {
        EnvDuplicate::Keep => Ok(false),
        EnvDuplicate::Overwrite => Ok(true),
        EnvDuplicate::Warn => {
            let _ = writeln!(
                std::io::stderr(),
                "pk: {name} is set twice; using {vault}:{secret}"
            );
            Ok(true)
        }
        EnvDuplicate::Error => Err(CliError::usage(format!(
            "{name} is set by more than one secret"
        ))),
    }
}

/// The variables as text a shell (or JSON) reads, in `order`.
fn env_text(
    format: Format,
    env_format: EnvFormat,
    order: &[String],
    vars: &BTreeMap<String, Zeroizing<String>>,
) -> Result<Zeroizing<String>, CliError> {
    let quote_sh = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
    let quote_ps = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let quote_cmd = |k: &str, v: &str| -> Result<String, CliError> {
        // Inside `set "NAME=value"` only `%` expands; a quote or a line break cannot be
        // written safely at all.
        if v.contains(['"', '\n', '\r']) {
            return Err(CliError::usage(format!(
                "{k} holds a quote or a line break, which cmd cannot take; use another --env-format"
            )));
        }
        Ok(format!("set \"{k}={}\"\n", v.replace('%', "%%")))
    };
    Ok(Zeroizing::new(match (format, env_format) {
        (Format::Json, _) | (_, EnvFormat::Json) => {
            let map: serde_json::Map<String, Value> = order
                .iter()
                .map(|k| (k.clone(), Value::String(vars[k].to_string())))
                .collect();
            format!("{}\n", Value::Object(map))
        }
        (_, EnvFormat::Unix) => order
            .iter()
            .map(|k| format!("export {k}={}\n", quote_sh(&vars[k])))
            .collect(),
        (_, EnvFormat::Cmd) => order
            .iter()
            .map(|k| quote_cmd(k, &vars[k]))
            .collect::<Result<String, _>>()?,
        (_, EnvFormat::Powershell) => order
            .iter()
            .map(|k| format!("$env:{k} = {}\n", quote_ps(&vars[k])))
            .collect(),
    }))
}

pub(crate) fn audit(node: &NodePath, args: &AuditArgs, out: &Output) -> Result<(), CliError> {
    let client = Client::new(node);
    let mut query = AuditQuery {
        events: args.events.clone(),
        limit: args.limit,
        newest_first: args.order == Order::Desc && !args.follow,
        after: None,
    };
    let mut printed = 0usize;
    if args.limit == Some(0) {
        return Ok(());
    }
    loop {
        let events = call(&client, agent_api::Audit(query.clone()))?;
        for e in &events {
            query.after = Some(query.after.unwrap_or(0).max(e.seq));
            let line = match out.format() {
                Format::Json => format!("{}\n", json!(e)),
                Format::Human => {
                    let time = humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms),
                    );
                    let fields: Vec<String> =
                        e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{:>6} {time} {:<22} {}\n", e.seq, e.event, fields.join(" "))
                }
            };
            out.raw(line.as_bytes())?;
            printed += 1;
        }
        if !args.follow || args.limit.is_some_and(|l| printed >= l) {
            return Ok(());
        }
        query.limit = args.limit.map(|l| l - printed);
        std::thread::sleep(Duration::from_millis(300));
    }
}
