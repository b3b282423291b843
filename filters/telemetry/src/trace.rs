//! Trace context: W3C `traceparent` (strict version-00 parsing), B3 single
//! (`b3`) and multi (`x-b3-*`) headers, and new traces from random ids.
//!
//! The filter does not report spans (proxy-wasm has no span API); it makes sure
//! every request carries one valid `traceparent` that all hops share.

/// Header names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const BAGGAGE: &str = "baggage";
pub const B3: &str = "b3";
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";
pub const B3_FLAGS: &str = "x-b3-flags";

const SAMPLED_FLAG: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, not all zero.
    pub trace_id: String,
    /// 16 lower-case hex digits, not all zero.
    pub parent_id: String,
    pub flags: u8,
}

impl TraceContext {
    /// Parses a version-00 `traceparent`; anything else is refused.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        if !is_id(trace_id, 32) || !is_id(parent_id, 16) || !is_lower_hex(flags, 2) {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// Parses the B3 single header `{trace}-{span}[-{sampling}[-{parent}]]`.
    /// A bare sampling decision (`0`, `1`, `d`) carries no ids: `None`.
    pub fn from_b3_single(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let sampling = parts.next();
        let parent = parts.next();
        if parts.next().is_some() || parent.is_some_and(|p| !is_id(p, 16)) {
            return None;
        }
        let sampled = match sampling {
            None => true,
            Some("1") | Some("d") => true,
            Some("0") => false,
            Some(_) => return None,
        };
        Self::from_b3_ids(trace_id, span_id, sampled)
    }

    /// From the B3 multi headers; `x-b3-flags: 1` (debug) implies sampled.
    pub fn from_b3_multi(
        trace_id: &str,
        span_id: &str,
        sampled: Option<&str>,
        flags: Option<&str>,
    ) -> Option<Self> {
        let sampled = flags.map(str::trim) == Some("1")
            || !matches!(sampled.map(str::trim), Some("0") | Some("false"));
        Self::from_b3_ids(trace_id.trim(), span_id.trim(), sampled)
    }

    fn from_b3_ids(trace_id: &str, span_id: &str, sampled: bool) -> Option<Self> {
        let trace_id = match trace_id.len() {
            16 if is_id(trace_id, 16) => format!("{}{trace_id}", "0".repeat(16)),
            32 if is_id(trace_id, 32) => trace_id.to_owned(),
            _ => return None,
        };
        if !is_id(span_id, 16) {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id: span_id.to_owned(),
            flags: if sampled { SAMPLED_FLAG } else { 0 },
        })
    }

    /// A new trace from 24 random bytes (16 for the trace id, 8 for the span id),
    /// flagged sampled for `sampling_ratio` of the trace ids.
    pub fn start(random: &[u8; 24], sampling_ratio: f64) -> Self {
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        trace.copy_from_slice(&random[..16]);
        span.copy_from_slice(&random[16..]);
        // All-zero ids are invalid; with 128 random bits this is theoretical.
        if trace == [0; 16] {
            trace[15] = 1;
        }
        if span == [0; 8] {
            span[7] = 1;
        }
        let trace_id = hex(&trace);
        let sampled = within_ratio(&trace_id, sampling_ratio);
        Self {
            trace_id,
            parent_id: hex(&span),
            flags: if sampled { SAMPLED_FLAG } else { 0 },
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED_FLAG != 0
    }

    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

/// Where this request's trace context came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A valid `traceparent`: propagated untouched.
    W3c,
    /// B3 headers: `traceparent` is added with the same ids.
    B3,
    /// Nothing valid: a new trace; `traceparent` is set, `tracestate` dropped.
    New,
}

/// The trace headers a request arrived with.
#[derive(Debug, Default, Clone, Copy)]
pub struct Incoming<'a> {
    pub traceparent: Option<&'a str>,
    pub b3: Option<&'a str>,
    pub b3_trace_id: Option<&'a str>,
    pub b3_span_id: Option<&'a str>,
    pub b3_sampled: Option<&'a str>,
    pub b3_flags: Option<&'a str>,
}

/// Picks the request's trace context: valid W3C first, then B3 (if accepted),
/// else a new trace from `start`.
pub fn resolve(
    incoming: &Incoming<'_>,
    accept_b3: bool,
    start: impl FnOnce() -> TraceContext,
) -> (TraceContext, Origin) {
    if let Some(context) = incoming
        .traceparent
        .and_then(TraceContext::from_traceparent)
    {
        return (context, Origin::W3c);
    }
    if accept_b3 {
        let single = incoming.b3.and_then(TraceContext::from_b3_single);
        let multi = || match (incoming.b3_trace_id, incoming.b3_span_id) {
            (Some(trace_id), Some(span_id)) => TraceContext::from_b3_multi(
                trace_id,
                span_id,
                incoming.b3_sampled,
                incoming.b3_flags,
            ),
            _ => None,
        };
        if let Some(context) = single.or_else(multi) {
            return (context, Origin::B3);
        }
    }
    (start(), Origin::New)
}

/// Whether an id falls in the first `ratio` of the id space, judged on its last
/// 16 hex digits (the random part of both W3C and 64-bit B3 ids). Every hop
/// judging the same trace id decides the same.
pub fn within_ratio(trace_id: &str, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let tail = trace_id
        .get(trace_id.len().saturating_sub(16)..)
        .unwrap_or("");
    let value = u64::from_str_radix(tail, 16).unwrap_or(0);
    (value as f64) < ratio * 18_446_744_073_709_551_616.0
}

/// Random bytes when the host's random source fails: SplitMix64 over a seed
/// (time and a per-VM counter). Unique, not unpredictable.
pub fn fallback_random(seed: u64) -> [u8; 24] {
    let mut state = seed;
    let mut out = [0u8; 24];
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_be_bytes());
    }
    out
}

/// Random bytes for new trace and span ids, fetched from the host's CSPRNG
/// for [`RandomPool::IDS`] traces at a time: one host call (WASI
/// `random_get`) per batch instead of one per new trace.
pub struct RandomPool {
    bytes: [u8; 24 * RandomPool::IDS],
    used: usize,
}

impl Default for RandomPool {
    fn default() -> Self {
        Self {
            bytes: [0; 24 * RandomPool::IDS],
            used: 24 * RandomPool::IDS,
        }
    }
}

impl RandomPool {
    /// New traces served per refill.
    pub const IDS: usize = 16;

    /// The next 24 unused random bytes, refilling the pool with `fill` when
    /// it is spent. A failed refill leaves the pool spent and is returned.
    pub fn take<E>(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<[u8; 24], E> {
        if self.used >= self.bytes.len() {
            fill(&mut self.bytes)?;
            self.used = 0;
        }
        let mut out = [0u8; 24];
        if let Some(next) = self.bytes.get(self.used..self.used + 24) {
            out.copy_from_slice(next);
        }
        // Used bytes are not handed out twice.
        if let Some(spent) = self.bytes.get_mut(self.used..self.used + 24) {
            spent.fill(0);
        }
        self.used += 24;
        Ok(out)
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_id(text: &str, len: usize) -> bool {
    is_lower_hex(text, len) && text.bytes().any(|b| b != b'0')
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.extend(char::from_digit(u32::from(byte >> 4), 16));
        out.extend(char::from_digit(u32::from(byte & 0x0f), 16));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn random_pool_refills_once_per_batch_and_never_repeats_bytes() {
        let mut pool = RandomPool::default();
        let mut refills = 0u8;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..RandomPool::IDS * 3 {
            let ids = pool
                .take(|bytes: &mut [u8]| {
                    refills += 1;
                    for (index, byte) in bytes.iter_mut().enumerate() {
                        *byte = (index / 24) as u8 ^ refills.wrapping_mul(0x40);
                    }
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert!(seen.insert(ids));
        }
        assert_eq!(refills, 3);
        // The pool is spent: a failed refill is reported, and again next time.
        assert_eq!(pool.take(|_: &mut [u8]| Err("host")), Err("host"));
        assert_eq!(pool.take(|_: &mut [u8]| Err("again")), Err("again"));
    }

    fn parent(trace: &str, span: &str, flags: &str) -> String {
        format!("00-{trace}-{span}-{flags}")
    }

    #[test]
    fn valid_traceparent() {
        let context = TraceContext::from_traceparent(&parent(TRACE, SPAN, "01")).unwrap();
        assert_eq!(context.trace_id, TRACE);
        assert_eq!(context.parent_id, SPAN);
        assert!(context.sampled());
        assert_eq!(context.traceparent(), parent(TRACE, SPAN, "01"));
        let unsampled = TraceContext::from_traceparent(&parent(TRACE, SPAN, "00")).unwrap();
        assert!(!unsampled.sampled());
        // Unknown flag bits are kept.
        let other_bits = TraceContext::from_traceparent(&parent(TRACE, SPAN, "03")).unwrap();
        assert_eq!(other_bits.traceparent(), parent(TRACE, SPAN, "03"));
    }

    #[test]
    #[allow(clippy::string_slice)] // ASCII fixtures
    fn strict_traceparent_refusals() {
        let upper = TRACE.to_uppercase();
        let bad = [
            String::new(),
            "garbage".to_owned(),
            format!("01-{TRACE}-{SPAN}-01"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("0-{TRACE}-{SPAN}-01"),
            parent(&upper, SPAN, "01"),
            parent(&"0".repeat(32), SPAN, "01"),
            parent(TRACE, &"0".repeat(16), "01"),
            parent(&TRACE[1..], SPAN, "01"),
            parent(TRACE, &SPAN[1..], "01"),
            parent(TRACE, SPAN, "1"),
            parent(TRACE, SPAN, "0g"),
            format!("{}-extra", parent(TRACE, SPAN, "01")),
            parent(&format!("{}x", &TRACE[1..]), SPAN, "01"),
            format!("00_{TRACE}_{SPAN}_01"),
        ];
        for value in bad {
            assert_eq!(TraceContext::from_traceparent(&value), None, "{value}");
        }
    }

    #[test]
    fn b3_single() {
        let context = TraceContext::from_b3_single(&format!("{TRACE}-{SPAN}-1")).unwrap();
        assert_eq!(context.traceparent(), parent(TRACE, SPAN, "01"));
        let short =
            TraceContext::from_b3_single(&format!("a3ce929d0e0e4736-{SPAN}-0-{SPAN}")).unwrap();
        assert_eq!(short.trace_id, "0000000000000000a3ce929d0e0e4736");
        assert!(!short.sampled());
        assert!(TraceContext::from_b3_single(&format!("{TRACE}-{SPAN}"))
            .unwrap()
            .sampled());
        assert!(TraceContext::from_b3_single(&format!("{TRACE}-{SPAN}-d"))
            .unwrap()
            .sampled());
        for bad in [
            "0",
            "1",
            "d",
            "",
            &format!("{TRACE}-{SPAN}-x"),
            &format!("{TRACE}-zz"),
        ] {
            assert_eq!(TraceContext::from_b3_single(bad), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi() {
        let context = TraceContext::from_b3_multi(TRACE, SPAN, Some("1"), None).unwrap();
        assert_eq!(context.traceparent(), parent(TRACE, SPAN, "01"));
        assert!(!TraceContext::from_b3_multi(TRACE, SPAN, Some("0"), None)
            .unwrap()
            .sampled());
        assert!(
            TraceContext::from_b3_multi(TRACE, SPAN, Some("0"), Some("1"))
                .unwrap()
                .sampled()
        );
        assert!(TraceContext::from_b3_multi(TRACE, SPAN, None, None)
            .unwrap()
            .sampled());
        assert_eq!(
            TraceContext::from_b3_multi(&"0".repeat(16), SPAN, None, None),
            None
        );
        assert_eq!(TraceContext::from_b3_multi(TRACE, "xyz", None, None), None);
    }

    #[test]
    fn resolution_order() {
        let fresh = || TraceContext::start(&[7; 24], 1.0);
        let w3c = parent(TRACE, SPAN, "01");
        let b3 = format!("a3ce929d0e0e4736-{SPAN}-1");

        let incoming = Incoming {
            traceparent: Some(&w3c),
            b3: Some(&b3),
            ..Default::default()
        };
        assert_eq!(resolve(&incoming, true, fresh).1, Origin::W3c);

        let incoming = Incoming {
            traceparent: Some("00-bad"),
            b3: Some(&b3),
            ..Default::default()
        };
        let (context, origin) = resolve(&incoming, true, fresh);
        assert_eq!(origin, Origin::B3);
        assert_eq!(context.trace_id, "0000000000000000a3ce929d0e0e4736");
        assert_eq!(resolve(&incoming, false, fresh).1, Origin::New);

        let incoming = Incoming {
            b3_trace_id: Some(TRACE),
            b3_span_id: Some(SPAN),
            ..Default::default()
        };
        assert_eq!(resolve(&incoming, true, fresh).1, Origin::B3);

        let (context, origin) = resolve(&Incoming::default(), true, fresh);
        assert_eq!(origin, Origin::New);
        assert_eq!(context, fresh());
    }

    #[test]
    fn new_traces_are_valid_and_distinct() {
        let mut random = [0u8; 24];
        for (i, byte) in random.iter_mut().enumerate() {
            *byte = i as u8 * 11;
        }
        let context = TraceContext::start(&random, 1.0);
        assert_eq!(context.trace_id, "000b16212c37424d58636e79848f9aa5");
        assert_eq!(context.parent_id, "b0bbc6d1dce7f2fd");
        assert!(context.sampled());
        assert_eq!(
            TraceContext::from_traceparent(&context.traceparent()),
            Some(context)
        );

        let zero = TraceContext::start(&[0; 24], 0.0);
        assert!(TraceContext::from_traceparent(&zero.traceparent()).is_some());
        assert!(!zero.sampled());

        let a = TraceContext::start(&fallback_random(1), 1.0);
        let b = TraceContext::start(&fallback_random(2), 1.0);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.parent_id, b.parent_id);
    }

    #[test]
    fn ratio_decision_is_deterministic_per_trace_id() {
        let low = format!("{}0000000000000001", "f".repeat(16));
        let high = format!("{}ffffffffffffff00", "0".repeat(16));
        assert!(within_ratio(&low, 0.01));
        assert!(!within_ratio(&high, 0.99));
        assert!(within_ratio(&high, 1.0));
        assert!(!within_ratio(&low, 0.0));
        let sampled = (0..1000u64)
            .filter(|i| {
                within_ratio(
                    &TraceContext::start(&fallback_random(*i), 1.0).trace_id,
                    0.25,
                )
            })
            .count();
        assert!((150..350).contains(&sampled), "{sampled}");
    }
}
