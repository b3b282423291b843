//! The callgrind passes over `native-replay run <variant>` and what they say.
//!
//! Two passes per variant, both counting the counted requests only:
//! - *whole*: everything inside `counted_requests` (driver, module, host);
//! - *module*: counting turned on inside the per-request entry points
//!   (`proxy_on_*`), off again inside every host function, and on again
//!   inside `proxy_on_memory_allocate` when the host calls it: Envoy
//!   allocates the buffers it hands over through the module's allocator, so
//!   that is module code, reported on its own line. Everything this pass
//!   counts is module code (the SDK's dispatcher included).
//!
//! The fake host's share is the entry points' inclusive cost in the whole
//! pass minus the module pass. Callgrind's toggles flip on entry and flip
//! back on exit, so nesting (entry → host → allocator) works.

use crate::host::HOST_FUNCTIONS;
use crate::replay::REQUEST_ENTRY_POINTS;
use anyhow::{bail, Context as _};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The counted loop (main.rs) as callgrind names it. Exact: callgrind 3.19
/// honours only one of `--dump-before`/`--dump-after` for a wildcard pattern.
pub const COUNTED_FUNCTION: &str = "native_replay::counted_requests";
const MEMORY_ALLOCATE: &str = "proxy_on_memory_allocate";
const TOP_FUNCTIONS: usize = 15;

pub fn measure_all(
    variants: &[String],
    warmup: u32,
    requests: u32,
    log_level: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let version = Command::new("valgrind")
        .arg("--version")
        .output()
        .context("valgrind is not installed (make bench-replay installs it)")?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let stamp = utc_stamp()?;
    let dir = out.join(&stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe()?;

    let mut costs = Vec::new();
    for variant in variants {
        eprintln!("== {variant}: callgrind, whole pass");
        let run = Run {
            exe: &exe,
            variant,
            warmup,
            requests,
            log_level,
            dir: &dir,
        };
        let (whole, checks) = callgrind(&run, Pass::Whole)?;
        eprintln!("== {variant}: callgrind, module pass");
        let (module, _) = callgrind(&run, Pass::Module)?;
        costs.push(VariantCost::new(variant, &whole, &module, requests, checks));
    }
    let markdown = markdown(&costs, &stamp, &version, warmup, requests, log_level);
    let path = dir.join("native-replay.md");
    std::fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    println!("{markdown}");
    eprintln!("written to {} (callgrind files beside it)", path.display());
    Ok(())
}

fn utc_stamp() -> anyhow::Result<String> {
    let output = Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[derive(Clone, Copy)]
enum Pass {
    Whole,
    Module,
}

/// One `native-replay run` to count.
struct Run<'a> {
    exe: &'a Path,
    variant: &'a str,
    warmup: u32,
    requests: u32,
    log_level: &'a str,
    dir: &'a Path,
}

/// Runs one pass; the profile of the counted requests and the replay's own
/// check line.
fn callgrind(run: &Run, pass: Pass) -> anyhow::Result<(Profile, String)> {
    let variant = run.variant;
    let name = match pass {
        Pass::Whole => "whole",
        Pass::Module => "module",
    };
    let out_file = run.dir.join(format!("{variant}.{name}.callgrind"));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        // Dumps on entering and leaving the counted loop: the second holds
        // the counted requests alone (call counts too, which callgrind keeps
        // even where it does not count instructions).
        .arg(format!("--dump-before={COUNTED_FUNCTION}"))
        .arg(format!("--dump-after={COUNTED_FUNCTION}"));
    match pass {
        Pass::Whole => {
            command.arg("--collect-atstart=yes");
        }
        Pass::Module => {
            command.arg("--collect-atstart=no");
            for function in REQUEST_ENTRY_POINTS
                .iter()
                .chain(HOST_FUNCTIONS)
                .chain([&MEMORY_ALLOCATE])
            {
                command.arg(format!("--toggle-collect={function}"));
            }
        }
    }
    command.arg(run.exe).args([
        "run",
        variant,
        "--log-level",
        run.log_level,
        "--warmup",
        &run.warmup.to_string(),
        "--requests",
        &run.requests.to_string(),
    ]);
    let output = command.output().context("running valgrind")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The replay's lines, not valgrind's (`==pid==`).
    let replay_lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("==")).collect();
    if !output.status.success() {
        bail!(
            "{variant} ({name} pass) failed:\n{}",
            replay_lines.join("\n")
        );
    }
    let text = counted_dump(&out_file)?;
    let checks = replay_lines
        .last()
        .map(|l| (*l).to_owned())
        .unwrap_or_default();
    Ok((Profile::parse(&text), checks))
}

/// The dump callgrind wrote on leaving the counted loop: dumps go to
/// `<file>.1`, `<file>.2`, … and the one at exit to `<file>`.
fn counted_dump(out_file: &Path) -> anyhow::Result<String> {
    for part in 1..=3 {
        let path = PathBuf::from(format!("{}.{part}", out_file.display()));
        let Ok(text) = std::fs::read_to_string(&path) else {
            break;
        };
        let after_counted = |line: &str| {
            line.starts_with("desc: Trigger: --dump-after=") && line.ends_with(COUNTED_FUNCTION)
        };
        if text.lines().any(after_counted) {
            return Ok(text);
        }
    }
    bail!(
        "callgrind wrote no dump on leaving the counted requests ({}.*)",
        out_file.display()
    )
}

/// A callgrind profile (one event, `Ir`): each function's self cost and each
/// call edge's count and inclusive cost.
#[derive(Debug, Default)]
pub struct Profile {
    names: Vec<String>,
    self_cost: Vec<u64>,
    calls: HashMap<(usize, usize), (u64, u64)>,
}

impl Profile {
    /// Reads callgrind's output format (name compression `(id) name`,
    /// positions then one cost per line; a `calls=` line makes the next cost
    /// line a call's inclusive cost).
    pub fn parse(text: &str) -> Self {
        let mut profile = Self::default();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut current = None;
        let mut callee = None;
        let mut pending_call: Option<(usize, u64)> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("fn=") {
                current = Some(profile.function(&mut ids, name));
            } else if let Some(name) = line.strip_prefix("cfn=") {
                callee = Some(profile.function(&mut ids, name));
            } else if let Some(calls) = line.strip_prefix("calls=") {
                let count = calls
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                pending_call = callee.map(|c| (c, count));
            } else if line
                .starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*')
            {
                let cost: u64 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let Some(caller) = current else { continue };
                match pending_call.take() {
                    Some((to, count)) => {
                        let edge = profile.calls.entry((caller, to)).or_default();
                        edge.0 += count;
                        edge.1 += cost;
                    }
                    None => {
                        if let Some(total) = profile.self_cost.get_mut(caller) {
                            *total += cost;
                        }
                    }
                }
            }
        }
        profile
    }

    /// The index of a function named `(id) name`, `(id)` or plain `name`.
    fn function(&mut self, ids: &mut HashMap<String, usize>, spec: &str) -> usize {
        let (key, name) = match spec.strip_prefix('(').and_then(|rest| rest.split_once(')')) {
            Some((id, name)) => (format!("({id})"), name.trim()),
            None => (spec.to_owned(), spec),
        };
        if let Some(&index) = ids.get(&key) {
            return index;
        }
        let index = self.names.len();
        self.names.push(name.to_owned());
        self.self_cost.push(0);
        ids.insert(key, index);
        index
    }

    pub fn total(&self) -> u64 {
        self.self_cost.iter().sum()
    }

    fn inclusive(&self, function: usize) -> u64 {
        let calls: u64 = self
            .calls
            .iter()
            .filter(|((from, to), _)| *from == function && *to != function)
            .map(|(_, (_, cost))| cost)
            .sum();
        self.self_cost.get(function).copied().unwrap_or(0) + calls
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Inclusive cost and count of every call into `name` from another function.
    fn calls_into(&self, name: &str) -> (u64, u64) {
        let Some(target) = self.index_of(name) else {
            return (0, 0);
        };
        self.calls
            .iter()
            .filter(|((from, to), _)| *to == target && *from != target)
            .fold((0, 0), |(count, cost), (_, (c, i))| (count + c, cost + i))
    }

    /// Every function reachable from `roots` through calls, roots included.
    fn reachable_from(&self, roots: &[&str]) -> Vec<bool> {
        let mut reached = vec![false; self.names.len()];
        let mut stack: Vec<usize> = roots.iter().filter_map(|r| self.index_of(r)).collect();
        while let Some(function) = stack.pop() {
            match reached.get_mut(function) {
                Some(seen) if !*seen => *seen = true,
                _ => continue,
            }
            stack.extend(
                self.calls
                    .keys()
                    .filter(|(from, _)| *from == function)
                    .map(|(_, to)| *to),
            );
        }
        reached
    }

    /// The function whose calls to `function` cost the most.
    fn main_caller(&self, function: usize) -> Option<&str> {
        self.calls
            .iter()
            .filter(|((from, to), _)| *to == function && *from != function)
            .max_by_key(|(_, (_, cost))| *cost)
            .and_then(|((from, _), _)| self.names.get(*from))
            .map(String::as_str)
    }

    /// A function's name, a cost, and the caller it is mostly called from.
    fn described(&self, function: usize, cost: u64) -> (String, u64, String) {
        let name = self.names.get(function).cloned().unwrap_or_default();
        (
            name,
            cost,
            self.main_caller(function).unwrap_or("").to_owned(),
        )
    }

    fn functions(&self) -> impl Iterator<Item = (usize, &str)> {
        self.names.iter().map(String::as_str).enumerate()
    }
}

/// What a function's self cost is spent on, by its (demangled) name.
pub fn group_of(name: &str) -> &'static str {
    let has = |needle: &str| name.contains(needle);
    let bare = name
        .trim_start_matches(['<', '&', '*'])
        .trim_start_matches("mut ");
    // libc's functions have no `::` path.
    let libc = !bare.contains("::");
    let allocator = [
        "malloc",
        "free",
        "realloc",
        "calloc",
        "cfree",
        "_int_",
        "tcache",
        "unlink_chunk",
    ];
    if (libc && allocator.iter().any(|a| bare.starts_with(a)))
        || [
            "__rust_alloc",
            "__rust_dealloc",
            "__rust_realloc",
            "__rdl_",
            "alloc::alloc::",
            "alloc::raw_vec::",
        ]
        .iter()
        .any(|a| bare.starts_with(a))
    {
        "allocation (malloc/free, Vec growth)"
    } else if libc
        && ["mem", "__mem", "str", "__str", "bcmp", "__bcmp"]
            .iter()
            .any(|m| bare.starts_with(m))
    {
        "libc memcpy/memcmp/memset"
    } else if bare.starts_with("core::ptr::drop_in_place") {
        "drop glue (destructors)"
    } else if has("serde_json::") {
        "serde_json (de)serialisation"
    } else if has("serde::") || has("serde_core::") {
        "serde (derived (de)serialisers)"
    } else if bare.starts_with("core::fmt")
        || bare.starts_with("alloc::fmt")
        || has(" as core::fmt::")
    {
        "string formatting (core::fmt)"
    } else if has("hashbrown") || has("core::hash") || has("std::hash") || has("RandomState") {
        "hashing and hash maps"
    } else if bare.starts_with("proxy_on_") || has("proxy_wasm::") {
        "proxy-wasm SDK (dispatcher, hostcall wrappers)"
    } else if has("log::") {
        "log crate"
    } else {
        match bare.split("::").next().unwrap_or(bare) {
            "meshwasm_authz" => "authz (own code)",
            "meshwasm_routing" => "routing (own code)",
            "meshwasm_telemetry" => "telemetry (own code)",
            "meshwasm_circuit_breaker" => "circuit-breaker (own code)",
            "meshwasm_shared" => "meshwasm_shared (header decoding, stages, metrics…)",
            "meshwasm" => "suite (staged chain)",
            "ring" | "jsonwebtoken" | "base64" => "crypto and base64",
            "core" | "alloc" | "std" => "Rust std (other)",
            _ => "other",
        }
    }
}

/// One variant's figures, per request.
struct VariantCost {
    name: String,
    checks: String,
    whole: u64,
    module: u64,
    host_buffers: u64,
    host: u64,
    driver: u64,
    callbacks: Vec<(String, u64)>,
    groups: Vec<(String, u64)>,
    /// Function, self cost, the caller it is mostly called from.
    top_self: Vec<(String, u64, String)>,
    top_inclusive: Vec<(String, u64, String)>,
    /// Host function, calls per request, host instructions per request.
    host_calls: Vec<(String, f64, u64)>,
}

impl VariantCost {
    fn new(name: &str, whole: &Profile, module: &Profile, requests: u32, checks: String) -> Self {
        let per = |cost: u64| cost / u64::from(requests);
        let entries: u64 = REQUEST_ENTRY_POINTS
            .iter()
            .map(|e| whole.calls_into(e).1)
            .sum();
        let callbacks = REQUEST_ENTRY_POINTS
            .iter()
            .filter_map(|e| {
                module
                    .index_of(e)
                    .map(|i| ((*e).to_owned(), per(module.inclusive(i))))
            })
            .collect();

        let mut groups: HashMap<&str, u64> = HashMap::new();
        for (index, name) in module.functions() {
            *groups.entry(group_of(name)).or_default() +=
                module.self_cost.get(index).copied().unwrap_or(0);
        }
        let mut groups: Vec<(String, u64)> = groups
            .into_iter()
            .map(|(g, c)| (g.to_owned(), per(c)))
            .collect();
        groups.sort_by_key(|entry| std::cmp::Reverse(entry.1));

        // The costliest TOP_FUNCTIONS of (function, cost), described.
        let top = |mut costs: Vec<(usize, u64)>| -> Vec<(String, u64, String)> {
            costs.sort_by_key(|entry| std::cmp::Reverse(entry.1));
            costs
                .into_iter()
                .take(TOP_FUNCTIONS)
                .map(|(i, cost)| module.described(i, per(cost)))
                .collect()
        };
        let top_self = top(module
            .functions()
            .map(|(i, _)| (i, module.self_cost.get(i).copied().unwrap_or(0)))
            .collect());

        // Module functions only (what the callbacks reach; the driver's
        // frames above them have inclusive costs too), below the callbacks
        // and the SDK's dispatch, which would fill the top otherwise.
        let in_module = module.reachable_from(REQUEST_ENTRY_POINTS);
        let top_inclusive = top(module
            .functions()
            .filter(|(i, n)| {
                in_module.get(*i).copied().unwrap_or(false)
                    && !n.starts_with("proxy_")
                    && !n.contains("proxy_wasm::dispatcher")
            })
            .map(|(i, _)| (i, module.inclusive(i)))
            .collect());

        let mut host_calls: Vec<(String, f64, u64)> = HOST_FUNCTIONS
            .iter()
            .filter_map(|f| {
                let (count, cost) = whole.calls_into(f);
                (count > 0).then(|| {
                    (
                        (*f).to_owned(),
                        count as f64 / f64::from(requests),
                        per(cost),
                    )
                })
            })
            .collect();
        host_calls.sort_by_key(|entry| std::cmp::Reverse(entry.2));

        let module_total = module.total();
        Self {
            name: name.to_owned(),
            checks,
            whole: per(whole.total()),
            module: per(module_total),
            host_buffers: module
                .index_of(MEMORY_ALLOCATE)
                .map_or(0, |i| per(module.inclusive(i))),
            host: per(entries.saturating_sub(module_total)),
            driver: per(whole.total().saturating_sub(entries)),
            callbacks,
            groups,
            top_self,
            top_inclusive,
            host_calls,
        }
    }
}

/// A table of functions, their instructions per request, share of `module`
/// and main caller.
fn top_functions(
    md: &mut String,
    title: &str,
    column: &str,
    rows: &[(String, u64, String)],
    module: u64,
) {
    let _ = writeln!(
        md,
        "\n{title}:\n\n| function | {column} / request | share | mostly called from |\n| --- | ---: | ---: | --- |"
    );
    for (function, instructions, caller) in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            short(function),
            k(*instructions),
            share(*instructions, module),
            short(caller)
        );
    }
}

fn k(instructions: u64) -> String {
    format!("{:.1}k", instructions as f64 / 1000.0)
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".into();
    }
    format!("{:.1} %", part as f64 * 100.0 / whole as f64)
}

/// Long monomorphised names, cut to what a table can hold.
fn short(name: &str) -> String {
    const MAX: usize = 110;
    let escaped = name.replace('|', "\\|");
    match escaped.char_indices().nth(MAX) {
        Some((at, _)) => format!("`{}…`", escaped.get(..at).unwrap_or(&escaped)),
        None => format!("`{escaped}`"),
    }
}

fn markdown(
    costs: &[VariantCost],
    stamp: &str,
    valgrind: &str,
    warmup: u32,
    requests: u32,
    log_level: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Native replay: where the filters' own instructions go\n\n\
         Run {stamp}, `make bench-replay` ({valgrind}): the combined module (`filters/suite`) built for \
         x86-64 with the wasm modules' optimisation (profile `replay`: fat LTO, one codegen unit, \
         opt-level 3), against bench/native-replay's fake proxy-wasm host. bench/run.py's request (`POST /charge`, \
         demo RS256 bearer token, cached after the first request) and configs; {warmup} warm-up requests, \
         then {requests} counted, every one checked to pass every filter (and one without the token \
         refused with a 401 where authz runs). Envoy's log level: {log_level} (bench/run.py's default is \
         warning, where telemetry builds no access-log line; `--log-level info` adds it).\n\n\
         **These are native x86-64 instructions, not V8's.** V8's code for the same Rust is larger \
         (bounds checks, wasm's 32-bit memory and calling convention), so compare shapes and shares, \
         and the totals only for scale against BENCHMARKS.md's own-code estimates (added − plugin floor − \
         host-call prices).\n\n\
         - *own code*: everything under the per-request entry points (`proxy_on_context_create`, \
         `…_request_headers`, `…_response_headers`, `…_log`, `…_delete`; Envoy calls no body or done \
         callbacks of the trimmed modules), \
         the SDK's dispatcher included, minus the fake host's functions. It includes the module's \
         allocator when the host hands a buffer over (`proxy_on_memory_allocate`: in Envoy too the \
         module allocates these), shown as *host buffers*.\n\
         - *fake host*: the host functions' own work, which in Envoy is Envoy's and is priced by the \
         host-call price list in BENCHMARKS.md; here a simple Rust host, far cheaper.\n\
         - *driver*: the replay loop outside the callbacks (building each stream's maps, the checks).\n"
    );
    let _ = writeln!(
        md,
        "| variant | own code / request | of which host buffers | fake host / request | driver | host calls / request |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for cost in costs {
        let calls: f64 = cost.host_calls.iter().map(|(_, count, _)| count).sum();
        let _ = writeln!(
            md,
            "| {} | **{}** | {} | {} | {} | {calls:.1} |",
            cost.name,
            k(cost.module),
            k(cost.host_buffers),
            k(cost.host),
            k(cost.driver)
        );
    }
    for cost in costs {
        let _ = writeln!(md, "\n## {}\n\nChecks: {}\n", cost.name, cost.checks.trim());
        let _ = writeln!(
            md,
            "Own code {} per request (counted in all: {} per request).\n\n| callback | own code / request | share |\n| --- | ---: | ---: |",
            k(cost.module),
            k(cost.whole)
        );
        for (callback, instructions) in &cost.callbacks {
            let _ = writeln!(
                md,
                "| `{callback}` | {} | {} |",
                k(*instructions),
                share(*instructions, cost.module)
            );
        }
        let _ = writeln!(md, "\nBy what the instructions do (self cost, grouped by function name):\n\n| group | own code / request | share |\n| --- | ---: | ---: |");
        for (group, instructions) in cost.groups.iter().filter(|(_, c)| *c > 0) {
            let _ = writeln!(
                md,
                "| {group} | {} | {} |",
                k(*instructions),
                share(*instructions, cost.module)
            );
        }
        top_functions(
            &mut md,
            "Top functions by self cost",
            "self",
            &cost.top_self,
            cost.module,
        );
        top_functions(
            &mut md,
            "Top functions by inclusive cost (below the callbacks and the SDK's dispatcher; \
             recursion may count twice)",
            "inclusive",
            &cost.top_inclusive,
            cost.module,
        );
        let _ = writeln!(md, "\nHost calls per request (fake host's instructions, not Envoy's):\n\n| host function | calls / request | fake host / request |\n| --- | ---: | ---: |");
        for (function, count, instructions) in &cost.host_calls {
            let _ = writeln!(md, "| `{function}` | {count:.2} | {} |", k(*instructions));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "version: 1\nevents: Ir\nfn=(1) caller\n3 10\ncfn=(2) callee\ncalls=2 5\n4 100\n+1 5\nfn=(2)\n5 100\nfn=(3) proxy_get_property\n1 7\n";

    #[test]
    fn a_dump_parses_into_self_costs_and_call_edges() {
        let profile = Profile::parse(DUMP);
        assert_eq!(profile.total(), 10 + 5 + 100 + 7);
        let caller = profile.index_of("caller").unwrap();
        assert_eq!(profile.inclusive(caller), 10 + 5 + 100);
        assert_eq!(profile.calls_into("callee"), (2, 100));
        assert_eq!(profile.calls_into("nothing"), (0, 0));
    }

    #[test]
    fn functions_fall_into_groups_by_name() {
        assert_eq!(group_of("malloc"), "allocation (malloc/free, Vec growth)");
        assert_eq!(
            group_of("__memcpy_avx_unaligned_erms"),
            "libc memcpy/memcmp/memset"
        );
        assert_eq!(
            group_of(
                "<serde_json::de::Deserializer<R> as serde::de::Deserializer>::deserialize_map"
            ),
            "serde_json (de)serialisation"
        );
        assert_eq!(
            group_of("meshwasm_authz::cache::TokenCache::get"),
            "authz (own code)"
        );
        assert_eq!(
            group_of("core::fmt::write"),
            "string formatting (core::fmt)"
        );
        assert_eq!(
            group_of("core::ptr::drop_in_place<meshwasm_telemetry::Labels>"),
            "drop glue (destructors)"
        );
    }
}
