//! Sticky bucketing: a key (user id, cookie, claim) is hashed into one of
//! [`BUCKETS`] stable buckets, so a user always lands in the same bucket and a
//! 10 % canary is 10 % of users.
//!
//! The hash is FNV-1a 64 over `seed`, a `0xff` separator byte (never valid
//! UTF-8, so `("ab", "c")` and `("a", "bc")` differ) and the key, followed by
//! the MurmurHash3 `fmix64` finalizer. FNV-1a alone mixes its last input bytes
//! poorly into the low bits, which matters for ids that differ only at the
//! end (`user-1`, `user-2`); the finalizer spreads every bit over the whole
//! word. Both steps are fixed constants: the same key gives the same bucket on
//! every worker, every Envoy and every release of this filter.

pub const BUCKETS: u32 = 10_000;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The stable 64-bit hash of `key` under `seed`.
pub fn sticky_hash(seed: &str, key: &str) -> u64 {
    let hash = fnv1a64(FNV_OFFSET_BASIS, seed.as_bytes());
    let hash = fnv1a64(hash, &[0xff]);
    fmix64(fnv1a64(hash, key.as_bytes()))
}

/// The bucket (`0..BUCKETS`) of `key` under `seed`.
pub fn bucket(seed: &str, key: &str) -> u32 {
    // The remainder is below BUCKETS, so it always fits.
    (sticky_hash(seed, key) % u64::from(BUCKETS)) as u32
}

/// A percentage (`0.0..=100.0`, steps of 0.01) as a number of buckets.
pub fn percent_to_buckets(percent: f64) -> u32 {
    (percent * f64::from(BUCKETS) / 100.0)
        .round()
        .clamp(0.0, f64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn buckets_are_stable_across_calls_and_releases() {
        // Pinned values: changing the hash would move users between variants.
        assert_eq!(bucket("canary", "alice"), bucket("canary", "alice"));
        let pinned = [
            bucket("canary", "alice"),
            bucket("canary", "bob"),
            bucket("canary", "user-1"),
        ];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u32; 3] = [5886, 1756, 3342];

    #[test]
    fn seed_and_key_boundary_matter() {
        assert_ne!(sticky_hash("ab", "c"), sticky_hash("a", "bc"));
        assert_ne!(bucket("canary", "alice"), bucket("other", "alice"));
    }

    #[test]
    fn ten_thousand_keys_spread_evenly() {
        // 10 000 sequential ids into 10 deciles: each within ±15 % of 1 000.
        let mut deciles = [0u32; 10];
        for user in 0..10_000 {
            let index = (bucket("split", &format!("user-{user}")) / 1_000) as usize;
            deciles[index] += 1;
        }
        for (index, count) in deciles.iter().enumerate() {
            assert!(
                (850..=1150).contains(count),
                "decile {index} got {count} of 10000: {deciles:?}"
            );
        }
    }

    #[test]
    fn percentages_select_the_right_share_of_users() {
        for percent in [1.0, 10.0, 20.0, 50.0] {
            let limit = percent_to_buckets(percent);
            let inside = (0..10_000)
                .filter(|user| bucket("rollout", &format!("u{user}")) < limit)
                .count() as f64;
            let share = inside / 100.0;
            assert!(
                (share - percent).abs() <= 1.0,
                "{percent}% selected {share}% of users"
            );
        }
    }

    #[test]
    fn percent_conversion() {
        assert_eq!(percent_to_buckets(0.0), 0);
        assert_eq!(percent_to_buckets(20.0), 2_000);
        assert_eq!(percent_to_buckets(0.01), 1);
        assert_eq!(percent_to_buckets(100.0), BUCKETS);
        assert_eq!(percent_to_buckets(250.0), BUCKETS);
    }
}
