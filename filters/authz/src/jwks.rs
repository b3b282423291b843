//! Remote key sets shared by all Envoy workers. Per provider, one small
//! shared-data record says when the JWKS was fetched or last tried, and a
//! second entry holds the last good JWKS document (up to 256 KiB). Workers
//! read the record on every tick and on every unknown `kid`; they read and
//! decode the document only when its `fetched_at` is new to them.
//! A worker that wants to fetch first claims the attempt with a CAS write, so
//! the workers of one Envoy fetch once per interval, not once each; every
//! worker then loads the fetched set from the record. A failed fetch leaves
//! the last good JWKS in place.

use crate::config::Provider;
use crate::keys::{KeySet, KeySetError};
use meshwasm_shared::shared_data::{self, SharedStore, StoreError};
use ring::digest;
use serde::{Deserialize, Serialize};
use std::rc::Rc;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Seconds since the epoch of the last successful fetch (0 = never).
    pub fetched_at: u64,
    /// Seconds since the epoch of the last claimed attempt.
    pub attempted_at: u64,
    /// An attempt was claimed and has not reported back yet.
    #[serde(default)]
    pub pending: bool,
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Periodic: the cached set is older than `jwks_cache_duration`.
    Refresh,
    /// A token names a `kid` the set does not have.
    UnknownKid,
}

/// The shared-data key of a provider's record: derived from its issuer, URL
/// and cluster, so a changed provider does not reuse an old key set.
pub fn record_key(provider: &Provider) -> String {
    let identity = format!(
        "{}\n{}\n{}",
        provider.issuer,
        provider.jwks_uri.as_deref().unwrap_or_default(),
        provider.jwks_cluster.as_deref().unwrap_or_default()
    );
    let hash = digest::digest(&digest::SHA256, identity.as_bytes());
    let hex: String = hash
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("meshwasm.authz.v2.jwks.{hex}")
}

/// The shared-data key of the JWKS document of the record at `key`.
fn document_key(key: &str) -> String {
    format!("{key}.document")
}

fn decode(bytes: Option<&[u8]>) -> Record {
    bytes
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .unwrap_or_default()
}

pub fn load(store: &dyn SharedStore, key: &str) -> Record {
    match store.get(key) {
        Ok((value, _)) => decode(value.as_deref()),
        Err(_) => Record::default(),
    }
}

/// Whether `reason` warrants a fetch now, given the record.
pub fn is_due(record: &Record, provider: &Provider, reason: Reason, now: u64) -> bool {
    let since_attempt = now.saturating_sub(record.attempted_at);
    // Another worker's attempt is in flight (a worker that died mid-fetch
    // is given up on after the fetch timeout).
    if record.pending && since_attempt <= provider.jwks_fetch_timeout.as_secs() {
        return false;
    }
    // At most one attempt per interval, whatever its outcome.
    if record.attempted_at != 0 && since_attempt < provider.jwks_refetch_interval.as_secs() {
        return false;
    }
    match reason {
        Reason::UnknownKid => true,
        Reason::Refresh => {
            record.fetched_at == 0
                || now.saturating_sub(record.fetched_at) >= provider.jwks_cache_duration.as_secs()
        }
    }
}

/// Claims the next fetch for this worker; `Ok(true)` means go and fetch.
pub fn claim(
    store: &dyn SharedStore,
    key: &str,
    provider: &Provider,
    reason: Reason,
    now: u64,
) -> Result<bool, StoreError> {
    shared_data::update(store, key, 4, |current| {
        let mut record = decode(current);
        if !is_due(&record, provider, reason, now) {
            return (None, false);
        }
        record.attempted_at = now;
        record.pending = true;
        (serde_json::to_vec(&record).ok(), true)
    })
}

/// The last good JWKS document of the record at `key`.
pub fn load_document(store: &dyn SharedStore, key: &str) -> Option<Vec<u8>> {
    store.get(&document_key(key)).ok()?.0
}

/// Stores a fetched JWKS (already checked to hold usable keys): the document
/// first, so a worker that sees the new `fetched_at` finds it.
pub fn store_success(
    store: &dyn SharedStore,
    key: &str,
    jwks: &[u8],
    now: u64,
) -> Result<(), StoreError> {
    store.set(&document_key(key), jwks, None)?;
    shared_data::update(store, key, 8, |current| {
        let mut record = decode(current);
        record.fetched_at = now;
        record.pending = false;
        (serde_json::to_vec(&record).ok(), ())
    })
}

/// Ends a failed attempt; the last good JWKS stays.
pub fn store_failure(store: &dyn SharedStore, key: &str) -> Result<(), StoreError> {
    shared_data::update(store, key, 8, |current| {
        let mut record = decode(current);
        record.pending = false;
        (serde_json::to_vec(&record).ok(), ())
    })
}

/// The fetched key sets one worker verifies with, indexed like `providers`,
/// each loaded from its provider's shared record.
#[derive(Debug, Default)]
pub struct RemoteKeySets {
    sets: Vec<Option<Rc<KeySet>>>,
    /// `fetched_at` of the record each set was loaded from.
    loaded_at: Vec<u64>,
}

impl RemoteKeySets {
    pub fn new(providers: usize) -> Self {
        Self {
            sets: vec![None; providers],
            loaded_at: vec![0; providers],
        }
    }

    pub fn sets(&self) -> &[Option<Rc<KeySet>>] {
        &self.sets
    }

    fn install(&mut self, index: usize, keys: KeySet, fetched_at: u64) {
        if let (Some(slot), Some(loaded)) =
            (self.sets.get_mut(index), self.loaded_at.get_mut(index))
        {
            *slot = Some(Rc::new(keys));
            *loaded = fetched_at;
        }
    }

    /// Loads provider `index`'s set when another worker stored a newer one;
    /// `Ok(true)` when the set changed. Reads the small record only, unless
    /// its `fetched_at` is new: then the document, decoded once.
    pub fn sync(
        &mut self,
        store: &dyn SharedStore,
        index: usize,
        provider: &Provider,
    ) -> Result<bool, KeySetError> {
        let key = record_key(provider);
        let record = load(store, &key);
        if record.fetched_at == 0 || self.loaded_at.get(index) == Some(&record.fetched_at) {
            return Ok(false);
        }
        let document = load_document(store, &key).unwrap_or_default();
        // Marked loaded even when unusable: the same document is not decoded again.
        if let Some(loaded) = self.loaded_at.get_mut(index) {
            *loaded = record.fetched_at;
        }
        let keys = KeySet::parse_fetched(&document, &provider.allowed_algorithms())?;
        self.install(index, keys, record.fetched_at);
        Ok(true)
    }

    /// Checks a fetched JWKS (its one decode), stores it for every worker and
    /// uses it here.
    pub fn accept(
        &mut self,
        store: &dyn SharedStore,
        index: usize,
        provider: &Provider,
        body: &[u8],
        now: u64,
    ) -> Result<(), String> {
        let keys = KeySet::parse_fetched(body, &provider.allowed_algorithms())
            .map_err(|err| err.to_string())?;
        if let Err(err) = store_success(store, &record_key(provider), body, now) {
            log::warn!(
                "authz: JWKS of `{}` fetched but not shared: {err}",
                provider.display_name()
            );
        }
        self.install(index, keys, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthzConfig;
    use meshwasm_shared::shared_data::{CountingStore, MemoryStore};

    fn provider() -> Provider {
        let raw = br#"{"providers":[{"issuer":"i","jwks_uri":"http://jwks/keys","jwks_cluster":"c",
            "jwks_cache_duration":"300s","jwks_refetch_interval":"30s","jwks_fetch_timeout":"5s"}]}"#;
        let config: AuthzConfig = meshwasm_shared::config::parse(Some(raw)).unwrap();
        config.providers[0].clone()
    }

    #[test]
    fn only_one_worker_wins_a_fetch() {
        let store = MemoryStore::default();
        let p = provider();
        let key = record_key(&p);
        assert!(claim(&store, &key, &p, Reason::Refresh, 1000).unwrap());
        assert!(!claim(&store, &key, &p, Reason::Refresh, 1000).unwrap());
        assert!(!claim(&store, &key, &p, Reason::UnknownKid, 1004).unwrap());
        // The claimant never reported back: given up on after the timeout,
        // then retried once the interval has passed.
        assert!(!claim(&store, &key, &p, Reason::UnknownKid, 1010).unwrap());
        assert!(claim(&store, &key, &p, Reason::Refresh, 1030).unwrap());
        store_failure(&store, &key).unwrap();
        assert!(!claim(&store, &key, &p, Reason::Refresh, 1059).unwrap());
        assert!(claim(&store, &key, &p, Reason::Refresh, 1060).unwrap());
    }

    #[test]
    fn success_is_kept_until_cache_duration() {
        let store = MemoryStore::default();
        let p = provider();
        let key = record_key(&p);
        assert!(claim(&store, &key, &p, Reason::Refresh, 1000).unwrap());
        store_success(&store, &key, b"{\"keys\":[]}", 1001).unwrap();
        assert_eq!(load(&store, &key).fetched_at, 1001);
        assert_eq!(load_document(&store, &key).unwrap(), b"{\"keys\":[]}");
        assert!(!claim(&store, &key, &p, Reason::Refresh, 1200).unwrap());
        // An unknown kid may refetch once the interval has passed.
        assert!(claim(&store, &key, &p, Reason::UnknownKid, 1031).unwrap());
        assert!(!claim(&store, &key, &p, Reason::UnknownKid, 1040).unwrap());
        assert!(claim(&store, &key, &p, Reason::Refresh, 1301).unwrap());
        // A failed fetch keeps the last good set.
        assert_eq!(load_document(&store, &key).unwrap(), b"{\"keys\":[]}");
    }

    /// The test JWKS padded to 200 KiB: a large key set, as a real IdP's may be.
    fn large_jwks() -> Vec<u8> {
        let mut jwks: serde_json::Value =
            serde_json::from_slice(include_bytes!("../testdata/test-jwks.json")).unwrap();
        jwks["padding"] = "x".repeat(200 * 1024).into();
        serde_json::to_vec(&jwks).unwrap()
    }

    /// Bytes read from the store since the last call; the largest single read.
    fn read_since(store: &CountingStore) -> (usize, usize) {
        let reads = store.take_reads();
        let largest = reads.iter().map(|(_, bytes)| *bytes).max().unwrap_or(0);
        (reads.iter().map(|(_, bytes)| bytes).sum(), largest)
    }

    /// A token with a known `iss` and a made-up `kid`: each request syncs the
    /// provider's set and asks for a refetch (as the glue does), and so does
    /// each tick. Neither may read or decode the stored key set while no
    /// worker fetched a new one, and refetches stay one per interval.
    #[test]
    fn unknown_kid_requests_and_ticks_never_read_an_unchanged_key_set() {
        let store = CountingStore::default();
        let p = provider();
        let key = record_key(&p);
        let mut remote = RemoteKeySets::new(1);
        assert!(claim(&store, &key, &p, Reason::Refresh, 1000).unwrap());
        remote.accept(&store, 0, &p, &large_jwks(), 1000).unwrap();
        let (_, largest) = read_since(&store);
        assert!(
            largest < 1024,
            "accepting a fetch decoded the stored set again ({largest} bytes)"
        );
        let mut fetches = 0;
        for now in 1001..1100 {
            assert!(!remote.sync(&store, 0, &p).unwrap());
            if claim(&store, &key, &p, Reason::UnknownKid, now).unwrap() {
                fetches += 1;
                store_failure(&store, &key).unwrap();
            }
            let (bytes, _) = read_since(&store);
            assert!(bytes < 1024, "one request at {now}s read {bytes} bytes");
        }
        assert_eq!(fetches, 3, "one unknown-kid refetch per 30 s interval");
        // Another worker's newer set is loaded once.
        store_success(&store, &key, &large_jwks(), 1100).unwrap();
        read_since(&store);
        assert!(remote.sync(&store, 0, &p).unwrap());
        assert!(!remote.sync(&store, 0, &p).unwrap());
        let (bytes, _) = read_since(&store);
        assert!((200 * 1024..300 * 1024).contains(&bytes), "{bytes}");
    }

    #[test]
    fn keys_differ_per_provider_identity() {
        let mut other = provider();
        other.jwks_uri = Some("http://jwks/other".into());
        assert_ne!(record_key(&provider()), record_key(&other));
        assert!(record_key(&other).starts_with("meshwasm.authz.v2.jwks."));
    }
}
