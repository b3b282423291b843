//! Engine-level tests: hostile tokens, providers, rules, caching, responses.

use crate::config::AuthzConfig;
use crate::engine::{Engine, Outcome, Request};
use crate::keys::KeySet;
use crate::token::Location;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::shared_data::MemoryStore;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::rc::Rc;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://auth.meshwasm.local";
const DEMO_PRIVATE: &[u8] = include_bytes!("../../../integration/demo-keys/demo-rsa-private.pem");
const DEMO_PUBLIC: &[u8] = include_bytes!("../../../integration/demo-keys/demo-rsa-public.pem");
const TEST_JWKS: &str = include_str!("../testdata/test-jwks.json");
const OTHER_JWKS: &str = include_str!("../testdata/other-jwks.json");

fn demo_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(DEMO_PRIVATE).unwrap()
}

fn other_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("../testdata/other-rsa-private.pem")).unwrap()
}

fn b64(value: &impl ToString) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token with exactly this header and these claims, signed by `key`.
fn sign_raw(header: Value, claims: Value, alg: Algorithm, key: &EncodingKey) -> String {
    crate::crypto::install();
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn claims(extra: Value) -> Value {
    let mut base = json!({
        "iss": ISS, "sub": "alice", "aud": "order-app",
        "iat": NOW - 10, "exp": NOW + 3600,
    });
    for (key, value) in extra.as_object().unwrap() {
        if value.is_null() {
            base.as_object_mut().unwrap().remove(key);
        } else {
            base[key] = value.clone();
        }
    }
    base
}

fn token(extra: Value) -> String {
    sign_raw(
        json!({"alg": "RS256", "typ": "JWT", "kid": "meshwasm-demo-1"}),
        claims(extra),
        Algorithm::RS256,
        &demo_key(),
    )
}

fn config(rules: Value, provider_extra: Value) -> (AuthzConfig, Vec<u8>) {
    let mut provider = json!({
        "issuer": ISS,
        "audiences": ["order-app"],
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "jwks": TEST_JWKS,
        "from_params": ["access_token"],
        "from_headers": [{"name": "authorization", "prefix": "Bearer "}],
        "from_cookies": ["session"],
        "payload_header": "x-jwt-payload",
        "claims_to_headers": [{"claim": "realm.roles", "header": "x-roles"}, {"claim": "sub", "header": "x-sub"}],
    });
    for (key, value) in provider_extra.as_object().unwrap() {
        provider[key] = value.clone();
    }
    let raw = serde_json::to_vec(&json!({
        "providers": [provider],
        "rules": rules,
        "public_paths": ["/healthz"],
    }))
    .unwrap();
    (meshwasm_shared::config::parse(Some(&raw)).unwrap(), raw)
}

struct Harness {
    engine: Engine,
    store: MemoryStore,
    remote: Vec<Option<Rc<KeySet>>>,
    /// The mTLS peer's URI SAN the requests come with.
    peer: Option<String>,
}

impl Harness {
    fn new(rules: Value) -> Self {
        Self::with_provider(rules, json!({}))
    }

    fn with_provider(rules: Value, provider_extra: Value) -> Self {
        let (config, raw) = config(rules, provider_extra);
        Self {
            remote: vec![None; config.providers.len()],
            engine: Engine::new(config, &raw),
            store: MemoryStore::default(),
            peer: None,
        }
    }

    fn run(&mut self, method: &str, path: &str, headers: &[(&str, &str)], now: u64) -> Outcome {
        let headers: Vec<Header> = headers
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
            .collect();
        let request = Request {
            method,
            authority: "orders.example.com:8080",
            path,
            headers: &headers,
            peer: self.peer.as_deref(),
        };
        self.engine.decide(&request, &self.remote, &self.store, now)
    }

    fn bearer(&mut self, method: &str, path: &str, token: &str) -> Outcome {
        let header = format!("Bearer {token}");
        self.run(method, path, &[("authorization", &header)], NOW)
    }
}

/// `(status, kind)` of a denial, `(200, "allow")` otherwise.
fn verdict(outcome: &Outcome) -> (u16, String) {
    match outcome {
        Outcome::Allow(_) => (200, "allow".into()),
        Outcome::Deny(denial) => (denial.problem.status, denial.problem.kind.to_string()),
        Outcome::UnknownKey { .. } => (0, "unknown-key-refetch".into()),
    }
}

fn assert_denied(outcome: Outcome, status: u16, kind: &str) {
    assert_eq!(verdict(&outcome), (status, kind.to_string()));
}

#[test]
fn valid_token_is_allowed_with_principal_headers_and_strip() {
    let mut h = Harness::new(json!([]));
    let outcome = h.bearer(
        "GET",
        "/orders",
        &token(json!({"realm": {"roles": ["buyer", "admin"]}})),
    );
    let Outcome::Allow(allowed) = outcome else {
        panic!("{outcome:?}")
    };
    let verified = allowed.verified.unwrap();
    assert_eq!(verified.principal, format!("{ISS}/alice"));
    assert_eq!(
        allowed.strip,
        Some(Location::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into()
        })
    );
    let headers: std::collections::HashMap<_, _> = allowed.add_headers.into_iter().collect();
    assert_eq!(headers["x-roles"], "buyer,admin");
    assert_eq!(headers["x-sub"], "alice");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&headers["x-jwt-payload"]).unwrap())
            .unwrap();
    assert_eq!(payload["sub"], "alice");
    assert!(!allowed.cache_hit);
}

#[test]
fn forward_keeps_the_token() {
    let mut h = Harness::with_provider(json!([]), json!({"forward": true}));
    let Outcome::Allow(allowed) = h.bearer("GET", "/orders", &token(json!({}))) else {
        panic!()
    };
    assert_eq!(allowed.strip, None);
}

#[test]
fn missing_token_is_401_with_bare_challenge() {
    let mut h = Harness::new(json!([]));
    let Outcome::Deny(denial) = h.run("GET", "/orders", &[], NOW) else {
        panic!()
    };
    assert_eq!(denial.problem.status, 401);
    assert_eq!(denial.problem.kind, "token-missing");
    assert_eq!(
        denial.challenge.as_deref(),
        Some("Bearer realm=\"meshwasm\"")
    );
    assert_eq!(denial.result(), "deny:token-missing");
}

#[test]
fn invalid_token_challenge_names_the_error() {
    let mut h = Harness::new(json!([]));
    let Outcome::Deny(denial) = h.bearer("GET", "/orders", &token(json!({"exp": NOW - 3600})))
    else {
        panic!()
    };
    assert_eq!(
        denial.challenge.as_deref(),
        Some("Bearer realm=\"meshwasm\", error=\"invalid_token\", error_description=\"the token is expired\"")
    );
    let body: Value = serde_json::from_slice(&denial.problem.body()).unwrap();
    assert_eq!(body["type"], "urn:meshwasm:problem:token-expired");
    assert_eq!(body["status"], 401);
}

#[test]
fn public_path_needs_no_token_but_checks_a_present_one() {
    let mut h = Harness::new(json!([]));
    assert_eq!(verdict(&h.run("GET", "/healthz", &[], NOW)).0, 200);
    assert_eq!(verdict(&h.run("GET", "/healthz?x=1", &[], NOW)).0, 200);
    assert_denied(
        h.bearer("GET", "/healthz", "garbage"),
        401,
        "token-malformed",
    );
    assert_denied(
        h.run("GET", "/healthz/more", &[], NOW),
        401,
        "token-missing",
    );
}

#[test]
fn hostile_tokens_get_their_documented_kind() {
    let good = token(json!({}));
    let (header, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let tampered_payload = format!(
        "{header}.{}.{signature}",
        b64(&claims(json!({"sub": "mallory"})))
    );
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    sig_bytes[10] ^= 1;
    let tampered_signature = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(sig_bytes));
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&claims(json!({})))
    );
    let none_with_sig = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "none"})),
        b64(&claims(json!({})))
    );
    // HS256 "signed" with the RSA public key PEM: the classic confusion attack.
    let hs_confusion = sign_raw(
        json!({"alg": "HS256", "kid": "meshwasm-demo-1"}),
        claims(json!({})),
        Algorithm::HS256,
        &EncodingKey::from_secret(DEMO_PUBLIC),
    );
    let hs_confusion_no_kid = sign_raw(
        json!({"alg": "HS256"}),
        claims(json!({})),
        Algorithm::HS256,
        &EncodingKey::from_secret(DEMO_PUBLIC),
    );
    let with_header =
        |header: Value| sign_raw(header, claims(json!({})), Algorithm::RS256, &demo_key());
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none_token, "token-malformed"),
        (
            "alg none with signature",
            none_with_sig,
            "token-algorithm-not-allowed",
        ),
        (
            "HS256 with RSA public key",
            hs_confusion,
            "token-algorithm-not-allowed",
        ),
        (
            "HS256 with RSA public key, no kid",
            hs_confusion_no_kid,
            "token-algorithm-not-allowed",
        ),
        ("expired", token(json!({"exp": NOW - 61})), "token-expired"),
        (
            "not yet valid",
            token(json!({"nbf": NOW + 61})),
            "token-not-yet-valid",
        ),
        (
            "issued in the future",
            token(json!({"iat": NOW + 61})),
            "token-issued-in-future",
        ),
        ("no exp", token(json!({"exp": null})), "token-exp-missing"),
        (
            "string exp",
            token(json!({"exp": "tomorrow"})),
            "token-malformed",
        ),
        (
            "wrong issuer",
            token(json!({"iss": "https://evil.example"})),
            "token-issuer-unknown",
        ),
        (
            "no issuer",
            token(json!({"iss": null})),
            "token-issuer-unknown",
        ),
        (
            "wrong audience",
            token(json!({"aud": "other-app"})),
            "token-audience-mismatch",
        ),
        (
            "no audience",
            token(json!({"aud": null})),
            "token-audience-mismatch",
        ),
        (
            "unknown kid",
            with_header(json!({"alg": "RS256", "kid": "nope"})),
            "token-unknown-key",
        ),
        (
            "other key, same kid",
            sign_raw(
                json!({"alg": "RS256", "kid": "meshwasm-demo-1"}),
                claims(json!({})),
                Algorithm::RS256,
                &other_key(),
            ),
            "token-invalid-signature",
        ),
        (
            "tampered payload",
            tampered_payload,
            "token-invalid-signature",
        ),
        (
            "tampered signature",
            tampered_signature,
            "token-invalid-signature",
        ),
        ("bad base64", good.replacen('.', ".*", 1), "token-malformed"),
        (
            "padding in base64",
            format!("{header}=.{payload}.{signature}"),
            "token-malformed",
        ),
        (
            "two parts",
            format!("{header}.{payload}"),
            "token-malformed",
        ),
        ("four parts", format!("{good}.x"), "token-malformed"),
        (
            "non-JSON header",
            format!("{}.{payload}.{signature}", b64(&"not json")),
            "token-malformed",
        ),
        (
            "JSON array header",
            format!("{}.{payload}.{signature}", b64(&"[1]")),
            "token-malformed",
        ),
        (
            "non-JSON payload",
            format!("{header}.{}.{signature}", b64(&"{nope")),
            "token-malformed",
        ),
        (
            "wrong typ",
            with_header(json!({"alg": "RS256", "kid": "meshwasm-demo-1", "typ": "dpop+jwt"})),
            "token-type-not-allowed",
        ),
        (
            "crit",
            with_header(json!({"alg": "RS256", "kid": "meshwasm-demo-1", "crit": ["exp"]})),
            "token-crit-unsupported",
        ),
        (
            "numeric kid",
            with_header(json!({"alg": "RS256", "kid": 7})),
            "token-malformed",
        ),
        (
            "unknown alg",
            with_header(json!({"alg": "RS999"})),
            "token-algorithm-not-allowed",
        ),
        (
            "alg not in allow-list",
            with_header(json!({"alg": "PS256", "kid": "meshwasm-demo-1"})),
            "token-algorithm-not-allowed",
        ),
        (
            "oversized",
            format!("{}.{}.{signature}", header, "A".repeat(9000)),
            "token-too-large",
        ),
        ("empty", String::new(), "token-malformed"),
    ];
    for (name, hostile, kind) in cases {
        let mut h = Harness::new(json!([]));
        assert_eq!(
            verdict(&h.bearer("GET", "/orders", &hostile)),
            (401, kind.to_string()),
            "{name}"
        );
    }
    // A good token still passes after all that.
    assert_eq!(
        verdict(&Harness::new(json!([])).bearer("GET", "/orders", &good)).0,
        200
    );
}

#[test]
fn time_checks_honour_clock_skew_and_max_lifetime() {
    let mut h = Harness::new(json!([]));
    assert_eq!(
        verdict(&h.bearer("GET", "/o", &token(json!({"exp": NOW - 59})))).0,
        200
    );
    assert_eq!(
        verdict(&h.bearer("GET", "/o", &token(json!({"nbf": NOW + 59})))).0,
        200
    );
    let mut strict =
        Harness::with_provider(json!([]), json!({"clock_skew": "0s", "max_lifetime": "1h"}));
    assert_denied(
        strict.bearer("GET", "/o", &token(json!({"exp": NOW - 1}))),
        401,
        "token-expired",
    );
    assert_denied(
        strict.bearer("GET", "/o", &token(json!({"iat": NOW, "exp": NOW + 7200}))),
        401,
        "token-lifetime-too-long",
    );
    assert_denied(
        strict.bearer("GET", "/o", &token(json!({"iat": null}))),
        401,
        "token-lifetime-too-long",
    );
    assert_eq!(
        verdict(&strict.bearer("GET", "/o", &token(json!({"iat": NOW, "exp": NOW + 3600})))).0,
        200
    );
    let mut lax = Harness::with_provider(json!([]), json!({"require_exp": false, "audiences": []}));
    assert_eq!(
        verdict(&lax.bearer("GET", "/o", &token(json!({"exp": null, "aud": null})))).0,
        200
    );
}

#[test]
fn audience_may_be_a_list() {
    let mut h = Harness::new(json!([]));
    assert_eq!(
        verdict(&h.bearer("GET", "/o", &token(json!({"aud": ["x", "order-app"]})))).0,
        200
    );
    assert_denied(
        h.bearer("GET", "/o", &token(json!({"aud": ["x", "y"]}))),
        401,
        "token-audience-mismatch",
    );
}

#[test]
fn other_algorithms_verify_with_their_keys() {
    let ec = EncodingKey::from_ec_pem(include_bytes!("../testdata/ec-p256-private.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(include_bytes!("../testdata/ed25519-private.pem")).unwrap();
    let es256 = sign_raw(
        json!({"alg": "ES256", "kid": "ec-1"}),
        claims(json!({})),
        Algorithm::ES256,
        &ec,
    );
    let eddsa = sign_raw(
        json!({"alg": "EdDSA", "kid": "ed-1"}),
        claims(json!({})),
        Algorithm::EdDSA,
        &ed,
    );
    let mut h = Harness::new(json!([]));
    assert_eq!(verdict(&h.bearer("GET", "/o", &es256)).0, 200);
    assert_eq!(verdict(&h.bearer("GET", "/o", &eddsa)).0, 200);
    // The EC key's kid with an RSA signature: the key cannot verify RS256.
    let mixed = sign_raw(
        json!({"alg": "RS256", "kid": "ec-1"}),
        claims(json!({})),
        Algorithm::RS256,
        &demo_key(),
    );
    assert_denied(
        h.bearer("GET", "/o", &mixed),
        401,
        "token-algorithm-not-allowed",
    );
    // Without a kid, every key of the right family is tried.
    let no_kid = sign_raw(
        json!({"alg": "RS256"}),
        claims(json!({})),
        Algorithm::RS256,
        &demo_key(),
    );
    assert_eq!(verdict(&h.bearer("GET", "/o", &no_kid)).0, 200);
}

#[test]
fn hmac_provider_works_and_rejects_rsa_signed_tokens() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let jwks =
        json!({"keys": [{"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode(secret)}]});
    let mut h = Harness::with_provider(json!([]), json!({"algorithms": ["HS256"], "jwks": jwks}));
    let hs = sign_raw(
        json!({"alg": "HS256", "kid": "hs-1"}),
        claims(json!({})),
        Algorithm::HS256,
        &EncodingKey::from_secret(secret),
    );
    assert_eq!(verdict(&h.bearer("GET", "/o", &hs)).0, 200);
    let rs = sign_raw(
        json!({"alg": "RS256", "kid": "hs-1"}),
        claims(json!({})),
        Algorithm::RS256,
        &demo_key(),
    );
    assert_denied(
        h.bearer("GET", "/o", &rs),
        401,
        "token-algorithm-not-allowed",
    );
}

#[test]
fn token_locations_and_ambiguity() {
    let good = token(json!({}));
    let mut h = Harness::new(json!([]));
    let query = format!("/orders?access_token={good}&x=1");
    let Outcome::Allow(allowed) = h.run("GET", &query, &[], NOW) else {
        panic!()
    };
    assert_eq!(allowed.strip, Some(Location::Param("access_token".into())));
    let cookie = format!("a=b; session={good}");
    assert_eq!(
        verdict(&h.run("GET", "/orders", &[("cookie", &cookie)], NOW)).0,
        200
    );
    let bearer = format!("Bearer {good}");
    let Outcome::Deny(denial) = h.run("GET", &query, &[("authorization", &bearer)], NOW) else {
        panic!()
    };
    assert_eq!(
        (denial.problem.status, denial.problem.kind),
        (401, "token-ambiguous")
    );
    assert!(denial
        .challenge
        .unwrap()
        .contains("error=\"invalid_request\""));
}

#[test]
fn cache_hit_skips_verification_but_rechecks_expiry() {
    let mut h = Harness::new(json!([]));
    let short = token(json!({"exp": NOW + 100}));
    let Outcome::Allow(first) = h.bearer("GET", "/o", &short) else {
        panic!()
    };
    assert!(!first.cache_hit);
    let Outcome::Allow(second) = h.bearer("GET", "/o", &short) else {
        panic!()
    };
    assert!(second.cache_hit);
    let later = format!("Bearer {short}");
    assert_denied(
        h.run("GET", "/o", &[("authorization", &later)], NOW + 200),
        401,
        "token-expired",
    );
    assert_eq!(h.engine.local_cache.len(), 0);
}

#[test]
fn shared_cache_serves_another_worker() {
    let good = token(json!({}));
    let mut worker_one = Harness::new(json!([]));
    assert_eq!(verdict(&worker_one.bearer("GET", "/o", &good)).0, 200);
    // A second engine (worker) with the same config and the same store.
    let (config, raw) = config(json!([]), json!({}));
    let mut worker_two = Harness {
        engine: Engine::new(config, &raw),
        store: std::mem::take(&mut worker_one.store),
        remote: vec![None],
        peer: None,
    };
    let Outcome::Allow(allowed) = worker_two.bearer("GET", "/o", &good) else {
        panic!()
    };
    assert!(allowed.cache_hit);
    assert_eq!(allowed.verified.unwrap().principal, format!("{ISS}/alice"));
}

#[test]
fn remote_provider_reports_unknown_kid_for_refetch_and_uses_fetched_keys() {
    let raw = json!({"providers": [{
        "issuer": ISS, "jwks_uri": "http://jwks.local/keys", "jwks_cluster": "jwks",
    }]});
    let raw = serde_json::to_vec(&raw).unwrap();
    let config: AuthzConfig = meshwasm_shared::config::parse(Some(&raw)).unwrap();
    let mut engine = Engine::new(config, &raw);
    let store = MemoryStore::default();
    let good = token(json!({}));
    let headers: Vec<Header> = vec![("authorization".into(), format!("Bearer {good}").into())];
    let request = Request {
        method: "GET",
        authority: "a",
        path: "/",
        headers: &headers,
        peer: None,
    };
    assert!(matches!(
        engine.decide(&request, &[None], &store, NOW),
        Outcome::UnknownKey { provider: 0 }
    ));
    let other = Rc::new(KeySet::parse_fetched(OTHER_JWKS.as_bytes(), &[Algorithm::RS256]).unwrap());
    assert!(matches!(
        engine.decide(&request, &[Some(other)], &store, NOW),
        Outcome::UnknownKey { .. }
    ));
    let fetched =
        Rc::new(KeySet::parse_fetched(TEST_JWKS.as_bytes(), &[Algorithm::RS256]).unwrap());
    assert_eq!(
        fetched.keys.len(),
        1,
        "keys for other algorithms are skipped"
    );
    assert!(matches!(
        engine.decide(&request, &[Some(fetched)], &store, NOW),
        Outcome::Allow(_)
    ));
}

#[test]
fn fetched_jwks_must_hold_a_usable_key() {
    assert!(KeySet::parse_fetched(b"{nope", &[Algorithm::RS256]).is_err());
    assert!(KeySet::parse_fetched(br#"{"keys":[]}"#, &[Algorithm::RS256]).is_err());
    assert!(KeySet::parse_fetched(TEST_JWKS.as_bytes(), &[Algorithm::HS256]).is_err());
}

// ---- rules -------------------------------------------------------------

fn admin_token() -> String {
    token(
        json!({"groups": ["admin", "staff"], "realm": {"roles": ["orders-writer"]}, "scope": "read write", "tier": 3}),
    )
}

#[test]
fn no_rules_allow_every_authenticated_request() {
    let mut h = Harness::new(json!([]));
    assert_eq!(
        verdict(&h.bearer("DELETE", "/orders/1", &token(json!({})))).0,
        200
    );
}

#[test]
fn deny_rules_win_over_allow_rules() {
    let rules = json!([
        {"name": "allow-all", "action": "ALLOW"},
        {"name": "no-delete", "action": "DENY", "methods": ["DELETE"]},
    ]);
    let mut h = Harness::new(rules);
    assert_eq!(verdict(&h.bearer("GET", "/orders", &admin_token())).0, 200);
    let Outcome::Deny(denial) = h.bearer("DELETE", "/orders/1", &admin_token()) else {
        panic!()
    };
    assert_eq!(
        (denial.problem.status, denial.problem.kind),
        (403, "access-denied")
    );
    assert!(denial.problem.detail.contains("no-delete"));
    assert!(denial.challenge.is_none());
}

#[test]
fn allow_rules_must_match_when_present() {
    let rules = json!([
        {"name": "health", "action": "ALLOW", "paths": ["/healthz"]},
        {"name": "read", "action": "ALLOW", "request_principals": ["*"], "not_methods": ["DELETE"]},
        {"name": "admin-delete", "action": "ALLOW", "methods": ["DELETE"], "paths": ["/orders/{id}"],
         "claims": [{"claim": "groups", "contains": "admin"}]},
    ]);
    let mut h = Harness::new(rules);
    assert_eq!(verdict(&h.run("GET", "/healthz", &[], NOW)).0, 200);
    assert_eq!(
        verdict(&h.bearer("GET", "/orders", &token(json!({})))).0,
        200
    );
    assert_eq!(
        verdict(&h.bearer("DELETE", "/orders/7", &admin_token())).0,
        200
    );
    assert_denied(
        h.bearer("DELETE", "/orders/7", &token(json!({"groups": ["staff"]}))),
        403,
        "access-denied",
    );
    assert_denied(
        h.bearer("DELETE", "/orders/7/items", &admin_token()),
        403,
        "access-denied",
    );
    // An anonymous request that no ALLOW rule admits is asked for a token.
    let mut open = Harness::new(
        json!([{"name": "health-post", "action": "ALLOW", "methods": ["POST"], "paths": ["/healthz"]}]),
    );
    assert_denied(open.run("GET", "/healthz", &[], NOW), 401, "token-missing");
}

fn matches_rule(
    rule: Value,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    token: &str,
) -> bool {
    let mut rule = rule;
    rule["name"] = json!("r");
    rule["action"] = json!("ALLOW");
    let mut h = Harness::new(json!([rule]));
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra_headers);
    verdict(&h.run(method, path, &headers, NOW)).0 == 200
}

/// Rule, method, path, extra headers, expected match.
type RuleCase = (
    Value,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    bool,
);

#[test]
fn every_rule_condition() {
    let t = admin_token();
    let cases: Vec<RuleCase> = vec![
        (
            json!({"hosts": ["orders.example.com"]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"hosts": ["orders.example.com:8080"]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"hosts": ["*.EXAMPLE.com"]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (json!({"hosts": ["other.com"]}), "GET", "/", vec![], false),
        (
            json!({"not_hosts": ["orders.*"]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"methods": ["GET", "HEAD"]}),
            "HEAD",
            "/",
            vec![],
            true,
        ),
        (json!({"methods": ["GET"]}), "POST", "/", vec![], false),
        (json!({"not_methods": ["POST"]}), "POST", "/", vec![], false),
        (
            json!({"paths": ["/orders"]}),
            "GET",
            "/orders?x=1",
            vec![],
            true,
        ),
        (
            json!({"paths": ["/orders"]}),
            "GET",
            "/orders/1",
            vec![],
            false,
        ),
        (
            json!({"paths": ["/orders*"]}),
            "GET",
            "/orders/1",
            vec![],
            true,
        ),
        (
            json!({"paths": ["*.json"]}),
            "GET",
            "/a/b.json",
            vec![],
            true,
        ),
        (
            json!({"paths": ["/orders/{id}/items"]}),
            "GET",
            "/orders/9/items",
            vec![],
            true,
        ),
        (
            json!({"paths": ["/orders/{*}"]}),
            "GET",
            "/orders/9/items",
            vec![],
            false,
        ),
        (
            json!({"paths": ["/files/{**}"]}),
            "GET",
            "/files/a/b/c",
            vec![],
            true,
        ),
        (
            json!({"not_paths": ["/admin*"]}),
            "GET",
            "/admin/x",
            vec![],
            false,
        ),
        (
            json!({"not_paths": ["/admin*"]}),
            "GET",
            "/orders",
            vec![],
            true,
        ),
        (
            json!({"headers": [{"name": "x-env", "values": ["prod*"]}]}),
            "GET",
            "/",
            vec![("x-env", "production")],
            true,
        ),
        (
            json!({"headers": [{"name": "x-env", "values": ["prod"]}]}),
            "GET",
            "/",
            vec![("x-env", "dev")],
            false,
        ),
        (
            json!({"headers": [{"name": "x-env"}]}),
            "GET",
            "/",
            vec![("X-Env", "")],
            true,
        ),
        (
            json!({"headers": [{"name": "x-env"}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"request_principals": [format!("{ISS}/alice")]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"request_principals": ["*/bob"]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"not_request_principals": [format!("{ISS}/*")]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"claims": [{"claim": "sub", "equals": "alice"}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "tier", "equals": 3}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "tier", "equals": "3"}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "groups", "equals": "admin"}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"claims": [{"claim": "sub", "one_of": ["bob", "alice"]}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "groups", "one_of": ["x", "staff"]}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "groups", "one_of": ["x"]}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"claims": [{"claim": "groups", "contains": "admin"}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "realm.roles", "contains": "orders-writer"}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "realm.roles", "contains": "admin"}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"claims": [{"claim": "scope", "contains": "write"}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "scope", "contains": "wri"}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"claims": [{"claim": "realm.roles", "present": true}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "realm.missing", "present": true}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"claims": [{"claim": "realm.missing", "absent": true}]}),
            "GET",
            "/",
            vec![],
            true,
        ),
        (
            json!({"claims": [{"claim": "groups", "absent": true}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
        (
            json!({"methods": ["GET"], "claims": [{"claim": "groups", "contains": "admin"}, {"claim": "sub", "equals": "bob"}]}),
            "GET",
            "/",
            vec![],
            false,
        ),
    ];
    for (rule, method, path, headers, expected) in cases {
        assert_eq!(
            matches_rule(rule.clone(), method, path, &headers, &t),
            expected,
            "{rule} {method} {path}"
        );
    }
}

#[test]
fn anonymous_requests_match_no_principal_or_claim_rule() {
    let rules = json!([{"name": "p", "action": "ALLOW", "request_principals": ["*"]}]);
    let mut h = Harness::new(rules);
    assert_denied(h.run("GET", "/healthz", &[], NOW), 401, "token-missing");
    let absent = json!([{"name": "p", "action": "ALLOW", "paths": ["/healthz"], "claims": [{"claim": "sub", "absent": true}]}]);
    assert_eq!(
        verdict(&Harness::new(absent).run("GET", "/healthz", &[], NOW)).0,
        200
    );
}

#[test]
fn dry_run_rules_only_report() {
    let rules = json!([
        {"name": "would-block-delete", "action": "DENY", "dry_run": true, "methods": ["DELETE"]},
        {"name": "allow-all", "action": "ALLOW"},
    ]);
    let mut h = Harness::new(rules);
    let Outcome::Allow(allowed) = h.bearer("DELETE", "/orders/1", &admin_token()) else {
        panic!()
    };
    assert_eq!(allowed.dry_run_deny.as_deref(), Some("would-block-delete"));
    let Outcome::Allow(allowed) = h.bearer("GET", "/orders/1", &admin_token()) else {
        panic!()
    };
    assert_eq!(allowed.dry_run_deny, None);

    let dry_allow = json!([{"name": "only-admins", "action": "ALLOW", "dry_run": true,
        "claims": [{"claim": "groups", "contains": "admin"}]}]);
    let mut h = Harness::new(dry_allow);
    let Outcome::Allow(allowed) = h.bearer("GET", "/", &token(json!({}))) else {
        panic!()
    };
    assert_eq!(allowed.dry_run_deny.as_deref(), Some("no-allow-match"));
    let Outcome::Allow(allowed) = h.bearer("GET", "/", &admin_token()) else {
        panic!()
    };
    assert_eq!(allowed.dry_run_deny, None);
}

#[test]
fn a_provider_only_accepts_its_own_token_locations() {
    let raw = json!({"providers": [
        {"issuer": ISS, "jwks": include_str!("../../../integration/demo-keys/demo-jwks.json")},
        {"issuer": "https://other", "jwks": OTHER_JWKS, "from_headers": [{"name": "x-other-token"}]},
    ]});
    let raw = serde_json::to_vec(&raw).unwrap();
    let config: AuthzConfig = meshwasm_shared::config::parse(Some(&raw)).unwrap();
    let mut engine = Engine::new(config, &raw);
    let store = MemoryStore::default();
    let good = token(json!({}));
    let headers: Vec<Header> = vec![("x-other-token".into(), good.into())];
    let request = Request {
        method: "GET",
        authority: "a",
        path: "/",
        headers: &headers,
        peer: None,
    };
    assert_eq!(
        verdict(&engine.decide(&request, &[None, None], &store, NOW)),
        (401, "token-issuer-unknown".into())
    );
    assert_eq!(engine.owned_headers, Vec::<String>::new());
}

// ---- the shipped manifest ---------------------------------------------------

#[test]
fn manifest_config_enforces_the_documented_policy() {
    let manifest: serde_yaml::Value = serde_yaml::from_str(include_str!(
        "../../../wasmplugin-manifests/wasmplugin-authz.yaml"
    ))
    .unwrap();
    // Istio hands `pluginConfig` to the filter as JSON.
    let raw = serde_json::to_vec(&manifest["spec"]["pluginConfig"]).unwrap();
    let config: AuthzConfig = meshwasm_shared::config::parse(Some(&raw)).unwrap();
    let mut h = Harness {
        remote: vec![None],
        engine: Engine::new(config, &raw),
        store: MemoryStore::default(),
        peer: None,
    };
    let user = token(json!({}));
    let admin = token(json!({"groups": ["admin"]}));
    assert_eq!(verdict(&h.run("GET", "/healthz", &[], NOW)).0, 200);
    assert_denied(h.run("GET", "/orders", &[], NOW), 401, "token-missing");
    assert_eq!(verdict(&h.bearer("GET", "/orders", &user)).0, 200);
    assert_eq!(verdict(&h.bearer("POST", "/orders", &user)).0, 200);
    assert_denied(h.bearer("DELETE", "/orders/1", &user), 403, "access-denied");
    assert_eq!(verdict(&h.bearer("DELETE", "/orders/1", &admin)).0, 200);
    assert_denied(
        h.bearer("GET", "/orders", &token(json!({"aud": "x"}))),
        401,
        "token-audience-mismatch",
    );
    assert_denied(h.bearer("GET", "/elsewhere", &user), 403, "access-denied");
    let Outcome::Allow(allowed) = h.bearer("GET", "/orders", &user) else {
        panic!()
    };
    assert_eq!(allowed.strip, None, "the manifest forwards the token");
}

#[test]
fn principals_match_the_mtls_peer_like_istio_source_principals() {
    let mut harness = Harness::new(json!([
        {"name": "from-order", "action": "ALLOW", "principals": ["cluster.local/ns/order-app/sa/order"]},
        {"name": "no-mallory", "action": "DENY", "not_principals": ["cluster.local/ns/order-app/*"], "paths": ["/deny-outsiders"]},
    ]));
    assert!(harness.engine.reads_peer);
    let order = "spiffe://cluster.local/ns/order-app/sa/order";
    let token = token(json!({}));
    harness.peer = Some(order.to_owned());
    assert_eq!(
        verdict(&harness.bearer("GET", "/", &token)),
        (200, "allow".into())
    );
    assert_eq!(
        verdict(&harness.bearer("GET", "/deny-outsiders", &token)),
        (200, "allow".into())
    );
    harness.peer = Some("spiffe://cluster.local/ns/order-app/sa/inventory".to_owned());
    assert_eq!(
        verdict(&harness.bearer("GET", "/", &token)).0,
        403,
        "another peer"
    );
    harness.peer = Some("spiffe://cluster.local/ns/evil/sa/order".to_owned());
    assert_eq!(
        verdict(&harness.bearer("GET", "/deny-outsiders", &token)).0,
        403
    );
    harness.peer = None;
    assert_eq!(
        verdict(&harness.bearer("GET", "/", &token)).0,
        403,
        "no mTLS, no principal"
    );
}

#[test]
fn the_peer_is_read_only_when_a_rule_names_principals() {
    let harness = Harness::new(json!([
        {"name": "any-user", "action": "ALLOW", "request_principals": ["*"]},
    ]));
    assert!(!harness.engine.reads_peer);
}
