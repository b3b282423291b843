//! The mesh CA: what istiod's self-signed CA and istio-agent do for each
//! proxy. At mesh start a root is created (never committed, only in the run
//! dir) and every proxy gets a short-lived workload certificate whose only
//! name is its SPIFFE identity `spiffe://cluster.local/ns/<ns>/sa/<sa>`
//! (security/pkg/pki/ca/ca.go: self-signed root, org = trust domain;
//! security/pkg/nodeagent/cache: 24h workload certs with both server and
//! client auth). Envoy reads them from files as the static secrets `default`
//! and `ROOTCA`, the SDS names istio-agent serves.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Istio's default trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// istio-agent's default workload certificate TTL (`SECRET_TTL`).
const WORKLOAD_CERT_TTL: Duration = Duration::hours(24);
/// istiod's self-signed root lives 10 years; the local one only as long as a run.
const ROOT_TTL: Duration = Duration::days(7);

/// The SPIFFE identity of a workload running as `service_account` in `namespace`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

pub struct MeshCa {
    root: Certificate,
    key: KeyPair,
}

/// Where one proxy's credentials are, under the names istio-agent writes
/// with `OUTPUT_CERTS` (cert-chain.pem, key.pem, root-cert.pem).
#[derive(Debug, Clone)]
pub struct Identity {
    pub spiffe: String,
    pub cert_chain: PathBuf,
    pub key: PathBuf,
    pub root_cert: PathBuf,
}

impl MeshCa {
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate().context("cannot generate the mesh CA key")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, TRUST_DOMAIN);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + ROOT_TTL;
        let root = params
            .self_signed(&key)
            .context("cannot self-sign the mesh CA")?;
        Ok(Self { root, key })
    }

    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// A workload certificate for `spiffe` and its private key, both PEM.
    pub fn issue(&self, spiffe: &str) -> Result<(String, String)> {
        let key = KeyPair::generate().context("cannot generate a workload key")?;
        let mut params = CertificateParams::default();
        // Istio's workload certificates have an empty subject: the identity is the URI SAN.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(spiffe.try_into().with_context(|| {
                format!("{spiffe} is not a valid URI SAN")
            })?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + WORKLOAD_CERT_TTL;
        let cert = params
            .signed_by(&key, &self.root, &self.key)
            .with_context(|| format!("cannot sign the certificate of {spiffe}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues `spiffe`'s certificate into `dir` (created), as istio-agent
    /// writes a proxy's credentials.
    pub fn write_identity(&self, dir: &Path, spiffe: &str) -> Result<Identity> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (cert, key) = self.issue(spiffe)?;
        let identity = Identity {
            spiffe: spiffe.to_owned(),
            cert_chain: dir.join("cert-chain.pem"),
            key: dir.join("key.pem"),
            root_cert: dir.join("root-cert.pem"),
        };
        std::fs::write(&identity.cert_chain, cert)?;
        write_private(&identity.key, &key)?;
        std::fs::write(&identity.root_cert, self.root_pem())?;
        Ok(identity)
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

impl Identity {
    /// The static secrets `default` (certificate and key) and `ROOTCA` (the
    /// mesh root) that istio-agent's SDS server would send.
    pub fn secrets(&self) -> Value {
        json!([
            {"name": "default", "tls_certificate": {
                "certificate_chain": {"filename": self.cert_chain},
                "private_key": {"filename": self.key},
            }},
            {"name": "ROOTCA", "validation_context": {"trusted_ca": {"filename": self.root_cert}}},
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_certificates_carry_the_spiffe_id_and_expire_within_a_day() {
        let ca = MeshCa::new().unwrap();
        let dir = std::env::temp_dir().join(format!("meshwasm-ca-{}", std::process::id()));
        let identity = ca
            .write_identity(&dir, &spiffe_id("order-app", "order"))
            .unwrap();
        assert_eq!(
            identity.spiffe,
            "spiffe://cluster.local/ns/order-app/sa/order"
        );
        let pem = std::fs::read_to_string(&identity.cert_chain).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = std::fs::read_to_string(&identity.key).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&identity.key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let der = pem_body(&pem);
        let needle = identity.spiffe.as_bytes();
        assert!(
            der.windows(needle.len()).any(|w| w == needle),
            "the URI SAN is in the certificate"
        );
        assert_eq!(identity.secrets()[1]["name"], "ROOTCA");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&b64)
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut buffer = 0u32;
        let mut bits = 0;
        for byte in text.bytes().filter(|b| *b != b'=') {
            let value = ALPHABET.iter().position(|a| *a == byte).unwrap() as u32;
            buffer = (buffer << 6) | value;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buffer >> bits) as u8);
            }
        }
        out
    }
}
