[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"
publish = false

# An empty workspace table: this crate stands alone, even inside another workspace.
[workspace]

[lib]
# cdylib: the wasm32-wasip2 component; rlib: the same logic natively, for `cargo test`.
crate-type = ["cdylib", "rlib"]

[dependencies]
tollgate-sdk = {{sdk}}
serde = { version = "1", features = ["derive"] }
serde_json = "1"
