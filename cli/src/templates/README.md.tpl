# {{name}}

A tollgate {{kind}} actor.

```sh
cargo test                                        # the logic, natively
cargo build --target wasm32-wasip2 --release      # the component
tollgate test scenarios/*.toml                    # the component, given / when / then
```
