//! Durable raft log appends: what one append batch costs (one redb commit,
//! one fsync) with 1 or 64 entries of ~64 KiB, plus a tiny entry to show
//! the bare fsync cost. Throughput is reported in entries and bytes per
//! second; batches per second equals fsyncs per second (checked below).
//!
//! Run: `cargo bench -p caravan-net --bench raft_log`. The log lives in the
//! system temp dir; set `TMPDIR` to measure another disk.
//!
//! Measured on the 2-core dev VM (ext4 on a virtio disk, other builds
//! running; `dd oflag=dsync` there: 4 KiB ~5.3 ms, 4 MiB ~37 ms):
//! 1x64B 4.7 ms/batch (~214 fsyncs/s, the disk's fsync rate);
//! 1x64KiB 4.4 ms/batch (~250 entries/s, 16 MiB/s);
//! 64x64KiB 117 ms/batch (~9 fsyncs/s, ~550 entries/s, 36 MiB/s), about
//! 3x the raw write time of the same 4 MiB: redb's copy-on-write pages
//! and commit cost that much over a bare sequential write.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use caravan_net::raft::entry_codec::{LogEntry, LogId};
use caravan_net::raft::{LogPayload, LogStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use openraft::EntryPayload;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};

/// Batches appended between untimed purges: keeps the bench's disk use
/// under ~64 MiB (16 x 64 x 64 KiB) however fast the disk is.
const BATCHES_PER_PURGE: u64 = 16;
/// The payload size the brief asks about: a large engine command batch.
const PAYLOAD_BYTES_LARGE: usize = 64 * 1024;
/// A tiny payload, so the batch cost is the commit and fsync alone.
const PAYLOAD_BYTES_TINY: usize = 64;

fn bench_appends(c: &mut Criterion) {
    let dir: PathBuf = std::env::temp_dir().join(format!("caravan-raft-log-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = compio::runtime::Runtime::new().expect("compio runtime");
    let mut log = LogStore::open(&dir.join("log.redb")).expect("open log");
    let metrics = log.metrics();
    let next_index = Cell::new(1u64);

    let mut group = c.benchmark_group("raft_log_append");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for (name, entries_per_batch, payload_bytes) in [
        ("1x64B", 1usize, PAYLOAD_BYTES_TINY),
        ("1x64KiB", 1, PAYLOAD_BYTES_LARGE),
        ("64x64KiB", 64, PAYLOAD_BYTES_LARGE),
    ] {
        let payload = vec![0xA5u8; payload_bytes];
        group.throughput(Throughput::Elements(entries_per_batch as u64));
        let mut batches_timed = 0u64;
        let mut fsyncs_timed = 0u64;
        let mut time_timed = Duration::ZERO;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for batch in 0..iters {
                        let first = next_index.get();
                        let entries: Vec<LogEntry> = (first..first + entries_per_batch as u64)
                            .map(|index| LogEntry {
                                log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
                                payload: EntryPayload::Normal(LogPayload { bytes: payload.clone() }),
                            })
                            .collect();
                        next_index.set(first + entries_per_batch as u64);
                        let fsyncs_before = metrics.fsync_count();
                        let start = Instant::now();
                        log.blocking_append(entries).await.expect("append");
                        elapsed += start.elapsed();
                        fsyncs_timed += metrics.fsync_count() - fsyncs_before;
                        batches_timed += 1;
                        if batch % BATCHES_PER_PURGE == BATCHES_PER_PURGE - 1 {
                            let last = next_index.get() - 1;
                            log.purge(LogId::new(LeaderId { term: 1, node_id: 1 }, last)).await.expect("purge");
                        }
                    }
                    time_timed += elapsed;
                    elapsed
                })
            });
        });
        let seconds = time_timed.as_secs_f64();
        eprintln!(
            "raft_log_append/{name}: {batches_timed} batches, {fsyncs_timed} fsyncs in {seconds:.2}s timed: \
             {:.0} fsyncs/s, {:.0} entries/s, {:.1} MiB/s",
            fsyncs_timed as f64 / seconds,
            (batches_timed * entries_per_batch as u64) as f64 / seconds,
            (batches_timed * (entries_per_batch * payload_bytes) as u64) as f64 / seconds / (1024.0 * 1024.0),
        );
    }
    group.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_appends);
criterion_main!(benches);
