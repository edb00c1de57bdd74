//! Measures the wire codecs (release build):
//! `cargo run --release -p caravan-net --example wire`.
//!
//! - encode + decode of one `ApplyPlanResults` command with 1,000
//!   allocations of one job;
//! - snapshot write + read of a state with 100,000 allocations
//!   (100 jobs × 1,000 on 2,000 nodes).
//!
//! Figures are printed, not asserted: performance is measured, never tested.

// A measuring tool: its output is the point.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use caravan_engine::fixtures::{job, node};
use caravan_engine::fsm::{Command, PlanApplied};
use caravan_engine::model::JobType;
use caravan_engine::sim::SimCluster;
use caravan_net::wire::{decode_commands, encode_commands, read_snapshot, write_snapshot};

// Measure with the allocator the binaries ship with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: usize = 2_000;
const JOBS: usize = 100;
const ALLOCS_PER_JOB: u32 = 1_000;
/// Repetitions of the command round trip; the best run is reported.
const COMMAND_RUNS: usize = 50;
/// Repetitions of the snapshot round trip.
const SNAPSHOT_RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    let mut sim = SimCluster::new(1);
    for i in 0..NODES {
        let n = node(&mut sim.ids, &format!("n{i}"), if i % 2 == 0 { "dc1" } else { "dc2" }, 64_000, 256 * 1024);
        sim.add_node(n);
    }
    for j in 0..JOBS {
        let eval = sim.register(job(&format!("job{j}"), JobType::Service, ALLOCS_PER_JOB, 100, 128));
        sim.process(&eval);
    }
    let state = sim.snapshot();
    println!("state: {} nodes, {} jobs, {} allocations", state.node_count(), state.job_count(), state.alloc_count());

    let key = state.jobs().next().expect("jobs registered").key();
    let allocs: Vec<_> = state.allocs_by_job(&key).cloned().collect();
    let command = Command::ApplyPlanResults(PlanApplied { allocs, ..Default::default() });
    let (mut encode_us, mut decode_us, mut size) = (f64::MAX, f64::MAX, 0);
    for _ in 0..COMMAND_RUNS {
        let start = Instant::now();
        let bytes = encode_commands(std::slice::from_ref(&command))?;
        let encoded = Instant::now();
        let decoded = decode_commands(&bytes)?;
        let done = Instant::now();
        assert_eq!(decoded.len(), 1);
        encode_us = encode_us.min((encoded - start).as_secs_f64() * 1e6);
        decode_us = decode_us.min((done - encoded).as_secs_f64() * 1e6);
        size = bytes.len();
    }
    println!(
        "plan result, {ALLOCS_PER_JOB} allocations: {size} bytes ({} per allocation), encode {encode_us:.0} µs, decode {decode_us:.0} µs",
        size / ALLOCS_PER_JOB as usize
    );

    let (mut write_ms, mut read_ms) = (f64::MAX, f64::MAX);
    let mut bytes = Vec::new();
    let mut stats = None;
    for _ in 0..SNAPSHOT_RUNS {
        bytes.clear();
        let start = Instant::now();
        stats = Some(write_snapshot(&state, &mut bytes)?);
        let written = Instant::now();
        let restored = read_snapshot(&mut bytes.as_slice())?;
        let done = Instant::now();
        assert_eq!(restored.alloc_count(), state.alloc_count());
        write_ms = write_ms.min((written - start).as_secs_f64() * 1e3);
        read_ms = read_ms.min((done - written).as_secs_f64() * 1e3);
        drop(Arc::new(restored));
    }
    let stats = stats.expect("ran at least once");
    println!(
        "snapshot, {} allocations: {} bytes ({} per allocation) in {} chunks, write {write_ms:.1} ms, read {read_ms:.1} ms",
        stats.counts.allocs,
        stats.bytes,
        stats.bytes / stats.counts.allocs.max(1),
        stats.chunks
    );
    Ok(())
}
