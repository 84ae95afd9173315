//! n, a setting changed in the console: a time server (Debian's chronyd) on the machine's
//! network namespace (the guest reaches it at QEMU's 10.0.2.2) set as the box's NTP server
//! in the console's settings, applied by the restart the console offers, kept through a
//! reboot (and through an update: scenario h). Whether the clock then synchronises is
//! said, not yet checked: it did not within 180 s in the runs so far (see
//! docs/reference/qemu-suite.md).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::console::Console;
use crate::vm::Vm;
use crate::{ADMIN_PASSWORD, Failure};

/// The guest's view of the host's 127.0.0.1 on QEMU's user network.
pub(crate) const TIME_SERVER: &str = "10.0.2.2";

/// chronyd serving the host's clock on 127.0.0.1:123 of this network namespace; killed by
/// its PID when dropped.
pub(crate) struct TimeServer {
    child: Child,
}

impl TimeServer {
    /// Starts chronyd in the foreground with a configuration of its own in `dir`: it
    /// serves, it never sets this machine's clock (`-x`), it has no command socket.
    pub(crate) fn start(dir: &Path) -> Result<TimeServer, Failure> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "local stratum 3\nallow 127.0.0.1\nbindaddress 127.0.0.1\nport 123\ncmdport 0\n\
                 pidfile {0}/chronyd.pid\ndriftfile {0}/chrony.drift\n",
                dir.display()
            ),
        )?;
        let child = Command::new("chronyd")
            .arg("-f")
            .arg(&conf)
            .args(["-d", "-x", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chronyd.log"))?)
            .spawn()
            .map_err(|e| format!("chronyd: {e} (package chrony)"))?;
        let mut server = TimeServer { child };
        // The guest asks minutes later; a chronyd that could not start has ended by now.
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!(
                "chronyd stopped at once ({status}): see its log in {}",
                dir.display()
            )
            .into());
        }
        Ok(server)
    }
}

impl Drop for TimeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setting(console: &Console, key: &str) -> Result<Value, Failure> {
    let view = console.ok("GET", "/api/settings", None)?;
    view["settings"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["key"] == key))
        .cloned()
        .ok_or_else(|| format!("no {key} in the settings: {view}").into())
}

/// Whether the setting `ntp_servers` still names the test's time server.
pub(crate) fn server_setting_kept(console: &Console, when: &str) -> Result<(), Failure> {
    let ntp = setting(console, "ntp_servers")?;
    if ntp["value"] != TIME_SERVER || ntp["set"] != true {
        return Err(format!("{when} the setting ntp_servers reads {ntp}").into());
    }
    Ok(())
}

/// n, first part (in b's boot): a bad value refused by its key; the time server stored
/// in the settings; the restart the console offers, after which the setting is in effect.
pub(crate) fn set_time_server(vm: &mut Vm, console: &mut Console) -> Result<(), Failure> {
    let refused = console.call(
        "POST",
        "/api/settings",
        Some(json!({ "key": "ntp_servers", "value": "no such host!" })),
    )?;
    if !refused["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("ntp_servers:"))
    {
        return Err(format!("a bad NTP server was not refused by its key: {refused}").into());
    }
    console.ok(
        "POST",
        "/api/settings",
        Some(json!({ "key": "ntp_servers", "value": TIME_SERVER })),
    )?;
    let mark = vm.mark();
    console.ok("POST", "/api/settings/restart", None)?;
    // systemd prints no "Started" line for a restart once the boot is over; the daemon
    // says where its console is each time it starts.
    vm.wait_serial_since(mark, "console at https://", crate::BOOT_TIMEOUT)?;
    console.reachable(Duration::from_secs(60))?;
    // Sessions live in the daemon: log in again.
    console.login(ADMIN_PASSWORD)?;
    server_setting_kept(console, "after the restart")?;
    say_whether_synchronised(console, Duration::from_secs(60));
    Ok(())
}

/// Says (for the record, not as a check: see docs/reference/qemu-suite.md, scenario n)
/// whether the box's clock was synchronised from the time server within `wait`.
fn say_whether_synchronised(console: &Console, wait: Duration) {
    let started = Instant::now();
    while started.elapsed() < wait {
        if console
            .ok("GET", "/api/status", None)
            .is_ok_and(|s| s["clock"]["synchronized"] == true)
        {
            eprintln!(
                "   the clock was synchronised from {TIME_SERVER} {} s after the restart",
                started.elapsed().as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!(
        "   the clock was not synchronised from {TIME_SERVER} within {} s",
        wait.as_secs()
    );
}
