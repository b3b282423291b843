//! Mints demo tokens for the local mesh, the demo and the end-to-end tests.
//! The default key is the committed DEMO key: tokens minted with it are only
//! trusted by configurations that list the demo JWKS.

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DEMO_ISSUER: &str = "https://auth.meshwasm.local";
pub const DEMO_AUDIENCE: &str = "order-app";
pub const DEMO_KID: &str = "meshwasm-demo-1";

/// The committed demo private key.
pub fn demo_key_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../integration/demo-keys/demo-rsa-private.pem"
    ))
}

/// An `Authorization` value, `Bearer <token>`, for a demo token of `subject`
/// with extra `claims`, valid for an hour.
pub fn demo_bearer(subject: &str, claims: Value) -> anyhow::Result<String> {
    let token = Mint::demo(subject)?.claims(claims)?.sign()?;
    Ok(format!("Bearer {token}"))
}

#[derive(Debug, Clone)]
pub struct Mint {
    pub subject: String,
    /// Extra claims merged over the standard ones (`null` removes one).
    pub claims: Map<String, Value>,
    pub issuer: String,
    pub audience: String,
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    /// Lifetime from now; `exp` may also be overridden in `claims`.
    pub expires_in: Duration,
    pub key_pem: Vec<u8>,
}

impl Mint {
    /// A demo token for `subject`, valid for an hour.
    pub fn demo(subject: &str) -> anyhow::Result<Self> {
        let path = demo_key_path();
        Ok(Self {
            subject: subject.to_owned(),
            claims: Map::new(),
            issuer: DEMO_ISSUER.to_owned(),
            audience: DEMO_AUDIENCE.to_owned(),
            kid: Some(DEMO_KID.to_owned()),
            algorithm: Algorithm::RS256,
            expires_in: Duration::from_secs(3600),
            key_pem: std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        })
    }

    pub fn claims(mut self, claims: Value) -> anyhow::Result<Self> {
        let Value::Object(claims) = claims else {
            bail!("claims must be a JSON object");
        };
        self.claims.extend(claims);
        Ok(self)
    }

    pub fn sign(&self) -> anyhow::Result<String> {
        self.sign_with_header(Value::Object(Map::new()))
    }

    /// Signs with extra (or overridden, `null` = removed) header parameters,
    /// e.g. `{"typ": "dpop+jwt"}` or `{"crit": ["exp"]}` for hostile-token tests.
    pub fn sign_with_header(&self, extra_header: Value) -> anyhow::Result<String> {
        meshwasm_authz::crypto::install();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut payload = Map::new();
        payload.insert("iss".into(), self.issuer.clone().into());
        payload.insert("sub".into(), self.subject.clone().into());
        payload.insert("aud".into(), self.audience.clone().into());
        payload.insert("iat".into(), now.into());
        payload.insert("exp".into(), (now + self.expires_in.as_secs()).into());
        for (name, value) in &self.claims {
            if value.is_null() {
                payload.remove(name);
            } else {
                payload.insert(name.clone(), value.clone());
            }
        }
        let key = match self.algorithm {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&self.key_pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&self.key_pem),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                Ok(EncodingKey::from_secret(&self.key_pem))
            }
            _ => EncodingKey::from_rsa_pem(&self.key_pem),
        }
        .context("reading the signing key")?;
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        let mut header = serde_json::to_value(&header)?;
        if let (Value::Object(header), Value::Object(extra)) = (&mut header, extra_header) {
            for (name, value) in extra {
                if value.is_null() {
                    header.remove(&name);
                } else {
                    header.insert(name, value);
                }
            }
        }
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(payload).to_string())
        );
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, self.algorithm)
            .context("signing")?;
        Ok(format!("{message}.{signature}"))
    }
}

/// Unpadded base64url, for hand-made hostile tokens.
pub fn base64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
