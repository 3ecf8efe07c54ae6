//! Benchmarks for tollgate; see benches/.
