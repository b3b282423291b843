//! Token verification: size cap, structure, header checks (`alg` allow-list,
//! `typ`, `crit`), the provider picked by `iss`, the signature through
//! `jsonwebtoken` with the `ring` backend, then the time and audience claims
//! against an injected clock.

use crate::config::Provider;
use crate::crypto;
use crate::keys::KeySet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

/// Why a token was refused. Each has a stable slug (`kind`) used in the
/// problem `type`, the filter state and the metric tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    Malformed,
    AlgorithmNotAllowed,
    TypeNotAllowed,
    CritUnsupported,
    IssuerUnknown,
    UnknownKey,
    InvalidSignature,
    ExpMissing,
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    AudienceMismatch,
}

impl TokenError {
    pub fn kind(self) -> &'static str {
        match self {
            Self::TooLarge => "token-too-large",
            Self::Malformed => "token-malformed",
            Self::AlgorithmNotAllowed => "token-algorithm-not-allowed",
            Self::TypeNotAllowed => "token-type-not-allowed",
            Self::CritUnsupported => "token-crit-unsupported",
            Self::IssuerUnknown => "token-issuer-unknown",
            Self::UnknownKey => "token-unknown-key",
            Self::InvalidSignature => "token-invalid-signature",
            Self::ExpMissing => "token-exp-missing",
            Self::Expired => "token-expired",
            Self::NotYetValid => "token-not-yet-valid",
            Self::IssuedInFuture => "token-issued-in-future",
            Self::LifetimeTooLong => "token-lifetime-too-long",
            Self::AudienceMismatch => "token-audience-mismatch",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::TooLarge => "Token too large",
            Self::Malformed => "Malformed token",
            Self::AlgorithmNotAllowed => "Token algorithm not allowed",
            Self::TypeNotAllowed => "Token type not allowed",
            Self::CritUnsupported => "Token has unsupported critical headers",
            Self::IssuerUnknown => "Token issuer unknown",
            Self::UnknownKey => "Token signing key unknown",
            Self::InvalidSignature => "Invalid token signature",
            Self::ExpMissing => "Token has no expiry",
            Self::Expired => "Token expired",
            Self::NotYetValid => "Token not yet valid",
            Self::IssuedInFuture => "Token issued in the future",
            Self::LifetimeTooLong => "Token lifetime too long",
            Self::AudienceMismatch => "Token audience not accepted",
        }
    }

    /// The `error_description` of the challenge (never contains the token).
    pub fn description(self) -> &'static str {
        match self {
            Self::TooLarge => "the token exceeds the size limit",
            Self::Malformed => "the token is not a well-formed JWS compact token",
            Self::AlgorithmNotAllowed => "the token algorithm is not allowed",
            Self::TypeNotAllowed => "the token typ is not accepted",
            Self::CritUnsupported => "the token has critical header parameters",
            Self::IssuerUnknown => "the token issuer is not trusted",
            Self::UnknownKey => "no key is known for the token kid",
            Self::InvalidSignature => "the token signature is invalid",
            Self::ExpMissing => "the token has no exp claim",
            Self::Expired => "the token is expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::IssuedInFuture => "the token iat is in the future",
            Self::LifetimeTooLong => "the token lifetime exceeds the limit",
            Self::AudienceMismatch => "the token audience is not accepted",
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub provider: usize,
    /// `iss/sub`.
    pub principal: String,
    pub claims: Value,
    /// `claims` serialized once, for filter state and the payload header.
    pub claims_json: String,
}

impl Verified {
    pub fn new(provider: usize, principal: String, claims: Value) -> Self {
        Self {
            provider,
            principal,
            claims_json: claims.to_string(),
            claims,
        }
    }
}

fn is_base64url(part: &str) -> bool {
    part.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_json_object(part: &str) -> Result<Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(TokenError::Malformed),
    }
}

/// What is known before any key is touched.
pub struct Parsed {
    pub provider: usize,
    pub algorithm: Algorithm,
    pub kid: Option<String>,
}

/// Structure, header and issuer checks. `max_bytes` is the largest cap of all
/// providers; the chosen provider's own cap is checked too.
pub fn parse(token: &str, providers: &[Provider], max_bytes: usize) -> Result<Parsed, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if [header, payload, signature]
        .iter()
        .any(|part| part.is_empty() || !is_base64url(part))
    {
        return Err(TokenError::Malformed);
    }
    let header = decode_json_object(header)?;
    let algorithm = match header.get("alg").and_then(Value::as_str) {
        Some(name) => name
            .parse::<Algorithm>()
            .map_err(|_| TokenError::AlgorithmNotAllowed)?,
        None => return Err(TokenError::Malformed),
    };
    if header.get("crit").is_some() {
        return Err(TokenError::CritUnsupported);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.as_str()),
        Some(_) => return Err(TokenError::Malformed),
    };
    let claims = decode_json_object(payload)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenError::IssuerUnknown)?;
    let provider = providers
        .iter()
        .position(|provider| provider.issuer == issuer)
        .ok_or(TokenError::IssuerUnknown)?;
    let config = providers.get(provider).ok_or(TokenError::IssuerUnknown)?;
    if token.len() > config.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    if !config.algorithms.iter().any(|name| name.0 == algorithm) {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    if let Some(typ) = typ {
        let bare = typ.strip_prefix("application/").unwrap_or(typ);
        if !config
            .allowed_types
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(bare))
        {
            return Err(TokenError::TypeNotAllowed);
        }
    }
    Ok(Parsed {
        provider,
        algorithm,
        kid,
    })
}

/// Verifies the signature with the provider's keys (inline first, then
/// fetched), then the claims at `now` (seconds since the epoch).
pub fn verify(
    token: &str,
    parsed: &Parsed,
    provider: &Provider,
    key_sets: &[&KeySet],
    now: u64,
) -> Result<Verified, TokenError> {
    crypto::install();
    let mut validation = Validation::new(parsed.algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.leeway = 0;

    let mut tried_any = false;
    let mut claims = None;
    'sets: for keys in key_sets {
        for key in keys.candidates(parsed.kid.as_deref(), parsed.algorithm) {
            tried_any = true;
            match jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break 'sets;
                }
                Err(err) if matches!(err.kind(), ErrorKind::InvalidSignature) => {}
                Err(err) => {
                    return Err(match err.kind() {
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                            TokenError::AlgorithmNotAllowed
                        }
                        ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidEddsaKey
                        | ErrorKind::InvalidKeyFormat => TokenError::InvalidSignature,
                        _ => TokenError::Malformed,
                    })
                }
            }
        }
    }
    let Some(claims) = claims else {
        let kid_known = match parsed.kid.as_deref() {
            Some(kid) => key_sets.iter().any(|keys| keys.knows_kid(kid)),
            None => key_sets.iter().any(|keys| !keys.keys.is_empty()),
        };
        return Err(if tried_any {
            TokenError::InvalidSignature
        } else if kid_known {
            // A key exists but may not verify this algorithm.
            TokenError::AlgorithmNotAllowed
        } else {
            TokenError::UnknownKey
        });
    };
    check_claims(&claims, provider, now)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(Verified::new(
        parsed.provider,
        format!("{issuer}/{subject}"),
        claims,
    ))
}

fn numeric_claim(claims: &Value, name: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        // NumericDate may carry a fraction; whole seconds are precise enough.
        Some(Value::Number(number)) => number
            .as_u64()
            .or_else(|| number.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(TokenError::Malformed),
        Some(_) => Err(TokenError::Malformed),
    }
}

/// Time checks, repeated on every cache hit.
pub fn check_times(claims: &Value, provider: &Provider, now: u64) -> Result<(), TokenError> {
    let skew = provider.clock_skew.as_secs();
    let exp = numeric_claim(claims, "exp")?;
    let nbf = numeric_claim(claims, "nbf")?;
    let iat = numeric_claim(claims, "iat")?;
    match exp {
        None if provider.require_exp => return Err(TokenError::ExpMissing),
        Some(exp) if now >= exp.saturating_add(skew) => return Err(TokenError::Expired),
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(max) = provider.max_lifetime {
        match (iat, exp) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= max.as_secs() => {}
            _ => return Err(TokenError::LifetimeTooLong),
        }
    }
    Ok(())
}

fn check_claims(claims: &Value, provider: &Provider, now: u64) -> Result<(), TokenError> {
    check_times(claims, provider, now)?;
    if !provider.audiences.is_empty() {
        let accepted = |aud: &str| provider.audiences.iter().any(|want| want == aud);
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => accepted(aud),
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        };
        if !ok {
            return Err(TokenError::AudienceMismatch);
        }
    }
    if let Some(sub) = claims.get("sub") {
        if !sub.is_string() {
            return Err(TokenError::Malformed);
        }
    }
    Ok(())
}
