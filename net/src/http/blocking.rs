//! Nomad's blocking queries: `?index=N&wait=D` holds the request until the
//! watched tables change past index N or the wait passes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caravan_engine::state::{Cancel, Snapshot, StateStore, Table};

/// Nomad's default wait when `index` is given without `wait`.
const WAIT_DEFAULT: Duration = Duration::from_secs(300);
/// Nomad's cap on `wait`: a client cannot park a request for longer.
const WAIT_MAX: Duration = Duration::from_secs(600);

/// `?index=` and `?wait=` of a read.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Blocking {
    index: Option<u64>,
    wait: Duration,
}

impl Blocking {
    pub(super) fn from_query(query: &HashMap<String, String>) -> Result<Blocking, String> {
        let index = match query.get("index") {
            None => None,
            Some(v) => {
                Some(v.parse::<u64>().map_err(|_| format!("invalid index {v:?}: expected an unsigned integer"))?)
            }
        };
        let wait = match query.get("wait") {
            None => WAIT_DEFAULT,
            Some(v) => {
                parse_wait(v).ok_or_else(|| format!("invalid wait {v:?}: expected a duration such as 5s or 100ms"))?
            }
        };
        Ok(Blocking { index, wait: wait.min(WAIT_MAX) })
    }

    /// A snapshot once any of `tables` has an index above the query's
    /// (at once when there is no `index`), or the latest at the deadline.
    /// Nomad adds up to 1/16 of the wait as jitter so parked clients do not
    /// return in lockstep.
    pub(super) async fn snapshot(self, store: &Arc<StateStore>, tables: &'static [Table]) -> Snapshot {
        let Some(min_index) = self.index else { return store.snapshot() };
        let fallback = store.clone();
        let store = store.clone();
        let jitter = Duration::from_nanos(jitter_ns(self.wait.as_nanos() as u64 / 16 + 1));
        let deadline = Instant::now() + self.wait + jitter;
        let waited = compio::runtime::spawn_blocking(move || {
            loop {
                let snap = store.snapshot();
                let changed = tables.iter().map(|t| snap.table_index(*t)).max().unwrap_or(0);
                let now = Instant::now();
                if changed > min_index || now >= deadline {
                    return snap;
                }
                // Not held while waiting: a parked query would keep this
                // superseded version's copied table paths alive.
                let seen = snap.index();
                drop(snap);
                // Any write wakes us; then re-check the tables we watch.
                let _ = store.snapshot_min_index(seen + 1, deadline - now, &Cancel::new());
            }
        })
        .await;
        waited.unwrap_or_else(|_| fallback.snapshot())
    }
}

/// Jitter below `bound` nanoseconds from the clock's sub-second digits: it
/// only has to differ between requests, not be unpredictable.
fn jitter_ns(bound: u64) -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    u64::from(nanos) % bound.max(1)
}

/// Go-style durations as Nomad accepts them in `wait`: `5s`, `100ms`, `1m`.
fn parse_wait(text: &str) -> Option<Duration> {
    let ns = crate::jobspec::parse_duration_ns(text)?;
    u64::try_from(ns).ok().map(Duration::from_nanos)
}
