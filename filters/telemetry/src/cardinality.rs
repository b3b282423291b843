//! Bounded label values. A label fed by clients or peers (tenant, workload
//! names) may take at most K distinct values per proxy; every other value is
//! reported as `other` and counted in `meshwasm_telemetry_folded_values_total`.
//!
//! The admitted set lives in proxy-wasm shared data, so all worker VMs of a
//! proxy agree on it and the bound holds per proxy rather than per worker.
//! Free slots go to the first values seen `admit_after` times. Every value
//! is counted in a decaying Space-Saving sketch per worker (counts halve every
//! [`DECAY_EVERY_PER_ENTRY`] × capacity sightings), so a slot is not kept for
//! good: once the slots are full, a value seen at least twice lately and more
//! than twice as often as the admitted value seen least in the previous
//! window takes that value's slot. A flood of one-off values (made-up
//! tenants) then never takes a slot for long, and real tenants win theirs
//! back. Envoy never forgets a metric
//! once defined, so each replacement leaves the old value's series behind:
//! each worker replaces at most one value per decay window.

use crate::labels::{OTHER, UNKNOWN};
use meshwasm_shared::shared_data::{update, SharedStore};
use std::collections::{HashMap, HashSet};

/// Longest label value kept; longer ones are folded.
pub const MAX_VALUE_LEN: usize = 64;
const CAS_ATTEMPTS: u32 = 8;
const SHARED_KEY_PREFIX: &str = "meshwasm.telemetry.admitted.";
/// Sightings per sketch entry between two halvings of every count.
pub const DECAY_EVERY_PER_ENTRY: u32 = 16;

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
    /// The shared set as last read (refreshed every decay window).
    admitted: HashSet<String>,
    /// Recent sightings of every acceptable value, admitted or not.
    recent: SpaceSaving,
    /// The admitted value seen least in the last decay window, with its
    /// count then: the one a heavy hitter may replace in this window (none
    /// once this worker replaced it).
    least_seen: Option<(u32, String)>,
}

impl LabelBudget {
    pub fn new(label: &str, max_values: u32, admit_after: u32) -> Self {
        let max_values = max_values as usize;
        Self {
            shared_key: format!("{SHARED_KEY_PREFIX}{label}"),
            max_values,
            admit_after,
            admitted: HashSet::new(),
            recent: SpaceSaving::new((max_values * 4).max(64)),
            least_seen: None,
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
        let seen = self.recent.observe(value);
        if self.recent.decay_due() {
            self.recent.decay();
            self.refresh(store);
            self.least_seen = self
                .admitted
                .iter()
                .map(|admitted| (self.recent.count(admitted), admitted.clone()))
                .min();
        }
        if self.admitted.contains(value) {
            return Resolved::Kept(value.to_owned());
        }
        if seen < self.admit_after {
            return Resolved::Folded;
        }
        if self.admitted.len() < self.max_values {
            return self.admit(store, value, None);
        }
        // Full: a value seen lately far more than the least seen admitted
        // one takes its slot, once per window.
        match self.least_seen.take() {
            Some((count, victim)) if seen >= 2 && seen > count.saturating_mul(2) => {
                self.admit(store, value, Some(&victim))
            }
            least_seen => {
                self.least_seen = least_seen;
                Resolved::Folded
            }
        }
    }

    /// Adds `value` to the shared set: into a free slot, else into the slot
    /// of `victim` if it is still there.
    fn admit(&mut self, store: &dyn SharedStore, value: &str, victim: Option<&str>) -> Resolved {
        let max_values = self.max_values;
        let outcome = update(store, &self.shared_key, CAS_ATTEMPTS, |current| {
            let mut values = admitted_values(current);
            if values.iter().any(|admitted| admitted == value) {
                return (None, (true, values));
            }
            if values.len() >= max_values {
                match values
                    .iter()
                    .position(|admitted| Some(admitted.as_str()) == victim)
                {
                    Some(index) => {
                        values.swap_remove(index);
                    }
                    None => return (None, (false, values)),
                }
            }
            values.push(value.to_owned());
            (Some(values.join("\n").into_bytes()), (true, values))
        });
        match outcome {
            Ok((admitted, values)) => {
                self.admitted = values.into_iter().collect();
                if admitted {
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

    /// Reads the shared set again: another worker may have replaced values.
    fn refresh(&mut self, store: &dyn SharedStore) {
        match store.get(&self.shared_key) {
            Ok((current, _)) => {
                self.admitted = admitted_values(current.as_deref()).into_iter().collect();
            }
            Err(err) => log::debug!("label budget {}: {err}", self.shared_key),
        }
    }
}

fn admitted_values(bytes: Option<&[u8]>) -> Vec<String> {
    bytes
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .map(|text| {
            text.lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Space-Saving heavy-hitter counts over a fixed number of entries: when full,
/// a new value replaces the least counted one and inherits its count as
/// possible error. Admission uses the guaranteed count (count − error), so a
/// flood of one-off values never reaches the threshold while a frequent value
/// does. Halving every count now and then ([`SpaceSaving::decay`]) makes them
/// counts of recent sightings.
struct SpaceSaving {
    capacity: usize,
    /// value → (count, error)
    counts: HashMap<String, (u32, u32)>,
    /// Sightings since the last decay.
    since_decay: u32,
}

impl SpaceSaving {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            counts: HashMap::new(),
            since_decay: 0,
        }
    }

    /// The guaranteed count of `value` (0 when not tracked).
    fn count(&self, value: &str) -> u32 {
        self.counts
            .get(value)
            .map_or(0, |(count, error)| count - error)
    }

    fn decay_due(&self) -> bool {
        let window = u32::try_from(self.capacity)
            .unwrap_or(u32::MAX)
            .saturating_mul(DECAY_EVERY_PER_ENTRY);
        self.since_decay >= window
    }

    /// Halves every count and error; values counted down to nothing go.
    fn decay(&mut self) {
        self.since_decay = 0;
        self.counts.retain(|_, (count, error)| {
            *count /= 2;
            *error /= 2;
            *count > 0
        });
    }

    /// Counts one sighting of `value` and returns its guaranteed count.
    fn observe(&mut self, value: &str) -> u32 {
        self.since_decay = self.since_decay.saturating_add(1);
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

    /// Anonymous requests with made-up tenants come first and take every
    /// slot (first come, `admit_after` 1); then real tenants keep sending
    /// amid the flood. They must win their labels back, and the labels
    /// reported stay bounded.
    #[test]
    fn real_tenants_win_their_labels_back_from_a_flood_of_made_up_ones() {
        let store = MemoryStore::default();
        let mut budget = LabelBudget::new("tenant", 3, 1);
        for i in 0..1000 {
            budget.resolve(&store, Some(&format!("made-up-{i}")));
        }
        let mut reported = HashSet::new();
        let mut real_kept = 0;
        for round in 0..2000 {
            for tenant in ["acme", "globex"] {
                let label = resolve(&mut budget, &store, tenant);
                if round >= 1500 && label == tenant {
                    real_kept += 1;
                }
                reported.insert(label);
            }
            for i in 0..5 {
                reported.insert(resolve(&mut budget, &store, &format!("flood-{round}-{i}")));
            }
        }
        assert_eq!(real_kept, 2 * 500, "real tenants folded: {reported:?}");
        // acme, globex, `other`, and no more than the 3 slots' first values.
        assert!(reported.len() <= 6, "{reported:?}");
        let shared = store
            .get("meshwasm.telemetry.admitted.tenant")
            .unwrap()
            .0
            .unwrap();
        assert_eq!(String::from_utf8(shared).unwrap().lines().count(), 3);
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
