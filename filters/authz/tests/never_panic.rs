//! No configuration string and no request can panic the authz filter: each
//! string of a full config replaced by hostile text must load or be refused,
//! and whatever loads must decide arbitrary requests, including tokens that
//! verify and carry arbitrary claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use meshwasm_authz::config::AuthzConfig;
use meshwasm_authz::engine::{Engine, Outcome, Request};
use meshwasm_shared::config::parse;
use meshwasm_shared::fuzz::{self, Request as Hostile};
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::shared_data::MemoryStore;
use serde_json::{json, Value};
use std::borrow::Cow;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://auth.meshwasm.local";
const SECRET: &[u8] = b"meshwasm-property-test-secret-32b";

/// Every kind of field: token locations, claim mappings, every rule condition.
fn full_config() -> Value {
    json!({
        "realm": "order-app",
        "public_paths": ["/healthz", "/static/*", "/files/{**}"],
        "providers": [
            {"name": "local", "issuer": ISS, "audiences": ["order-app"], "algorithms": ["HS256"],
             "jwks": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256",
                                "k": URL_SAFE_NO_PAD.encode(SECRET)}]},
             "from_headers": [{"name": "authorization", "prefix": "Bearer "},
                              {"name": "x-token", "prefix": ""}],
             "from_params": ["access_token"], "from_cookies": ["session"],
             "forward": false, "payload_header": "x-jwt-payload",
             "claims_to_headers": [{"claim": "realm.roles", "header": "x-roles"},
                                   {"claim": "sub", "header": "x-sub"}],
             "clock_skew": "30s", "max_lifetime": "24h", "allowed_types": ["JWT", "at+jwt"]},
            {"name": "remote", "issuer": "https://idp.example.com", "algorithms": ["RS256"],
             "jwks_uri": "https://idp.example.com/jwks", "jwks_cluster": "outbound|443||idp.example.com",
             "jwks_cache_duration": "10m", "jwks_fetch_timeout": "2s"}
        ],
        "rules": [
            {"name": "deny-debug", "action": "DENY", "paths": ["/debug*"],
             "headers": [{"name": "x-debug", "values": ["1", "true*", "*yes"]}]},
            {"name": "admin", "action": "ALLOW", "methods": ["DELETE"], "hosts": ["*.example.com"],
             "claims": [{"claim": "groups", "contains": "admin"},
                        {"claim": "realm.roles", "one_of": ["ops", "sre"]}]},
            {"name": "read", "action": "ALLOW", "not_methods": ["DELETE"],
             "paths": ["/orders/{id}", "/orders*"], "not_paths": ["/orders/internal*"],
             "not_hosts": ["internal:8080"], "request_principals": ["https://auth.meshwasm.local/*"],
             "not_request_principals": ["*/mallory"],
             "claims": [{"claim": "sub", "present": true}, {"claim": "banned", "absent": true},
                        {"claim": "tier", "equals": "gold"}]},
            {"name": "shadow", "action": "DENY", "dry_run": true, "paths": ["*"]}
        ]
    })
}

fn load(raw: &[u8]) -> Option<Engine> {
    parse::<AuthzConfig>(Some(raw))
        .ok()
        .map(|config| Engine::new(config, raw))
}

/// An HS256 token from the config's key: valid issuer, audience and times,
/// the hostile claims spread over the top level and the configured paths.
fn token(hostile: &Value) -> String {
    meshwasm_authz::crypto::install();
    let mut claims = json!({"sub": "alice", "tier": "gold", "groups": hostile,
                            "realm": {"roles": hostile}});
    if let Some(claims) = claims.as_object_mut() {
        if let Value::Object(extra) = hostile {
            claims.extend(extra.clone());
        }
        claims.extend([
            ("iss".to_owned(), json!(ISS)),
            ("aud".to_owned(), json!("order-app")),
            ("iat".to_owned(), json!(NOW - 10)),
            ("exp".to_owned(), json!(NOW + 3600)),
        ]);
    }
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = EncodingKey::from_secret(SECRET);
    // A signing failure shows as `full_config_allows_a_valid_token` failing.
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap_or_default();
    format!("{message}.{signature}")
}

fn decide(engine: &mut Engine, request: &Hostile) -> Outcome {
    let bearer = format!("Bearer {}", token(&request.claims));
    let mut headers: Vec<Header> = request
        .headers
        .iter()
        .map(|(name, value)| (Cow::Borrowed(name.as_str()), Cow::Borrowed(value.as_str())))
        .collect();
    headers.push((
        Cow::Borrowed("authorization"),
        Cow::Borrowed(bearer.as_str()),
    ));
    let remote = vec![None; engine.config.providers.len()];
    let request = Request {
        method: &request.method,
        authority: &request.authority,
        path: &request.path,
        headers: &headers,
        peer: None,
    };
    engine.decide(&request, &remote, &MemoryStore::default(), NOW)
}

#[test]
fn full_config_allows_a_valid_token() {
    let mut engine = load(full_config().to_string().as_bytes()).unwrap();
    let request = Hostile {
        method: "GET".to_owned(),
        path: "/orders/7".to_owned(),
        authority: "shop.example.com".to_owned(),
        scheme: "https".to_owned(),
        headers: Vec::new(),
        claims: json!({}),
    };
    let outcome = decide(&mut engine, &request);
    assert!(matches!(outcome, Outcome::Allow(_)), "{outcome:?}");
}

#[test]
fn config_strings_never_panic() {
    fuzz::each_string_replaced(&full_config(), 4, |raw, requests| {
        if let Some(mut engine) = load(raw) {
            for request in requests {
                decide(&mut engine, request);
            }
        }
    })
    .unwrap();
}

#[test]
fn arbitrary_config_never_panics() {
    fuzz::arbitrary_configs(&full_config(), 256, |raw| {
        load(raw);
    })
    .unwrap();
}

#[test]
fn requests_never_panic() {
    let mut engine = load(full_config().to_string().as_bytes()).unwrap();
    let engine = std::cell::RefCell::new(&mut engine);
    fuzz::requests(&full_config(), 512, |request| {
        decide(&mut engine.borrow_mut(), request);
    })
    .unwrap();
}
