//! Verified-token cache, bounded and consulted before any signature check;
//! the caller re-checks `exp`/`nbf` on every hit.
//!
//! Two levels: a per-worker map keyed by the token itself (a hit costs one
//! SipHash and one comparison, no digest and no host call; the token already
//! lives in this worker's memory, as in `jwt_authn`'s cache) and a fixed set
//! of slots in proxy-wasm shared data keyed by the token's SHA-256 (the token
//! never leaves the worker), so a token verified by one Envoy worker is a hit
//! on the others. Slots are direct-mapped by hash, which keeps the shared store
//! bounded (proxy-wasm cannot delete shared keys) and makes a write a single
//! unconditional `set`: a lost slot only costs one re-verification.

use crate::verify::Verified;
use meshwasm_shared::shared_data::SharedStore;
use ring::digest;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// Per-worker cache; the oldest insertion is evicted first.
pub struct LocalCache {
    capacity: usize,
    entries: HashMap<Rc<str>, Rc<Verified>>,
    order: VecDeque<Rc<str>>,
}

impl LocalCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::with_capacity(capacity.min(4096)),
        }
    }

    pub fn get(&self, token: &str) -> Option<Rc<Verified>> {
        self.entries.get(token).cloned()
    }

    pub fn insert(&mut self, token: &str, verified: Rc<Verified>) {
        if self.capacity == 0 {
            return;
        }
        let token: Rc<str> = Rc::from(token);
        if self.entries.insert(token.clone(), verified).is_none() {
            self.order.push_back(token);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
    }

    pub fn remove(&mut self, token: &str) {
        if self.entries.remove(token).is_some() {
            self.order.retain(|entry| &**entry != token);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Serialize, Deserialize)]
struct SlotEntry {
    hash: String,
    config: String,
    provider: usize,
    principal: String,
    claims: serde_json::Value,
}

/// Cross-worker slots in shared data.
pub struct SharedCache {
    slots: usize,
    /// Entries written under another configuration are ignored.
    config_fingerprint: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SharedCache {
    pub fn new(slots: usize, raw_config: &[u8]) -> Self {
        let fingerprint = digest::digest(&digest::SHA256, raw_config);
        Self {
            slots,
            config_fingerprint: hex(fingerprint.as_ref().get(..8).unwrap_or_default()),
        }
    }

    fn key(&self, hash: &TokenHash) -> Option<String> {
        if self.slots == 0 {
            return None;
        }
        let index = u64::from_be_bytes([
            hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
        ]);
        Some(format!(
            "meshwasm.authz.v1.token.{}",
            index % self.slots as u64
        ))
    }

    pub fn get(&self, store: &dyn SharedStore, hash: &TokenHash) -> Option<Verified> {
        let key = self.key(hash)?;
        let (value, _) = store.get(&key).ok()?;
        let entry: SlotEntry = serde_json::from_slice(&value?).ok()?;
        (entry.hash == hex(hash) && entry.config == self.config_fingerprint)
            .then(|| Verified::new(entry.provider, entry.principal, entry.claims))
    }

    pub fn put(&self, store: &dyn SharedStore, hash: &TokenHash, verified: &Verified) {
        let Some(key) = self.key(hash) else {
            return;
        };
        let entry = SlotEntry {
            hash: hex(hash),
            config: self.config_fingerprint.clone(),
            provider: verified.provider,
            principal: verified.principal.clone(),
            claims: verified.claims.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            if let Err(err) = store.set(&key, &bytes, None) {
                log::debug!("token cache slot not written: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshwasm_shared::shared_data::MemoryStore;
    use serde_json::json;

    fn verified(sub: &str) -> Rc<Verified> {
        Rc::new(Verified::new(0, format!("iss/{sub}"), json!({"sub": sub})))
    }

    #[test]
    fn local_cache_is_bounded_and_evicts_oldest() {
        let mut cache = LocalCache::new(2);
        cache.insert("a", verified("a"));
        cache.insert("b", verified("b"));
        cache.insert("c", verified("c"));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("a").is_none());
        assert_eq!(cache.get("c").unwrap().principal, "iss/c");
        cache.remove("b");
        assert!(cache.get("b").is_none());
        let mut off = LocalCache::new(0);
        off.insert("a", verified("a"));
        assert!(off.is_empty());
    }

    #[test]
    fn shared_slots_round_trip_and_check_hash_and_config() {
        let store = MemoryStore::default();
        let cache = SharedCache::new(16, b"{config}");
        let hash = token_hash("tok");
        cache.put(&store, &hash, &verified("alice"));
        assert_eq!(cache.get(&store, &hash).unwrap().principal, "iss/alice");
        assert!(cache.get(&store, &token_hash("other")).is_none());
        let reconfigured = SharedCache::new(16, b"{other config}");
        assert!(reconfigured.get(&store, &hash).is_none());
        assert!(SharedCache::new(0, b"").get(&store, &hash).is_none());
    }
}
