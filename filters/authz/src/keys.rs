//! Key sets (JWKS): which keys may verify which algorithms. A key verifies a
//! token only when the key's family matches the token's `alg` (an RSA key
//! never checks an HMAC tag), the key's own `alg` (if any) equals it, and the
//! provider's allow-list contains it.

use crate::crypto;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySetError {
    /// Index of the offending key in `keys`, if one is to blame.
    pub key: Option<usize>,
    pub message: String,
}

impl KeySetError {
    fn whole(message: impl Into<String>) -> Self {
        Self {
            key: None,
            message: message.into(),
        }
    }

    /// The config field path under `base` (`jwks.keys[2]`).
    pub fn field(&self, base: &str) -> String {
        match self.key {
            Some(index) => format!("{base}.keys[{index}]"),
            None => base.to_owned(),
        }
    }
}

impl std::fmt::Display for KeySetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key {
            Some(index) => write!(f, "keys[{index}]: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

pub struct Key {
    pub kid: Option<String>,
    /// The algorithms this key may verify (family ∩ own `alg` ∩ allow-list).
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

fn own_algorithm(jwk: &Jwk) -> Option<Result<Algorithm, String>> {
    let alg = jwk.common.key_algorithm?;
    let name = format!("{alg:?}");
    Some(match alg {
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256 => {
            Err(format!("alg {name} is an encryption algorithm"))
        }
        _ => name
            .parse::<Algorithm>()
            .map_err(|_| format!("alg {name} is not supported")),
    })
}

fn parse_key(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("`use` is `enc`, not `sig`".to_owned());
    }
    let decoding =
        DecodingKey::from_jwk(jwk).map_err(|err| format!("not a usable public key: {err}"))?;
    let own = own_algorithm(jwk).transpose()?;
    let algorithms: Vec<Algorithm> = ALL_ALGORITHMS
        .into_iter()
        .filter(|alg| alg.family() == decoding.family())
        .filter(|alg| own.is_none_or(|own| own == *alg))
        .filter(|alg| allowed.contains(alg))
        .collect();
    if algorithms.is_empty() {
        let family = format!("{:?}", decoding.family());
        return Err(match own {
            Some(own) => format!("key alg {own:?} is not in `algorithms` {allowed:?}"),
            None => format!("a {family} key can verify none of `algorithms` {allowed:?}"),
        });
    }
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        decoding,
    })
}

impl KeySet {
    /// Parses a JWKS strictly (configuration): every key must be usable.
    pub fn parse(jwks: &[u8], allowed: &[Algorithm]) -> Result<Self, KeySetError> {
        crypto::install();
        let raw: serde_json::Value = serde_json::from_slice(jwks)
            .map_err(|err| KeySetError::whole(format!("not JSON: {err}")))?;
        let Some(entries) = raw.get("keys").and_then(|keys| keys.as_array()) else {
            return Err(KeySetError::whole("needs a `keys` array"));
        };
        if entries.is_empty() {
            return Err(KeySetError::whole("`keys` is empty"));
        }
        let mut keys = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let at = |message: String| KeySetError {
                key: Some(index),
                message,
            };
            let jwk: Jwk = serde_json::from_value(entry.clone())
                .map_err(|err| at(format!("not a JWK: {err}")))?;
            keys.push(parse_key(&jwk, allowed).map_err(at)?);
        }
        Ok(Self { keys })
    }

    /// Parses a fetched JWKS leniently: keys this provider cannot use are
    /// skipped (a shared JWKS may hold other keys), but at least one must fit.
    pub fn parse_fetched(jwks: &[u8], allowed: &[Algorithm]) -> Result<Self, KeySetError> {
        crypto::install();
        let set: JwkSet = serde_json::from_slice(jwks)
            .map_err(|err| KeySetError::whole(format!("not a JWKS: {err}")))?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|jwk| parse_key(jwk, allowed).ok())
            .collect();
        if keys.is_empty() {
            return Err(KeySetError::whole("no key usable with `algorithms`"));
        }
        Ok(Self { keys })
    }

    pub fn has_key_for(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|key| key.algorithms.contains(&alg))
    }

    /// Keys that may verify a token with this `kid` and `alg`. A token with a
    /// `kid` only matches keys with that `kid`; one without tries every key
    /// (like Envoy's `jwt_authn`).
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |key| {
            key.algorithms.contains(&alg)
                && match kid {
                    Some(kid) => key.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    pub fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}
