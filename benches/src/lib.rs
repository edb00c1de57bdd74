//! Criterion benchmarks of Caravan's hot paths live in `benches/benches/`;
//! run them with `cargo bench -p caravan-benches`.
