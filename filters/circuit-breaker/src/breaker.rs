//! One breaker's state machine: CLOSED → OPEN → HALF_OPEN → CLOSED, with a
//! count- or time-based sliding window, consecutive failures, slow calls,
//! open-time backoff, half-open probes and a bulkhead. Pure: the clock is a
//! `now_ms` argument, and the state encodes to a few bytes for shared data.

use crate::config::{Policy, Window};

/// Limits derived from a policy, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub consecutive_failures: Option<u32>,
    pub failure_rate_percent: Option<u8>,
    pub slow_call_rate_percent: Option<u8>,
    pub slow_call_ms: u64,
    pub minimum_calls: u32,
    pub window: WindowSpec,
    pub open_ms: u64,
    pub backoff_multiplier: f64,
    pub max_open_ms: u64,
    pub permitted_calls: u32,
    pub max_concurrent: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Count { size: u32 },
    Time { bucket_ms: u64, buckets: u32 },
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Spec {
    pub fn from_policy(policy: &Policy) -> Self {
        let window = match policy.trip.window {
            Window::Count { size } => WindowSpec::Count { size },
            Window::Time { duration, buckets } => WindowSpec::Time {
                bucket_ms: (millis(duration) / u64::from(buckets.max(1))).max(1),
                buckets,
            },
        };
        Self {
            consecutive_failures: policy.trip.consecutive_failures,
            failure_rate_percent: policy.trip.failure_rate_percent,
            slow_call_rate_percent: policy.trip.slow_call_rate_percent,
            slow_call_ms: millis(policy.trip.slow_call_duration),
            minimum_calls: policy.trip.minimum_calls,
            window,
            open_ms: millis(policy.open.duration),
            backoff_multiplier: policy.open.backoff_multiplier,
            max_open_ms: millis(policy.open.max_duration),
            permitted_calls: policy.half_open.permitted_calls,
            max_concurrent: policy.bulkhead.max_concurrent,
        }
    }

    /// Open time after `reopens` re-opens in a row, capped at the maximum.
    pub fn open_duration_ms(&self, reopens: u32) -> u64 {
        let grown = self.open_ms as f64 * self.backoff_multiplier.powi(reopens.min(64) as i32);
        if grown.is_finite() && grown < self.max_open_ms as f64 {
            grown as u64
        } else {
            self.max_open_ms
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    fn code(self) -> u8 {
        self.gauge() as u8
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(State::Closed),
            1 => Some(State::Open),
            2 => Some(State::HalfOpen),
            _ => None,
        }
    }
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// OPEN; the next probe is allowed in `retry_after_ms`.
    Open { retry_after_ms: u64 },
    /// HALF_OPEN with all probe permits handed out.
    HalfOpenFull,
    /// `max_concurrent` requests already in flight.
    Bulkhead,
}

/// The ticket an admitted request carries until its outcome is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The breaker generation (bumped on every state change) at admission.
    pub generation: u32,
    pub probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(Ticket),
    Rejected(Rejection),
}

/// A state change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Tripped,
    HalfOpened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub failure: bool,
    pub duration_ms: u64,
}

/// One time bucket: calls that ended in `[epoch * bucket_ms, (epoch+1) * bucket_ms)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Calls {
    /// Ring of the last calls, one byte each: bit 0 failed, bit 1 slow.
    Count {
        ring: Vec<u8>,
        next: u32,
    },
    Time {
        buckets: Vec<Bucket>,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Calls {
    fn new(window: WindowSpec) -> Self {
        match window {
            WindowSpec::Count { .. } => Calls::Count {
                ring: Vec::new(),
                next: 0,
            },
            WindowSpec::Time { .. } => Calls::Time {
                buckets: Vec::new(),
            },
        }
    }

    fn push(&mut self, window: WindowSpec, failed: bool, slow: bool, now_ms: u64) {
        let flags = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        match (self, window) {
            (Calls::Count { ring, next }, WindowSpec::Count { size }) => {
                let size = size.max(1) as usize;
                if ring.len() < size {
                    ring.push(flags);
                } else if let Some(slot) = ring.get_mut(*next as usize % size) {
                    *slot = flags;
                }
                *next = ((*next as usize + 1) % size) as u32;
            }
            (
                Calls::Time { buckets },
                WindowSpec::Time {
                    bucket_ms,
                    buckets: count,
                },
            ) => {
                let epoch = now_ms / bucket_ms.max(1);
                let oldest = epoch.saturating_sub(u64::from(count.max(1)) - 1);
                buckets.retain(|bucket| bucket.epoch >= oldest && bucket.epoch <= epoch);
                if !buckets.iter().any(|bucket| bucket.epoch == epoch) {
                    buckets.push(Bucket {
                        epoch,
                        ..Bucket::default()
                    });
                }
                if let Some(bucket) = buckets.iter_mut().find(|bucket| bucket.epoch == epoch) {
                    bucket.calls = bucket.calls.saturating_add(1);
                    bucket.failures = bucket.failures.saturating_add(u32::from(failed));
                    bucket.slow = bucket.slow.saturating_add(u32::from(slow));
                }
            }
            // The spec's window kind is fixed per config (and so per key namespace).
            (calls, window) => {
                *calls = Calls::new(window);
                calls.push(window, failed, slow, now_ms);
            }
        }
    }

    fn tally(&self, window: WindowSpec, now_ms: u64) -> Tally {
        match (self, window) {
            (Calls::Count { ring, .. }, _) => Tally {
                calls: ring.len() as u32,
                failures: ring.iter().filter(|f| *f & FAILED != 0).count() as u32,
                slow: ring.iter().filter(|f| *f & SLOW != 0).count() as u32,
            },
            (
                Calls::Time { buckets },
                WindowSpec::Time {
                    bucket_ms,
                    buckets: count,
                },
            ) => {
                let epoch = now_ms / bucket_ms.max(1);
                let oldest = epoch.saturating_sub(u64::from(count.max(1)) - 1);
                buckets
                    .iter()
                    .filter(|bucket| bucket.epoch >= oldest && bucket.epoch <= epoch)
                    .fold(Tally::default(), |sum, bucket| Tally {
                        calls: sum.calls.saturating_add(bucket.calls),
                        failures: sum.failures.saturating_add(bucket.failures),
                        slow: sum.slow.saturating_add(bucket.slow),
                    })
            }
            (Calls::Time { .. }, WindowSpec::Count { .. }) => Tally::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    state: State,
    generation: u32,
    /// When OPEN ends (the next probe may go).
    open_until_ms: u64,
    /// Re-opens from HALF_OPEN since the last close (drives the backoff).
    reopens: u32,
    consecutive_failures: u32,
    probes_admitted: u32,
    probes_succeeded: u32,
    in_flight: u32,
    last_seen_ms: u64,
    calls: Calls,
}

impl Breaker {
    pub fn new(spec: &Spec, now_ms: u64) -> Self {
        Self {
            state: State::Closed,
            generation: 0,
            open_until_ms: 0,
            reopens: 0,
            consecutive_failures: 0,
            probes_admitted: 0,
            probes_succeeded: 0,
            in_flight: 0,
            last_seen_ms: now_ms,
            calls: Calls::new(spec.window),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms
    }

    /// The state as a caller would see it now (OPEN past its end reads HALF_OPEN).
    pub fn state_at(&self, now_ms: u64) -> State {
        if self.state == State::Open && now_ms >= self.open_until_ms {
            State::HalfOpen
        } else {
            self.state
        }
    }

    fn enter(&mut self, state: State, now_ms: u64, spec: &Spec) {
        self.state = state;
        self.generation = self.generation.wrapping_add(1);
        self.consecutive_failures = 0;
        self.probes_admitted = 0;
        self.probes_succeeded = 0;
        match state {
            State::Open => {
                self.open_until_ms = now_ms.saturating_add(spec.open_duration_ms(self.reopens));
            }
            State::Closed => {
                self.reopens = 0;
                self.calls = Calls::new(spec.window);
            }
            State::HalfOpen => {}
        }
    }

    /// Decides whether a request may go upstream. An admitted request must
    /// later be passed to [`Breaker::record`] or [`Breaker::release`] once.
    pub fn admit(&mut self, spec: &Spec, now_ms: u64) -> (Admission, Option<Transition>) {
        self.last_seen_ms = now_ms;
        let mut transition = None;
        if self.state == State::Open {
            if now_ms < self.open_until_ms {
                let retry_after_ms = self.open_until_ms - now_ms;
                return (
                    Admission::Rejected(Rejection::Open { retry_after_ms }),
                    None,
                );
            }
            self.enter(State::HalfOpen, now_ms, spec);
            transition = Some(Transition::HalfOpened);
        }
        if spec.max_concurrent.is_some_and(|max| self.in_flight >= max) {
            return (Admission::Rejected(Rejection::Bulkhead), transition);
        }
        let probe = self.state == State::HalfOpen;
        if probe {
            if self.probes_admitted >= spec.permitted_calls {
                return (Admission::Rejected(Rejection::HalfOpenFull), transition);
            }
            self.probes_admitted += 1;
        }
        self.in_flight = self.in_flight.saturating_add(1);
        let ticket = Ticket {
            generation: self.generation,
            probe,
        };
        (Admission::Admitted(ticket), transition)
    }

    /// Ends an admitted request without an outcome (e.g. the client went
    /// away): frees its bulkhead slot, and its probe permit in HALF_OPEN.
    pub fn release(&mut self, ticket: Ticket, now_ms: u64) {
        self.last_seen_ms = now_ms;
        self.in_flight = self.in_flight.saturating_sub(1);
        if ticket.probe && ticket.generation == self.generation && self.state == State::HalfOpen {
            self.probes_admitted = self.probes_admitted.saturating_sub(1);
        }
    }

    /// Ends an admitted request with its outcome. Outcomes of calls admitted
    /// before the last state change only free their slot.
    pub fn record(
        &mut self,
        spec: &Spec,
        ticket: Ticket,
        outcome: Outcome,
        now_ms: u64,
    ) -> Option<Transition> {
        self.last_seen_ms = now_ms;
        self.in_flight = self.in_flight.saturating_sub(1);
        if ticket.generation != self.generation {
            return None;
        }
        let slow = spec.slow_call_rate_percent.is_some() && outcome.duration_ms > spec.slow_call_ms;
        match self.state {
            State::Open => None,
            State::HalfOpen => {
                if outcome.failure || slow {
                    self.reopens = self.reopens.saturating_add(1);
                    self.enter(State::Open, now_ms, spec);
                    return Some(Transition::Tripped);
                }
                self.probes_succeeded += 1;
                if self.probes_succeeded >= spec.permitted_calls {
                    self.enter(State::Closed, now_ms, spec);
                    return Some(Transition::Closed);
                }
                None
            }
            State::Closed => {
                self.calls.push(spec.window, outcome.failure, slow, now_ms);
                self.consecutive_failures = if outcome.failure {
                    self.consecutive_failures.saturating_add(1)
                } else {
                    0
                };
                if self.should_trip(spec, now_ms) {
                    self.enter(State::Open, now_ms, spec);
                    return Some(Transition::Tripped);
                }
                None
            }
        }
    }

    fn should_trip(&self, spec: &Spec, now_ms: u64) -> bool {
        if spec
            .consecutive_failures
            .is_some_and(|limit| self.consecutive_failures >= limit)
        {
            return true;
        }
        let tally = self.calls.tally(spec.window, now_ms);
        if tally.calls < spec.minimum_calls || tally.calls == 0 {
            return false;
        }
        let reaches = |count: u32, percent: Option<u8>| {
            percent.is_some_and(|p| u64::from(count) * 100 >= u64::from(p) * u64::from(tally.calls))
        };
        reaches(tally.failures, spec.failure_rate_percent)
            || reaches(tally.slow, spec.slow_call_rate_percent)
    }

    /// Compact binary form for shared data (version byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.push(ENCODING_VERSION);
        out.push(self.state.code());
        for value in [
            self.generation,
            self.reopens,
            self.consecutive_failures,
            self.probes_admitted,
            self.probes_succeeded,
            self.in_flight,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.open_until_ms.to_le_bytes());
        out.extend_from_slice(&self.last_seen_ms.to_le_bytes());
        match &self.calls {
            Calls::Count { ring, next } => {
                out.push(0);
                out.extend_from_slice(&next.to_le_bytes());
                out.extend_from_slice(ring);
            }
            Calls::Time { buckets } => {
                out.push(1);
                for bucket in buckets {
                    out.extend_from_slice(&bucket.epoch.to_le_bytes());
                    out.extend_from_slice(&bucket.calls.to_le_bytes());
                    out.extend_from_slice(&bucket.failures.to_le_bytes());
                    out.extend_from_slice(&bucket.slow.to_le_bytes());
                }
            }
        }
        out
    }

    /// Reads [`Breaker::encode`] output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        if reader.u8()? != ENCODING_VERSION {
            return None;
        }
        let state = State::from_code(reader.u8()?)?;
        let generation = reader.u32()?;
        let reopens = reader.u32()?;
        let consecutive_failures = reader.u32()?;
        let probes_admitted = reader.u32()?;
        let probes_succeeded = reader.u32()?;
        let in_flight = reader.u32()?;
        let open_until_ms = reader.u64()?;
        let last_seen_ms = reader.u64()?;
        let calls = match reader.u8()? {
            0 => {
                let next = reader.u32()?;
                Calls::Count {
                    ring: reader.0.to_vec(),
                    next,
                }
            }
            1 => {
                let mut buckets = Vec::new();
                while !reader.0.is_empty() {
                    buckets.push(Bucket {
                        epoch: reader.u64()?,
                        calls: reader.u32()?,
                        failures: reader.u32()?,
                        slow: reader.u32()?,
                    });
                }
                Calls::Time { buckets }
            }
            _ => return None,
        };
        Some(Self {
            state,
            generation,
            open_until_ms,
            reopens,
            consecutive_failures,
            probes_admitted,
            probes_succeeded,
            in_flight,
            last_seen_ms,
            calls,
        })
    }
}

const ENCODING_VERSION: u8 = 1;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            consecutive_failures: Some(3),
            failure_rate_percent: None,
            slow_call_rate_percent: None,
            slow_call_ms: 1000,
            minimum_calls: 4,
            window: WindowSpec::Count { size: 10 },
            open_ms: 1000,
            backoff_multiplier: 2.0,
            max_open_ms: 5000,
            permitted_calls: 2,
            max_concurrent: None,
        }
    }

    const OK: Outcome = Outcome {
        failure: false,
        duration_ms: 10,
    };
    const FAIL: Outcome = Outcome {
        failure: true,
        duration_ms: 10,
    };
    const SLOW_OK: Outcome = Outcome {
        failure: false,
        duration_ms: 5000,
    };

    fn ticket(breaker: &mut Breaker, spec: &Spec, now: u64) -> Ticket {
        match breaker.admit(spec, now).0 {
            Admission::Admitted(ticket) => ticket,
            Admission::Rejected(why) => panic!("rejected at {now}: {why:?}"),
        }
    }

    /// Runs one call start to finish; returns the transition it caused.
    fn call(breaker: &mut Breaker, spec: &Spec, outcome: Outcome, now: u64) -> Option<Transition> {
        let ticket = ticket(breaker, spec, now);
        breaker.record(spec, ticket, outcome, now)
    }

    fn trip(breaker: &mut Breaker, spec: &Spec, now: u64) {
        for _ in 0..spec.consecutive_failures.unwrap() {
            call(breaker, spec, FAIL, now);
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn consecutive_failures_trip_and_a_success_resets_the_run() {
        let spec = spec();
        let mut breaker = Breaker::new(&spec, 0);
        assert_eq!(call(&mut breaker, &spec, FAIL, 1), None);
        assert_eq!(call(&mut breaker, &spec, FAIL, 2), None);
        assert_eq!(call(&mut breaker, &spec, OK, 3), None);
        assert_eq!(call(&mut breaker, &spec, FAIL, 4), None);
        assert_eq!(call(&mut breaker, &spec, FAIL, 5), None);
        assert_eq!(
            call(&mut breaker, &spec, FAIL, 6),
            Some(Transition::Tripped)
        );
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn open_rejects_with_time_until_probe_then_half_opens() {
        let spec = spec();
        let mut breaker = Breaker::new(&spec, 0);
        trip(&mut breaker, &spec, 100);
        assert_eq!(
            breaker.admit(&spec, 400).0,
            Admission::Rejected(Rejection::Open {
                retry_after_ms: 700
            })
        );
        assert_eq!(breaker.state_at(1099), State::Open);
        assert_eq!(breaker.state_at(1100), State::HalfOpen);
        let (admission, transition) = breaker.admit(&spec, 1100);
        assert_eq!(transition, Some(Transition::HalfOpened));
        assert!(matches!(
            admission,
            Admission::Admitted(Ticket { probe: true, .. })
        ));
        assert_eq!(breaker.state(), State::HalfOpen);
    }

    #[test]
    fn half_open_admits_only_permitted_probes_and_closes_when_all_succeed() {
        let spec = spec();
        let mut breaker = Breaker::new(&spec, 0);
        trip(&mut breaker, &spec, 0);
        let first = ticket(&mut breaker, &spec, 1000);
        let second = ticket(&mut breaker, &spec, 1000);
        assert_eq!(
            breaker.admit(&spec, 1001).0,
            Admission::Rejected(Rejection::HalfOpenFull)
        );
        assert_eq!(breaker.record(&spec, first, OK, 1002), None);
        // A completed probe keeps its permit: still only two per half-open period.
        assert_eq!(
            breaker.admit(&spec, 1003).0,
            Admission::Rejected(Rejection::HalfOpenFull)
        );
        assert_eq!(
            breaker.record(&spec, second, OK, 1004),
            Some(Transition::Closed)
        );
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.in_flight(), 0);
        // The window starts empty after closing.
        assert_eq!(call(&mut breaker, &spec, FAIL, 1005), None);
    }

    #[test]
    fn failed_probe_reopens_with_backoff_growing_to_the_cap() {
        let spec = spec();
        let mut breaker = Breaker::new(&spec, 0);
        trip(&mut breaker, &spec, 0);
        let mut now = 0;
        let mut open_times = Vec::new();
        for _ in 0..5 {
            let Admission::Rejected(Rejection::Open { retry_after_ms }) =
                breaker.admit(&spec, now).0
            else {
                panic!("not open");
            };
            open_times.push(retry_after_ms);
            now += retry_after_ms;
            assert_eq!(
                call(&mut breaker, &spec, FAIL, now),
                Some(Transition::Tripped)
            );
        }
        assert_eq!(open_times, vec![1000, 2000, 4000, 5000, 5000]);
        // Closing resets the backoff.
        now += 5000;
        call(&mut breaker, &spec, OK, now);
        call(&mut breaker, &spec, OK, now);
        assert_eq!(breaker.state(), State::Closed);
        trip(&mut breaker, &spec, now);
        assert_eq!(
            breaker.admit(&spec, now).0,
            Admission::Rejected(Rejection::Open {
                retry_after_ms: 1000
            })
        );
    }

    #[test]
    fn backoff_multiplier_one_keeps_open_time_constant() {
        let spec = Spec {
            backoff_multiplier: 1.0,
            ..spec()
        };
        assert_eq!(spec.open_duration_ms(0), 1000);
        assert_eq!(spec.open_duration_ms(50), 1000);
        assert_eq!(self::spec().open_duration_ms(u32::MAX), 5000);
    }

    #[test]
    fn count_window_failure_rate_needs_minimum_calls() {
        let spec = Spec {
            consecutive_failures: None,
            failure_rate_percent: Some(50),
            minimum_calls: 4,
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        // F, OK, F: 66 % but only 3 calls.
        call(&mut breaker, &spec, FAIL, 1);
        call(&mut breaker, &spec, OK, 2);
        assert_eq!(call(&mut breaker, &spec, FAIL, 3), None);
        // Fourth call OK: 2 of 4 = 50 % → trips.
        assert_eq!(call(&mut breaker, &spec, OK, 4), Some(Transition::Tripped));
    }

    #[test]
    fn count_window_forgets_calls_beyond_its_size() {
        let spec = Spec {
            consecutive_failures: None,
            failure_rate_percent: Some(50),
            minimum_calls: 4,
            window: WindowSpec::Count { size: 4 },
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        // F F OK OK OK: once the ring is full the rate is 1/4, later 0/4.
        call(&mut breaker, &spec, FAIL, 1);
        call(&mut breaker, &spec, OK, 2);
        call(&mut breaker, &spec, OK, 3);
        call(&mut breaker, &spec, OK, 4); // 1 of 4
        call(&mut breaker, &spec, OK, 5); // F dropped: 0 of 4
        call(&mut breaker, &spec, FAIL, 6); // 1 of 4
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(
            call(&mut breaker, &spec, FAIL, 7),
            Some(Transition::Tripped)
        ); // 2 of 4
    }

    #[test]
    fn time_window_drops_old_buckets() {
        let spec = Spec {
            consecutive_failures: None,
            failure_rate_percent: Some(50),
            minimum_calls: 4,
            window: WindowSpec::Time {
                bucket_ms: 1000,
                buckets: 3,
            },
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        // Three failures at t=0.5s, then successes from t=3s: the failures
        // have left the 3-second window by then.
        for _ in 0..3 {
            call(&mut breaker, &spec, FAIL, 500);
        }
        for now in [3000, 3100, 3200, 3300] {
            assert_eq!(call(&mut breaker, &spec, OK, now), None);
        }
        assert_eq!(call(&mut breaker, &spec, FAIL, 3400), None); // 1 of 5
                                                                 // Within the window failures accumulate: 3 of 6.
        call(&mut breaker, &spec, FAIL, 4500); // 2 of 6
                                               // At 5.99s the window is buckets 3..=5: 4 OK and now 3, then 4 failures.
        assert_eq!(call(&mut breaker, &spec, FAIL, 5998), None);
        assert_eq!(
            call(&mut breaker, &spec, FAIL, 5999),
            Some(Transition::Tripped)
        );
    }

    #[test]
    fn time_window_counts_across_buckets() {
        let spec = Spec {
            consecutive_failures: None,
            failure_rate_percent: Some(50),
            minimum_calls: 4,
            window: WindowSpec::Time {
                bucket_ms: 1000,
                buckets: 3,
            },
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        call(&mut breaker, &spec, FAIL, 100);
        call(&mut breaker, &spec, OK, 1100);
        call(&mut breaker, &spec, OK, 2100);
        assert_eq!(
            call(&mut breaker, &spec, FAIL, 2900),
            Some(Transition::Tripped)
        );
    }

    #[test]
    fn slow_calls_trip_the_slow_call_rule() {
        let spec = Spec {
            consecutive_failures: None,
            failure_rate_percent: Some(50),
            slow_call_rate_percent: Some(75),
            minimum_calls: 4,
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        call(&mut breaker, &spec, SLOW_OK, 1);
        call(&mut breaker, &spec, SLOW_OK, 2);
        call(&mut breaker, &spec, OK, 3);
        assert_eq!(
            call(&mut breaker, &spec, SLOW_OK, 4),
            Some(Transition::Tripped)
        );
    }

    #[test]
    fn slow_calls_are_ignored_without_the_slow_rule() {
        let spec = Spec {
            consecutive_failures: Some(2),
            failure_rate_percent: Some(50),
            minimum_calls: 2,
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        for now in 0..10 {
            assert_eq!(call(&mut breaker, &spec, SLOW_OK, now), None);
        }
    }

    #[test]
    fn slow_probe_reopens() {
        let spec = Spec {
            slow_call_rate_percent: Some(50),
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        trip(&mut breaker, &spec, 0);
        assert_eq!(
            call(&mut breaker, &spec, SLOW_OK, 1000),
            Some(Transition::Tripped)
        );
    }

    #[test]
    fn bulkhead_caps_in_flight_and_frees_slots_on_record_or_release() {
        let spec = Spec {
            max_concurrent: Some(2),
            ..spec()
        };
        let mut breaker = Breaker::new(&spec, 0);
        let first = ticket(&mut breaker, &spec, 0);
        let second = ticket(&mut breaker, &spec, 0);
        assert_eq!(
            breaker.admit(&spec, 0).0,
            Admission::Rejected(Rejection::Bulkhead)
        );
        breaker.record(&spec, first, OK, 1);
        let third = ticket(&mut breaker, &spec, 2);
        breaker.release(second, 3);
        breaker.release(third, 3);
        assert_eq!(breaker.in_flight(), 0);
    }

    #[test]
    fn released_probe_returns_its_permit() {
        let spec = spec();
        let mut breaker = Breaker::new(&spec, 0);
        trip(&mut breaker, &spec, 0);
        let first = ticket(&mut breaker, &spec, 1000);
        let _second = ticket(&mut breaker, &spec, 1000);
        breaker.release(first, 1001);
        assert!(matches!(
            breaker.admit(&spec, 1002).0,
            Admission::Admitted(Ticket { probe: true, .. })
        ));
    }

    #[test]
    fn late_outcomes_from_before_a_state_change_only_free_their_slot() {
        let spec = spec();
        let mut breaker = Breaker::new(&spec, 0);
        let early = ticket(&mut breaker, &spec, 0);
        trip(&mut breaker, &spec, 0);
        assert_eq!(breaker.in_flight(), 1);
        // Success of a call admitted while CLOSED must not count as a probe.
        assert_eq!(breaker.record(&spec, early, OK, 2000), None);
        assert_eq!(breaker.in_flight(), 0);
        assert_eq!(breaker.state_at(2000), State::HalfOpen);
        let (_, transition) = breaker.admit(&spec, 2000);
        assert_eq!(transition, Some(Transition::HalfOpened));
    }

    #[test]
    fn in_flight_never_underflows() {
        let spec = spec();
        let mut breaker = Breaker::new(&spec, 0);
        breaker.release(
            Ticket {
                generation: 0,
                probe: false,
            },
            1,
        );
        assert_eq!(breaker.in_flight(), 0);
    }

    #[test]
    fn encoding_round_trips_both_window_kinds() {
        let mut spec = spec();
        let mut breaker = Breaker::new(&spec, 7);
        call(&mut breaker, &spec, FAIL, 8);
        let _pending = ticket(&mut breaker, &spec, 9);
        assert_eq!(Breaker::decode(&breaker.encode()), Some(breaker.clone()));

        spec.window = WindowSpec::Time {
            bucket_ms: 100,
            buckets: 5,
        };
        let mut breaker = Breaker::new(&spec, 0);
        call(&mut breaker, &spec, FAIL, 50);
        call(&mut breaker, &spec, SLOW_OK, 250);
        trip(&mut breaker, &spec, 300);
        let bytes = breaker.encode();
        assert!(bytes.len() < 128, "{} bytes", bytes.len());
        assert_eq!(Breaker::decode(&bytes), Some(breaker));
    }

    #[test]
    fn garbage_does_not_decode() {
        assert_eq!(Breaker::decode(b""), None);
        assert_eq!(Breaker::decode(b"\x01\x09"), None);
        assert_eq!(Breaker::decode(&[9; 64]), None);
        let mut bytes = Breaker::new(&spec(), 0).encode();
        bytes.truncate(20);
        assert_eq!(Breaker::decode(&bytes), None);
    }
}
