//! A partitioned minority leader: three `caravan agent` server processes,
//! each in its own network namespace, joined by a bridge. The test cuts the
//! leader off from the other two and checks that it stops leading and
//! acknowledges no write while the majority elects a new leader and goes on
//! taking writes; then it heals the partition and checks that the three
//! converge on one leader and one set of jobs, with every acknowledged job
//! present exactly once.
//!
//! Network (names carry the test's pid, so parallel or leftover runs do not
//! collide; the subnet exists only inside the namespaces):
//!
//! ```text
//!  caravan-p<pid>-s0        caravan-p<pid>-br          caravan-p<pid>-s1 / -s2
//!  eth0 10.213.0.10 ─veth─ p0 ┐
//!                             br0 ── p1, p2 ─veth─ eth0 10.213.0.11 / .12
//! ```
//!
//! The partition takes the leader's port out of the bridge (`nomaster`):
//! both ends of its veth stay up, so the leader keeps its address and its
//! HTTP API stays reachable from inside its own namespace. The test talks to
//! every server that way, from a thread it moves into the server's
//! namespace (`setns`), so its view of a server never depends on the
//! partition and it adds nothing to the root namespace.
//!
//! Needs root and `ip netns`; elsewhere it prints why and passes, unless
//! `CARAVAN_REQUIRE_ALL_TESTS=1` (set by CI), which turns the skip into a
//! failure. Run it as root: `cargo test -p caravan --test partition -- --nocapture`
//! prints the timings (election, step-down, convergence).

#[path = "support/cluster.rs"]
mod cluster;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Ca, ServerConfig, wait_until};

/// The subnet inside the test's namespaces; server `i` is `.10 + i`.
const SUBNET: &str = "10.213.0";
/// Each server has its namespace to itself, so Nomad's default ports do.
const HTTP_PORT: u16 = 4646;
const RPC_PORT: u16 = 4647;
/// Three processes join, bootstrap and elect on a loaded 2-core machine.
const FORM_TIMEOUT: Duration = Duration::from_secs(45);
/// The majority's election needs an election timeout (1-2 s) and a vote
/// round; generous for CI.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The cut-off leader stops leading once its leader lease (about the
/// election timeout, 2 s) lapses without a quorum's acknowledgement;
/// generous for CI. Counted from the cut.
const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// After healing: the old leader hears the higher term, its uncommitted
/// tail is replaced, and it catches up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many jobs the healthy cluster takes before the cut, and the majority
/// during it.
const JOBS_BEFORE: usize = 12;
const JOBS_DURING: usize = 6;

/// Log lines left out of failure messages: repeated for every heartbeat and
/// replication attempt to a peer the cut makes unreachable.
const LOG_NOISE: &[&str] = &["heartbeat::worker", "ReplicationCore recv RPCError", "update progress error"];

/// Prints why the test cannot run here, or fails it when CI demands every test.
fn skip(reason: &str) {
    if std::env::var("CARAVAN_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1") {
        panic!("CARAVAN_REQUIRE_ALL_TESTS=1 but the test cannot run: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Runs `ip ARGS`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: String) -> Result<Netns, String> {
        // A leftover from a killed run with the same pid would make `add`
        // fail; it is ours to remove.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace destroys its interfaces, veth peers included.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// The bridge namespace and one namespace per server.
struct TestNet {
    // Dropped before `bridge`, which does not matter: each drop stands alone.
    servers: Vec<Netns>,
    bridge: Netns,
}

impl TestNet {
    fn create(n: usize) -> Result<TestNet, String> {
        let prefix = format!("caravan-p{}", std::process::id());
        let bridge = Netns::add(format!("{prefix}-br"))?;
        let mut net = TestNet { servers: Vec::new(), bridge };
        let br = net.bridge.name.clone();
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = Netns::add(format!("{prefix}-s{i}"))?;
            let port = format!("p{i}");
            ip(&["-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            ip(&["-n", &ns.name, "addr", "add", &format!("{}/24", server_ip(i)), "dev", "eth0"])?;
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"])?;
            net.servers.push(ns);
        }
        Ok(net)
    }

    /// Takes server `i`'s port out of the bridge: no frame reaches or
    /// leaves it, while its own interface stays up with its address.
    fn cut(&self, i: usize) {
        ip(&["-n", &self.bridge.name, "link", "set", &format!("p{i}"), "nomaster"]).unwrap();
    }

    fn heal(&self, i: usize) {
        ip(&["-n", &self.bridge.name, "link", "set", &format!("p{i}"), "master", "br0"]).unwrap();
    }
}

fn server_ip(i: usize) -> String {
    format!("{SUBNET}.{}", 10 + i)
}

/// Runs `f` on a thread inside network namespace `ns`, so the sockets it
/// opens live there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(format!("/run/netns/{ns}")).unwrap();
                // Only this thread moves; it ends with `f`.
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
    })
}

/// One `caravan agent` process inside its namespace.
struct Server {
    name: String,
    ns: String,
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        let log = File::create(self.dir.join("agent.log")).unwrap();
        // `ip netns exec` execs the agent, so the child is the agent itself.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_caravan"), "agent", "-config"])
            .arg(self.dir.join("agent.hcl"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn rpc_addr(&self) -> String {
        format!("{}:{RPC_PORT}", self.ip)
    }

    /// Runs `f` with this server's HTTP base URL, from inside its namespace.
    fn call<T: Send>(&self, f: impl FnOnce(&str) -> T + Send) -> T {
        let base = format!("http://{}:{HTTP_PORT}", self.ip);
        in_netns(&self.ns, || f(&base))
    }

    fn leader(&self) -> Option<String> {
        self.call(cluster::leader)
    }

    fn is_leader(&self) -> bool {
        self.leader() == Some(self.rpc_addr())
    }

    fn register(&self, id: &str) -> bool {
        self.call(|base| cluster::register(base, id))
    }

    fn job_ids(&self) -> Option<Vec<String>> {
        self.call(cluster::job_ids)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The servers and their network. Fields drop in order: the processes go
/// before the namespaces they run in.
struct Cluster {
    servers: Vec<Server>,
    net: TestNet,
    /// Last, so the agents' logs outlive them.
    _root: tempfile::TempDir,
}

impl Cluster {
    /// The agents' logs for a failure message, without openraft's
    /// per-peer warnings, which a cut produces several times a second.
    fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            out += &format!("----- {} ({}) -----\n", s.name, s.ip);
            for line in s.log().lines().filter(|l| !LOG_NOISE.iter().any(|n| l.contains(n))) {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    /// The leader all three name, when they agree on one of them.
    fn agreed_leader(&self) -> Option<usize> {
        let leaders: Vec<Option<String>> = self.servers.iter().map(Server::leader).collect();
        let first = leaders[0].clone()?;
        if leaders.iter().any(|l| l.as_deref() != Some(first.as_str())) {
            return None;
        }
        self.servers.iter().position(|s| s.rpc_addr() == first)
    }
}

fn start_cluster(net: TestNet) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::create(root.path());
    let peers: Vec<String> = (0..net.servers.len()).map(|i| format!("{}:{RPC_PORT}", server_ip(i))).collect();
    let mut servers = Vec::new();
    for (i, ns) in net.servers.iter().enumerate() {
        let name = format!("s{i}");
        let dir = root.path().join(&name);
        ca.server_cert(&dir.join("tls"));
        let ip = server_ip(i);
        ServerConfig {
            name: &name,
            dir: &dir,
            bind_addr: &ip,
            http_port: HTTP_PORT,
            rpc_port: RPC_PORT,
            peers: &peers,
            ca: &ca,
            server_extra: "",
        }
        .write();
        servers.push(Server { name, ns: ns.name.clone(), ip, dir, child: None });
    }
    let mut cluster = Cluster { servers, net, _root: root };
    for s in &mut cluster.servers {
        s.start();
    }
    cluster
}

/// The ids listed more than once.
fn duplicates(ids: &[String]) -> Vec<String> {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let mut dups: Vec<String> = sorted.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0].clone()).collect();
    dups.dedup();
    dups
}

#[test]
fn partitioned_minority_leader_steps_down_and_the_cluster_converges_after_healing() {
    let net = match TestNet::create(3) {
        Ok(net) => net,
        Err(e) => return skip(&format!("network namespaces are not available (root and `ip netns` needed): {e}")),
    };
    let cluster = start_cluster(net);
    let servers = &cluster.servers;
    let started = Instant::now();

    let mut leader = None;
    let formed = wait_until(FORM_TIMEOUT, || {
        leader = cluster.agreed_leader();
        leader.is_some()
    });
    assert!(formed, "the three servers agree on a leader within {FORM_TIMEOUT:?}; logs:\n{}", cluster.logs());
    let old = leader.unwrap();
    eprintln!("cluster formed in {:?}; leader {}", started.elapsed(), servers[old].name);

    // Writes through every server; followers forward to the leader.
    let mut acked = Vec::new();
    for i in 0..JOBS_BEFORE {
        let id = format!("before-{i}");
        assert!(servers[i % 3].register(&id), "{id} acknowledged by the healthy cluster; logs:\n{}", cluster.logs());
        acked.push(id);
    }

    cluster.net.cut(old);
    let cut_at = Instant::now();
    let majority: Vec<usize> = (0..3).filter(|&i| i != old).collect();

    // Asserted last, so a run where the cut-off leader never steps down
    // still shows whether everything else holds.
    let mut step_down_failure = None;
    std::thread::scope(|scope| {
        // Written to the cut-off leader at once, while it still believes it
        // leads: it can append the entry but never commit it.
        let minority_write = scope.spawn(|| {
            let at = Instant::now();
            (servers[old].register("minority-write"), at.elapsed())
        });

        let mut new_leader = None;
        let elected = wait_until(ELECTION_TIMEOUT, || {
            new_leader = majority.iter().copied().find(|&i| servers[i].is_leader());
            new_leader.is_some()
        });
        assert!(elected, "the majority elects a leader within {ELECTION_TIMEOUT:?}; logs:\n{}", cluster.logs());
        let new_leader = new_leader.unwrap();
        eprintln!("majority elected {} {:?} after the cut", servers[new_leader].name, cut_at.elapsed());

        // The majority takes writes, through its leader and its follower.
        for i in 0..JOBS_DURING {
            let id = format!("during-{i}");
            let via = &servers[majority[i % 2]];
            assert!(
                wait_until(ELECTION_TIMEOUT, || via.register(&id)),
                "{id} acknowledged by the majority via {}; logs:\n{}",
                via.name,
                cluster.logs()
            );
            acked.push(id);
        }

        let stepped_down = wait_until(STEP_DOWN_TIMEOUT.saturating_sub(cut_at.elapsed()), || !servers[old].is_leader());
        let names = servers[old].leader();
        eprintln!(
            "cut-off leader {}: stepped down {stepped_down}, {:?} after the cut (names {names:?} as leader)",
            servers[old].name,
            cut_at.elapsed(),
        );
        if !stepped_down {
            let raft = servers[old].call(|base| cluster::get(&format!("{base}/v1/operator/raft/configuration")));
            step_down_failure = Some(format!(
                "the cut-off leader {} still names itself ({names:?}) {STEP_DOWN_TIMEOUT:?} after the cut; \
                 its raft configuration: {raft:?}",
                servers[old].name
            ));
        }

        // Later in the partition it cannot commit either: as a follower it
        // has no leader to forward to, or one it cannot reach; as a leader,
        // no quorum.
        let at = Instant::now();
        let later = servers[old].register("minority-write-2");
        eprintln!("later write to the cut-off server: acknowledged={later} in {:?}", at.elapsed());
        assert!(!later, "the cut-off server acknowledged a write; logs:\n{}", cluster.logs());

        let (acknowledged, took) = minority_write.join().unwrap();
        eprintln!("write to the cut-off leader: acknowledged={acknowledged} in {took:?}");
        assert!(!acknowledged, "the cut-off leader acknowledged a write; logs:\n{}", cluster.logs());
    });

    cluster.net.heal(old);
    let healed_at = Instant::now();
    // The healed server takes writes again (as a follower, forwarding).
    assert!(
        wait_until(CONVERGE_TIMEOUT, || servers[old].register("after-heal")),
        "the healed server forwards a write to the leader; logs:\n{}",
        cluster.logs()
    );
    acked.push("after-heal".into());

    let mut views: Vec<Option<Vec<String>>> = Vec::new();
    let converged = wait_until(CONVERGE_TIMEOUT, || {
        if cluster.agreed_leader().is_none() {
            return false;
        }
        views = servers.iter().map(Server::job_ids).collect();
        let Some(Some(first)) = views.first() else { return false };
        let mut first = first.clone();
        first.sort();
        views.iter().all(|v| {
            v.as_ref().is_some_and(|v| {
                let mut v = v.clone();
                v.sort();
                v == first
            })
        }) && acked.iter().all(|id| first.contains(id))
    });
    assert!(
        converged,
        "after healing all three agree on a leader and on a job set holding every acknowledged job \
         within {CONVERGE_TIMEOUT:?}; leaders {:?}; jobs {views:?}; logs:\n{}",
        servers.iter().map(Server::leader).collect::<Vec<_>>(),
        cluster.logs()
    );
    eprintln!("converged {:?} after healing; total {:?}", healed_at.elapsed(), started.elapsed());

    for (s, ids) in servers.iter().zip(&views) {
        let ids = ids.as_ref().unwrap();
        assert_eq!(duplicates(ids), Vec::<String>::new(), "no job is listed twice on {}", s.name);
        for id in &acked {
            assert_eq!(ids.iter().filter(|j| *j == id).count(), 1, "acknowledged job {id} is on {} once", s.name);
        }
        // Everything else is one of the writes the cut-off server refused,
        // which may or may not have survived.
        let unexpected: Vec<&String> =
            ids.iter().filter(|id| !acked.contains(id) && !id.starts_with("minority-write")).collect();
        assert!(unexpected.is_empty(), "{} lists jobs nobody registered: {unexpected:?}", s.name);
        assert_eq!(ids.len(), views[0].as_ref().unwrap().len(), "{} has as many jobs as {}", s.name, servers[0].name);
    }
    let survived: Vec<&String> =
        views[0].as_ref().unwrap().iter().filter(|id| id.starts_with("minority-write")).collect();
    eprintln!("unacknowledged writes present after healing: {survived:?}");
    if let Some(failure) = step_down_failure {
        panic!("{failure}; logs:\n{}", cluster.logs());
    }
}
