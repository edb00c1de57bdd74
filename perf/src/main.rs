//! `caravan-perf`: scenarios that measure Caravan at fleet scale.
fn main() {}
