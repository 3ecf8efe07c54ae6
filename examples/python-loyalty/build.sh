#!/bin/sh
# Builds the Python loyalty aggregate into $OUT (default loyalty.wasm). Installs nothing: needs
# componentize-py on PATH (`pip install componentize-py==0.25.1`; `cargo xtask test` uses the
# one .ci/run installs into target/guest-tools/py).
set -eu
cd "$(dirname "$0")"
OUT="${OUT:-loyalty.wasm}"
# The package folder itself (its deps/ are symlinks to sibling packages), not wit/.
componentize-py -d ../../wit/eventsourcing-0.1 -w aggregate componentize app -o "$OUT"
