//! Child processes of the mesh: started with their output in a log file,
//! tied to the mesh's life (Linux parent-death signal), stopped with SIGTERM
//! then SIGKILL.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Supervised {
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours;
        // if the mesh dies without cleaning up, the kernel sends SIGTERM.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
        })
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for error reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn terminate(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: plain syscall on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Waits for the exit that `terminate` asked for, killing after `grace`.
    pub fn reap(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Distinct free loopback ports below Linux's ephemeral range (32768+), so
/// no outgoing connection can take one between this check and the bind by
/// Envoy or an app. Held until all are chosen so none repeats.
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    const RANGE: std::ops::Range<u16> = 20000..32000;
    let span = RANGE.end - RANGE.start;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let start = (seed % u32::from(span)) as u16;
    let mut held = Vec::with_capacity(count);
    for offset in 0..span {
        if held.len() == count {
            break;
        }
        let port = RANGE.start + (start + offset) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < count {
        anyhow::bail!(
            "only {} free local ports in {RANGE:?}, {count} needed",
            held.len()
        );
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}
