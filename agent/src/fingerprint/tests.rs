//! Parsers over fixture files from two machines in
//! `agent/tests/fixtures/fingerprint/`, the node builder, change detection,
//! and one check of this machine's real fingerprint.

use std::path::Path;

use caravan_gpu::{SimulatedGpus, to_node_devices};
use expect_test::expect;

use super::*;
use crate::config::AgentConfig;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fingerprint").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn cpu_x86_vm() {
    let parsed = cpu::parse_cpuinfo(&fixture("x86-cpuinfo"));
    assert_eq!(parsed.processors, 4);
    let info = cpu::combine(&parsed, None, 1);
    assert_eq!(
        info,
        cpu::CpuInfo { cores: 4, model: "Intel(R) Xeon(R) Platinum 8480+".into(), mhz: 2000, mhz_detected: true }
    );
    assert_eq!(info.total_compute_mhz(), 8000);
    // cpufreq's nominal maximum wins over cpuinfo's current clock.
    assert_eq!(cpu::combine(&parsed, cpu::parse_cpufreq_khz("3800000\n"), 1).mhz, 3800);
}

#[test]
fn cpu_arm_has_no_clock() {
    let parsed = cpu::parse_cpuinfo(&fixture("arm-cpuinfo"));
    let info = cpu::combine(&parsed, None, 1);
    assert_eq!(info.cores, 2);
    assert_eq!(info.model, "unknown");
    assert_eq!(info.mhz, cpu::CPU_MHZ_FALLBACK);
    assert!(!info.mhz_detected);
    // Nothing readable at all (a locked-down container): the scheduler's count.
    let info = cpu::combine(&cpu::CpuinfoText::default(), None, 6);
    assert_eq!((info.cores, info.mhz), (6, cpu::CPU_MHZ_FALLBACK));
    assert_eq!(cpu::parse_cpufreq_khz("garbage"), None);
    assert_eq!(cpu::parse_cpufreq_khz("99999999999"), None);
    assert_eq!(cpu::go_arch("x86_64"), "amd64");
    assert_eq!(cpu::go_arch("aarch64"), "arm64");
}

#[test]
fn memory() {
    assert_eq!(memory::parse_meminfo_total_bytes(&fixture("x86-meminfo")), Some(16365060 * 1024));
    assert_eq!(memory::parse_meminfo_total_bytes("MemFree: 1 kB"), None);
    assert_eq!(memory::parse_cgroup_memory_max("max\n"), None);
    assert_eq!(memory::parse_cgroup_memory_max("1073741824\n"), Some(1 << 30));
}

#[test]
fn os_release() {
    assert_eq!(host::parse_os_release(&fixture("ubuntu-os-release")), (Some("ubuntu".into()), Some("22.04".into())));
    assert_eq!(host::parse_os_release(""), (None, None));
}

#[test]
fn mount_source_is_longest_prefix() {
    let mountinfo = fixture("mountinfo");
    let source = |p: &str| disk::parse_mount_source(&mountinfo, Path::new(p));
    assert_eq!(source("/var/lib/caravan/alloc").as_deref(), Some("/dev/nvme1n1"));
    assert_eq!(source("/var/lib/caravanx").as_deref(), Some("/dev/nvme0n1p2"));
    assert_eq!(source("/mnt/my disk/x").as_deref(), Some("/dev/sdb1"));
    assert_eq!(disk::parse_mount_source("", Path::new("/")), None);
}

#[test]
fn network_default_route_and_named_interface() {
    let routes = network::parse_routes(&fixture("route"));
    let local = network::parse_local_addresses(&fixture("fib_trie"));
    expect!["[10.0.3.17, 127.0.0.1, 172.17.0.1]"].assert_eq(&format!("{local:?}"));
    assert_eq!(network::default_interface(&routes), Some("ens5"));
    assert_eq!(network::interface_address("ens5", &routes, &local), Some("10.0.3.17".parse().unwrap()));
    assert_eq!(network::interface_address("docker0", &routes, &local), Some("172.17.0.1".parse().unwrap()));
    assert_eq!(network::interface_address("lo", &routes, &local), Some(std::net::Ipv4Addr::LOCALHOST));
    assert_eq!(network::interface_address("wg0", &routes, &local), None);
    assert_eq!(network::parse_speed("-1\n"), None);
    assert_eq!(network::parse_speed("25000\n"), Some(25000));
}

/// A host as the x86 fixtures describe it.
fn fixture_host() -> HostFingerprint {
    HostFingerprint {
        cpu: cpu::combine(&cpu::parse_cpuinfo(&fixture("x86-cpuinfo")), None, 1),
        memory_bytes: memory::parse_meminfo_total_bytes(&fixture("x86-meminfo")),
        disk: Some(disk::DiskInfo { volume: "/dev/nvme1n1".into(), bytes_total: 100 << 30, bytes_free: 60 << 30 }),
        host: host::HostInfo {
            hostname: "worker-7".into(),
            kernel_name: "linux".into(),
            kernel_version: "6.8.0-1015-aws".into(),
            kernel_arch: "x86_64".into(),
            os_name: Some("ubuntu".into()),
            os_version: Some("22.04".into()),
        },
        network: Some(network::NetworkInfo {
            interface: "ens5".into(),
            ip: "10.0.3.17".parse().unwrap(),
            speed_mbits: Some(25000),
        }),
        arch: "amd64".into(),
    }
}

fn fixture_config() -> AgentConfig {
    let mut config = AgentConfig { datacenter: "dc2".into(), ..AgentConfig::default() };
    config.client.enabled = true;
    config.client.node_class = "gpu".into();
    config.client.node_pool = "ml".into();
    config.client.meta.insert("rack".into(), "r12".into());
    config.client.reserved.cpu_mhz = 500;
    config.client.reserved.memory_mb = 512;
    config.client.reserved.ports = vec![22];
    config
}

fn docker(healthy: bool) -> DriverFingerprint {
    DriverFingerprint {
        name: "docker".into(),
        detected: true,
        healthy,
        health_description: if healthy { "Healthy".into() } else { "Docker is unresponsive".into() },
        attributes: BTreeMap::from([("version".into(), "27.1.1".into())]),
    }
}

#[test]
fn node_from_fixtures() {
    let raw_exec = DriverFingerprint {
        name: "raw_exec".into(),
        detected: true,
        healthy: true,
        health_description: "Healthy".into(),
        attributes: BTreeMap::new(),
    };
    let exec = DriverFingerprint { name: "exec".into(), detected: false, healthy: false, ..raw_exec.clone() };
    let devices = to_node_devices(&SimulatedGpus::h200_8x().fingerprint(), &[]);
    let node =
        fingerprint_node(NodeId(7), &fixture_config(), &fixture_host(), &[raw_exec, exec, docker(true)], devices);
    let attributes: Vec<String> = node.attributes.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    expect![[r#"
        caravan.version = <version>
        cpu.arch = amd64
        cpu.frequency = 2000
        cpu.modelname = Intel(R) Xeon(R) Platinum 8480+
        cpu.numcores = 4
        cpu.totalcompute = 8000
        driver.docker = 1
        driver.docker.version = 27.1.1
        driver.raw_exec = 1
        kernel.arch = x86_64
        kernel.name = linux
        kernel.version = 6.8.0-1015-aws
        memory.totalbytes = 16757821440
        os.name = ubuntu
        os.version = 22.04
        unique.hostname = worker-7
        unique.network.ip-address = 10.0.3.17
        unique.storage.bytesfree = 64424509440
        unique.storage.bytestotal = 107374182400
        unique.storage.volume = /dev/nvme1n1"#]]
    .assert_eq(&attributes.join("\n").replace(env!("CARGO_PKG_VERSION"), "<version>"));
    assert_eq!(&*node.name, "worker-7");
    assert_eq!(node.datacenter, Sym::new("dc2"));
    assert_eq!(node.node_class, Sym::new("gpu"));
    assert_eq!(node.node_pool, Sym::new("ml"));
    assert_eq!(&*node.http_addr, "10.0.3.17:4646");
    assert_eq!(node.meta.get("rack").map(|v| &**v), Some("r12"));
    expect!["cpu_mhz=8000 cores=4 memory_mb=15981 disk_mb=61440 ports=20000..32000 devices=1x8"].assert_eq(&format!(
        "cpu_mhz={} cores={} memory_mb={} disk_mb={} ports={}..{} devices={}x{}",
        node.resources.cpu_mhz,
        node.resources.cores,
        node.resources.memory_mb,
        node.resources.disk_mb,
        node.resources.min_dynamic_port,
        node.resources.max_dynamic_port,
        node.resources.devices.len(),
        node.resources.devices.first().map_or(0, |d| d.instances.len()),
    ));
    assert_eq!(node.reserved, ReservedResources { cpu_mhz: 500, memory_mb: 512, disk_mb: 0, ports: vec![22] });
    assert_eq!(node.drivers.len(), 3);
    assert!(!node.drivers["exec"].detected);
    assert_eq!(node.status, NodeStatus::Initializing);
    assert_ne!(node.computed_class, 0);
}

#[test]
fn config_overrides_fingerprint() {
    let mut config = fixture_config();
    config.name = Some("named".into());
    config.client.cpu_total_compute_mhz = Some(12345);
    config.client.memory_total_mb = Some(2048);
    config.client.disk_free_mb = Some(100);
    config.advertise.http = Some("203.0.113.9".into());
    let node = fingerprint_node(NodeId(1), &config, &fixture_host(), &[], Vec::new());
    assert_eq!(&*node.name, "named");
    assert_eq!(node.resources.cpu_mhz, 12345);
    assert_eq!(node.attributes.get("cpu.totalcompute").map(|v| &**v), Some("12345"));
    assert_eq!(node.resources.memory_mb, 2048);
    assert_eq!(node.resources.disk_mb, 100);
    assert_eq!(&*node.http_addr, "203.0.113.9:4646");
}

#[test]
fn changes_that_matter() {
    let config = fixture_config();
    let host = fixture_host();
    let old = fingerprint_node(NodeId(1), &config, &host, &[docker(true)], Vec::new());
    assert_eq!(node_changes(&old, &old.clone()), Vec::<&str>::new());

    // A little less free disk: not worth a re-register.
    let mut busier = host.clone();
    busier.disk.as_mut().unwrap().bytes_free -= 200 << 20;
    let new = fingerprint_node(NodeId(1), &config, &busier, &[docker(true)], Vec::new());
    assert_eq!(node_changes(&old, &new), Vec::<&str>::new());

    // Much less free disk, a driver turning unhealthy, a new meta key: each counts.
    busier.disk.as_mut().unwrap().bytes_free -= 10 << 30;
    let new = fingerprint_node(NodeId(1), &config, &busier, &[docker(true)], Vec::new());
    assert_eq!(node_changes(&old, &new), vec!["disk"]);
    let new = fingerprint_node(NodeId(1), &config, &host, &[docker(false)], Vec::new());
    assert_eq!(node_changes(&old, &new), vec!["drivers"]);
    let mut config2 = config.clone();
    config2.client.meta.insert("zone".into(), "b".into());
    let new = fingerprint_node(NodeId(1), &config2, &host, &[docker(true)], Vec::new());
    assert_eq!(node_changes(&old, &new), vec!["meta"]);
    let devices = to_node_devices(&SimulatedGpus::h200_8x().fingerprint(), &[]);
    let new = fingerprint_node(NodeId(1), &config, &host, &[docker(true)], devices);
    assert_eq!(node_changes(&old, &new), vec!["devices"]);
}

/// The real machine: whatever it is, the numbers must be sane.
#[test]
fn this_machine() {
    let config = AgentConfig { data_dir: Some(std::env::temp_dir()), ..AgentConfig::default() };
    let host = HostFingerprint::read(&config);
    assert!(host.cpu.cores >= 1 && host.cpu.cores <= 65_536, "{:?}", host.cpu);
    assert!(host.cpu.mhz >= 100 && host.cpu.mhz <= 10_000, "{:?}", host.cpu);
    let memory = host.memory_bytes.expect("/proc/meminfo is readable on Linux");
    assert!((64 << 20..=1 << 50).contains(&memory), "{memory}");
    let disk = host.disk.clone().expect("statvfs of the temp dir works");
    assert!(disk.bytes_total > 0 && disk.bytes_free <= disk.bytes_total, "{disk:?}");
    assert!(!host.host.hostname.is_empty());
    assert_eq!(host.host.kernel_name, "linux");
    let node = fingerprint_node(NodeId(1), &config, &host, &[], Vec::new());
    for key in ["cpu.numcores", "cpu.totalcompute", "memory.totalbytes", "kernel.version", "unique.hostname"] {
        assert!(node.attributes.contains_key(key), "missing {key}");
    }
}
