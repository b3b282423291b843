//! `ring` as `jsonwebtoken`'s crypto backend. `ring` builds for wasm32-wasip1
//! (its C and assembly parts compile with clang) and verifies RS256 about 3.5×
//! faster there than RustCrypto's `rsa` (see README, "Verifier backend").
//!
//! Every key is used only with the algorithms of its own family, and RSA keys
//! shorter than 2048 bits are refused by `ring`'s parameter sets.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use ring::{digest, hmac, rand};

static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        compute_digest,
    },
};

/// Makes `ring` the process-wide backend. Idempotent and cheap, so it is
/// called before every use instead of relying on start-up order.
pub fn install() {
    // Fails only when already installed, which is the state we want.
    let _ = RING_PROVIDER.install_default();
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(digest::digest(algorithm, data).as_ref().to_vec())
}

fn hmac_algorithm(alg: Algorithm) -> Option<hmac::Algorithm> {
    match alg {
        Algorithm::HS256 => Some(hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

fn rsa_parameters(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    match alg {
        Algorithm::RS256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
        _ => None,
    }
}

fn ecdsa_verification(alg: Algorithm) -> Option<&'static sig::EcdsaVerificationAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Some(&sig::ECDSA_P384_SHA384_FIXED),
        _ => None,
    }
}

/// Verifies one algorithm with one key.
struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        fn bad<E>(_: E) -> signature::Error {
            signature::Error::new()
        }
        if let Some(hmac_alg) = hmac_algorithm(self.algorithm) {
            let secret = self
                .key
                .try_get_as_bytes()
                .map_err(|_| signature::Error::new())?;
            return hmac::verify(&hmac::Key::new(hmac_alg, secret), message, signature)
                .map_err(bad);
        }
        if let Some(params) = rsa_parameters(self.algorithm) {
            return match self.key.kind() {
                DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .map_err(bad),
                DecodingKeyKind::SecretOrDer(der) => UnparsedPublicKey::new(params, der)
                    .verify(message, signature)
                    .map_err(bad),
            };
        }
        let point = self
            .key
            .try_get_as_bytes()
            .map_err(|_| signature::Error::new())?;
        if let Some(ecdsa) = ecdsa_verification(self.algorithm) {
            return UnparsedPublicKey::new(ecdsa, point)
                .verify(message, signature)
                .map_err(bad);
        }
        UnparsedPublicKey::new(&sig::ED25519, point)
            .verify(message, signature)
            .map_err(bad)
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key: key.clone(),
    }))
}

/// Signs with one algorithm and one private key (demo tokens and tests).
struct RingSigner {
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        fn bad<E>(_: E) -> signature::Error {
            signature::Error::new()
        }
        let der = self.key.as_bytes();
        let random = rand::SystemRandom::new();
        if let Some(hmac_alg) = hmac_algorithm(self.algorithm) {
            return Ok(hmac::sign(&hmac::Key::new(hmac_alg, der), message)
                .as_ref()
                .to_vec());
        }
        let padding: Option<&'static dyn sig::RsaEncoding> = match self.algorithm {
            Algorithm::RS256 => Some(&sig::RSA_PKCS1_SHA256),
            Algorithm::RS384 => Some(&sig::RSA_PKCS1_SHA384),
            Algorithm::RS512 => Some(&sig::RSA_PKCS1_SHA512),
            Algorithm::PS256 => Some(&sig::RSA_PSS_SHA256),
            Algorithm::PS384 => Some(&sig::RSA_PSS_SHA384),
            Algorithm::PS512 => Some(&sig::RSA_PSS_SHA512),
            _ => None,
        };
        if let Some(padding) = padding {
            let pair = sig::RsaKeyPair::from_der(der)
                .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
                .map_err(bad)?;
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(padding, &random, message, &mut out)
                .map_err(bad)?;
            return Ok(out);
        }
        let ecdsa = match self.algorithm {
            Algorithm::ES256 => Some(&sig::ECDSA_P256_SHA256_FIXED_SIGNING),
            Algorithm::ES384 => Some(&sig::ECDSA_P384_SHA384_FIXED_SIGNING),
            _ => None,
        };
        if let Some(ecdsa) = ecdsa {
            let pair = sig::EcdsaKeyPair::from_pkcs8(ecdsa, der, &random).map_err(bad)?;
            return Ok(pair.sign(&random, message).map_err(bad)?.as_ref().to_vec());
        }
        let pair = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(bad)?;
        Ok(pair.sign(message).as_ref().to_vec())
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingSigner {
        algorithm: *algorithm,
        key: key.clone(),
    }))
}
