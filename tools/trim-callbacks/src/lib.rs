//! Removes the exports of proxy-wasm callbacks that no meshwasm filter
//! implements from a built module.
//!
//! The Rust SDK exports every `proxy_on_*` callback, implemented or not, and
//! Envoy's host (proxy-wasm-cpp-host, `src/context.cc`) enters the VM for
//! each one the module exports: `onRequestBody`, `onResponseBody`, the
//! trailers and `onDone` return their default at once when the export is
//! missing (`if (!wasm_->on_response_body_) return FilterDataStatus::Continue`,
//! `onDone` returns `true`), which is exactly what the SDK's defaults answer
//! from inside the VM. A VM entry costs about 1.9k instructions in Envoy
//! 1.40 (BENCHMARKS.md): every plugin paid one per body chunk in each
//! direction and one at the end of every request.

use anyhow::{Context, Result};
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// Exports removed, with the trait method whose default each stands for
/// (`proxy_wasm::traits`): a filter that implements one of these methods
/// needs its export back (the `no_filter_implements_a_removed_callback`
/// test says so).
pub const REMOVED_CALLBACKS: &[(&str, &str)] = &[
    ("proxy_on_request_body", "on_http_request_body"),
    ("proxy_on_response_body", "on_http_response_body"),
    ("proxy_on_request_trailers", "on_http_request_trailers"),
    ("proxy_on_response_trailers", "on_http_response_trailers"),
    ("proxy_on_done", "on_done"),
];

/// `module` without the exports named in `removed`, every other section
/// copied byte for byte, and the names of the exports it dropped.
pub fn without_exports(module: &[u8], removed: &[&str]) -> Result<(Vec<u8>, Vec<String>)> {
    let mut out = Module::new();
    let mut dropped = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.context("not a wasm module")?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export.context("bad export section")?;
                if removed.contains(&export.name) {
                    dropped.push(export.name.to_owned());
                } else {
                    exports.export(export.name, export_kind(export.kind)?, export.index);
                }
            }
            out.section(&exports);
        } else if let Payload::Version { encoding, .. } = &payload {
            anyhow::ensure!(
                *encoding == wasmparser::Encoding::Module,
                "a component, not a core wasm module"
            );
        } else if let Some((id, range)) = payload.as_section() {
            let data = usize::try_from(range.start)
                .ok()
                .zip(usize::try_from(range.end).ok())
                .and_then(|(start, end)| module.get(start..end))
                .context("section outside the module's bytes")?;
            out.section(&RawSection { id, data });
        }
    }
    Ok((out.finish(), dropped))
}

fn export_kind(kind: ExternalKind) -> Result<ExportKind> {
    Ok(match kind {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
        other => anyhow::bail!("export kind {other:?} is not in a proxy-wasm module"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn exports(module: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::ExportSection(reader) = payload.unwrap() {
                names.extend(reader.into_iter().map(|e| e.unwrap().name.to_owned()));
            }
        }
        names
    }

    #[test]
    fn only_the_named_exports_go_and_the_code_stays() {
        let module = wat::parse_str(
            r#"(module
                 (memory (export "memory") 1)
                 (func $body (export "proxy_on_response_body") (param i32 i32 i32) (result i32) i32.const 0)
                 (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                   (call $body (local.get 0) (local.get 1) (local.get 2)))
                 (@custom "name-of-something" "kept"))"#,
        )
        .unwrap();
        let (trimmed, dropped) =
            without_exports(&module, &["proxy_on_response_body", "proxy_on_done"]).unwrap();
        assert_eq!(dropped, ["proxy_on_response_body"]);
        assert_eq!(exports(&trimmed), ["memory", "proxy_on_request_headers"]);
        wasmparser::validate(&trimmed).unwrap();
        // The function stays (the other export calls it), and so does the
        // custom section.
        assert!(trimmed.len() > module.len() - "proxy_on_response_body".len() - 8);
        assert!(trimmed.windows(4).any(|w| w == b"kept"));
    }

    #[test]
    fn what_is_not_a_module_is_refused() {
        assert!(without_exports(b"\0asm\x0d\0\x01\0", &[]).is_err());
        assert!(without_exports(b"not wasm", &[]).is_err());
    }

    /// Source files under `dir`, recursively.
    fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn no_filter_implements_a_removed_callback() {
        let filters = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filters");
        let mut files = Vec::new();
        rust_files(&filters, &mut files);
        assert!(
            files.len() > 20,
            "filters' sources not found under {filters:?}"
        );
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (export, method) in REMOVED_CALLBACKS {
                assert!(
                    !text.contains(&format!("fn {method}(")),
                    "{file:?} implements `{method}`: Envoy would never call it once `make build` \
                     removes `{export}`; take it out of trim_callbacks::REMOVED_CALLBACKS"
                );
            }
        }
    }
}
