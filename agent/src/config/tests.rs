//! Loading tests: fixture files in `agent/tests/fixtures/config/`, and one
//! `check` per error case with the exact message a user sees.

use std::path::{Path, PathBuf};

use expect_test::{Expect, expect};

use super::decode::parse_port_ranges;
use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(name)
}

fn hcl(name: &str, text: &str) -> Source {
    Source { name: name.to_owned(), format: Format::Hcl, text: text.to_owned() }
}

fn json(name: &str, text: &str) -> Source {
    Source { name: name.to_owned(), format: Format::Json, text: text.to_owned() }
}

/// A minimal valid client config, to which an error case adds one mistake.
const CLIENT_OK: &str = "data_dir = \"/tmp/x\"\nclient { enabled = true }\n";

/// Load `sources` and render the errors (or the warnings, when it loads).
fn check(sources: &[Source], expected: Expect) {
    let rendered = match load_sources(sources, false) {
        Ok(loaded) => format!("ok; warnings: {:?}", loaded.warnings),
        Err(errors) => errors.to_string(),
    };
    expected.assert_eq(&rendered);
}

/// One HCL file: the valid client plus `extra`.
fn check_hcl(extra: &str, expected: Expect) {
    check(&[hcl("agent.hcl", &format!("{CLIENT_OK}{extra}"))], expected);
}

#[test]
fn full_server_config() {
    let loaded = load(&[fixture("server.hcl")], false).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0].starts_with("tls.http = true: the HTTP API does not serve HTTPS"),
        "{:?}",
        loaded.warnings
    );
    let c = loaded.config;
    let rendered = format!(
        "name={:?} region={} dc={} data_dir={:?} bind={} log={:?}\nports={:?}\naddresses={:?}\nadvertise={:?}\n\
         server={:#?}\ntls={:?}\ntelemetry={:?}\nclient.enabled={} raw_exec={:?}",
        c.name,
        c.region,
        c.datacenter,
        c.data_dir,
        c.bind_addr,
        c.log_level,
        c.ports,
        c.addresses,
        c.advertise,
        c.server,
        c.tls,
        c.telemetry,
        c.client.enabled,
        c.plugins.raw_exec,
    );
    expect![[r#"
        name=Some("server-1") region=eu dc=eu-west-1a data_dir=Some("/var/lib/caravan") bind=10.0.0.5 log=Warn
        ports=Ports { http: 5646, rpc: 5647, serf: 4648 }
        addresses=Addresses { http: Some(0.0.0.0), rpc: None, serf: None }
        advertise=Advertise { http: Some("10.0.0.5"), rpc: Some("10.0.0.5:5647"), serf: None }
        server=ServerConfig {
            enabled: true,
            bootstrap_expect: 3,
            server_join: ServerJoin {
                retry_join: [
                    "10.0.0.6",
                    "10.0.0.7:5647",
                ],
                retry_interval: 15s,
                retry_max: 10,
            },
            num_schedulers: Some(
                4,
            ),
            heartbeat_grace: 30s,
            min_heartbeat_ttl: 15s,
            max_heartbeats_per_second: 50,
            raft_snapshot_threshold: 16384,
            raft_snapshot_interval: 300s,
        }
        tls=TlsConfig { http: true, rpc: true, ca_file: Some("/etc/caravan/ca.pem"), cert_file: Some("/etc/caravan/server.pem"), key_file: Some("/etc/caravan/server-key.pem"), verify_server_hostname: true, verify_https_client: false }
        telemetry=TelemetryConfig { collection_interval: 10s, publish_allocation_metrics: false, publish_node_metrics: false, prometheus_metrics: true, disable_hostname: false }
        client.enabled=false raw_exec=RawExecConfig { enabled: false, no_cgroups: false }"#]].assert_eq(&rendered);
}

#[test]
fn client_config() {
    let loaded = load(&[fixture("client.hcl")], false).unwrap();
    let c = loaded.config;
    expect![[r#"
        ClientConfig {
            enabled: true,
            state_dir: None,
            alloc_dir: None,
            servers: [
                "10.0.0.5:4647",
                "10.0.0.6",
            ],
            server_join: ServerJoin {
                retry_join: [],
                retry_interval: 30s,
                retry_max: 0,
            },
            node_class: "gpu",
            node_pool: "ml",
            meta: {
                "rack": "r12",
                "slot": "4",
            },
            options: {
                "driver.allowlist": "raw_exec,docker",
            },
            reserved: Reserved {
                cpu_mhz: 500,
                memory_mb: 512,
                disk_mb: 1024,
                ports: [
                    22,
                    80,
                    8500,
                    8501,
                    8502,
                ],
            },
            network_interface: Some(
                "eth0",
            ),
            network_speed_mbits: None,
            cpu_total_compute_mhz: Some(
                40000,
            ),
            memory_total_mb: None,
            disk_total_mb: None,
            disk_free_mb: None,
            min_dynamic_port: 20000,
            max_dynamic_port: 30000,
        }"#]]
    .assert_eq(&format!("{:#?}", c.client));
    assert_eq!(c.datacenter, "dc2");
    assert_eq!(c.region, "global");
    assert!(!c.server.enabled);
    assert_eq!(c.plugins.raw_exec, RawExecConfig { enabled: true, no_cgroups: false });
    assert_eq!(c.plugins.gpu.ignored_gpu_ids, vec!["GPU-dead".to_owned()]);
    assert_eq!(c.plugins.gpu.fingerprint_period, Duration::from_secs(120));
    assert_eq!(c.plugins.gpu.simulated.as_ref().map(|s| s.count), Some(4));
    expect![[r#"{"docker": Object({"allow_privileged": Bool(false), "volumes": Object({"enabled": Bool(true)})})}"#]]
        .assert_eq(&format!("{:?}", c.plugins.others));
}

#[test]
fn json_equals_hcl() {
    let from_hcl = load(&[fixture("client.hcl")], false).unwrap().config;
    let from_json = load(&[fixture("client.json")], false).unwrap().config;
    assert_eq!(from_hcl, from_json);
}

#[test]
fn defaults() {
    let c = load_sources(&[hcl("a.hcl", CLIENT_OK)], false).unwrap().config;
    assert_eq!(c.region, "global");
    assert_eq!(c.datacenter, "dc1");
    assert_eq!(c.bind_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(c.ports, Ports { http: 4646, rpc: 4647, serf: 4648 });
    assert_eq!(c.client.node_pool, "default");
    assert_eq!(c.server.server_join.retry_interval, Duration::from_secs(30));
    assert!(!c.plugins.raw_exec.enabled);
    assert_eq!(c.node_name("host-a"), "host-a");
}

#[test]
fn dev_defaults() {
    let loaded = load_sources(&[], true).unwrap();
    let c = loaded.config;
    assert!(c.dev);
    assert!(c.server.enabled);
    assert!(c.client.enabled);
    assert_eq!(c.server.bootstrap_expect, 1);
    assert!(c.plugins.raw_exec.enabled);
    assert_eq!(c.bind_addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(c.data_dir.as_ref().is_some_and(|d| d.starts_with(std::env::temp_dir())));
    assert!(loaded.warnings.is_empty());
    // A file given with -dev overrides the dev defaults.
    let c = load_sources(&[hcl("a.hcl", "ports { http = 0 }\nserver { enabled = false }")], true).unwrap().config;
    assert_eq!(c.ports.http, 0);
    assert!(!c.server.enabled);
    assert!(c.client.enabled);
}

#[test]
fn merge_order_later_wins_maps_merge() {
    let c = load(&[fixture("dir")], false).unwrap().config;
    assert_eq!(c.datacenter, "dc9");
    assert_eq!(c.client.node_class, "batch");
    expect![[r#"{"rack": "r1", "zone": "b"}"#]].assert_eq(&format!("{:?}", c.client.meta));

    // Explicit files, in the order given: the second wins where both set a key.
    let first = hcl("1.hcl", "datacenter = \"a\"\nregion = \"r\"\ndata_dir = \"/d\"\nclient { enabled = true }");
    let second = hcl("2.hcl", "datacenter = \"b\"\nclient { servers = [\"s1\"] }");
    let c = load_sources(&[first.clone(), second.clone()], false).unwrap().config;
    assert_eq!((c.datacenter.as_str(), c.region.as_str()), ("b", "r"));
    assert!(c.client.enabled);
    assert_eq!(c.client.servers, vec!["s1".to_owned()]);
    let c = load_sources(&[second, first], false).unwrap().config;
    assert_eq!(c.datacenter, "a");

    // Plugin blocks from different files merge too; lists are replaced.
    let c = load_sources(
        &[
            hcl(
                "1.hcl",
                "plugin \"raw_exec\" {\n  config { enabled = true }\n}\nserver {\n  server_join { retry_join = [\"a\", \"b\"] }\n}",
            ),
            json("2.json", r#"{"data_dir": "/d", "client": {"enabled": true}, "server": {"server_join": {"retry_join": ["c"]}}, "plugin": {"docker": {"config": {"x": 1}}}}"#),
        ],
        false,
    )
    .unwrap()
    .config;
    assert!(c.plugins.raw_exec.enabled);
    assert!(c.plugins.others.contains_key("docker"));
    assert_eq!(c.server.server_join.retry_join, vec!["c".to_owned()]);
}

#[test]
fn unknown_keys() {
    check_hcl("server { bootstap_expect = 3 }", expect!["agent.hcl: server.bootstap_expect: unknown key"]);
    check_hcl("colour = \"blue\"", expect!["agent.hcl: colour: unknown key"]);
    check_hcl("client {\n  reserved { gpu = 1 }\n}", expect!["agent.hcl: client.reserved.gpu: unknown key"]);
    check_hcl(
        "server {\n  server_join { retry_joins = [] }\n}",
        expect!["agent.hcl: server.server_join.retry_joins: unknown key"],
    );
    check_hcl(
        "plugin \"raw_exec\" {\n  config { enabld = true }\n}",
        expect!["agent.hcl: plugin.raw_exec.config.enabld: unknown key"],
    );
    check_hcl(
        "plugin \"raw_exec\" {\n  settings { enabled = true }\n}",
        expect!["agent.hcl: plugin.raw_exec.settings: unknown key"],
    );
    check(
        &[json("agent.json", r#"{"client": {"enabled": true, "servrs": []}}"#)],
        expect!["agent.json: client.servrs: unknown key"],
    );
}

#[test]
fn type_errors() {
    check_hcl(
        "server { bootstrap_expect = \"3\" }",
        expect!["agent.hcl: server.bootstrap_expect: expected an integer, found string"],
    );
    check_hcl("region = 5", expect!["agent.hcl: region: expected a string, found number"]);
    check_hcl("server { enabled = \"yes\" }", expect!["agent.hcl: server.enabled: expected a bool, found string"]);
    check_hcl(
        "client { servers = \"10.0.0.1\" }",
        expect!["agent.hcl: client.servers: expected a list of strings, found string"],
    );
    check_hcl(
        "client { servers = [\"a\", 2] }",
        expect!["agent.hcl: client.servers[1]: expected a string, found number"],
    );
    check_hcl("ports = 4646", expect!["agent.hcl: ports: expected a block, found number"]);
    check_hcl("client {\n  meta = { a = [1] }\n}", expect!["agent.hcl: client.meta.a: expected a string, found list"]);
    check_hcl(
        "server { heartbeat_grace = 30 }",
        expect![[r#"agent.hcl: server.heartbeat_grace: expected a duration string such as "30s", found number"#]],
    );
    check_hcl(
        "server { heartbeat_grace = \"30 parsecs\" }",
        expect![[
            r#"agent.hcl: server.heartbeat_grace: invalid duration "30 parsecs": unknown unit " parsecs" (ns, us, ms, s, m, h)"#
        ]],
    );
    check_hcl(
        "server { raft_snapshot_interval = \"-1m\" }",
        expect![[r#"agent.hcl: server.raft_snapshot_interval: invalid duration "-1m": negative duration"#]],
    );
    check_hcl(
        "bind_addr = \"{{ GetPrivateIP }}\"",
        expect![[r#"agent.hcl: bind_addr: expected an IP address, found "{{ GetPrivateIP }}""#]],
    );
    check_hcl(
        "log_level = \"LOUD\"",
        expect![[r#"agent.hcl: log_level: expected one of TRACE, DEBUG, INFO, WARN, ERROR, found "LOUD""#]],
    );
    check_hcl(
        "client {\n  reserved { reserved_ports = \"22,80-70\" }\n}",
        expect![[r#"agent.hcl: client.reserved.reserved_ports: port range "80-70" is backwards"#]],
    );
    check_hcl(
        "plugin \"nvidia-gpu\" {\n  config {\n    simulated { count = \"many\" }\n  }\n}",
        expect![[
            r#"agent.hcl: plugin.nvidia-gpu.config.simulated: invalid simulated GPU config: count = "many": not a non-negative integer (invalid digit found in string)"#
        ]],
    );
}

#[test]
fn ports_in_range() {
    check_hcl("ports { http = 70000 }", expect!["agent.hcl: ports.http: 70000 is out of range (0 to 65535)"]);
    check_hcl("ports { rpc = -1 }", expect!["agent.hcl: ports.rpc: -1 is out of range (0 to 65535)"]);
    check_hcl("ports {\n  http = 4646\n  rpc = 4646\n}", expect!["ports.rpc: port 4646 is already used by ports.http"]);
    check_hcl(
        "client {\n  min_dynamic_port = 30000\n  max_dynamic_port = 20000\n}",
        expect!["client.min_dynamic_port: 30000 is above client.max_dynamic_port (20000)"],
    );
}

#[test]
fn validation() {
    check(
        &[hcl("agent.hcl", "server {\n  enabled = true\n  bootstrap_expect = 3\n}")],
        expect!["data_dir: required when server.enabled is true"],
    );
    check(
        &[hcl("agent.hcl", "data_dir = \"/d\"\nserver { enabled = true }")],
        expect!["server.bootstrap_expect: must be at least 1 when server.enabled is true"],
    );
    check(
        &[hcl("agent.hcl", "data_dir = \"/d\"\nserver {\n  enabled = true\n  bootstrap_expect = 2\n}")],
        expect![[
            r#"ok; warnings: ["server.bootstrap_expect = 2: an even number of servers tolerates no more failures than one fewer; 3 or 5 is recommended"]"#
        ]],
    );
    check(
        &[hcl("agent.hcl", "data_dir = \"/d\"")],
        expect!["neither server.enabled nor client.enabled is set (or use -dev)"],
    );
    check(
        &[hcl("agent.hcl", "client { enabled = true }")],
        expect!["data_dir: required when client.enabled is true (or set client.state_dir)"],
    );
    check_hcl("tls { http = true }", expect!["tls: cert_file and key_file are required when http or rpc is true"]);
}

#[test]
fn syntax_errors() {
    check(
        &[hcl("agent.hcl", "server {")],
        expect![[r#"
            agent.hcl: --> HCL parse error in line 1, column 9
              |
            1 | server {
              |         ^---
              |
              = invalid block body; expected `}`, newline or identifier"#]],
    );
    check(&[json("agent.json", "{\"server\": ")], expect!["agent.json: EOF while parsing a value at line 1 column 11"]);
    check(
        &[hcl("agent.hcl", "region = \"a\"\nregion = \"b\"")],
        expect![[r#"
            agent.hcl: --> HCL parse error in line 2, column 1
              |
            2 | region = "b"
              | ^---
              |
              = invalid attribute; expected unique attribute key; found redefined attribute"#]],
    );
    check(
        &[hcl("agent.hcl", "server { enabled = true }\nserver { enabled = false }")],
        expect!["agent.hcl: server: block given more than once"],
    );
}

#[test]
fn errors_from_several_files_name_each_file() {
    check(
        &[
            hcl(
                "a.hcl",
                "server { bootstap_expect = 3 }\nports { http = \"x\" }\nclient {\n  enabled = 1\n  meta { x = \"y\" }\n}",
            ),
            json("b.json", r#"{"client": {"enabled": "no"}}"#),
        ],
        expect![[r#"
            a.hcl: ports.http: expected an integer, found string
            a.hcl: server.bootstap_expect: unknown key
            a.hcl: client.enabled: expected a bool, found number
            b.json: client.enabled: expected a bool, found string"#]],
    );
}

#[test]
fn missing_file_and_directory_listing() {
    let err = load(&[fixture("no-such.hcl")], false).unwrap_err().to_string();
    assert!(err.contains("no-such.hcl: cannot read"), "{err}");
    let files = config_dir_files(&fixture("dir")).unwrap();
    let names: Vec<_> = files.iter().filter_map(|f| f.file_name()?.to_str()).collect();
    assert_eq!(names, ["10-base.hcl", "20-override.json"]);
}

#[test]
fn port_ranges() {
    assert_eq!(parse_port_ranges("22, 80,8000-8002,80"), Ok(vec![22, 80, 8000, 8001, 8002]));
    assert_eq!(parse_port_ranges(""), Ok(vec![]));
    assert!(parse_port_ranges("65536").is_err());
}
