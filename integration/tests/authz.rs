//! End to end: the authz filter on the ingress gateway
//! (`wasmplugin-manifests/wasmplugin-authz.yaml`) in front of the order app,
//! on real Envoy with 2 workers. What a client sees: statuses, RFC 6750
//! challenges and problem+json kinds; and the VM never crashes.
//!
//! Run: `MESHWASM_ENVOY=... MESHWASM_DIST=... cargo test -p meshwasm-integration --test authz -- --test-threads 1`

use meshwasm_integration::http::{self, Response};
use meshwasm_integration::jwks_server::{self, JwksServer};
use meshwasm_integration::{Mesh, MeshOptions};
use mint_token::{base64url, Algorithm, Mint};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const INGRESS: &str = "istio-ingressgateway";
const DEMO_JWKS: &str = include_str!("../demo-keys/demo-jwks.json");
const OTHER_JWKS: &str = include_str!("../../filters/authz/testdata/other-jwks.json");
const OTHER_KEY: &[u8] = include_bytes!("../../filters/authz/testdata/other-rsa-private.pem");
const DEMO_PUBLIC: &[u8] = include_bytes!("../demo-keys/demo-rsa-public.pem");

fn token(subject: &str, claims: Value) -> String {
    Mint::demo(subject)
        .unwrap()
        .claims(claims)
        .unwrap()
        .sign()
        .unwrap()
}

fn request(mesh: &Mesh, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let url = format!("{}{path}", mesh.ready.ingress);
    let body = if method == "POST" {
        json!({"sku": "sku-1", "quantity": 1, "user": "e2e"}).to_string()
    } else {
        String::new()
    };
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http::send(&http::agent(), method, &url, &body, &all).unwrap()
}

fn with_bearer(mesh: &Mesh, method: &str, path: &str, token: &str) -> Response {
    let bearer = format!("Bearer {token}");
    request(mesh, method, path, &[("authorization", &bearer)])
}

/// The problem `type` slug of a rejection.
fn kind(response: &Response) -> String {
    let body: Value = response.json().unwrap_or_default();
    body["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:meshwasm:problem:"))
        .unwrap_or_default()
        .to_owned()
}

fn assert_rejected(response: &Response, status: u16, expected_kind: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.body);
    assert_eq!(kind(response), expected_kind, "{what}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
}

fn assert_no_vm_crash(mesh: &Mesh) {
    let log = mesh.log(INGRESS);
    let crashes: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("[critical]") && line.contains("wasm"))
        .collect();
    assert!(crashes.is_empty(), "wasm critical lines: {crashes:#?}");
    assert!(
        !log.contains("eyJ"),
        "a token (or token part) was written to the gateway log"
    );
}

#[test]
fn order_flow_rejections_and_hostile_tokens() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let alice = token("alice", json!({}));

    // The order flow with a valid token; /healthz is open.
    let placed = with_bearer(&mesh, "POST", "/orders", &alice);
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert_eq!(request(&mesh, "GET", "/healthz", &[]).status, 200);

    // No token: 401 with a bare challenge (RFC 6750 §3.1).
    let missing = request(&mesh, "POST", "/orders", &[]);
    assert_rejected(&missing, 401, "token-missing", "no token");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"order-app\"")
    );

    // Authenticated but not allowed: 403; an admin passes authz (the app has
    // no DELETE route, so it answers 405 itself).
    let denied = with_bearer(&mesh, "DELETE", "/orders/1", &alice);
    assert_rejected(&denied, 403, "access-denied", "DELETE without admin");
    let admin = token("root", json!({"groups": ["admin"]}));
    let admin_delete = with_bearer(&mesh, "DELETE", "/orders/1", &admin);
    assert!(
        ![401, 403].contains(&admin_delete.status),
        "admin DELETE was refused: {} {}",
        admin_delete.status,
        admin_delete.body
    );

    // The hostile-token suite.
    let (header, rest) = alice.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let forged_payload = base64url(
        json!({"iss": "https://auth.meshwasm.local", "sub": "mallory", "aud": "order-app", "exp": 4102444800u64})
            .to_string(),
    );
    let mut hs_with_public_key = Mint::demo("mallory").unwrap();
    hs_with_public_key.algorithm = Algorithm::HS256;
    hs_with_public_key.key_pem = DEMO_PUBLIC.to_vec();
    let unknown_kid = {
        let mut mint = Mint::demo("alice").unwrap();
        mint.kid = Some("nope".into());
        mint.sign().unwrap()
    };
    let wrong_issuer = {
        let mut mint = Mint::demo("alice").unwrap();
        mint.issuer = "https://evil.example".into();
        mint.sign().unwrap()
    };
    let mut tampered_signature = signature.to_owned().into_bytes();
    tampered_signature[5] = if tampered_signature[5] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let tampered_signature = String::from_utf8(tampered_signature).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hostile: Vec<(&str, String, &str, &str)> = vec![
        (
            "alg none",
            format!("{}.{forged_payload}.", base64url(r#"{"alg":"none"}"#)),
            "token-malformed",
            "invalid_token",
        ),
        (
            "alg none with a signature",
            format!("{}.{forged_payload}.AAAA", base64url(r#"{"alg":"none"}"#)),
            "token-algorithm-not-allowed",
            "invalid_token",
        ),
        (
            "HS256 signed with the RSA public key",
            hs_with_public_key.sign().unwrap(),
            "token-algorithm-not-allowed",
            "invalid_token",
        ),
        (
            "expired",
            token("alice", json!({"exp": now - 3600})),
            "token-expired",
            "invalid_token",
        ),
        (
            "not yet valid",
            token("alice", json!({"nbf": now + 3600})),
            "token-not-yet-valid",
            "invalid_token",
        ),
        (
            "issued in the future",
            token("alice", json!({"iat": now + 3600})),
            "token-issued-in-future",
            "invalid_token",
        ),
        (
            "no exp",
            token("alice", json!({"exp": null})),
            "token-exp-missing",
            "invalid_token",
        ),
        (
            "wrong issuer",
            wrong_issuer,
            "token-issuer-unknown",
            "invalid_token",
        ),
        (
            "wrong audience",
            token("alice", json!({"aud": "other-app"})),
            "token-audience-mismatch",
            "invalid_token",
        ),
        (
            "unknown kid",
            unknown_kid,
            "token-unknown-key",
            "invalid_token",
        ),
        (
            "tampered payload",
            format!("{header}.{forged_payload}.{signature}"),
            "token-invalid-signature",
            "invalid_token",
        ),
        (
            "tampered signature",
            format!("{header}.{payload}.{tampered_signature}"),
            "token-invalid-signature",
            "invalid_token",
        ),
        (
            "bad base64",
            format!("{header}.{payload}*.{signature}"),
            "token-malformed",
            "invalid_token",
        ),
        (
            "non-JSON header",
            format!("{}.{payload}.{signature}", base64url("not json")),
            "token-malformed",
            "invalid_token",
        ),
        (
            "wrong typ",
            Mint::demo("alice")
                .unwrap()
                .sign_with_header(json!({"typ": "dpop+jwt"}))
                .unwrap(),
            "token-type-not-allowed",
            "invalid_token",
        ),
        (
            "crit",
            Mint::demo("alice")
                .unwrap()
                .sign_with_header(json!({"crit": ["exp"]}))
                .unwrap(),
            "token-crit-unsupported",
            "invalid_token",
        ),
        (
            "oversized",
            token("alice", json!({"padding": "A".repeat(9000)})),
            "token-too-large",
            "invalid_token",
        ),
    ];
    for (what, hostile_token, expected_kind, error) in &hostile {
        let response = with_bearer(&mesh, "POST", "/orders", hostile_token);
        assert_rejected(&response, 401, expected_kind, what);
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"order-app\", error=\"")
                && challenge.contains(&format!("error=\"{error}\"")),
            "{what}: {challenge}"
        );
    }
    // The same token twice (two Authorization headers): invalid_request.
    let bearer = format!("Bearer {alice}");
    let twice = request(
        &mesh,
        "POST",
        "/orders",
        &[("authorization", &bearer), ("authorization", &bearer)],
    );
    assert_rejected(&twice, 401, "token-ambiguous", "token sent twice");
    assert!(twice
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("error=\"invalid_request\""));

    // The VM survived all of it: good tokens still pass, on both workers.
    for _ in 0..20 {
        assert_eq!(with_bearer(&mesh, "POST", "/orders", &alice).status, 201);
    }
    assert_no_vm_crash(&mesh);

    // Decisions are counted per reason.
    let stats = mesh
        .stats_matching(INGRESS, "meshwasm_authz_requests_total")
        .unwrap();
    let total = |needle: &str| -> u64 {
        stats
            .iter()
            .filter(|(name, _)| name.contains(needle))
            .map(|(_, value)| value)
            .sum()
    };
    assert!(total("token-expired") >= 1, "{stats:#?}");
    assert!(total("access-denied") >= 1, "{stats:#?}");
    assert!(total("authenticated") >= 21, "{stats:#?}");
}

/// Both key sets in one JWKS.
fn merged_jwks(a: &str, b: &str) -> String {
    let mut keys: Value = serde_json::from_str(a).unwrap();
    let more: Value = serde_json::from_str(b).unwrap();
    let list = keys["keys"].as_array_mut().unwrap();
    list.extend(more["keys"].as_array().unwrap().iter().cloned());
    keys.to_string()
}

/// Retries until the response has the wanted status (fetches are async).
fn eventually(mut attempt: impl FnMut() -> Response, status: u16, what: &str) -> Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = attempt();
        if response.status == status || Instant::now() > deadline {
            assert_eq!(response.status, status, "{what}: {}", response.body);
            return response;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn remote_jwks_rotation_and_outage_with_two_workers() {
    let server = JwksServer::start(DEMO_JWKS);
    let plugin = format!(
        r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: authz, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  url: oci://ghcr.io/meshwasm/meshwasm:0.1.0
  pluginName: authz
  phase: AUTHN
  failStrategy: FAIL_CLOSE
  pluginConfig:
    providers:
      - issuer: https://auth.meshwasm.local
        audiences: [order-app]
        jwks_uri: {uri}
        jwks_cluster: "{cluster}"
        jwks_refetch_interval: 1s
        jwks_cache_duration: 10m
    public_paths: [/healthz]
"#,
        uri = jwks_server::URI,
        cluster = jwks_server::CLUSTER
    );
    let options = MeshOptions {
        extra_manifests: vec![server.service_entry(), plugin],
        concurrency: 2,
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(options).unwrap();
    let alice = token("alice", json!({}));
    eventually(
        || with_bearer(&mesh, "POST", "/orders", &alice),
        201,
        "first fetch",
    );

    // A token from a key the endpoint does not serve yet: unknown kid.
    let rotated = {
        let mut mint = Mint::demo("rotated").unwrap();
        mint.kid = Some("other-1".into());
        mint.key_pem = OTHER_KEY.to_vec();
        mint.sign().unwrap()
    };
    let before = with_bearer(&mesh, "POST", "/orders", &rotated);
    assert_rejected(&before, 401, "token-unknown-key", "before rotation");

    // The endpoint rotates in the new key: picked up on the next unknown kid
    // (once the refetch interval has passed), without restarting Envoy.
    server.serve(200, &merged_jwks(DEMO_JWKS, OTHER_JWKS));
    eventually(
        || with_bearer(&mesh, "POST", "/orders", &rotated),
        201,
        "after rotation",
    );
    // Every worker uses the new set (requests spread over both workers).
    for _ in 0..20 {
        assert_eq!(
            with_bearer(&mesh, "POST", "/orders", &token("bob", json!({}))).status,
            201
        );
        let fresh = {
            let mut mint = Mint::demo("carol").unwrap();
            mint.kid = Some("other-1".into());
            mint.key_pem = OTHER_KEY.to_vec();
            mint.sign().unwrap()
        };
        assert_eq!(with_bearer(&mesh, "POST", "/orders", &fresh).status, 201);
    }

    // Outage: the endpoint fails; the last good keys keep working.
    server.serve(503, "unavailable");
    std::thread::sleep(Duration::from_millis(1500));
    let unknown = {
        let mut mint = Mint::demo("x").unwrap();
        mint.kid = Some("never-served".into());
        mint.sign().unwrap()
    };
    assert_rejected(
        &with_bearer(&mesh, "POST", "/orders", &unknown),
        401,
        "token-unknown-key",
        "unknown kid during the outage",
    );
    assert_eq!(
        with_bearer(&mesh, "POST", "/orders", &token("dave", json!({}))).status,
        201
    );
    assert_eq!(with_bearer(&mesh, "POST", "/orders", &rotated).status, 201);
    let stats = mesh
        .stats_matching(INGRESS, "meshwasm_authz_jwks_fetches_total")
        .unwrap();
    let count = |result: &str| -> u64 {
        stats
            .iter()
            .filter(|(name, _)| {
                name.contains(&format!("result=.={result}"))
                    || name.contains(&format!("result=\"{result}\""))
                    || name.contains(&format!(".{result}"))
            })
            .map(|(_, value)| value)
            .sum()
    };
    assert!(count("success") >= 2, "{stats:#?}");
    assert!(count("failure") >= 1, "{stats:#?}");
    assert_no_vm_crash(&mesh);
}

/// Istio's default path normalisation (`normalize_path`, no `merge_slashes`,
/// escaped slashes kept) runs before every filter, so the authz filter judges
/// the path a cluster's gateway would give it: dot segments are resolved
/// first, `//` and `%2F` are not.
#[test]
fn authz_sees_paths_normalised_as_istio_does_by_default() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let bearer = format!("Bearer {}", token("alice", json!({})));
    let body = json!({"sku": "sku-1", "quantity": 1, "user": "e2e"}).to_string();
    let send = |path: &str, authorized: bool| {
        let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
        if authorized {
            headers.push(("authorization", bearer.as_bytes()));
        }
        http::raw_request(&mesh.ready.ingress, "POST", path, &headers, &body).unwrap()
    };
    // Dot segments resolve to /orders: allowed by `orders-read-write`.
    for path in ["/./orders", "/x/../orders"] {
        let response = send(path, true);
        assert_eq!(response.status, 201, "{path}: {}", response.body);
    }
    // `/healthz/../orders` is /orders, not the public /healthz: a token is needed.
    assert_eq!(send("/healthz/../orders", false).status, 401);
    // Slashes are not merged: `//orders` matches no `/orders*` rule and is
    // denied by default, as in a cluster (a mesh merging slashes would allow it).
    let doubled = send("//orders", true);
    assert_eq!(doubled.status, 403, "{}", doubled.body);
    assert!(doubled.body.contains("access-denied"), "{}", doubled.body);
    // An escaped slash stays escaped: `/healthz%2F..%2Forders` is no public path.
    let escaped = send("/healthz%2F..%2Forders", false);
    assert_eq!(escaped.status, 401, "{}", escaped.body);
    assert_no_vm_crash(&mesh);
}
