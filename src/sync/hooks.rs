//! What runs after the file changed: a command (`--exec`) and a signal to a process whose
//! pid is in a file (`--signal`, `--pid-file`). Failures are logged and never stop the
//! sync: the file is already in place, and the next change runs them again.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

/// Why the hooks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The file holds a new bundle.
    Written,
    /// The file was removed (withdrawal).
    Removed,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Written => "written",
            Change::Removed => "removed",
        }
    }
}

/// The configured hooks.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// Program and arguments, run without a shell.
    pub exec: Vec<String>,
    pub exec_timeout: Duration,
    pub signal: Option<(NamedSignal, PathBuf)>,
}

/// A signal and the name it was given as (for logs).
#[derive(Clone, Copy, Debug)]
pub struct NamedSignal {
    pub name: &'static str,
    pub signal: Signal,
}

impl Hooks {
    /// Runs the command, then sends the signal. Returns whether everything succeeded.
    pub async fn run(&self, file: &Path, version: &str, change: Change) -> bool {
        let mut ok = true;
        if !self.exec.is_empty() {
            ok &= self.exec(file, version, change).await;
        }
        if let Some((signal, pid_file)) = &self.signal {
            ok &= send_signal(*signal, pid_file);
        }
        ok
    }

    async fn exec(&self, file: &Path, version: &str, change: Change) -> bool {
        let shown = self.exec.join(" ");
        let child = tokio::process::Command::new(&self.exec[0])
            .args(&self.exec[1..])
            .env("TRUST_SDS_FILE", file)
            .env("TRUST_SDS_VERSION", version)
            .env("TRUST_SDS_EVENT", change.as_str())
            .stdin(Stdio::null())
            // A command that outlives its timeout is killed, not left running.
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(command = %shown, error = %e, "cannot run the --exec command");
                return false;
            }
        };
        match tokio::time::timeout(self.exec_timeout, child.wait()).await {
            Ok(Ok(status)) => report(&shown, status),
            Ok(Err(e)) => {
                tracing::warn!(command = %shown, error = %e, "lost track of the --exec command");
                false
            }
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!(command = %shown, timeout = ?self.exec_timeout, "the --exec command did not finish in time: killed it");
                false
            }
        }
    }
}

fn report(command: &str, status: ExitStatus) -> bool {
    if status.success() {
        tracing::info!(%command, "ran the --exec command: {status}");
    } else {
        tracing::warn!(%command, "the --exec command failed: {status}");
    }
    status.success()
}

/// Reads the pid afresh each time (the process may have restarted) and signals it.
fn send_signal(signal: NamedSignal, pid_file: &Path) -> bool {
    let file = pid_file.display();
    let text = match std::fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Usual at start-up: the process has not started yet and will read the file
            // when it does.
            tracing::info!(pid_file = %file, "no pid file: nothing to signal");
            return true;
        }
        Err(e) => {
            tracing::warn!(pid_file = %file, error = %e, "cannot read the pid file");
            return false;
        }
    };
    let Some(pid) = parse_pid(&text) else {
        tracing::warn!(pid_file = %file, "the pid file does not hold a process id");
        return false;
    };
    match kill_process(pid, signal.signal) {
        Ok(()) => {
            tracing::info!(pid = pid.as_raw_nonzero().get(), pid_file = %file, "sent SIG{}", signal.name);
            true
        }
        Err(e) => {
            tracing::warn!(pid = pid.as_raw_nonzero().get(), pid_file = %file, error = %e, "cannot send SIG{}", signal.name);
            false
        }
    }
}

/// A positive pid: 0 and negative numbers would signal whole process groups.
fn parse_pid(text: &str) -> Option<Pid> {
    let n: i32 = text.trim().parse().ok()?;
    (n > 0).then(|| Pid::from_raw(n)).flatten()
}

/// Parses `HUP`, `SIGHUP`, `hup` or a signal number.
pub fn parse_signal(s: &str) -> Result<NamedSignal, String> {
    const NAMED: [(&str, Signal); 9] = [
        ("HUP", Signal::HUP),
        ("INT", Signal::INT),
        ("QUIT", Signal::QUIT),
        ("TERM", Signal::TERM),
        ("USR1", Signal::USR1),
        ("USR2", Signal::USR2),
        ("WINCH", Signal::WINCH),
        ("ALRM", Signal::ALARM),
        ("CONT", Signal::CONT),
    ];
    let upper = s.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let by_number = bare.parse::<i32>().ok().and_then(Signal::from_named_raw);
    NAMED
        .iter()
        .find(|(name, signal)| *name == bare || Some(*signal) == by_number)
        .map(|&(name, signal)| NamedSignal { name, signal })
        .ok_or_else(|| {
            let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
            format!("unknown signal {s:?}: use one of {}", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        for s in ["HUP", "SIGHUP", "hup", "1"] {
            assert_eq!(parse_signal(s).unwrap().name, "HUP", "{s}");
        }
        assert_eq!(parse_signal("usr2").unwrap().name, "USR2");
        let err = parse_signal("KILLALL").unwrap_err();
        assert!(
            err.contains("unknown signal \"KILLALL\": use one of HUP"),
            "{err}"
        );
    }

    #[test]
    fn only_positive_pids_are_signalled() {
        assert_eq!(
            parse_pid(" 42\n").map(|p| p.as_raw_nonzero().get()),
            Some(42)
        );
        for bad in ["0", "-1", "", "abc", "12 13"] {
            assert!(parse_pid(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_and_reported() {
        let hooks = Hooks {
            exec: vec!["sleep".into(), "30".into()],
            exec_timeout: Duration::from_millis(100),
            signal: None,
        };
        let started = std::time::Instant::now();
        assert!(!hooks.run(Path::new("/x"), "v", Change::Written).await);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_command_gets_the_file_version_and_event() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let hooks = Hooks {
            exec: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "echo \"$TRUST_SDS_FILE $TRUST_SDS_VERSION $TRUST_SDS_EVENT\" >> {}; exit 3",
                    log.display()
                ),
            ],
            exec_timeout: Duration::from_secs(10),
            signal: None,
        };
        assert!(
            !hooks
                .run(Path::new("/certs/ca.pem"), "abc", Change::Removed)
                .await
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "/certs/ca.pem abc removed\n"
        );
        let missing = Hooks {
            exec: vec!["/nonexistent/command".into()],
            ..hooks
        };
        assert!(!missing.run(Path::new("/x"), "v", Change::Written).await);
    }

    #[test]
    fn a_missing_pid_file_is_not_an_error_but_a_bad_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let hup = parse_signal("HUP").unwrap();
        assert!(send_signal(hup, &dir.path().join("none.pid")));
        let bad = dir.path().join("bad.pid");
        std::fs::write(&bad, "not a pid").unwrap();
        assert!(!send_signal(hup, &bad));
    }
}
