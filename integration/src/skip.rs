//! Tests that need something a machine may lack (Istio's CRD schemas) skip
//! loudly instead of failing: each skip is printed and appended to the file
//! named by [`SKIP_LOG_ENV`], which `make test` summarises in one line per
//! reason at its end. With [`NO_SKIP_ENV`] set (CI does), a skip is a failure,
//! so a run can never pass by skipping.

use std::io::Write;

/// File that collects skips as `missing<TAB>how to provide it<TAB>test` lines.
pub const SKIP_LOG_ENV: &str = "MESHWASM_SKIP_LOG";
/// Set (to anything but `0`) to turn every skip into a test failure.
pub const NO_SKIP_ENV: &str = "MESHWASM_NO_SKIP";

/// Records that `test` did not run because `missing` is not available; `how`
/// says how to provide it. Panics instead when [`NO_SKIP_ENV`] is set.
pub fn skip(test: &str, missing: &str, how: &str) {
    if std::env::var(NO_SKIP_ENV).is_ok_and(|value| value != "0") {
        panic!("{test} cannot run without {missing} and {NO_SKIP_ENV} forbids skipping: {how}");
    }
    eprintln!("SKIPPED {test}: no {missing}; {how}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let line = format!("{missing}\t{how}\t{test}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = written {
            eprintln!(
                "cannot record the skip in {}: {err}",
                path.to_string_lossy()
            );
        }
    }
}
