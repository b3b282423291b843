//! Where the local mesh's modules come from, as they would in a cluster: a
//! real OCI registry (Debian's `docker-registry`, the CNCF distribution
//! registry) on 127.0.0.1, into which the mesh pushes the images `make image`
//! builds, and a plain HTTP server for `https://` module URLs.

use crate::process::{free_ports, Supervised};
use anyhow::{bail, Context, Result};
use oci_client::secrets::RegistryAuth;
use oci_image::{Image, Layout};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Debian's `docker-registry` binary (`make setup` installs the package).
pub const REGISTRY_BIN: &str = "docker-registry";
/// The repository every `oci://<registry>/meshwasm/<module>` URL finds through
/// the mirror, and the tag of the shipped manifests (the workspace version).
pub const REPOSITORY: &str = "meshwasm";
pub const TAG: &str = env!("CARGO_PKG_VERSION");

/// A `docker-registry serve` process on 127.0.0.1, optionally behind htpasswd
/// basic auth; stopped on drop.
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub address: String,
    auth: RegistryAuth,
    client: oci_client::Client,
    runtime: tokio::runtime::Runtime,
    process: Supervised,
}

impl Registry {
    /// Starts a registry whose storage, config and log live in `dir`.
    pub fn start(dir: &Path, name: &str, user: Option<(&str, &str)>) -> Result<Self> {
        let Some(binary) = find_in_path(REGISTRY_BIN) else {
            bail!("no `{REGISTRY_BIN}` on PATH: the local mesh serves modules from a real OCI registry; install Debian's docker-registry package (`make setup`)");
        };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let [port] = free_ports(1)?[..] else {
            bail!("no free port for the registry");
        };
        let address = format!("127.0.0.1:{port}");
        let auth_section = match user {
            Some((user, password)) => {
                let hash =
                    bcrypt::hash(password, 4).context("cannot hash the registry password")?;
                let htpasswd = dir.join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: meshwasm\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        // Bound to loopback only; no debug listener; its own storage. The
        // service Debian may have started (:5000, /var/lib/docker-registry)
        // plays no part.
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n  secret: meshwasm-local\n{auth_section}",
            dir.join("storage").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let mut command = std::process::Command::new(binary);
        command.arg("serve").arg(&config_path).env_clear();
        let mut process = Supervised::spawn(name, command, dir)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&address).is_err() {
            if let Some(status) = process.exited() {
                bail!(
                    "{name} exited ({status}); its log:\n{}",
                    process.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not listening on {address} after 10 s; its log:\n{}",
                    process.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let auth = user.map_or(RegistryAuth::Anonymous, |(user, password)| {
            RegistryAuth::Basic(user.to_owned(), password.to_owned())
        });
        let client = oci_image::client_for(&address);
        Ok(Self {
            address,
            auth,
            client,
            runtime: oci_image::runtime()?,
            process,
        })
    }

    /// Pushes an image as `<repository>:<tag>` (or `@sha256:...`); returns its manifest digest.
    pub fn push(&self, name: &str, image: &Image) -> Result<String> {
        let reference = self.reference(name)?;
        self.runtime
            .block_on(oci_image::push(&self.client, &reference, &self.auth, image))
    }

    /// Pushes images concurrently; returns their manifest digests.
    pub fn push_all(&self, images: &[(String, Image)]) -> Result<Vec<String>> {
        let pushes = images.iter().map(|(name, image)| async move {
            let reference = self.reference(name)?;
            oci_image::push(&self.client, &reference, &self.auth, image).await
        });
        self.runtime
            .block_on(futures_util::future::join_all(pushes))
            .into_iter()
            .collect()
    }

    /// Pushes raw manifest bytes (an index, say) as `<repository>:<tag>`.
    pub fn push_manifest(&self, name: &str, manifest: Vec<u8>, media_type: &str) -> Result<()> {
        let reference = self.reference(name)?;
        self.runtime.block_on(async {
            self.client
                .store_auth_if_needed(reference.resolve_registry(), &self.auth)
                .await;
            oci_image::push_manifest(&self.client, &reference, manifest, media_type).await
        })
    }

    fn reference(&self, name: &str) -> Result<oci_client::Reference> {
        format!("{}/{name}", self.address)
            .parse()
            .with_context(|| format!("bad image name {name}"))
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.process.terminate();
        self.process.reap(Duration::from_secs(5));
    }
}

/// Pushes every `<module>.wasm` of `dist` as `meshwasm/<module>:<TAG>`, in the
/// layout `FROM scratch` + `COPY plugin.wasm` builds (built by the same code
/// as `make image`, so the digests are the ones it prints).
pub fn publish_dist(registry: &Registry, dist: &Path) -> Result<Vec<String>> {
    let mut images = Vec::new();
    let entries =
        std::fs::read_dir(dist).with_context(|| format!("cannot read {}", dist.display()))?;
    let mut modules: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    modules.sort();
    for path in modules {
        let Some(module) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let bytes = std::fs::read(&path)?;
        let image = oci_image::build(&bytes, Layout::PluginTar)
            .with_context(|| path.display().to_string())?;
        images.push((format!("{REPOSITORY}/{module}:{TAG}"), image));
    }
    registry.push_all(&images)?;
    Ok(images.into_iter().map(|(name, _)| name).collect())
}

fn find_in_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|path| path.is_file())
    })
}

/// A plain HTTP server on 127.0.0.1 answering `GET /any/path/<name>` with
/// `dir/<name>` (404 otherwise): where `https://` module URLs are fetched.
pub struct FileServer {
    /// `127.0.0.1:<port>`.
    pub address: String,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    pub fn start(dir: &Path) -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("cannot bind the module HTTP server")?;
        let address = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, stopped) = (dir.to_owned(), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve_file(stream, &dir);
                }
            }
        });
        Ok(Self { address, stop })
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.address);
    }
}

fn serve_file(mut stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let name = path
        .split(['?', '#'])
        .next()
        .unwrap_or(path)
        .rsplit('/')
        .next()
        .unwrap_or("");
    let file = (!name.is_empty() && !name.starts_with('.'))
        .then(|| std::fs::read(dir.join(name)).ok())
        .flatten();
    match file {
        Some(body) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)
        }
        None => stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}
