//! istio-agent's module fetch and cache (istio/istio 1.30 `pkg/wasm`):
//! `cache.go` (keys, pull policy, checksums), `imagefetcher.go` (manifest
//! digest, platform, the accepted image layouts), `httpfetcher.go` (`https://`
//! modules). Locally every registry outside this machine is reached through the
//! mesh's registry (a mirror), every web server through its file server.

use anyhow::Context;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_image::{
    DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_LAYER_GZIP,
    OCI_MANIFEST, WASM_CONTENT_LAYER,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// `features.MaxWasmBinarySizeBytes` (`ISTIO_WASM_MAX_BINARY_SIZE_BYTES`, 256 MiB since 1.30).
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Why a module could not be had: istio-agent then swaps in an RBAC filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError(pub String);

type Fetched<T> = Result<T, String>;

/// `imagePullPolicy` (`PullPolicyValues`; anything else is unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Unspecified,
    IfNotPresent,
    Always,
}

impl PullPolicy {
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("IfNotPresent") => Self::IfNotPresent,
            Some("Always") => Self::Always,
            _ => Self::Unspecified,
        }
    }
}

/// The `imagePullSecret` as istiod hands it over (pilot/pkg/networking/core/
/// extension/extensionfilter.go `updatePluginConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullSecret {
    /// None asked for: the agent's default keychain (anonymous in a pod).
    None,
    /// Asked for but not found (or not `kubernetes.io/dockerconfigjson`):
    /// istiod sends an empty value, a fetch failure (convert.go `rewriteVMConfig`).
    Missing(String),
    /// The `.dockerconfigjson` bytes.
    DockerConfig(Vec<u8>),
}

/// One fetch as `rewriteVMConfig` asks the cache for it.
pub struct FetchRequest<'a> {
    pub url: &'a str,
    /// `sha256`; istiod's "nil" placeholder counts as unset.
    pub sha256: Option<&'a str>,
    /// The ECDS resource name and the WasmPlugin's resource version.
    pub resource_name: &'a str,
    pub resource_version: &'a str,
    pub pull_policy: PullPolicy,
    pub pull_secret: &'a PullSecret,
}

/// cache.go `shouldIgnoreResourceVersion`: IfNotPresent keeps a cached module,
/// Always pulls again when the resource version changed; unspecified is
/// IfNotPresent except for `oci://` URLs tagged `:latest`.
pub fn ignore_resource_version(policy: PullPolicy, url: &str) -> bool {
    match policy {
        PullPolicy::Always => false,
        PullPolicy::IfNotPresent => true,
        PullPolicy::Unspecified => !(url.starts_with("oci://") && url.ends_with(":latest")),
    }
}

/// cache.go `moduleNameFromURL`: `oci://registry/repository` without tag or
/// digest; other URLs as they are.
pub fn module_name(url: &str) -> String {
    url.strip_prefix("oci://")
        .and_then(|image| image.parse::<Reference>().ok())
        .map_or_else(
            || url.to_owned(),
            |reference| format!("oci://{}/{}", reference.registry(), reference.repository()),
        )
}

/// cache.go `isValidWasmBinary`: the magic and a version, 8 bytes at least.
pub fn is_valid_wasm(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes.starts_with(b"\0asm")
}

/// `remote.Descriptor.Image()` on an index: the first child for linux/amd64
/// (go-containerregistry's default platform; Istio sets none).
pub fn select_platform(index: &Value) -> Fetched<String> {
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|child| {
            child["platform"]["os"] == "linux" && child["platform"]["architecture"] == "amd64"
        })
        .and_then(|child| child["digest"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| "could not fetch image: no child with platform linux/amd64 in index".into())
}

/// Whether a manifest is an index (by its media type, else by its shape).
fn is_index(manifest: &Value) -> bool {
    match manifest["mediaType"].as_str() {
        Some(media_type) => media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST,
        None => manifest.get("manifests").is_some(),
    }
}

/// imagefetcher.go `PrepareFetch`'s binary fetcher: a Docker manifest must
/// end in a gzip tar layer (`extractDockerImage`); an OCI one is tried as the
/// compat variant (last layer a gzip tar holding `plugin.wasm`,
/// `extractOCIStandardImage`), then as the oci variant (exactly two layers,
/// one of them the raw module, `extractOCIArtifactImage`). Nothing else:
/// single-layer wasm artifacts, zstd or plain tar layers are refused.
pub fn extract_module(
    manifest: &Value,
    blob: &mut dyn FnMut(&Value) -> Fetched<Vec<u8>>,
    max: u64,
) -> Fetched<Vec<u8>> {
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let last_tar = |expected: &str, blob: &mut dyn FnMut(&Value) -> Fetched<Vec<u8>>| {
        let layer = layers
            .last()
            .ok_or("number of layers must be greater than zero")?;
        let media_type = layer["mediaType"].as_str().unwrap_or_default();
        if media_type != expected {
            return Err(format!(
                "invalid media type {media_type} (expect {expected})"
            ));
        }
        plugin_wasm_from_tar_gz(&blob(layer)?, max)
            .map_err(|err| format!("could not extract wasm binary: {err}"))
    };
    if manifest["mediaType"] == DOCKER_MANIFEST {
        return last_tar(DOCKER_LAYER_GZIP, blob).map_err(|err| {
            format!("could not extract Wasm file from the image as Docker container {err}")
        });
    }
    let compat = match last_tar(OCI_LAYER_GZIP, blob) {
        Ok(module) => return Ok(module),
        Err(err) => err,
    };
    let oci = if layers.len() == 2 {
        match layers.iter().find(|l| l["mediaType"] == WASM_CONTENT_LAYER) {
            Some(layer) => return blob(layer),
            None => format!("could not find the layer of type {WASM_CONTENT_LAYER}"),
        }
    } else {
        format!("number of layers must be 2 but got {}", layers.len())
    };
    Err(format!("the given image is in invalid format as an OCI image: could not parse as compat variant: {compat}; could not parse as oci variant: {oci}"))
}

/// imagefetcher.go `extractWasmPluginBinary`: the first entry named
/// `plugin.wasm` in any directory, reading at most `max` uncompressed bytes.
pub fn plugin_wasm_from_tar_gz(bytes: &[u8], max: u64) -> Fetched<Vec<u8>> {
    let gunzipped = flate2::read::GzDecoder::new(bytes).take(max);
    let mut archive = tar::Archive::new(gunzipped);
    let entries = archive
        .entries()
        .map_err(|err| format!("failed to parse layer as tar.gz: {err}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|err| err.to_string())?;
        let is_plugin = entry
            .path()
            .ok()
            .and_then(|path| path.file_name().map(|name| name == "plugin.wasm"))
            .unwrap_or(false);
        if is_plugin {
            if entry.size() > max {
                return Err(format!(
                    "failed to read plugin.wasm: larger than {max} bytes"
                ));
            }
            let mut module = Vec::new();
            entry
                .read_to_end(&mut module)
                .map_err(|err| format!("failed to read plugin.wasm: {err}"))?;
            if module.len() as u64 != entry.size() {
                return Err(format!(
                    "failed to read plugin.wasm: larger than {max} bytes"
                ));
            }
            return Ok(module);
        }
    }
    Err("plugin.wasm not found in the archive".into())
}

/// httpfetcher.go `unboxIfPossible`: gzip and tar wrappings are taken off
/// (first tar entry) until the wasm magic shows.
pub fn unbox(mut bytes: Vec<u8>) -> Vec<u8> {
    loop {
        if bytes.starts_with(b"\0asm") {
            return bytes;
        }
        let mut inner = Vec::new();
        let unwrapped = if bytes.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(bytes.as_slice())
                .take(MAX_MODULE_BYTES)
                .read_to_end(&mut inner)
                .is_ok()
        } else if bytes.get(257..262) == Some(b"ustar") {
            tar::Archive::new(bytes.as_slice())
                .entries()
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(|entry| entry.ok()?.read_to_end(&mut inner).ok())
                .is_some()
        } else {
            false
        };
        if !unwrapped {
            return bytes;
        }
        bytes = inner;
    }
}

/// Hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    oci_image::hex(&Sha256::digest(bytes))
}

/// cache.go `moduleKey`: module name and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleKey {
    pub name: String,
    pub checksum: String,
}

/// cache.go `checksumEntry`: the checksum a tagged URL had when last pulled,
/// and the resource version of each resource that used it.
#[derive(Debug, Default)]
struct ChecksumEntry {
    checksum: String,
    resource_versions: HashMap<String, String>,
}

/// Stands in for istio-agent's module cache (cache.go `LocalFileCache`):
/// `file://` is used as is; `oci://` images come from registries on this
/// machine, any other registry through the mesh's registry as a mirror;
/// `http(s)://` modules from web servers on this machine, any other through
/// the mesh's file server. Modules land in `<dir>/<sha256 of module name>/<checksum>.wasm`.
pub struct ModuleStore {
    pub dir: PathBuf,
    /// `127.0.0.1:<port>` of the registry mirroring every other registry.
    pub registry_mirror: Option<String>,
    /// `127.0.0.1:<port>` of the server standing in for every other web server.
    pub http_mirror: Option<String>,
    modules: HashMap<ModuleKey, PathBuf>,
    checksums: HashMap<String, ChecksumEntry>,
    /// Every download, for tests: (URL, checksum).
    pub pulls: Vec<(String, String)>,
    runtime: tokio::runtime::Runtime,
}

/// A resolved image, its module not downloaded yet.
struct PreparedImage {
    client: oci_client::Client,
    reference: Reference,
    auth: RegistryAuth,
    manifest: Value,
    digest: String,
}

impl ModuleStore {
    pub fn new(
        dir: PathBuf,
        registry_mirror: Option<String>,
        http_mirror: Option<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            dir,
            registry_mirror,
            http_mirror,
            modules: HashMap::new(),
            checksums: HashMap::new(),
            pulls: Vec::new(),
            runtime: oci_image::runtime()?,
        })
    }

    /// The module file Envoy loads, or why there is none (convert.go
    /// `rewriteVMConfig`, then cache.go `getOrFetch`).
    pub fn resolve(&mut self, request: &FetchRequest<'_>) -> Result<PathBuf, FetchError> {
        let url = request.url;
        if let Some(path) = url.strip_prefix("file://") {
            // Local modules pass through untouched (no checksum check).
            return Ok(PathBuf::from(path));
        }
        // A URL without a scheme means oci:// (pilot/pkg/model/extensions.go).
        let url = if url.contains("://") {
            url.to_owned()
        } else {
            format!("oci://{url}")
        };
        let fail = |err: String| FetchError(format!("cannot fetch Wasm module {url}: {err}"));
        if let PullSecret::Missing(name) = request.pull_secret {
            return Err(FetchError(format!(
                "cannot fetch Wasm module {url}: missing image pulling secret ({name})"
            )));
        }
        let checksum = request
            .sha256
            .filter(|sha| !sha.is_empty() && *sha != "nil")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let mut key = ModuleKey {
            name: module_name(&url),
            checksum,
        };
        let ignore = ignore_resource_version(request.pull_policy, &url);
        let (hit, checksum) = self.get_entry(&url, &key, request, ignore);
        if let Some(path) = hit {
            return Ok(path);
        }
        key.checksum = checksum;
        let (module, actual) = if let Some(image) = url.strip_prefix("oci://") {
            let prepared = self
                .prepare_image(image, request.pull_secret)
                .map_err(|err| fail(format!("could not fetch Wasm OCI image: {err}")))?;
            if let Some(path) = self.check_digest(&url, &mut key, &prepared.digest, request) {
                return path.map_err(FetchError);
            }
            let module = self
                .image_module(&prepared)
                .map_err(|err| fail(format!("could not fetch Wasm binary: {err}")))?;
            (module, prepared.digest)
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let module = self.http_get(&url).map_err(fail)?;
            let digest = sha256_hex(&module);
            if let Some(path) = self.check_digest(&url, &mut key, &digest, request) {
                return path.map_err(FetchError);
            }
            (module, digest)
        } else {
            return Err(fail(format!(
                "unsupported Wasm module downloading URL scheme: {}",
                url.split("://").next().unwrap_or_default()
            )));
        };
        if !is_valid_wasm(&module) {
            return Err(fail(format!("fetched Wasm binary from {url} is invalid")));
        }
        key.checksum = actual;
        self.add_entry(&url, key, request, &module)
            .map_err(|err| fail(err.to_string()))
    }

    /// cache.go `getOrFetch` after the download: an unpinned module may be
    /// cached under the checksum just learnt; a pinned one must match it.
    fn check_digest(
        &mut self,
        url: &str,
        key: &mut ModuleKey,
        actual: &str,
        request: &FetchRequest<'_>,
    ) -> Option<Result<PathBuf, String>> {
        if key.checksum.is_empty() {
            key.checksum = actual.to_owned();
            self.get_entry(url, key, request, true).0.map(Ok)
        } else if key.checksum != actual {
            Some(Err(format!(
                "cannot fetch Wasm module {url}: module downloaded from {url} has checksum {actual}, which does not match: {}",
                key.checksum
            )))
        } else {
            None
        }
    }

    /// cache.go `getEntry`: the cached module for this key, and the checksum
    /// to expect (from an `@sha256:` URL, or what the tag resolved to last
    /// time, unless the pull policy asks again for a new resource version).
    fn get_entry(
        &mut self,
        url: &str,
        key: &ModuleKey,
        request: &FetchRequest<'_>,
        ignore_resource_version: bool,
    ) -> (Option<PathBuf>, String) {
        let mut key = key.clone();
        if key.checksum.is_empty() && url.starts_with("oci://") {
            if let Some((_, digest)) = url.rsplit_once("@sha256:") {
                key.checksum = digest.to_ascii_lowercase();
            }
        }
        if key.checksum.is_empty() {
            if let Some(entry) = self.checksums.get_mut(url) {
                let seen = entry.resource_versions.get(request.resource_name);
                if ignore_resource_version
                    || seen.map(String::as_str) == Some(request.resource_version)
                {
                    key.checksum = entry.checksum.clone();
                }
                entry.resource_versions.insert(
                    request.resource_name.to_owned(),
                    request.resource_version.to_owned(),
                );
            }
        }
        match self.modules.get(&key) {
            Some(path) => {
                let path = path.clone();
                self.update_checksum(url, &key, request);
                (Some(path), key.checksum)
            }
            None => (None, key.checksum),
        }
    }

    /// cache.go `updateChecksum`: tagged OCI and HTTP URLs remember their checksum.
    fn update_checksum(&mut self, url: &str, key: &ModuleKey, request: &FetchRequest<'_>) {
        if !url.starts_with("oci://") || !url.contains('@') {
            let entry = self.checksums.entry(url.to_owned()).or_default();
            entry.checksum = key.checksum.clone();
            entry.resource_versions.insert(
                request.resource_name.to_owned(),
                request.resource_version.to_owned(),
            );
        }
    }

    /// cache.go `addEntry` and `getModulePath`.
    fn add_entry(
        &mut self,
        url: &str,
        key: ModuleKey,
        request: &FetchRequest<'_>,
        module: &[u8],
    ) -> anyhow::Result<PathBuf> {
        self.update_checksum(url, &key, request);
        self.pulls.push((url.to_owned(), key.checksum.clone()));
        if let Some(path) = self.modules.get(&key) {
            return Ok(path.clone());
        }
        let dir = self.dir.join(sha256_hex(key.name.as_bytes()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.wasm", key.checksum));
        std::fs::write(&path, module)
            .with_context(|| format!("cannot write {}", path.display()))?;
        self.modules.insert(key, path.clone());
        Ok(path)
    }

    /// imagefetcher.go `PrepareFetch`: the manifest (linux/amd64 out of an
    /// index) and its digest, with the pull secret's credentials for the
    /// URL's registry (`wasmKeyChain`) or anonymously.
    fn prepare_image(&self, image: &str, secret: &PullSecret) -> Fetched<PreparedImage> {
        let named: Reference = image
            .parse()
            .map_err(|err| format!("could not parse url in image reference: {err}"))?;
        let auth = match secret {
            PullSecret::DockerConfig(config) => {
                docker_config_auth(config, named.resolve_registry())?
            }
            PullSecret::None | PullSecret::Missing(_) => RegistryAuth::Anonymous,
        };
        let registry = if oci_image::is_loopback(named.resolve_registry()) {
            named.resolve_registry().to_owned()
        } else {
            self.registry_mirror.clone().ok_or_else(|| {
                format!(
                    "registry {} is not on this machine and the mesh has no mirror",
                    named.resolve_registry()
                )
            })?
        };
        let reference = match (named.digest(), named.tag()) {
            (Some(digest), _) => {
                Reference::with_digest(registry, named.repository().to_owned(), digest.to_owned())
            }
            (None, tag) => Reference::with_tag(
                registry,
                named.repository().to_owned(),
                tag.unwrap_or("latest").to_owned(),
            ),
        };
        let client = oci_image::client_for(reference.resolve_registry());
        let accepted = [
            OCI_MANIFEST,
            DOCKER_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST_LIST,
        ];
        let pull = |reference: Reference| async {
            let (bytes, _) = client
                .pull_manifest_raw(&reference, &auth, &accepted)
                .await
                .map_err(|err| format!("could not fetch manifest: {err}"))?;
            let manifest: Value = serde_json::from_slice(&bytes)
                .map_err(|err| format!("could not fetch manifest: {err}"))?;
            Fetched::Ok((reference, manifest, sha256_hex(&bytes)))
        };
        let (reference, manifest, digest) = self.runtime.block_on(async {
            let (reference, manifest, digest) = pull(reference).await?;
            if !is_index(&manifest) {
                return Ok((reference, manifest, digest));
            }
            let child = select_platform(&manifest)?;
            let child_reference = Reference::with_digest(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                child,
            );
            pull(child_reference).await
        })?;
        Ok(PreparedImage {
            client,
            reference,
            auth,
            manifest,
            digest,
        })
    }

    /// The prepared image's module, by the layout rules of [`extract_module`].
    fn image_module(&self, image: &PreparedImage) -> Fetched<Vec<u8>> {
        let mut blob = |descriptor: &Value| -> Fetched<Vec<u8>> {
            let descriptor: oci_client::manifest::OciDescriptor =
                serde_json::from_value(descriptor.clone()).map_err(|err| err.to_string())?;
            if u64::try_from(descriptor.size).unwrap_or(u64::MAX) > MAX_MODULE_BYTES {
                return Err(format!(
                    "layer of {} bytes exceeds the {MAX_MODULE_BYTES} byte limit",
                    descriptor.size
                ));
            }
            self.runtime.block_on(async {
                let mut out = Vec::new();
                image
                    .client
                    .store_auth_if_needed(image.reference.resolve_registry(), &image.auth)
                    .await;
                image
                    .client
                    .pull_blob(&image.reference, &descriptor, &mut out)
                    .await
                    .map(|()| out)
                    .map_err(|err| format!("could not get layer content: {err}"))
            })
        };
        extract_module(&image.manifest, &mut blob, MAX_MODULE_BYTES)
    }

    /// httpfetcher.go `Fetch`: GET, retrying 5xx answers (but 501, 505, 511)
    /// up to 5 times with backoff from 500 ms; the body unboxed.
    fn http_get(&self, url: &str) -> Fetched<Vec<u8>> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let target = if oci_image::is_loopback(host) {
            format!("{scheme}://{host}/{path}")
        } else {
            let mirror = self.http_mirror.as_deref().ok_or_else(|| {
                format!("{host} is not on this machine and the mesh has no file server")
            })?;
            format!("http://{mirror}/{path}")
        };
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(15)))
                .http_status_as_error(false)
                .build(),
        );
        let mut delay = Duration::from_millis(500);
        for attempt in 0..=5 {
            let mut response = agent
                .get(&target)
                .call()
                .map_err(|err| format!("wasm module download failed: {err}"))?;
            let status = response.status().as_u16();
            if status == 200 {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_MODULE_BYTES)
                    .read_to_vec()
                    .map_err(|err| format!("wasm module download failed: {err}"))?;
                return Ok(unbox(body));
            }
            let retry = status >= 500 && ![501, 505, 511].contains(&status);
            if !retry || attempt == 5 {
                return Err(format!(
                    "wasm module download request failed: status code {status}"
                ));
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
        Err("wasm module download failed".into())
    }
}

/// `wasmKeyChain.Resolve`: the secret's credentials for the registry,
/// anonymous when it has none for it.
fn docker_config_auth(config: &[u8], registry: &str) -> Fetched<RegistryAuth> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential_from_reader(config, registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(RegistryAuth::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(token)) => Ok(RegistryAuth::Bearer(token)),
        Err(E::NoCredentialConfigured) => Ok(RegistryAuth::Anonymous),
        Err(err) => Err(format!("could not read the image pull secret: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_image::{Blob, Image, Layout};
    use serde_json::json;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0module";

    fn extract(image: &Image) -> Fetched<Vec<u8>> {
        let manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
        let mut blob = |descriptor: &Value| {
            image
                .layers
                .iter()
                .find(|layer| layer.digest() == descriptor["digest"])
                .map(|layer| layer.bytes.clone())
                .ok_or_else(|| "no such blob".to_owned())
        };
        extract_module(&manifest, &mut blob, MAX_MODULE_BYTES)
    }

    fn config() -> Blob {
        Blob::new(oci_image::OCI_CONFIG, b"{}".to_vec())
    }

    #[test]
    fn both_accepted_layouts_give_the_module() {
        for layout in Layout::ALL {
            assert_eq!(
                extract(&oci_image::build(MODULE, layout).unwrap()).unwrap(),
                MODULE
            );
        }
        // plugin.wasm in any folder, after other entries, under earlier layers.
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in [("etc/x", &b"x"[..]), ("./app/plugin.wasm", MODULE)] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, name, bytes).unwrap();
        }
        let layer = oci_image::gzip(&tar.into_inner().unwrap()).unwrap();
        let base = Blob::new(
            OCI_LAYER_GZIP,
            oci_image::gzip(&oci_image::tar_of("a", b"a").unwrap()).unwrap(),
        );
        let image =
            Image::assemble(config(), vec![base, Blob::new(OCI_LAYER_GZIP, layer)]).unwrap();
        assert_eq!(extract(&image).unwrap(), MODULE);
    }

    #[test]
    fn other_layouts_are_refused_as_istio_does() {
        let raw = |media_type: &str| Blob::new(media_type, MODULE.to_vec());
        let tar_gz = Blob::new(
            OCI_LAYER_GZIP,
            oci_image::gzip(&oci_image::plugin_tar(MODULE).unwrap()).unwrap(),
        );
        for (layers, expected) in [
            // wasm-to-oci / ORAS / CNCF wasm artifact: one raw layer.
            (
                vec![raw("application/vnd.wasm.content.layer.v1+wasm")],
                "number of layers must be 2 but got 1",
            ),
            (
                vec![raw(WASM_CONTENT_LAYER)],
                "number of layers must be 2 but got 1",
            ),
            (
                vec![
                    raw(WASM_CONTENT_LAYER),
                    raw("application/json"),
                    raw("application/json"),
                ],
                "number of layers must be 2 but got 3",
            ),
            (
                vec![raw("application/vnd.oci.image.layer.v1.tar+zstd")],
                "invalid media type application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            (vec![], "number of layers must be greater than zero"),
            (
                vec![raw("application/json"), raw("application/json")],
                "could not find the layer of type",
            ),
            // A gzip tar that is not the last layer does not count.
            (
                vec![tar_gz, raw("application/json")],
                "invalid media type application/json",
            ),
        ] {
            let image = Image::assemble(config(), layers).unwrap();
            let err = extract(&image).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(err.contains("invalid format as an OCI image"), "{err}");
        }
        let no_plugin = Blob::new(
            OCI_LAYER_GZIP,
            oci_image::gzip(&oci_image::tar_of("other.wasm", MODULE).unwrap()).unwrap(),
        );
        let err = extract(&Image::assemble(config(), vec![no_plugin]).unwrap()).unwrap_err();
        assert!(
            err.contains("plugin.wasm not found in the archive"),
            "{err}"
        );
    }

    #[test]
    fn docker_manifests_take_only_docker_gzip_layers() {
        let tar_gz = oci_image::gzip(&oci_image::plugin_tar(MODULE).unwrap()).unwrap();
        let layer = |media_type: &str| json!({"mediaType": media_type, "digest": oci_image::digest(&tar_gz), "size": tar_gz.len()});
        let mut blob = |_: &Value| Ok(tar_gz.clone());
        let docker = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": [layer(DOCKER_LAYER_GZIP)]});
        assert_eq!(
            extract_module(&docker, &mut blob, MAX_MODULE_BYTES).unwrap(),
            MODULE
        );
        let mixed = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": [layer(OCI_LAYER_GZIP)]});
        let err = extract_module(&mixed, &mut blob, MAX_MODULE_BYTES).unwrap_err();
        assert!(
            err.contains("as Docker container invalid media type"),
            "{err}"
        );
    }

    #[test]
    fn the_size_cap_refuses_larger_modules() {
        let module = [MODULE, &[0; 2000]].concat();
        let image = oci_image::build(&module, Layout::PluginTar).unwrap();
        let err = plugin_wasm_from_tar_gz(&image.layers[0].bytes, 1024).unwrap_err();
        assert!(err.contains("larger than 1024 bytes"), "{err}");
        assert_eq!(
            plugin_wasm_from_tar_gz(&image.layers[0].bytes, 1 << 20).unwrap(),
            module
        );
    }

    #[test]
    fn linux_amd64_is_picked_from_an_index() {
        let child = |os: &str, arch: &str, digest: &str| json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": {"os": os, "architecture": arch}});
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            child("linux", "arm64", "sha256:a"), child("linux", "amd64", "sha256:b"), child("linux", "amd64", "sha256:c")]});
        assert!(is_index(&index));
        assert_eq!(select_platform(&index).unwrap(), "sha256:b");
        let wasi = json!({"manifests": [child("wasi", "wasm", "sha256:a")]});
        assert!(is_index(&wasi));
        assert!(select_platform(&wasi).unwrap_err().contains("linux/amd64"));
        assert!(!is_index(&json!({"mediaType": OCI_MANIFEST, "layers": []})));
    }

    #[test]
    fn cache_keys_and_pull_policy_follow_cache_go() {
        assert_eq!(
            module_name("oci://ghcr.io/meshwasm/meshwasm:0.1.0"),
            "oci://ghcr.io/meshwasm/meshwasm"
        );
        assert_eq!(
            module_name(&format!(
                "oci://ghcr.io/meshwasm/meshwasm@sha256:{}",
                "a".repeat(64)
            )),
            "oci://ghcr.io/meshwasm/meshwasm"
        );
        assert_eq!(
            module_name("oci://127.0.0.1:5000/x/y"),
            "oci://127.0.0.1:5000/x/y"
        );
        assert_eq!(
            module_name("https://example.com/m.wasm"),
            "https://example.com/m.wasm"
        );
        let latest = "oci://ghcr.io/x/y:latest";
        assert!(!ignore_resource_version(PullPolicy::Unspecified, latest));
        assert!(ignore_resource_version(PullPolicy::IfNotPresent, latest));
        assert!(ignore_resource_version(
            PullPolicy::Unspecified,
            "oci://ghcr.io/x/y:1"
        ));
        assert!(!ignore_resource_version(
            PullPolicy::Always,
            "oci://ghcr.io/x/y:1"
        ));
        assert!(ignore_resource_version(
            PullPolicy::Unspecified,
            "https://h/latest"
        ));
        assert_eq!(PullPolicy::parse(Some("Always")), PullPolicy::Always);
        assert_eq!(
            PullPolicy::parse(Some("UNSPECIFIED_POLICY")),
            PullPolicy::Unspecified
        );
    }

    #[test]
    fn https_bodies_are_unboxed_and_wasm_checked() {
        let boxed = oci_image::gzip(&oci_image::tar_of("m.wasm", MODULE).unwrap()).unwrap();
        assert_eq!(unbox(boxed), MODULE);
        assert_eq!(unbox(b"<html>".to_vec()), b"<html>");
        assert!(is_valid_wasm(MODULE));
        assert!(!is_valid_wasm(b"\0asm\x01"));
        assert!(!is_valid_wasm(b"<html>not wasm</html>"));
    }

    #[test]
    fn pull_secrets_resolve_per_registry() {
        let config = br#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpwYXNz"}}}"#;
        assert!(matches!(
            docker_config_auth(config, "127.0.0.1:5000").unwrap(),
            RegistryAuth::Basic(user, pass) if user == "user" && pass == "pass"
        ));
        assert!(matches!(
            docker_config_auth(config, "ghcr.io").unwrap(),
            RegistryAuth::Anonymous
        ));
    }

    fn request<'a>(url: &'a str, version: &'a str, secret: &'a PullSecret) -> FetchRequest<'a> {
        FetchRequest {
            url,
            sha256: None,
            resource_name: "r",
            resource_version: version,
            pull_policy: PullPolicy::Unspecified,
            pull_secret: secret,
        }
    }

    #[test]
    fn a_cached_tag_is_reused_unless_latest_and_a_new_resource_version() {
        let dir = std::env::temp_dir().join(format!("meshwasm-cache-{}", std::process::id()));
        let mut store = ModuleStore::new(dir.clone(), None, None).unwrap();
        let none = PullSecret::None;
        for url in ["oci://ghcr.io/x/y:1", "oci://ghcr.io/x/y:latest"] {
            let first = request(url, "1", &none);
            let key = ModuleKey {
                name: module_name(url),
                checksum: "a".repeat(64),
            };
            let path = store.add_entry(url, key, &first, MODULE).unwrap();
            assert!(
                path.ends_with(format!(
                    "{}/{}.wasm",
                    sha256_hex(b"oci://ghcr.io/x/y"),
                    "a".repeat(64)
                )),
                "{path:?}"
            );
            let plain = ModuleKey {
                name: module_name(url),
                checksum: String::new(),
            };
            assert_eq!(
                store.get_entry(url, &plain, &first, false).0,
                Some(path.clone())
            );
            let edited = request(url, "2", &none);
            let ignore = ignore_resource_version(PullPolicy::Unspecified, url);
            let hit = store.get_entry(url, &plain, &edited, ignore).0;
            assert_eq!(hit.is_some(), url.ends_with(":1"), "{url}");
        }
        // A pinned digest finds its module without any pull.
        let pinned = format!("oci://ghcr.io/x/y@sha256:{}", "a".repeat(64));
        let plain = ModuleKey {
            name: module_name(&pinned),
            checksum: String::new(),
        };
        assert!(store
            .get_entry(&pinned, &plain, &request(&pinned, "9", &none), false)
            .0
            .is_some());
        let missing = PullSecret::Missing("regcred".into());
        let err = store
            .resolve(&request("oci://ghcr.io/x/y:1", "1", &missing))
            .unwrap_err();
        assert!(err.0.contains("missing image pulling secret"), "{err:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
