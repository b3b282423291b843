use super::*;
use meshwasm_shared::config::parse;
use serde_json::json;

fn error_of(config: serde_json::Value) -> ConfigError {
    parse::<Config>(Some(config.to_string().as_bytes())).unwrap_err()
}

fn assert_refused(config: serde_json::Value, field: &str, words: &str) {
    let err = error_of(config);
    assert_eq!(err.field, field, "{err}");
    assert!(err.message.contains(words), "{err}");
}

#[test]
fn empty_config_has_documented_defaults() {
    let config = parse::<Config>(None).unwrap();
    assert!(config.owned_headers.is_empty());
    assert_eq!(config.lane.header, "x-meshwasm-lane");
    assert_eq!(config.lane.baggage_key, "meshwasm-lane");
    assert!(config.lane.propagate);
    assert!(config.lane.accept_baggage);
    assert!(config.lane.allowed.is_empty());
    assert_eq!(
        config.claims,
        ClaimsSource::FilterState("meshwasm.authz.claims".to_owned())
    );
    assert_eq!(config.debug_header, None);
    assert!(config.rules.is_empty());
    assert_eq!(config.effective_owned_headers(), ["x-meshwasm-lane"]);
}

#[test]
fn full_config_parses() {
    let config = json!({
        "owned_headers": ["x-canary"],
        "lane": {"header": "x-lane", "baggage_key": "lane", "propagate": true,
                 "accept_baggage": false, "allowed": ["v1", "v2"]},
        "claims": {"header": "x-meshwasm-claims"},
        "debug_header": "x-meshwasm-route",
        "rules": [
            {"name": "beta", "match": {"claims": [{"name": "beta", "exact": "true"}]},
             "action": {"lane": "v2"}},
            {"name": "split", "action": {"split": {"key": {"header": "x-user"}, "seed": "exp-1",
                "variants": [{"lane": "v2", "weight": 12.5}, {"lane": "v1", "weight": 87.5}]}}},
            {"name": "maint", "action": {"direct_response": {"status": 503},
                                         "rollout": {"key": {"cookie": "uid"}, "percent": 0.01}}}
        ]
    });
    parse::<Config>(Some(config.to_string().as_bytes())).unwrap();
}

#[test]
fn unknown_fields_are_named() {
    assert_refused(json!({"rulez": []}), "rulez", "unknown field");
    assert_refused(
        json!({"rules": [{"name": "a", "match": {"pathh": "/"}}]}),
        "rules[0].match.pathh",
        "unknown field",
    );
    assert_refused(
        json!({"rules": [{"name": "a", "action": {"split": {"key": {"header": "x"},
            "variants": [{"lane": "v1", "weight": 100, "colour": "red"}]}}}]}),
        "rules[0].action.split.variants[0].colour",
        "unknown field",
    );
}

#[test]
fn bad_regexes_are_named() {
    assert_refused(
        json!({"rules": [{"name": "a", "match": {"path_regex": "(open"}}]}),
        "rules[0].match.path_regex",
        "bad regex",
    );
    assert_refused(
        json!({"rules": [{"name": "a", "match": {"headers": [{"name": "x", "regex": "["}]}}]}),
        "rules[0].match.headers[0].regex",
        "bad regex",
    );
    assert_refused(
        json!({"rules": [{"name": "a", "action": {"path_rewrite": {"regex":
            {"pattern": "a{99999999}", "substitution": "/"}}}}]}),
        "rules[0].action.path_rewrite.regex.pattern",
        "bad regex",
    );
}

#[test]
fn weights_must_sum_to_100() {
    let split = |weights: Vec<f64>| {
        let variants: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| json!({"lane": format!("v{i}"), "weight": w}))
            .collect();
        json!({"rules": [{"name": "s", "action": {"split": {"key": {"header": "x-user"},
            "variants": variants}}}]})
    };
    assert_refused(
        split(vec![20.0, 70.0]),
        "rules[0].action.split.variants",
        "sum to 90",
    );
    assert_refused(
        split(vec![20.005, 79.995]),
        "rules[0].action.split.variants[0].weight",
        "finer than 0.01",
    );
    assert_refused(
        split(vec![-10.0, 110.0]),
        "rules[0].action.split.variants[0].weight",
        "between 0 and 100",
    );
    assert_refused(
        split(vec![]),
        "rules[0].action.split.variants",
        "at least one",
    );
    parse::<Config>(Some(
        split(vec![33.33, 33.33, 33.34]).to_string().as_bytes(),
    ))
    .unwrap();
}

#[test]
fn semantic_errors_are_named() {
    let rule = |action: serde_json::Value| json!({"rules": [{"name": "r", "action": action}]});
    assert_refused(
        rule(json!({"lane": "v 2"})),
        "rules[0].action.lane",
        "characters",
    );
    assert_refused(
        json!({"lane": {"allowed": ["v1"]}, "rules": [{"name": "r", "action": {"lane": "v2"}}]}),
        "rules[0].action.lane",
        "not in `lane.allowed`",
    );
    assert_refused(
        rule(json!({"set_headers": {":path": "/x"}})),
        "rules[0].action.set_headers.:path",
        "pseudo-headers",
    );
    assert_refused(
        rule(json!({"set_headers": {"X-Upper": "1"}})),
        "rules[0].action.set_headers.X-Upper",
        "lower-case",
    );
    assert_refused(
        rule(json!({"set_headers": {"x-a": "bad\r\nvalue"}})),
        "rules[0].action.set_headers.x-a",
        "CR, LF",
    );
    assert_refused(
        rule(json!({"redirect": {}, "lane": "v2"})),
        "rules[0].action.redirect",
        "cannot be combined",
    );
    assert_refused(
        rule(json!({"redirect": {"status": 200}})),
        "rules[0].action.redirect.status",
        "301",
    );
    assert_refused(
        rule(json!({"direct_response": {"status": 99}})),
        "rules[0].action.direct_response.status",
        "200–599",
    );
    assert_refused(
        rule(json!({"path_rewrite": {"prefix": {"from": "api", "to": "/"}}})),
        "rules[0].action.path_rewrite.prefix.from",
        "start with `/`",
    );
    assert_refused(
        rule(
            json!({"split": {"key": {"header": "x"}, "missing_key_variant": "zzz",
            "variants": [{"lane": "v1", "weight": 100}]}}),
        ),
        "rules[0].action.split.missing_key_variant",
        "not a variant",
    );
    assert_refused(
        rule(json!({"split": {"key": {"header": "x"},
            "variants": [{"lane": "v1", "weight": 50}, {"lane": "v1", "weight": 50}]}})),
        "rules[0].action.split.variants[1]",
        "twice",
    );
    assert_refused(
        rule(json!({"rollout": {"key": {"claim": ""}, "percent": 5}})),
        "rules[0].action.rollout.key.claim",
        "empty",
    );
    assert_refused(
        rule(json!({"split": {"key": {"claim": "org..id"},
            "variants": [{"lane": "v1", "weight": 100}]}})),
        "rules[0].action.split.key.claim",
        "claim name or dotted path",
    );
    assert_refused(
        json!({"rules": [{"name": "r", "match": {"claims": [{"name": "a.", "exact": "1"}]}}]}),
        "rules[0].match.claims[0].name",
        "claim name or dotted path",
    );
    assert_refused(
        json!({"rules": [{"name": "r", "match": {"hosts": ["api:http"]}}]}),
        "rules[0].match.hosts[0]",
        "host `api:http`",
    );
    assert_refused(
        json!({"rules": [{"name": "r"}, {"name": "r"}]}),
        "rules[1].name",
        "twice",
    );
    assert_refused(
        json!({"rules": [{"name": "r", "match": {"cookies": [{"name": "a", "exact": "1", "present": true}]}}]}),
        "rules[0].match.cookies[0]",
        "at most one",
    );
    assert_refused(
        json!({"rules": [{"name": "r", "match": {"path": "no-slash"}}]}),
        "rules[0].match.path",
        "must start with",
    );
    assert_refused(
        json!({"owned_headers": ["bad header"]}),
        "owned_headers[0]",
        "header name",
    );
    assert_refused(
        json!({"lane": {"baggage_key": "a b"}}),
        "lane.baggage_key",
        "token",
    );
    assert_refused(
        json!({"claims": {"header": ""}}),
        "claims.header",
        "header name",
    );
    assert_refused(json!({"claims": {"jwt": "x"}}), "claims", "unknown variant");
}

#[test]
fn error_messages_name_the_field() {
    let err =
        error_of(json!({"rules": [{"name": "ok"}, {"name": "r", "action": {"lane": "v 2"}}]}));
    assert!(
        err.to_string()
            .starts_with("invalid plugin config at `rules[1].action.lane`:"),
        "{err}"
    );
}
