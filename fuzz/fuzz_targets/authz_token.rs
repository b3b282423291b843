//! The token splitter (header, comma-joined, query and cookie locations) and
//! the JWS header/claims decoding, through the authz engine's whole decision:
//! field 1 is the `authorization` header, 2 the `:path`, 3 the `cookie` header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshwasm_authz::config::AuthzConfig;
use meshwasm_authz::engine::{Engine, Request};
use meshwasm_authz::verify;
use meshwasm_shared::config::parse;
use meshwasm_shared::host_headers::Header;
use meshwasm_shared::shared_data::MemoryStore;
use std::borrow::Cow;
use std::cell::RefCell;

/// An inline HS256 provider (secret `meshwasm-fuzz-secret-of-32-bytes!`) and a
/// remote one without keys, so both "unknown key" paths are reachable.
const CONFIG: &str = r#"{
  "public_paths": ["/healthz"],
  "providers": [
    {"name": "local", "issuer": "https://auth.meshwasm.local", "audiences": ["order-app"],
     "algorithms": ["HS256"],
     "jwks": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256",
                        "k": "bWVzaHdhc20tZnV6ei1zZWNyZXQtb2YtMzItYnl0ZXMh"}]},
     "from_headers": [{"name": "authorization", "prefix": "Bearer "}],
     "from_params": ["access_token"], "from_cookies": ["session"],
     "claims_to_headers": [{"claim": "org.tenant", "header": "x-tenant"}],
     "payload_header": "x-jwt-payload", "max_lifetime": "24h"},
    {"name": "remote", "issuer": "https://idp.example.com", "algorithms": ["RS256", "ES256"],
     "jwks_uri": "https://idp.example.com/jwks", "jwks_cluster": "outbound|443||idp.example.com"}
  ],
  "rules": [{"name": "read", "action": "ALLOW", "paths": ["/orders/{id}", "/orders*"],
             "claims": [{"claim": "groups", "contains": "admin"}]}]
}"#;

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(Engine::new(
        parse::<AuthzConfig>(Some(CONFIG.as_bytes())).expect("the fuzz config loads"),
        CONFIG.as_bytes(),
    ));
}

fuzz_target!(|data: &[u8]| {
    let [authorization, path, cookie] = meshwasm_fuzz::fields::<3>(data);
    let headers: Vec<Header> = vec![
        (
            Cow::Borrowed("authorization"),
            Cow::Borrowed(&authorization),
        ),
        (Cow::Borrowed("cookie"), Cow::Borrowed(&cookie)),
    ];
    ENGINE.with(|engine| {
        let mut engine = engine.borrow_mut();
        // The decoding on its own, whatever the size cap would say.
        let _ = verify::parse(&authorization, &engine.config.providers, usize::MAX);
        let request = Request {
            method: "GET",
            authority: "shop.example.com",
            path: &path,
            headers: &headers,
            peer: None,
        };
        let remote = [None, None];
        engine.decide(&request, &remote, &MemoryStore::default(), 1_800_000_000);
    });
});
