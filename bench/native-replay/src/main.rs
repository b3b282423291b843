//! `make bench-replay`: the combined module's real code (filters/suite),
//! natively, against a fake proxy-wasm host ([`host`]), replaying
//! bench/run.py's request many times under valgrind's callgrind, where every
//! function has its name: where the filters' own instructions go.
//!
//! `native-replay [--variants a,b] [--requests N] [--warmup N] [--log-level L] [--out DIR]`
//! runs two callgrind passes per variant over `native-replay run <variant>`
//! and writes `DIR/<UTC stamp>/native-replay.md` ([`report`]).
//! `native-replay run <variant>` is one checked replay, what valgrind runs.

mod host;
mod replay;
mod report;

use anyhow::{bail, ensure, Context as _};
use replay::{Outcome, Replay};
use std::path::PathBuf;

struct Options {
    variants: Vec<String>,
    requests: u32,
    warmup: u32,
    /// Envoy's log level (`info` makes telemetry write its access-log line).
    log_level: String,
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("run") {
        args.next();
        let variant = args
            .next()
            .context("usage: native-replay run <variant> [options]")?;
        let options = parse_options(args)?;
        return run(&variant, &options);
    }
    let options = parse_options(args)?;
    report::measure_all(
        &options.variants,
        options.warmup,
        options.requests,
        &options.log_level,
        &options.out,
    )
}

fn parse_options(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut options = Options {
        variants: replay::VARIANTS.iter().map(|v| (*v).to_owned()).collect(),
        requests: 1000,
        warmup: 50,
        log_level: "warning".into(),
        out: replay::repo_root().join("bench-results"),
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--variants" => options.variants = value.split(',').map(str::to_owned).collect(),
            "--requests" => options.requests = value.parse()?,
            "--warmup" => options.warmup = value.parse()?,
            "--log-level" => options.log_level = value,
            "--out" => options.out = value.into(),
            other => bail!("unknown option {other}"),
        }
    }
    ensure!(options.requests > 0, "--requests must be at least 1");
    ensure!(
        host::log_level_from_name(&options.log_level).is_some(),
        "--log-level: one of trace, debug, info, warning, error, critical"
    );
    Ok(options)
}

/// One checked replay of `variant`: the answers as bench/run.py checks them,
/// `warmup` requests, then `requests` in [`counted_requests`], each checked.
fn run(variant: &str, options: &Options) -> anyhow::Result<()> {
    let (warmup, requests) = (options.warmup, options.requests);
    let log_level = host::log_level_from_name(&options.log_level).unwrap_or(3);
    let repo = replay::repo_root();
    let plugins = replay::variant_plugins(&repo, variant)?;
    // The staged chain's stages are the whole chain, authz first.
    let has_authz = plugins
        .iter()
        .any(|p| p.root_id == "authz" || p.root_id == "stages");
    let token = replay::demo_token()?;
    let mut replay = Replay::start(plugins, log_level)?;

    let with_token = replay::request_headers(Some(&token));
    let first = replay.request(with_token.clone());
    ensure!(
        first.passed(),
        "{variant}: the request with the token did not pass: {first:?}"
    );
    if has_authz {
        let refused = replay.request(replay::request_headers(None));
        ensure!(
            refused.local_response == Some(401),
            "{variant}: the request without a token was not refused with a 401: {refused:?}"
        );
    }
    let failed_warmup = replay_requests(&mut replay, &with_token, warmup);
    let failed = counted_requests(&mut replay, &with_token, requests);
    ensure!(
        failed_warmup == 0 && failed == 0,
        "{variant}: {failed_warmup} warm-up and {failed} counted requests did not pass every filter"
    );
    let (unexpected, kept_log_lines) = host::with(|h| (h.unexpected.clone(), h.kept_log_lines));
    ensure!(
        unexpected.is_empty(),
        "{variant}: unexpected host calls: {unexpected:?}"
    );
    eprintln!(
        "{variant}: {} requests passed every filter{}; {kept_log_lines} log lines kept at Envoy's level {}",
        1 + warmup + requests,
        if has_authz {
            ", one without a token refused with 401"
        } else {
            ""
        },
        options.log_level
    );
    Ok(())
}

/// The counted requests: callgrind counts inside this function only
/// (`report::COUNTED_FUNCTION`). Returns how many did not pass.
#[inline(never)]
fn counted_requests(replay: &mut Replay, headers: &host::HeaderMap, count: u32) -> u32 {
    // Work after the loop: no tail call, which callgrind would take for
    // leaving this function at the loop's start. It also keeps LLVM from
    // merging this function with the warm-up into one symbol.
    std::hint::black_box(replay_requests(replay, headers, count))
}

fn replay_requests(replay: &mut Replay, headers: &host::HeaderMap, count: u32) -> u32 {
    (0..count)
        .map(|_| replay.request(headers.clone()))
        .filter(|outcome: &Outcome| !outcome.passed())
        .fold(0, |failed, _| failed + 1)
}
