//! The example guests in other languages (`examples/python-loyalty`, `examples/js-loyalty`):
//! built once per test run into `target/guests/`, where the CLI's tests run the shared scenario
//! file `examples/loyalty.toml` against them.
//!
//! Their toolchains come from PyPI and npm, which `.ci/run` installs (componentize-py into
//! `target/guest-tools/py`, componentize-js into `examples/js-loyalty/node_modules`). Without a
//! toolchain a guest is skipped with one line naming what to install; under `CI=true` that is a
//! failure instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One example guest.
struct Guest {
    /// Its component's file stem in `target/guests/`.
    name: &'static str,
    /// Its folder under `examples/`, holding `build.sh`.
    dir: &'static str,
    /// The toolchain's executable, relative to the checkout, tried before `PATH`.
    tool: &'static str,
    /// What to install when the toolchain is missing.
    install: &'static str,
}

const GUESTS: &[Guest] = &[
    Guest {
        name: "python_loyalty",
        dir: "examples/python-loyalty",
        tool: "target/guest-tools/py/bin/componentize-py",
        install: "python3 -m venv target/guest-tools/py && target/guest-tools/py/bin/pip install componentize-py==0.25.1",
    },
    Guest {
        name: "js_loyalty",
        dir: "examples/js-loyalty",
        tool: "examples/js-loyalty/node_modules/.bin/componentize-js",
        install: "npm ci --prefix examples/js-loyalty",
    },
];

/// Where the guests' components land.
pub fn guests_dir(root: &Path) -> PathBuf {
    root.join("target/guests")
}

/// Builds every guest whose toolchain is there; fails under CI when one is missing.
pub fn build(root: &Path, in_ci: bool, skips: &Path) -> Result<(), String> {
    let out_dir = guests_dir(root);
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for guest in GUESTS {
        let out = out_dir.join(format!("{}.wasm", guest.name));
        let tool = root.join(guest.tool);
        if !tool.is_file() {
            // A stale component must not pass for this run's.
            let _ = std::fs::remove_file(&out);
            let missing = format!("{} is missing (install it: {})", tool.display(), guest.install);
            if in_ci {
                return Err(format!("{missing}; CI=true, so the {} example cannot be skipped", guest.name));
            }
            println!("skipping the {} example: {missing}", guest.name);
            let line = format!("the {} example guest\t{missing}\n", guest.name);
            let recorded = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(skips)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
            recorded.map_err(|e| format!("{}: {e}", skips.display()))?;
            continue;
        }
        let bin = tool.parent().ok_or("a tool path has a folder")?;
        let path = std::env::join_paths(
            std::iter::once(bin.to_path_buf())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .map_err(|e| format!("PATH: {e}"))?;
        let mut cmd = Command::new("sh");
        cmd.arg(root.join(guest.dir).join("build.sh")).env("OUT", &out).env("PATH", path);
        crate::run(&mut cmd)?;
        let size = std::fs::metadata(&out).map_err(|e| format!("{}: {e}", out.display()))?.len();
        println!("{size:>8} bytes  {}", out.display());
    }
    Ok(())
}
