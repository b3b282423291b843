//! Compare-and-swap updates of proxy-wasm shared data, the one store that all
//! Envoy worker threads of a VM see. A read returns the value with its CAS
//! token; a write with that token fails if another worker wrote in between,
//! and the update is retried on the fresh value.

use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Every attempt lost the race to another worker.
    Contended { attempts: u32 },
    /// The host refused the call.
    Host(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Contended { attempts } => {
                write!(f, "shared data still contended after {attempts} attempts")
            }
            StoreError::Host(status) => write!(f, "shared data host error: {status}"),
        }
    }
}

/// A value and the CAS token it was read with (absent keys have none).
pub type Versioned = (Option<Vec<u8>>, Option<u32>);

pub trait SharedStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError>;
    /// Writes `value` if the key's token is still `cas` (always when `None`);
    /// `Ok(false)` means another writer came first.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, StoreError>;
}

/// Glue: Envoy's shared data for this VM.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        proxy_wasm::hostcalls::get_shared_data(key)
            .map_err(|status| StoreError::Host(format!("{status:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, StoreError> {
        match proxy_wasm::hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(true),
            Err(proxy_wasm::types::Status::CasMismatch) => Ok(false),
            Err(status) => Err(StoreError::Host(format!("{status:?}"))),
        }
    }
}

/// Reads `key`, lets `update` compute the new value from the current one, and
/// writes it back with CAS, retrying up to `max_attempts` times on a lost race.
/// `update` returns the bytes to store (or `None` to leave the key as it is)
/// and a result handed back to the caller from the attempt that won.
pub fn update<S, T, F>(store: &S, key: &str, max_attempts: u32, update: F) -> Result<T, StoreError>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
{
    let first = store.get(key)?;
    update_from(store, key, first, max_attempts, update)
}

/// [`update`] starting from a value the caller has just read (saves a read).
pub fn update_from<S, T, F>(
    store: &S,
    key: &str,
    first: Versioned,
    max_attempts: u32,
    mut update: F,
) -> Result<T, StoreError>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
{
    let mut read = first;
    for attempt in 1..=max_attempts {
        let (current, cas) = read;
        let current = current.filter(|bytes| !bytes.is_empty());
        let (next, result) = update(current.as_deref());
        let Some(next) = next else {
            return Ok(result);
        };
        // A key seen absent has no token; Envoy then stores unconditionally.
        if store.set(key, &next, cas)? {
            return Ok(result);
        }
        if attempt == max_attempts {
            break;
        }
        read = store.get(key)?;
    }
    Err(StoreError::Contended {
        attempts: max_attempts,
    })
}

/// An in-process store with Envoy's CAS semantics, for native tests of code
/// that shares state across workers.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: RefCell<u32>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        Ok(match self.entries.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, StoreError> {
        let mut entries = self.entries.borrow_mut();
        if let (Some(expected), Some((_, current))) = (cas, entries.get(key)) {
            if expected != 0 && expected != *current {
                return Ok(false);
            }
        }
        let mut next_cas = self.next_cas.borrow_mut();
        *next_cas += 1;
        entries.insert(key.to_owned(), (value.to_vec(), *next_cas));
        Ok(true)
    }
}

/// A [`MemoryStore`] that logs every read (key and bytes returned), for
/// tests that bound what one call costs in shared data.
#[derive(Debug, Default)]
pub struct CountingStore {
    pub inner: MemoryStore,
    reads: RefCell<Vec<(String, usize)>>,
}

impl CountingStore {
    /// The reads since the last call: `(key, bytes returned)` in order.
    pub fn take_reads(&self) -> Vec<(String, usize)> {
        self.reads.take()
    }
}

impl SharedStore for CountingStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        let read = self.inner.get(key)?;
        let bytes = read.0.as_ref().map_or(0, Vec::len);
        self.reads.borrow_mut().push((key.to_owned(), bytes));
        Ok(read)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, StoreError> {
        self.inner.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update of a decimal counter: the next value, stored and returned.
    fn bump(current: Option<&[u8]>) -> (Option<Vec<u8>>, u64) {
        let n = current
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        (Some(n.to_string().into_bytes()), n)
    }

    fn increment(store: &impl SharedStore) -> Result<u64, StoreError> {
        update(store, "n", 8, bump)
    }

    #[test]
    fn updates_build_on_each_other() {
        let store = MemoryStore::default();
        assert_eq!(increment(&store).unwrap(), 1);
        assert_eq!(increment(&store).unwrap(), 2);
    }

    /// A store where another "worker" writes between our read and our write
    /// a fixed number of times.
    struct Racy {
        inner: MemoryStore,
        interference: RefCell<u32>,
    }

    impl SharedStore for Racy {
        fn get(&self, key: &str) -> Result<Versioned, StoreError> {
            let read = self.inner.get(key);
            let mut left = self.interference.borrow_mut();
            if *left > 0 {
                *left -= 1;
                let (value, _) = self.inner.get(key)?;
                let n: u64 = value
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                self.inner.set(key, (n + 1).to_string().as_bytes(), None)?;
            }
            read
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn lost_race_is_retried_on_fresh_value() {
        let store = Racy {
            inner: MemoryStore::default(),
            interference: RefCell::new(0),
        };
        increment(&store).unwrap();
        *store.interference.borrow_mut() = 2;
        // Two interfering writes (1 -> 2 -> 3), then our retry makes it 4.
        assert_eq!(increment(&store).unwrap(), 4);
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let store = Racy {
            inner: MemoryStore::default(),
            interference: RefCell::new(0),
        };
        increment(&store).unwrap();
        *store.interference.borrow_mut() = 100;
        assert_eq!(
            increment(&store),
            Err(StoreError::Contended { attempts: 8 })
        );
    }

    #[test]
    fn stale_first_read_is_retried_on_fresh_value() {
        let store = MemoryStore::default();
        increment(&store).unwrap();
        let stale = store.get("n").unwrap();
        increment(&store).unwrap();
        let written = update_from(&store, "n", stale, 2, bump);
        assert_eq!(written, Ok(3));
    }

    #[test]
    fn no_write_when_update_declines() {
        let store = MemoryStore::default();
        let seen = update(&store, "k", 3, |current| (None, current.is_some())).unwrap();
        assert!(!seen);
        assert_eq!(store.get("k").unwrap(), (None, None));
    }
}
