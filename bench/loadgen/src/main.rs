//! `loadgen`: an open-loop HTTP/1.1 load generator for `make bench` phase 2.
//!
//! Request `n` is due at `start + n / rate`, whatever the answers' pace. `C`
//! threads each own one keep-alive connection and send every `C`-th request
//! (no pipelining): a connection still waiting for an answer when its next
//! request is due sends that request as soon as the answer is in, and the
//! latency always counts from the due time, so a stall counts against every
//! request it delays (no coordinated omission, as wrk2 and `oha
//! --latency-correction`). Prints one JSON object on stdout.

mod http;
mod mix;
mod stats;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{parse_response, RequestTemplate};
use mix::RequestMix;
use stats::{connection_slots, scheduled_offset, summarise, Summary};

const USAGE: &str =
    "usage: loadgen --port PORT --rate REQ_PER_S [--host 127.0.0.1] [--connections 16]
               [--duration 4] [--timeout 5] [--method GET] [--path /] [-H 'Name: value']...
               [--token TOKEN | --tokens-file FILE] [--requests-file FILE [--first N]]

  -H: sent as given, in order (HTTP/1.1 needs `Host`; a bodyless POST needs `Content-Length: 0`).
  --tokens-file: one token per line; request n carries `Authorization: Bearer <line n mod count>`.
  --requests-file: a mix instead of --method/--path/-H (see bench/loadgen/src/mix.rs): request n is
  line n mod count, `kind<TAB>METHOD<TAB>path<TAB>Name: value...` with {n}, {n%M}, {n/D%M}, {token}
  and \\xNN filled in; n counts from --first (default 0). Answers are also counted per kind.
  Output: JSON with requests scheduled/sent/completed, achieved rate, errors, non-2xx and
  latency percentiles in µs, measured from each request's scheduled send time.";

struct Config {
    address: SocketAddr,
    rate: f64,
    connections: u64,
    duration: Duration,
    timeout: Duration,
    request: RequestTemplate,
    tokens: Vec<String>,
    mix: Option<RequestMix>,
    first: u64,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut host = "127.0.0.1".to_string();
    let mut port = None;
    let mut rate = None;
    let mut connections = 16u64;
    let mut duration = 4.0f64;
    let mut timeout = 5.0f64;
    let mut method = "GET".to_string();
    let mut path = "/".to_string();
    let mut headers = Vec::new();
    let mut tokens = Vec::new();
    let mut mix = None;
    let mut first = 0u64;
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<f64>()
                .map_err(|_| format!("{what}: not a number: {value:?}"))
        };
        match flag.as_str() {
            "--host" => host = value.clone(),
            "--port" => {
                port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| format!("--port: bad port {value:?}"))?,
                )
            }
            "--rate" => rate = Some(number("--rate")?),
            "--connections" => {
                connections = value
                    .parse()
                    .map_err(|_| format!("--connections: bad count {value:?}"))?
            }
            "--duration" => duration = number("--duration")?,
            "--timeout" => timeout = number("--timeout")?,
            "--method" => method = value.clone(),
            "--path" => path = value.clone(),
            "-H" | "--header" => {
                let (name, header_value) = value
                    .split_once(':')
                    .ok_or_else(|| format!("-H: expected `Name: value`, got {value:?}"))?;
                headers.push((name.trim().to_string(), header_value.trim().to_string()));
            }
            "--token" => tokens = vec![value.clone()],
            "--tokens-file" => {
                let text = std::fs::read_to_string(value)
                    .map_err(|err| format!("--tokens-file {value}: {err}"))?;
                tokens = text
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(String::from)
                    .collect();
                if tokens.is_empty() {
                    return Err(format!("--tokens-file {value}: no tokens"));
                }
            }
            "--requests-file" => {
                let text = std::fs::read_to_string(value)
                    .map_err(|err| format!("--requests-file {value}: {err}"))?;
                mix = Some(
                    RequestMix::parse(&text)
                        .map_err(|err| format!("--requests-file {value}: {err}"))?,
                );
            }
            "--first" => {
                first = value
                    .parse()
                    .map_err(|_| format!("--first: bad request number {value:?}"))?
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    let port = port.ok_or("--port is required")?;
    let rate = rate.ok_or("--rate is required")?;
    let positive = |x: f64| x > 0.0 && x.is_finite();
    if !(positive(rate) && positive(duration) && positive(timeout) && connections > 0) {
        return Err("--rate, --connections, --duration and --timeout must be positive".into());
    }
    if mix.as_ref().is_some_and(RequestMix::uses_tokens) && tokens.is_empty() {
        return Err("--requests-file uses {token}: give --tokens-file".into());
    }
    let address = format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("bad address {host}:{port}"))?;
    Ok(Config {
        address,
        rate,
        connections,
        duration: Duration::from_secs_f64(duration),
        timeout: Duration::from_secs_f64(timeout),
        request: RequestTemplate::new(&method, &path, &headers),
        tokens,
        mix,
        first,
    })
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    scheduled: u64,
    sent: u64,
    /// Due before the deadline but not sent by then (the connection was
    /// behind): not measured.
    unsent: u64,
    completed: u64,
    errors: u64,
    non_2xx: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    /// With a mix: answers per (kind, status), transport errors per kind.
    kind_statuses: std::collections::BTreeMap<(usize, u16), u64>,
    kind_errors: std::collections::BTreeMap<usize, u64>,
    latencies_ns: Vec<u64>,
    send_lags_ns: Vec<u64>,
    last_completion: Option<Instant>,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, kind: Option<usize>, message: String) {
        self.errors += 1;
        if let Some(kind) = kind {
            *self.kind_errors.entry(kind).or_default() += 1;
        }
        self.first_error.get_or_insert(message);
    }
}

fn connect(config: &Config) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&config.address, config.timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.timeout))?;
    stream.set_write_timeout(Some(config.timeout))?;
    Ok(stream)
}

/// Reads until one response is complete; returns its status and whether the
/// server closes the connection after it. `buf` keeps any bytes past it.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match parse_response(buf) {
            Ok(Some(response)) => {
                buf.drain(..response.length);
                return Ok((response.status, response.close));
            }
            Ok(None) => {}
            Err(err) => return Err(format!("bad response: {err}")),
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed before a complete response".into()),
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
            Err(err) => return Err(format!("read: {err}")),
        }
    }
}

fn run_connection(index: u64, config: &Config, start: Instant) -> Tally {
    let deadline = start + config.duration;
    let mut tally = Tally::default();
    let mut stream: Option<TcpStream> = None;
    let mut request = Vec::with_capacity(4096);
    let mut buf = Vec::with_capacity(16 * 1024);
    for n in connection_slots(index, config.connections) {
        let due = start + scheduled_offset(n, config.rate);
        if due >= deadline {
            break;
        }
        tally.scheduled += 1;
        let now = Instant::now();
        if now >= deadline {
            tally.unsent += 1;
            continue;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let kind = match &config.mix {
            Some(mix) => Some(mix.write(config.first + n, &config.tokens, &mut request)),
            None => {
                let token = (!config.tokens.is_empty())
                    .then(|| config.tokens[(n % config.tokens.len() as u64) as usize].as_str());
                config.request.write(token, &mut request);
                None
            }
        };
        let connection = match stream.as_mut() {
            Some(connection) => connection,
            None => match connect(config) {
                Ok(connection) => {
                    buf.clear();
                    stream.insert(connection)
                }
                Err(err) => {
                    tally.error(kind, format!("connect: {err}"));
                    continue;
                }
            },
        };
        let sent_at = Instant::now();
        if let Err(err) = connection.write_all(&request) {
            tally.error(kind, format!("write: {err}"));
            stream = None;
            continue;
        }
        tally.sent += 1;
        tally
            .send_lags_ns
            .push(nanos(sent_at.saturating_duration_since(due)));
        match read_response(connection, &mut buf) {
            Ok((status, close)) => {
                let done = Instant::now();
                tally.completed += 1;
                tally
                    .latencies_ns
                    .push(nanos(done.saturating_duration_since(due)));
                tally.last_completion = Some(done);
                *tally.statuses.entry(status).or_default() += 1;
                if let Some(kind) = kind {
                    *tally.kind_statuses.entry((kind, status)).or_default() += 1;
                }
                if !(200..300).contains(&status) {
                    tally.non_2xx += 1;
                }
                if close {
                    stream = None;
                }
            }
            Err(err) => {
                tally.error(kind, err);
                stream = None;
            }
        }
    }
    tally
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Timer slack of 1 ns instead of Linux's default 50 µs, so a sleeping
/// connection wakes close to its request's due time (threads inherit it).
fn tighten_timer_slack() {
    extern "C" {
        fn prctl(option: i32, ...) -> i32;
    }
    const PR_SET_TIMERSLACK: i32 = 29;
    // SAFETY: prctl(PR_SET_TIMERSLACK, n) only changes this thread's timer
    // slack; a failure leaves the default in place.
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1u64);
    }
}

fn json_summary(summary: Option<Summary>) -> String {
    match summary {
        None => "null".into(),
        Some(s) => format!(
            r#"{{"p50": {:.1}, "p90": {:.1}, "p99": {:.1}, "p999": {:.1}, "max": {:.1}, "mean": {:.1}}}"#,
            s.p50, s.p90, s.p99, s.p999, s.max, s.mean
        ),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"kind": {"statuses": {"200": n, ...}, "errors": n}, ...}`, or `null` without a mix.
fn json_kinds(config: &Config, total: &Tally) -> String {
    let Some(mix) = &config.mix else {
        return "null".into();
    };
    let kinds: Vec<String> = mix
        .kinds
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let statuses: Vec<String> = total
                .kind_statuses
                .iter()
                .filter(|((kind, _), _)| *kind == index)
                .map(|((_, status), count)| format!("\"{status}\": {count}"))
                .collect();
            format!(
                "{}: {{\"statuses\": {{{}}}, \"errors\": {}}}",
                json_string(name),
                statuses.join(", "),
                total.kind_errors.get(&index).copied().unwrap_or(0)
            )
        })
        .collect();
    format!("{{{}}}", kinds.join(", "))
}

fn report(config: &Config, start: Instant, tallies: Vec<Tally>) -> (String, u64) {
    let mut total = Tally::default();
    for tally in tallies {
        total.scheduled += tally.scheduled;
        total.sent += tally.sent;
        total.unsent += tally.unsent;
        total.completed += tally.completed;
        total.errors += tally.errors;
        total.non_2xx += tally.non_2xx;
        for (status, count) in tally.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
        for (key, count) in tally.kind_statuses {
            *total.kind_statuses.entry(key).or_default() += count;
        }
        for (kind, count) in tally.kind_errors {
            *total.kind_errors.entry(kind).or_default() += count;
        }
        total.latencies_ns.extend(tally.latencies_ns);
        total.send_lags_ns.extend(tally.send_lags_ns);
        total.last_completion = total.last_completion.max(tally.last_completion);
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
    }
    let elapsed = total
        .last_completion
        .map_or(config.duration, |last| last.duration_since(start))
        .max(config.duration);
    let statuses: Vec<String> = total
        .statuses
        .iter()
        .map(|(status, count)| format!("\"{status}\": {count}"))
        .collect();
    let json = format!(
        concat!(
            "{{\"rate\": {}, \"connections\": {}, \"duration_s\": {:.3}, \"elapsed_s\": {:.3}, ",
            "\"scheduled\": {}, \"sent\": {}, \"unsent\": {}, \"completed\": {}, \"achieved_rps\": {:.1}, ",
            "\"errors\": {}, \"non_2xx\": {}, \"statuses\": {{{}}}, \"latency_us\": {}, \"send_lag_us\": {}, ",
            "\"first_error\": {}, \"kinds\": {}}}"
        ),
        config.rate,
        config.connections,
        config.duration.as_secs_f64(),
        elapsed.as_secs_f64(),
        total.scheduled,
        total.sent,
        total.unsent,
        total.completed,
        total.completed as f64 / elapsed.as_secs_f64(),
        total.errors,
        total.non_2xx,
        statuses.join(", "),
        json_summary(summarise(&mut total.latencies_ns)),
        json_summary(summarise(&mut total.send_lags_ns)),
        total.first_error.as_deref().map_or("null".into(), json_string),
        json_kinds(config, &total),
    );
    (json, total.completed)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse_args(&args) {
        Ok(config) => Arc::new(config),
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    tighten_timer_slack();
    // Threads start first; the schedule begins once they all exist.
    let start = Instant::now() + Duration::from_millis(20);
    let workers: Vec<_> = (0..config.connections)
        .map(|index| {
            let config = Arc::clone(&config);
            std::thread::spawn(move || run_connection(index, &config, start))
        })
        .collect();
    let tallies: Vec<Tally> = workers
        .into_iter()
        .filter_map(|worker| worker.join().ok())
        .collect();
    let (json, completed) = report(&config, start, tallies);
    println!("{json}");
    if completed == 0 {
        eprintln!("loadgen: no request completed");
        std::process::exit(1);
    }
}
