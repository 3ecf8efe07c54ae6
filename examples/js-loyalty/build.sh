#!/bin/sh
# Builds the JavaScript loyalty aggregate into $OUT (default loyalty.wasm). Installs nothing:
# run `npm ci` here first (package.json pins @bytecodealliance/componentize-js 0.23.0).
set -eu
cd "$(dirname "$0")"
OUT="${OUT:-loyalty.wasm}"
# `http` and `fetch-event` would import wasi:http, which a tollgate host does not serve.
npx --no-install componentize-js app.js --wit ../../wit/eventsourcing-0.1 --world-name aggregate \
  --disable http fetch-event -o "$OUT"
