//! The Python and JavaScript examples (`examples/python-loyalty`, `examples/js-loyalty`) pass
//! the loyalty scenario file, the same one for both: other languages are held to the same
//! contract (`wit/CONTRACT.md`). `cargo xtask test` builds them into `target/guests/`.

use crate::{root, run};

/// The component of guest `name`, or `None` (after one `skipping:` line) when it was not built
/// because its toolchain is missing; under `CI=true` a missing guest fails.
fn guest(name: &str, install: &str) -> Option<std::path::PathBuf> {
    let wasm = root().join(format!("target/guests/{name}.wasm"));
    if wasm.is_file() {
        return Some(wasm);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{} is missing and CI=true", wasm.display());
    tollgate_store::testing::record_skip(&format!("{} is missing ({install}, then cargo xtask test)", wasm.display()));
    None
}

/// `tollgate test examples/loyalty.toml` with the loyalty actor bound to `wasm`, and `extra`.
fn loyalty_scenarios(wasm: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let scenarios = root().join("examples/loyalty.toml");
    let binding = format!("loyalty={}", wasm.display());
    let args: Vec<&str> =
        ["test", scenarios.to_str().unwrap(), "--actor", &binding].into_iter().chain(extra.iter().copied()).collect();
    run(&args)
}

fn passes_the_loyalty_scenarios(name: &str, install: &str) {
    let Some(wasm) = guest(name, install) else { return };
    let (code, out, err) = loyalty_scenarios(&wasm, &[]);
    assert_eq!(code, 0, "{name}:\n{out}\n{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed") && !last.starts_with("0 "), "{name}: {last}");
    // Built against the 0.1 contract, which the host still runs; `inspect` says which it is.
    let (code, out, err) = run(&["inspect", wasm.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("contract: tollgate:eventsourcing@0.1.0 (older"), "{out}");
}

#[test]
fn the_python_example_passes_the_loyalty_scenarios() {
    passes_the_loyalty_scenarios("python_loyalty", "pip install componentize-py==0.25.1");
}

#[test]
fn the_javascript_example_passes_the_loyalty_scenarios() {
    passes_the_loyalty_scenarios("js_loyalty", "npm ci --prefix examples/js-loyalty");
}

#[test]
fn a_guest_whose_memory_starts_above_the_cap_is_refused_naming_the_limit() {
    let Some(wasm) = guest("python_loyalty", "pip install componentize-py==0.25.1") else { return };
    let (code, out, err) = loyalty_scenarios(&wasm, &["--memory-mib", "8"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("over the memory cap of 8 MiB") && err.contains("--memory-mib"), "{err}");
}
