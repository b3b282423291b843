//! Bounded label values. A label fed by clients or peers (tenant, workload
//! names) may take at most K distinct values per proxy; every other value is
//! reported as `other` and counted in `meshwasm_telemetry_folded_values_total`.
//!
//! Envoy never forgets a metric once defined, so a slot, once given, is kept:
//! the bound is on values ever admitted, not on values currently popular.
//! The admitted set lives in proxy-wasm shared data, so all worker VMs of a
//! proxy agree on it and the bound holds per proxy rather than per worker.
//! With `admit_after` > 1 a value must first be seen that many times on a
//! worker, counted with a Space-Saving sketch: a flood of one-off values
//! (random tenant ids) then cannot take the slots of frequent ones.

use crate::labels::{OTHER, UNKNOWN};
use meshwasm_shared::shared_data::{update, SharedStore};
use std::collections::{HashMap, HashSet};

/// Longest label value kept; longer ones are folded.
pub const MAX_VALUE_LEN: usize = 64;
const CAS_ATTEMPTS: u32 = 8;
const SHARED_KEY_PREFIX: &str = "meshwasm.telemetry.admitted.";

/// What became of a raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Kept as is (admitted now or before, or a reserved value).
    Kept(String),
    /// Replaced by `other`.
    Folded,
}

impl Resolved {
    pub fn label(&self) -> &str {
        match self {
            Self::Kept(value) => value,
            Self::Folded => OTHER,
        }
    }
}

/// Characters allowed in a bounded label value: safe in Envoy stat names,
/// the tag convention and Prometheus label values.
fn is_acceptable(value: &str) -> bool {
    value.len() <= MAX_VALUE_LEN
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'/')
        })
}

/// The admitted values of one label, as seen by this worker.
pub struct LabelBudget {
    shared_key: String,
    max_values: usize,
    admit_after: u32,
    /// Subset of the shared set; equal to it once it is full.
    admitted: HashSet<String>,
    candidates: SpaceSaving,
}

impl LabelBudget {
    pub fn new(label: &str, max_values: u32, admit_after: u32) -> Self {
        let max_values = max_values as usize;
        Self {
            shared_key: format!("{SHARED_KEY_PREFIX}{label}"),
            max_values,
            admit_after,
            admitted: HashSet::new(),
            candidates: SpaceSaving::new((max_values * 4).max(64)),
        }
    }

    /// The label value to report for `raw` (`None` or empty: `unknown`).
    pub fn resolve(&mut self, store: &dyn SharedStore, raw: Option<&str>) -> Resolved {
        let value = match raw.map(str::trim) {
            None | Some("") => return Resolved::Kept(UNKNOWN.to_owned()),
            Some(value) if value == UNKNOWN || value == OTHER => {
                return Resolved::Kept(value.to_owned())
            }
            Some(value) if !is_acceptable(value) => return Resolved::Folded,
            Some(value) => value,
        };
        if self.admitted.contains(value) {
            return Resolved::Kept(value.to_owned());
        }
        // The local view is a subset of the shared set: full here means full there.
        if self.admitted.len() >= self.max_values {
            return Resolved::Folded;
        }
        if self.admit_after > 1 && self.candidates.observe(value) < self.admit_after {
            return Resolved::Folded;
        }
        let max_values = self.max_values;
        let outcome = update(store, &self.shared_key, CAS_ATTEMPTS, |current| {
            let mut values: Vec<&str> = current
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .map(|text| text.lines().filter(|line| !line.is_empty()).collect())
                .unwrap_or_default();
            let seen: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            if values.contains(&value) {
                return (None, (true, seen));
            }
            if values.len() >= max_values {
                return (None, (false, seen));
            }
            values.push(value);
            (Some(values.join("\n").into_bytes()), (true, seen))
        });
        match outcome {
            Ok((admitted, seen)) => {
                self.admitted.extend(seen);
                if admitted {
                    self.candidates.forget(value);
                    self.admitted.insert(value.to_owned());
                    Resolved::Kept(value.to_owned())
                } else {
                    Resolved::Folded
                }
            }
            Err(err) => {
                log::debug!("label budget {}: {err}", self.shared_key);
                Resolved::Folded
            }
        }
    }
}

/// Space-Saving heavy-hitter counts over a fixed number of entries: when full,
/// a new value replaces the least counted one and inherits its count as
/// possible error. Admission uses the guaranteed count (count − error), so a
/// flood of one-off values never reaches the threshold while a frequent value
/// does.
struct SpaceSaving {
    capacity: usize,
    /// value → (count, error)
    counts: HashMap<String, (u32, u32)>,
}

impl SpaceSaving {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            counts: HashMap::new(),
        }
    }

    /// Counts one sighting of `value` and returns its guaranteed count.
    fn observe(&mut self, value: &str) -> u32 {
        if let Some((count, error)) = self.counts.get_mut(value) {
            *count = count.saturating_add(1);
            return *count - *error;
        }
        let mut inherited = 0;
        if self.counts.len() >= self.capacity {
            let least = self
                .counts
                .iter()
                .min_by_key(|(_, (count, _))| *count)
                .map(|(key, (count, _))| (key.clone(), *count));
            if let Some((key, count)) = least {
                self.counts.remove(&key);
                inherited = count;
            }
        }
        self.counts
            .insert(value.to_owned(), (inherited.saturating_add(1), inherited));
        1
    }

    fn forget(&mut self, value: &str) {
        self.counts.remove(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::shared_data::MemoryStore;

    fn resolve(budget: &mut LabelBudget, store: &MemoryStore, value: &str) -> String {
        budget.resolve(store, Some(value)).label().to_owned()
    }

    #[test]
    fn first_k_distinct_values_are_kept_the_rest_fold() {
        let store = MemoryStore::default();
        let mut budget = LabelBudget::new("tenant", 3, 1);
        for tenant in ["a", "b", "a", "c"] {
            assert_eq!(resolve(&mut budget, &store, tenant), tenant);
        }
        assert_eq!(budget.resolve(&store, Some("d")), Resolved::Folded);
        assert_eq!(resolve(&mut budget, &store, "b"), "b");
        assert_eq!(resolve(&mut budget, &store, "e"), OTHER);
    }

    #[test]
    fn two_thousand_tenants_give_at_most_k_plus_one_values() {
        let store = MemoryStore::default();
        let mut budget = LabelBudget::new("tenant", 10, 1);
        let mut labels = HashSet::new();
        let mut folded = 0;
        for i in 0..2000 {
            let resolved = budget.resolve(&store, Some(&format!("tenant-{i}")));
            if resolved == Resolved::Folded {
                folded += 1;
            }
            labels.insert(resolved.label().to_owned());
        }
        assert_eq!(labels.len(), 11);
        assert!(labels.contains(OTHER));
        assert_eq!(folded, 1990);
    }

    #[test]
    fn workers_share_one_bound() {
        let store = MemoryStore::default();
        let mut worker_a = LabelBudget::new("tenant", 2, 1);
        let mut worker_b = LabelBudget::new("tenant", 2, 1);
        assert_eq!(resolve(&mut worker_a, &store, "x"), "x");
        assert_eq!(resolve(&mut worker_b, &store, "y"), "y");
        // Both slots are taken across the proxy: neither worker admits a third.
        assert_eq!(resolve(&mut worker_a, &store, "z"), OTHER);
        assert_eq!(resolve(&mut worker_b, &store, "z"), OTHER);
        // A value admitted by the other worker is kept.
        assert_eq!(resolve(&mut worker_a, &store, "y"), "y");
        assert_eq!(resolve(&mut worker_b, &store, "x"), "x");
    }

    #[test]
    fn labels_are_budgeted_separately() {
        let store = MemoryStore::default();
        let mut tenants = LabelBudget::new("tenant", 1, 1);
        let mut sources = LabelBudget::new("source_workload", 1, 1);
        assert_eq!(resolve(&mut tenants, &store, "acme"), "acme");
        assert_eq!(resolve(&mut sources, &store, "order"), "order");
        assert_eq!(resolve(&mut tenants, &store, "order"), OTHER);
    }

    #[test]
    fn absent_reserved_and_unsafe_values() {
        let store = MemoryStore::default();
        let mut budget = LabelBudget::new("tenant", 1, 1);
        assert_eq!(budget.resolve(&store, None), Resolved::Kept(UNKNOWN.into()));
        assert_eq!(
            budget.resolve(&store, Some("  ")),
            Resolved::Kept(UNKNOWN.into())
        );
        assert_eq!(
            budget.resolve(&store, Some("other")),
            Resolved::Kept(OTHER.into())
        );
        for bad in ["a b", "a;b", "a=.=b", "é", "x\"y", &"x".repeat(65)] {
            assert_eq!(budget.resolve(&store, Some(bad)), Resolved::Folded, "{bad}");
        }
        // Reserved and refused values took no slot.
        assert_eq!(
            resolve(&mut budget, &store, "acme-1.eu:prod@x/y"),
            "acme-1.eu:prod@x/y"
        );
    }

    #[test]
    fn admit_after_keeps_slots_for_repeated_values() {
        let store = MemoryStore::default();
        let mut budget = LabelBudget::new("tenant", 2, 3);
        // A flood of one-off values takes no slot.
        for i in 0..500 {
            assert_eq!(
                budget.resolve(&store, Some(&format!("once-{i}"))),
                Resolved::Folded
            );
        }
        assert_eq!(resolve(&mut budget, &store, "big"), OTHER);
        assert_eq!(resolve(&mut budget, &store, "big"), OTHER);
        assert_eq!(resolve(&mut budget, &store, "big"), "big");
        assert_eq!(resolve(&mut budget, &store, "big"), "big");
    }

    #[test]
    fn space_saving_keeps_a_frequent_value_and_bounds_memory() {
        let mut sketch = SpaceSaving::new(4);
        for round in 0..50 {
            sketch.observe("hot");
            assert_eq!(sketch.observe(&format!("cold-{round}")), 1);
        }
        assert!(sketch.observe("hot") >= 40);
        assert!(sketch.counts.len() <= 4);
    }

    #[test]
    fn contended_store_folds_instead_of_failing() {
        struct AlwaysLoses;
        impl SharedStore for AlwaysLoses {
            fn get(
                &self,
                _key: &str,
            ) -> Result<
                meshwasm_shared::shared_data::Versioned,
                meshwasm_shared::shared_data::StoreError,
            > {
                Ok((None, Some(1)))
            }
            fn set(
                &self,
                _key: &str,
                _value: &[u8],
                _cas: Option<u32>,
            ) -> Result<bool, meshwasm_shared::shared_data::StoreError> {
                Ok(false)
            }
        }
        let mut budget = LabelBudget::new("tenant", 5, 1);
        assert_eq!(budget.resolve(&AlwaysLoses, Some("acme")), Resolved::Folded);
    }
}
