//! Property-test inputs for the filters' `*_never_panic` tests (feature
//! `fuzz`, turned on by their dev-dependencies only): a valid config with one
//! string replaced by hostile text, arbitrary config bytes and JSON, and
//! requests built from hostile text and the config's own strings.
//!
//! Each runner returns the smallest failing input as an error; a panic in the
//! check is a failure, which is what the tests look for.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};
use std::fmt::Debug;

/// One step from a JSON value to a child.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A string of a config: a value, or an object key (`key: true`).
#[derive(Debug, Clone)]
struct Slot {
    path: Vec<Step>,
    key: bool,
    text: String,
}

fn collect(value: &Value, path: &mut Vec<Step>, slots: &mut Vec<Slot>, nodes: &mut Vec<Vec<Step>>) {
    nodes.push(path.clone());
    match value {
        Value::String(text) => slots.push(Slot {
            path: path.clone(),
            key: false,
            text: text.clone(),
        }),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Step::Index(index));
                collect(item, path, slots, nodes);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                slots.push(Slot {
                    path: path.clone(),
                    key: true,
                    text: key.clone(),
                });
                path.push(Step::Key(key.clone()));
                collect(item, path, slots, nodes);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Every string slot and every node path of `value`.
fn walk(value: &Value) -> (Vec<Slot>, Vec<Vec<Step>>) {
    let (mut slots, mut nodes) = (Vec::new(), Vec::new());
    collect(value, &mut Vec::new(), &mut slots, &mut nodes);
    (slots, nodes)
}

fn node_mut<'a>(mut value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for step in path {
        value = match step {
            Step::Key(key) => value.get_mut(key)?,
            Step::Index(index) => value.get_mut(index)?,
        };
    }
    Some(value)
}

/// `config` with the string at `slot` replaced by `text`.
fn replaced(config: &Value, slot: &Slot, text: String) -> Value {
    let mut config = config.clone();
    match node_mut(&mut config, &slot.path) {
        Some(Value::Object(map)) if slot.key => {
            if let Some(item) = map.remove(&slot.text) {
                map.insert(text, item);
            }
        }
        Some(node) => *node = Value::String(text),
        None => {}
    }
    config
}

/// Text that breaks byte offsets and ASCII assumptions: any character
/// (control and multi-byte included), pattern and header syntax, the empty
/// string, and 100 000 characters.
pub fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        9 => short_hostile_string(),
        1 => vec(character(), 1..4).prop_map(|unit| {
            let unit = String::from_iter(unit);
            unit.repeat(100_000 / unit.chars().count())
        }),
    ]
    .boxed()
}

/// [`hostile_string`] up to a few dozen characters.
fn short_hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => vec(any::<char>(), 0..24).prop_map(String::from_iter),
        4 => vec(character(), 0..12).prop_map(String::from_iter),
        1 => Just(String::new()),
    ]
    .boxed()
}

fn character() -> BoxedStrategy<char> {
    let tricky = select(vec![
        '*', '{', '}', '/', '.', ':', ',', ';', '=', '%', '$', '\\', '[', ']', '"', ' ', '\0',
        '\t', '\r', '\n', '\u{7f}', 'é', '€', '😀', '\u{301}', '\u{feff}', 'a', 'Z', '0',
    ]);
    prop_oneof![any::<char>(), tricky].boxed()
}

/// `original` with hostile text inserted at a character boundary.
fn mutated(original: String) -> BoxedStrategy<String> {
    (hostile_string(), any::<Index>())
        .prop_map(move |(insert, at)| {
            let at = at.index(original.chars().count() + 1);
            let mut out: String = original.chars().take(at).collect();
            out.push_str(&insert);
            out.extend(original.chars().skip(at));
            out
        })
        .boxed()
}

/// Hostile text, or one of `known` as is or mutated.
fn text_near(known: Vec<String>) -> BoxedStrategy<String> {
    if known.is_empty() {
        return hostile_string();
    }
    prop_oneof![
        hostile_string(),
        select(known).prop_flat_map(|text| prop_oneof![Just(text.clone()), mutated(text)]),
    ]
    .boxed()
}

/// Any JSON value, strings hostile but short, a few levels deep.
pub fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        short_hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((short_hostile_string(), inner), 0..6)
                .prop_map(|entries| Value::Object(Map::from_iter(entries))),
        ]
    })
    .boxed()
}

/// A request as the filters' cores see it; the claims are a verified token's
/// payload, as the authz filter writes them to filter state.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub scheme: String,
    pub headers: Vec<(String, String)>,
    pub claims: Value,
}

/// Requests whose parts are hostile or come from `known` (the config's own
/// strings, so that header names, paths and values meet the rules).
fn request(known: Vec<String>) -> BoxedStrategy<Request> {
    let text = text_near(known);
    let header = (text.clone(), text.clone());
    (
        prop_oneof![
            select(vec!["GET", "POST", "DELETE"]).prop_map(str::to_owned),
            text.clone()
        ],
        prop_oneof![
            text.clone().prop_map(|path| format!("/{path}")),
            text.clone()
        ],
        text.clone(),
        prop_oneof![Just("https".to_owned()), text],
        vec(header, 0..8),
        json(),
    )
        .prop_map(
            |(method, path, authority, scheme, headers, claims)| Request {
                method,
                path,
                authority,
                scheme,
                headers,
                claims,
            },
        )
        .boxed()
}

/// Every string of `config`, values and keys, plus header names a filter
/// reads without configuring them.
fn known_strings(config: &Value) -> Vec<String> {
    let mut known: Vec<String> = walk(config).0.into_iter().map(|slot| slot.text).collect();
    known.extend(
        [
            "authorization",
            "cookie",
            "baggage",
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
            "x-b3-flags",
            "x-request-id",
            "x-forwarded-proto",
        ]
        .map(str::to_owned),
    );
    known
}

fn run<T: Debug>(
    cases: u32,
    strategy: &impl Strategy<Value = T>,
    check: impl Fn(T),
) -> Result<(), String> {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(strategy, |value| {
            check(value);
            Ok(())
        })
        .map_err(|err| err.to_string())
}

/// Replaces each string of `config` in turn (every value and every object
/// key) with `cases` hostile texts; `check` gets the config bytes and a few
/// requests built from the config's strings.
pub fn each_string_replaced(
    config: &Value,
    cases: u32,
    check: impl Fn(&[u8], &[Request]),
) -> Result<(), String> {
    let requests = vec(request(known_strings(config)), 1..4);
    for slot in walk(config).0 {
        let variant = prop_oneof![hostile_string(), mutated(slot.text.clone())]
            .prop_map(|text| replaced(config, &slot, text).to_string());
        run(cases, &(variant, requests.clone()), |(raw, requests)| {
            check(raw.as_bytes(), &requests);
        })
        .map_err(|err| format!("string at {:?} (key: {}): {err}", slot.path, slot.key))?;
    }
    Ok(())
}

/// Arbitrary bytes, arbitrary JSON, and `config` with one node (any value,
/// any depth) replaced by arbitrary JSON.
pub fn arbitrary_configs(config: &Value, cases: u32, check: impl Fn(&[u8])) -> Result<(), String> {
    let config = config.clone();
    let nodes = walk(&config).1;
    let bytes = prop_oneof![
        vec(any::<u8>(), 0..256),
        json().prop_map(|value| value.to_string().into_bytes()),
        (select(nodes), json()).prop_map(move |(path, value)| {
            let mut config = config.clone();
            if let Some(node) = node_mut(&mut config, &path) {
                *node = value;
            }
            config.to_string().into_bytes()
        }),
    ];
    run(cases, &bytes, |raw| check(&raw))
}

/// Requests built from hostile text and `config`'s strings.
pub fn requests(config: &Value, cases: u32, check: impl Fn(&Request)) -> Result<(), String> {
    run(cases, &request(known_strings(config)), |request| {
        check(&request)
    })
}
