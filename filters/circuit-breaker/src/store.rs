//! Breakers kept in proxy-wasm shared data, so every Envoy worker of the VM
//! sees one breaker per key. Each breaker is one shared-data entry updated by
//! compare-and-swap; a registry entry lists the live keys, which bounds their
//! number and lets a periodic sweep expire idle ones. Their count is kept
//! apart (`~count`, a few bytes), so a request for a key never seen reads the
//! count, not the registry: with a client-chosen key part, every request may
//! bring a new key.
//!
//! Ordering that keeps the registry honest without locks: a worker writes a
//! new breaker first and registers it after; the sweep empties an idle
//! breaker first (CAS, so a concurrent update wins) and drops registry names
//! whose breaker is empty after. A breaker recreated in between is
//! re-registered by its creator. Each registry write is followed by a write
//! of its length to `~count`; under races the count may lag by a write, and
//! the key count may overshoot `max_keys` by at most the number of workers.

use crate::breaker::Spec;
use crate::breaker::{Admission, Breaker, Outcome, State, Ticket, Transition};
use meshwasm_shared::shared_data::{update, update_from, SharedStore, StoreError};

const MAX_ATTEMPTS: u32 = 16;
const REGISTRY: &str = "~keys";
const KEY_COUNT: &str = "~count";

/// The shared-data names of one plugin instance: `meshwasm.breaker/<plugin>/<config hash>/`.
/// A new configuration starts from fresh breakers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub fn new(plugin: &str, config: &[u8]) -> Self {
        Namespace(format!("meshwasm.breaker/{plugin}/{:016x}/", fnv1a(config)))
    }

    fn entry(&self, key: &str) -> String {
        format!("{}{key}", self.0)
    }
}

/// FNV-1a, 64 bit: a stable config fingerprint (not a security boundary).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The breaker decided; `state` is its state after the decision.
    Decided {
        admission: Admission,
        transition: Option<Transition>,
        state: State,
    },
    /// A new key while `max_keys` breakers exist: the request passes unguarded.
    OverCapacity,
}

pub struct Breakers<'a, S: SharedStore + ?Sized> {
    pub store: &'a S,
    pub namespace: &'a Namespace,
    pub max_keys: u32,
    pub idle_expiry_ms: u64,
}

impl<S: SharedStore + ?Sized> Breakers<'_, S> {
    pub fn admit(&self, key: &str, spec: &Spec, now_ms: u64) -> Result<Admit, StoreError> {
        let entry = self.namespace.entry(key);
        let first = self.store.get(&entry)?;
        let exists = first.0.as_deref().and_then(Breaker::decode).is_some();
        if !exists && !self.has_room()? {
            return Ok(Admit::OverCapacity);
        }
        let (admission, transition, state, created) =
            update_from(self.store, &entry, first, MAX_ATTEMPTS, |current| {
                let existing = current.and_then(Breaker::decode);
                let created = existing.is_none();
                let mut breaker = existing.unwrap_or_else(|| Breaker::new(spec, now_ms));
                let (admission, transition) = breaker.admit(spec, now_ms);
                let state = breaker.state();
                (
                    Some(breaker.encode()),
                    (admission, transition, state, created),
                )
            })?;
        if created {
            self.register(key)?;
        }
        Ok(Admit::Decided {
            admission,
            transition,
            state,
        })
    }

    /// Records an admitted call's outcome; `None` outcome just frees its slot.
    /// Returns the transition and the state after it (`None` if the breaker
    /// expired meanwhile).
    pub fn finish(
        &self,
        key: &str,
        spec: &Spec,
        ticket: Ticket,
        outcome: Option<Outcome>,
        now_ms: u64,
    ) -> Result<Option<(Option<Transition>, State)>, StoreError> {
        update(
            self.store,
            &self.namespace.entry(key),
            MAX_ATTEMPTS,
            |current| {
                let Some(mut breaker) = current.and_then(Breaker::decode) else {
                    return (None, None);
                };
                let transition = match outcome {
                    Some(outcome) => breaker.record(spec, ticket, outcome, now_ms),
                    None => {
                        breaker.release(ticket, now_ms);
                        None
                    }
                };
                let state = breaker.state();
                (Some(breaker.encode()), Some((transition, state)))
            },
        )
    }

    /// The live keys, as registered.
    pub fn keys(&self) -> Result<Vec<String>, StoreError> {
        let (registry, _) = self.store.get(&self.namespace.entry(REGISTRY))?;
        Ok(parse_registry(registry.as_deref()))
    }

    /// The state a caller would see now, if the key is live.
    pub fn state(&self, key: &str, now_ms: u64) -> Result<Option<State>, StoreError> {
        let (current, _) = self.store.get(&self.namespace.entry(key))?;
        Ok(current
            .as_deref()
            .and_then(Breaker::decode)
            .map(|breaker| breaker.state_at(now_ms)))
    }

    /// Whether a new key may be created: one read of a few bytes, whatever
    /// the number and length of the live keys.
    fn has_room(&self) -> Result<bool, StoreError> {
        let (count, _) = self.store.get(&self.namespace.entry(KEY_COUNT))?;
        let count = count
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<u32>().ok())
            .unwrap_or(0);
        Ok(count < self.max_keys)
    }

    /// Rewrites the registry with `update`, then its length to `~count`.
    fn update_registry(
        &self,
        update_keys: impl Fn(Vec<String>) -> Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let written = update(
            self.store,
            &self.namespace.entry(REGISTRY),
            MAX_ATTEMPTS,
            |current| match update_keys(parse_registry(current)) {
                Some(keys) => (Some(keys.join("\n").into_bytes()), Some(keys.len())),
                None => (None, None),
            },
        )?;
        if let Some(count) = written {
            self.store.set(
                &self.namespace.entry(KEY_COUNT),
                count.to_string().as_bytes(),
                None,
            )?;
        }
        Ok(())
    }

    fn register(&self, key: &str) -> Result<(), StoreError> {
        self.update_registry(|mut keys| {
            if keys.iter().any(|k| k == key) {
                return None;
            }
            keys.push(key.to_owned());
            Some(keys)
        })
    }

    /// Empties breakers idle for `idle_expiry`, then unregisters empty ones.
    /// Returns the expired keys.
    pub fn sweep(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let mut expired = Vec::new();
        for key in self.keys()? {
            let emptied = update(
                self.store,
                &self.namespace.entry(&key),
                MAX_ATTEMPTS,
                |current| match current.and_then(Breaker::decode) {
                    Some(breaker)
                        if now_ms.saturating_sub(breaker.last_seen_ms()) < self.idle_expiry_ms =>
                    {
                        (None, false)
                    }
                    // Idle or unreadable: empty it (proxy-wasm cannot delete keys).
                    _ => (Some(Vec::new()), true),
                },
            )?;
            if emptied {
                expired.push(key);
            }
        }
        self.update_registry(|keys| {
            let live: Vec<String> = keys
                .iter()
                .filter(|key| {
                    matches!(
                        self.store.get(&self.namespace.entry(key)),
                        Ok((Some(bytes), _)) if !bytes.is_empty()
                    )
                })
                .cloned()
                .collect();
            (live.len() != keys.len()).then_some(live)
        })?;
        Ok(expired)
    }
}

fn parse_registry(bytes: Option<&[u8]>) -> Vec<String> {
    bytes
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .map(|text| {
            text.split('\n')
                .filter(|key| !key.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{Rejection, WindowSpec};
    use meshwasm_shared::shared_data::{CountingStore, MemoryStore};

    fn spec() -> Spec {
        Spec {
            consecutive_failures: Some(5),
            failure_rate_percent: None,
            slow_call_rate_percent: None,
            slow_call_ms: 1000,
            minimum_calls: 1,
            window: WindowSpec::Count { size: 10 },
            open_ms: 1000,
            backoff_multiplier: 2.0,
            max_open_ms: 8000,
            permitted_calls: 1,
            max_concurrent: Some(3),
        }
    }

    fn breakers<'a>(store: &'a MemoryStore, namespace: &'a Namespace) -> Breakers<'a, MemoryStore> {
        Breakers {
            store,
            namespace,
            max_keys: 2,
            idle_expiry_ms: 10_000,
        }
    }

    const FAIL: Outcome = Outcome {
        failure: true,
        duration_ms: 1,
    };

    fn admitted(result: Admit) -> Ticket {
        match result {
            Admit::Decided {
                admission: Admission::Admitted(ticket),
                ..
            } => ticket,
            other => panic!("not admitted: {other:?}"),
        }
    }

    /// Two workers (two `Breakers` over one store) interleave calls: the
    /// breaker trips after the same number of failures as with one worker.
    #[test]
    fn two_workers_trip_after_the_same_count_as_one() {
        let spec = spec();
        let trips_after = |workers: usize| {
            let store = MemoryStore::default();
            let namespace = Namespace::new("cb", b"{}");
            let workers: Vec<_> = (0..workers).map(|_| breakers(&store, &namespace)).collect();
            let mut failures = 0;
            for round in 0.. {
                let worker = &workers[round % workers.len()];
                let ticket = admitted(worker.admit("payment", &spec, 0).unwrap());
                failures += 1;
                let (transition, _) = worker
                    .finish("payment", &spec, ticket, Some(FAIL), 0)
                    .unwrap()
                    .unwrap();
                if transition == Some(Transition::Tripped) {
                    return failures;
                }
            }
            unreachable!()
        };
        assert_eq!(trips_after(1), 5);
        assert_eq!(trips_after(2), 5);
        assert_eq!(trips_after(3), 5);
    }

    #[test]
    fn workers_share_open_state_and_bulkhead() {
        let spec = spec();
        let store = MemoryStore::default();
        let namespace = Namespace::new("cb", b"{}");
        let (one, two) = (breakers(&store, &namespace), breakers(&store, &namespace));
        // Three in flight across the two workers fill the bulkhead.
        let tickets = [
            admitted(one.admit("k", &spec, 0).unwrap()),
            admitted(two.admit("k", &spec, 0).unwrap()),
            admitted(one.admit("k", &spec, 0).unwrap()),
        ];
        assert!(matches!(
            two.admit("k", &spec, 0).unwrap(),
            Admit::Decided {
                admission: Admission::Rejected(Rejection::Bulkhead),
                ..
            }
        ));
        for ticket in tickets {
            one.finish("k", &spec, ticket, None, 1).unwrap();
        }
        for _ in 0..5 {
            let ticket = admitted(two.admit("k", &spec, 2).unwrap());
            two.finish("k", &spec, ticket, Some(FAIL), 2).unwrap();
        }
        assert!(matches!(
            one.admit("k", &spec, 3).unwrap(),
            Admit::Decided {
                admission: Admission::Rejected(Rejection::Open {
                    retry_after_ms: 999
                }),
                state: State::Open,
                ..
            }
        ));
        assert_eq!(one.state("k", 3).unwrap(), Some(State::Open));
        assert_eq!(one.state("k", 1002).unwrap(), Some(State::HalfOpen));
    }

    #[test]
    fn keys_are_bounded_and_namespaced() {
        let spec = spec();
        let store = MemoryStore::default();
        let namespace = Namespace::new("cb", b"{}");
        let breakers = breakers(&store, &namespace);
        admitted(breakers.admit("a", &spec, 0).unwrap());
        admitted(breakers.admit("b", &spec, 0).unwrap());
        assert_eq!(breakers.admit("c", &spec, 0).unwrap(), Admit::OverCapacity);
        // Known keys keep working at capacity.
        admitted(breakers.admit("a", &spec, 0).unwrap());
        assert_eq!(breakers.keys().unwrap(), vec!["a", "b"]);

        let other = Namespace::new("cb", br#"{"max_keys":3}"#);
        assert_ne!(other, namespace);
        assert!(Breakers {
            store: &store,
            namespace: &other,
            max_keys: 2,
            idle_expiry_ms: 10_000,
        }
        .keys()
        .unwrap()
        .is_empty());
    }

    #[test]
    fn idle_keys_expire_and_free_their_slot() {
        let spec = spec();
        let store = MemoryStore::default();
        let namespace = Namespace::new("cb", b"{}");
        let breakers = breakers(&store, &namespace);
        let ticket = admitted(breakers.admit("a", &spec, 0).unwrap());
        admitted(breakers.admit("b", &spec, 5_000).unwrap());
        assert!(breakers.sweep(9_999).unwrap().is_empty());
        assert_eq!(breakers.sweep(10_000).unwrap(), vec!["a"]);
        assert_eq!(breakers.keys().unwrap(), vec!["b"]);
        assert_eq!(breakers.state("a", 10_000).unwrap(), None);
        // A late outcome for an expired key does not recreate it.
        assert_eq!(
            breakers
                .finish("a", &spec, ticket, Some(FAIL), 10_001)
                .unwrap(),
            None
        );
        assert_eq!(breakers.state("a", 10_001).unwrap(), None);
        // The freed slot takes a new key.
        admitted(breakers.admit("c", &spec, 10_002).unwrap());
        assert_eq!(breakers.keys().unwrap(), vec!["b", "c"]);
        // An expired key coming back is re-registered.
        assert_eq!(breakers.sweep(15_000).unwrap(), vec!["b"]);
        admitted(breakers.admit("a", &spec, 15_001).unwrap());
        assert_eq!(breakers.keys().unwrap(), vec!["c", "a"]);
    }

    #[test]
    fn sweep_keeps_a_key_recreated_after_it_was_emptied() {
        let spec = spec();
        let store = MemoryStore::default();
        let namespace = Namespace::new("cb", b"{}");
        let breakers = breakers(&store, &namespace);
        admitted(breakers.admit("a", &spec, 0).unwrap());
        // Another worker empties `a` while this one recreates it before the
        // registry clean-up runs: the registry must still list `a`.
        store.set(&namespace.entry("a"), &[], None).unwrap();
        admitted(breakers.admit("a", &spec, 20_000).unwrap());
        breakers.sweep(20_001).unwrap();
        assert_eq!(breakers.keys().unwrap(), vec!["a"]);
    }

    #[test]
    fn in_flight_is_released_when_no_outcome_arrives() {
        let mut spec = spec();
        spec.max_concurrent = Some(1);
        let store = MemoryStore::default();
        let namespace = Namespace::new("cb", b"{}");
        let breakers = breakers(&store, &namespace);
        let ticket = admitted(breakers.admit("a", &spec, 0).unwrap());
        breakers.finish("a", &spec, ticket, None, 1).unwrap();
        admitted(breakers.admit("a", &spec, 2).unwrap());
    }

    /// A new key per request at capacity (a header-based key with values the
    /// client makes up) must not read the registry, which holds every key.
    #[test]
    fn new_keys_at_capacity_cost_no_registry_read() {
        let spec = spec();
        let store = CountingStore::default();
        let namespace = Namespace::new("cb", b"{}");
        let breakers = Breakers {
            store: &store,
            namespace: &namespace,
            max_keys: 200,
            idle_expiry_ms: 10_000,
        };
        let key = |i: usize| format!("tenant|{i:0>250}");
        for i in 0..200 {
            admitted(breakers.admit(&key(i), &spec, 0).unwrap());
        }
        store.take_reads();
        for i in 200..300 {
            assert_eq!(
                breakers.admit(&key(i), &spec, 0).unwrap(),
                Admit::OverCapacity
            );
            let bytes: usize = store.take_reads().iter().map(|(_, bytes)| bytes).sum();
            assert!(bytes <= 16, "a new key at capacity read {bytes} bytes");
        }
        // The registry still lists exactly the admitted keys.
        assert_eq!(breakers.keys().unwrap().len(), 200);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
