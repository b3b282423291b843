//! A wasm module as an OCI image that istio-agent accepts (istio/istio
//! `pkg/wasm/imagefetcher.go`), built reproducibly (no timestamps: the same
//! module always gives the same manifest digest), pushed with `oci-client`,
//! and written as an OCI image layout.

use anyhow::{bail, Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The module layer of the Solo "oci" variant, raw wasm bytes.
pub const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";

/// The image layouts istio-agent extracts a module from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The "compat" variant, what `FROM scratch` + `COPY plugin.wasm /` builds:
    /// one gzip tar layer holding `plugin.wasm` (`extractOCIStandardImage`).
    PluginTar,
    /// The "oci" variant: exactly two layers, one of them the raw module as
    /// `application/vnd.module.wasm.content.layer.v1+wasm` (`extractOCIArtifactImage`).
    WasmLayer,
}

impl Layout {
    pub const ALL: [Self; 2] = [Self::PluginTar, Self::WasmLayer];

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "plugin-tar" => Ok(Self::PluginTar),
            "wasm-layer" => Ok(Self::WasmLayer),
            other => bail!("unknown image layout {other:?} (plugin-tar or wasm-layer)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::PluginTar => "plugin-tar",
            Self::WasmLayer => "wasm-layer",
        }
    }
}

/// A blob with its media type and `sha256:` digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_owned(),
            bytes,
        }
    }

    pub fn digest(&self) -> String {
        digest(&self.bytes)
    }

    pub fn descriptor(&self) -> OciDescriptor {
        OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest(),
            size: i64::try_from(self.bytes.len()).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        }
    }
}

/// An image manifest with its blobs.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// An OCI image manifest over any config and layers (tests build the
    /// layouts istio-agent refuses with it).
    pub fn assemble(config: Blob, layers: Vec<Blob>) -> Result<Self> {
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            config: config.descriptor(),
            layers: layers.iter().map(Blob::descriptor).collect(),
            ..OciImageManifest::default()
        };
        Ok(Self {
            manifest: serde_json::to_vec(&manifest)?,
            media_type: OCI_MANIFEST.to_owned(),
            config,
            layers,
        })
    }

    /// The manifest digest, `sha256:<hex>`: what a WasmPlugin's `sha256`
    /// holds (without the prefix) for an `oci://` URL.
    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image of one module in one layout, for linux/amd64 (the platform
/// istio-agent resolves; a single-platform manifest needs no index).
pub fn build(module: &[u8], layout: Layout) -> Result<Image> {
    if module.len() < 8 || !module.starts_with(b"\0asm") {
        bail!("not a wasm module (no \\0asm header)");
    }
    match layout {
        Layout::PluginTar => {
            let tar = plugin_tar(module)?;
            let config = json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]},
            });
            Image::assemble(
                Blob::new(OCI_CONFIG, serde_json::to_vec(&config)?),
                vec![Blob::new(OCI_LAYER_GZIP, gzip(&tar)?)],
            )
        }
        Layout::WasmLayer => {
            // Solo's wasm image spec: the module layer plus a config layer.
            let config =
                serde_json::to_vec(&json!({"type": "envoy_proxy", "abiVersions": ["v0.2.1"]}))?;
            Image::assemble(
                Blob::new(WASM_CONFIG, config.clone()),
                vec![
                    Blob::new(WASM_CONTENT_LAYER, module.to_vec()),
                    Blob::new(WASM_CONFIG, config),
                ],
            )
        }
    }
}

/// A tar with `plugin.wasm` (mode 0644, owner 0, time 0) at its root.
pub fn plugin_tar(module: &[u8]) -> Result<Vec<u8>> {
    tar_of("plugin.wasm", module)
}

/// A tar holding one file.
pub fn tar_of(name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut header, name, bytes)?;
    Ok(builder.into_inner()?)
}

/// gzip without a file name or time, so the bytes depend only on the input;
/// the fast level (the local mesh builds every module at each start; a wasm
/// layer is a few per cent larger than at the default level, in a sixth of the time).
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// An `oci-client` that speaks plain HTTP to loopback registries (as Docker
/// treats `localhost` registries as insecure) and HTTPS to every other.
pub fn client_for(registry: &str) -> Client {
    let protocol = if is_loopback(registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        // One PUT per blob: chunked uploads take a round trip per chunk.
        use_monolithic_push: true,
        ..ClientConfig::default()
    })
}

/// Whether a registry host (`host[:port]`) is on this machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(host, port)| !port.contains(']') && !host.is_empty())
        .map_or(registry, |(host, _)| host);
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Pushes every blob, then the manifest; returns the manifest digest.
pub async fn push(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    image: &Image,
) -> Result<String> {
    client
        .store_auth_if_needed(reference.resolve_registry(), auth)
        .await;
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let digest = blob.digest();
        client
            .push_blob(reference, blob.bytes.clone(), &digest)
            .await
            .with_context(|| format!("pushing blob {digest} to {reference}"))?;
    }
    push_manifest(client, reference, image.manifest.clone(), &image.media_type).await?;
    Ok(image.digest())
}

/// Pushes raw manifest bytes (an image manifest or an index).
pub async fn push_manifest(
    client: &Client,
    reference: &Reference,
    manifest: Vec<u8>,
    media_type: &str,
) -> Result<()> {
    let content_type = media_type.parse().context("manifest media type")?;
    client
        .push_manifest_raw(reference, manifest, content_type)
        .await
        .with_context(|| format!("pushing the manifest of {reference}"))?;
    Ok(())
}

/// Credentials for a registry from the Docker config file (`$DOCKER_CONFIG/config.json`
/// or `~/.docker/config.json`, credential helpers included); anonymous without one.
pub fn docker_config_auth(registry: &str) -> Result<RegistryAuth> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential(registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(RegistryAuth::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(RegistryAuth::Bearer(token)),
        Err(E::ConfigNotFound | E::ConfigReadError | E::NoCredentialConfigured) => {
            Ok(RegistryAuth::Anonymous)
        }
        Err(err) => bail!("cannot read the Docker credentials for {registry}: {err}"),
    }
}

/// A single-threaded runtime for synchronous callers; a `Client` keeps its
/// connections on the runtime it first ran on, so the two go together.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

/// Writes images into an OCI image layout (`oci-layout`, `index.json`,
/// `blobs/sha256/`), each under its `org.opencontainers.image.ref.name`, so
/// `skopeo copy oci:DIR:NAME docker://...` can push it from an air-gapped copy.
pub fn write_layout(dir: &Path, images: &[(String, &Image)]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)
        .with_context(|| format!("cannot create {}", blobs.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut manifests = Vec::new();
    for (name, image) in images {
        let manifest = Blob::new(&image.media_type, image.manifest.clone());
        for blob in [&manifest, &image.config].into_iter().chain(&image.layers) {
            let digest = blob.digest();
            let path = blobs.join(digest.trim_start_matches("sha256:"));
            std::fs::write(&path, &blob.bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let mut descriptor = serde_json::to_value(manifest.descriptor())?;
        descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": name});
        manifests.push(descriptor);
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0rest";

    #[test]
    fn images_are_reproducible_and_layouts_differ() {
        for layout in Layout::ALL {
            let first = build(MODULE, layout).unwrap();
            assert_eq!(first.digest(), build(MODULE, layout).unwrap().digest());
            assert_eq!(Layout::parse(layout.name()).unwrap(), layout);
        }
        let tar = build(MODULE, Layout::PluginTar).unwrap();
        assert_eq!(tar.layers.len(), 1);
        assert_eq!(tar.layers[0].media_type, OCI_LAYER_GZIP);
        let wasm = build(MODULE, Layout::WasmLayer).unwrap();
        assert_eq!(wasm.layers.len(), 2);
        assert_eq!(wasm.layers[0].bytes, MODULE);
        assert_ne!(tar.digest(), wasm.digest());
        let manifest: serde_json::Value = serde_json::from_slice(&tar.manifest).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], tar.layers[0].digest());
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    }

    #[test]
    fn the_tar_layer_holds_plugin_wasm() {
        let image = build(MODULE, Layout::PluginTar).unwrap();
        let tar = flate2::read::GzDecoder::new(image.layers[0].bytes.as_slice());
        let mut archive = tar::Archive::new(tar);
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("plugin.wasm"));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        assert_eq!(bytes, MODULE);
    }

    #[test]
    fn non_wasm_input_is_refused() {
        assert!(build(b"<html>", Layout::PluginTar).is_err());
    }

    #[test]
    fn loopback_registries() {
        for host in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "ghcr.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "docker.io",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
