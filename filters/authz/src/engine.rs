//! The decision for one request, host-independent: find the token, verify it
//! (or take it from the cache), evaluate the rules, and say what to send
//! upstream or back to the client.

use crate::cache::{token_hash, LocalCache, SharedCache};
use crate::claims;
use crate::config::AuthzConfig;
use crate::keys::KeySet;
use crate::rules::{self, Decision, RequestView};
use crate::token::{self, Extracted, Location};
use crate::verify::{self, TokenError, Verified};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use meshwasm_shared::headers;
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::problem::Problem;
use meshwasm_shared::shared_data::SharedStore;
use std::rc::Rc;

/// The request as the engine sees it.
pub struct Request<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// The raw `:path`, query included.
    pub path: &'a str,
    pub headers: &'a [Header<'a>],
    /// The mTLS peer certificate's URI SAN (`spiffe://...`), if any.
    pub peer: Option<&'a str>,
}

/// A refusal: the problem body plus the `WWW-Authenticate` challenge (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub problem: Problem,
    pub challenge: Option<String>,
}

impl Denial {
    /// `deny:<kind>` for the filter state.
    pub fn result(&self) -> String {
        format!("deny:{}", self.problem.kind)
    }
}

#[derive(Debug)]
pub enum Outcome {
    Allow(Allowed),
    Deny(Denial),
    /// The token names a `kid` that no key of this remote provider has: the
    /// glue may refetch the provider's JWKS and decide again.
    UnknownKey {
        provider: usize,
    },
}

#[derive(Debug)]
pub struct Allowed {
    pub verified: Option<Rc<Verified>>,
    /// Where the token was, when it is to be removed before forwarding.
    pub strip: Option<Location>,
    /// Headers to add upstream (payload and claims).
    pub add_headers: Vec<(String, String)>,
    /// Set when a dry-run rule would have denied.
    pub dry_run_deny: Option<String>,
    /// The token came from a cache.
    pub cache_hit: bool,
}

/// Keys fetched from providers' `jwks_uri`, indexed like `providers`.
pub type RemoteKeys = [Option<Rc<KeySet>>];

pub struct Engine {
    pub config: AuthzConfig,
    locations: Vec<Location>,
    inline_keys: Vec<Option<KeySet>>,
    max_token_bytes: usize,
    /// Headers only this filter may set; incoming copies are removed.
    pub owned_headers: Vec<String>,
    /// Whether any rule names mTLS peers: only then is the peer read (a
    /// property read costs ~12k instructions per request).
    pub reads_peer: bool,
    pub local_cache: LocalCache,
    pub shared_cache: SharedCache,
}

impl Engine {
    /// Builds the engine from a validated config (`raw` keys the shared cache).
    pub fn new(config: AuthzConfig, raw: &[u8]) -> Self {
        let mut locations: Vec<Location> = Vec::new();
        let mut owned_headers = Vec::new();
        let mut inline_keys = Vec::new();
        for provider in &config.providers {
            let provider_locations = provider
                .header_locations()
                .into_iter()
                .map(|location| Location::Header {
                    name: location.name.to_ascii_lowercase(),
                    prefix: location.prefix,
                })
                .chain(provider.from_params.iter().cloned().map(Location::Param))
                .chain(provider.from_cookies.iter().cloned().map(Location::Cookie));
            for location in provider_locations {
                if !locations.contains(&location) {
                    locations.push(location);
                }
            }
            owned_headers.extend(provider.payload_header.iter().cloned());
            owned_headers.extend(provider.claims_to_headers.iter().map(|m| m.header.clone()));
            // Validation already parsed it; a failure here cannot happen.
            inline_keys.push(provider.inline_keys().ok().flatten());
        }
        for header in &mut owned_headers {
            *header = header.to_ascii_lowercase();
        }
        owned_headers.sort();
        owned_headers.dedup();
        let max_token_bytes = config
            .providers
            .iter()
            .map(|provider| provider.max_token_bytes)
            .max()
            .unwrap_or(0);
        let reads_peer = config
            .rules
            .iter()
            .any(|rule| !rule.principals.is_empty() || !rule.not_principals.is_empty());
        Self {
            reads_peer,
            local_cache: LocalCache::new(config.cache_entries),
            shared_cache: SharedCache::new(config.cache_entries, raw),
            locations,
            inline_keys,
            max_token_bytes,
            owned_headers,
            config,
        }
    }

    fn challenge(&self, error: Option<(&str, &str)>) -> String {
        let realm = &self.config.realm;
        match error {
            None => format!("Bearer realm=\"{realm}\""),
            Some((error, description)) => format!(
                "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{description}\""
            ),
        }
    }

    pub fn token_denial(&self, error: TokenError) -> Denial {
        Denial {
            problem: Problem::new(401, error.kind(), error.title(), error.description()),
            challenge: Some(self.challenge(Some(("invalid_token", error.description())))),
        }
    }

    fn missing_token(&self) -> Denial {
        Denial {
            problem: Problem::new(
                401,
                "token-missing",
                "Token missing",
                "this request needs a bearer token",
            ),
            challenge: Some(self.challenge(None)),
        }
    }

    fn ambiguous_token(&self) -> Denial {
        let description = "the token was sent in more than one place";
        Denial {
            problem: Problem::new(
                401,
                "token-ambiguous",
                "Token sent more than once",
                description,
            ),
            challenge: Some(self.challenge(Some(("invalid_request", description)))),
        }
    }

    fn access_denied(detail: String) -> Denial {
        Denial {
            problem: Problem::new(403, "access-denied", "Access denied", detail),
            challenge: None,
        }
    }

    /// A cache hit stays valid only while its time claims do.
    fn recheck(
        &mut self,
        token: &str,
        hit: Rc<Verified>,
        now: u64,
    ) -> Result<(Rc<Verified>, bool), Result<TokenError, usize>> {
        let provider = self
            .config
            .providers
            .get(hit.provider)
            .ok_or(Ok(TokenError::IssuerUnknown))?;
        match verify::check_times(&hit.claims, provider, now) {
            Ok(()) => Ok((hit, true)),
            Err(err) => {
                self.local_cache.remove(token);
                Err(Ok(err))
            }
        }
    }

    /// Verifies `token`, consulting the caches first; time claims are
    /// re-checked on every hit.
    fn authenticate(
        &mut self,
        token: &str,
        remote: &RemoteKeys,
        store: &dyn SharedStore,
        now: u64,
    ) -> Result<(Rc<Verified>, bool), Result<TokenError, usize>> {
        if let Some(hit) = self.local_cache.get(token) {
            return self.recheck(token, hit, now);
        }
        let hash = token_hash(token);
        if let Some(hit) = self.shared_cache.get(store, &hash) {
            let hit = Rc::new(hit);
            self.local_cache.insert(token, hit.clone());
            return self.recheck(token, hit, now);
        }
        let parsed =
            verify::parse(token, &self.config.providers, self.max_token_bytes).map_err(Ok)?;
        let provider = self
            .config
            .providers
            .get(parsed.provider)
            .ok_or(Ok(TokenError::IssuerUnknown))?;
        let mut key_sets: Vec<&KeySet> = Vec::with_capacity(2);
        if let Some(Some(keys)) = self.inline_keys.get(parsed.provider) {
            key_sets.push(keys);
        }
        if let Some(Some(keys)) = remote.get(parsed.provider) {
            key_sets.push(keys);
        }
        match verify::verify(token, &parsed, provider, &key_sets, now) {
            Ok(verified) => {
                let verified = Rc::new(verified);
                self.shared_cache.put(store, &hash, &verified);
                self.local_cache.insert(token, verified.clone());
                Ok((verified, false))
            }
            Err(TokenError::UnknownKey) if provider.is_remote() => Err(Err(parsed.provider)),
            Err(err) => Err(Ok(err)),
        }
    }

    pub fn decide(
        &mut self,
        request: &Request,
        remote: &RemoteKeys,
        store: &dyn SharedStore,
        now: u64,
    ) -> Outcome {
        let (path, _) = headers::split_path(request.path);
        let token_optional = self
            .config
            .public_paths
            .iter()
            .any(|pattern| pattern.matches(path));
        let (verified, location, cache_hit) =
            match token::extract(&self.locations, request.headers, request.path) {
                Extracted::Ambiguous => return Outcome::Deny(self.ambiguous_token()),
                Extracted::Missing if token_optional || self.config.providers.is_empty() => {
                    (None, None, false)
                }
                Extracted::Missing => return Outcome::Deny(self.missing_token()),
                Extracted::Found { token, location } => {
                    match self.authenticate(&token, remote, store, now) {
                        Ok((verified, hit)) => (Some(verified), Some(location), hit),
                        Err(Ok(error)) => return Outcome::Deny(self.token_denial(error)),
                        Err(Err(provider)) => return Outcome::UnknownKey { provider },
                    }
                }
            };
        // The token must come from a location of the provider that verified it.
        let provider = verified
            .as_ref()
            .and_then(|verified| self.config.providers.get(verified.provider));
        if let (Some(provider), Some(location)) = (provider, &location) {
            let allowed_here = match location {
                Location::Header { name, prefix } => provider
                    .header_locations()
                    .iter()
                    .any(|l| l.name.eq_ignore_ascii_case(name) && &l.prefix == prefix),
                Location::Param(name) => provider.from_params.contains(name),
                Location::Cookie(name) => provider.from_cookies.contains(name),
            };
            if !allowed_here {
                return Outcome::Deny(self.token_denial(TokenError::IssuerUnknown));
            }
        }
        let view = RequestView {
            method: request.method,
            host: request.authority,
            path,
            headers: request.headers,
            peer: request
                .peer
                .map(|uri| uri.strip_prefix("spiffe://").unwrap_or(uri)),
            principal: verified.as_ref().map(|v| v.principal.as_str()),
            claims: verified.as_ref().map(|v| &v.claims),
        };
        let evaluation = rules::evaluate(&self.config.rules, &view);
        let denied = match evaluation.decision {
            Decision::Allow => None,
            Decision::DeniedBy(rule) => Some(format!("rule `{rule}` denies this request")),
            Decision::NoAllowMatch => Some("no ALLOW rule matches this request".to_owned()),
        };
        if let Some(detail) = denied {
            // Without a token, presenting one might help: that is a 401.
            return Outcome::Deny(if verified.is_none() {
                self.missing_token()
            } else {
                Self::access_denied(detail)
            });
        }
        let mut add_headers = Vec::new();
        let mut strip = None;
        if let (Some(provider), Some(verified)) = (provider, &verified) {
            if !provider.forward {
                strip = location;
            }
            if let Some(header) = &provider.payload_header {
                add_headers.push((
                    header.clone(),
                    URL_SAFE_NO_PAD.encode(&verified.claims_json),
                ));
            }
            for mapping in &provider.claims_to_headers {
                if let Some(value) =
                    meshwasm_shared::claims::lookup(&verified.claims, &mapping.claim)
                {
                    let value = claims::header_value(value);
                    // Header values cannot carry control characters.
                    if !value.bytes().any(|b| b.is_ascii_control()) {
                        add_headers.push((mapping.header.clone(), value));
                    }
                }
            }
        }
        Outcome::Allow(Allowed {
            verified,
            strip,
            add_headers,
            dry_run_deny: evaluation.dry_run_deny,
            cache_hit,
        })
    }
}
