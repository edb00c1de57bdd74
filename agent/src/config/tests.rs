//! Loading tests: fixture files in `agent/tests/fixtures/config/`, and one
//! `check` per error case with the exact message a user sees.

use std::path::{Path, PathBuf};

use expect_test::{Expect, expect};

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
    assert_eq!(loaded.warnings, Vec::<String>::new());
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
    expect![[r#""#]].assert_eq(&rendered);
}

#[test]
fn client_config() {
    let loaded = load(&[fixture("client.hcl")], false).unwrap();
    let c = loaded.config;
    expect![[r#""#]].assert_eq(&format!("{:#?}", c.client));
    assert_eq!(c.datacenter, "dc2");
    assert_eq!(c.region, "global");
    assert!(!c.server.enabled);
    assert_eq!(c.plugins.raw_exec, RawExecConfig { enabled: true, no_cgroups: false });
    assert_eq!(c.plugins.gpu.ignored_gpu_ids, vec!["GPU-dead".to_owned()]);
    assert_eq!(c.plugins.gpu.fingerprint_period, Duration::from_secs(120));
    assert_eq!(c.plugins.gpu.simulated.as_ref().map(|s| s.count), Some(2));
    expect![[r#""#]].assert_eq(&format!("{:?}", c.plugins.others));
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
    expect![[r#""#]].assert_eq(&format!("{:?}", c.client.meta));

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
            hcl("1.hcl", "plugin \"raw_exec\" { config { enabled = true } }\nserver { server_join { retry_join = [\"a\", \"b\"] } }"),
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
    check_hcl("server { bootstap_expect = 3 }", expect![[r#""#]]);
    check_hcl("colour = \"blue\"", expect![[r#""#]]);
    check_hcl("client { reserved { gpu = 1 } }", expect![[r#""#]]);
    check_hcl("server { server_join { retry_joins = [] } }", expect![[r#""#]]);
    check_hcl("plugin \"raw_exec\" { config { enabld = true } }", expect![[r#""#]]);
    check_hcl("plugin \"raw_exec\" { settings { enabled = true } }", expect![[r#""#]]);
    check(&[json("agent.json", r#"{"client": {"enabled": true, "servrs": []}}"#)], expect![[r#""#]]);
}

#[test]
fn type_errors() {
    check_hcl("server { bootstrap_expect = \"3\" }", expect![[r#""#]]);
    check_hcl("region = 5", expect![[r#""#]]);
    check_hcl("server { enabled = \"yes\" }", expect![[r#""#]]);
    check_hcl("client { servers = \"10.0.0.1\" }", expect![[r#""#]]);
    check_hcl("client { servers = [\"a\", 2] }", expect![[r#""#]]);
    check_hcl("ports = 4646", expect![[r#""#]]);
    check_hcl("client { meta { a = [1] } }", expect![[r#""#]]);
    check_hcl("server { heartbeat_grace = 30 }", expect![[r#""#]]);
    check_hcl("server { heartbeat_grace = \"30 parsecs\" }", expect![[r#""#]]);
    check_hcl("server { raft_snapshot_interval = \"-1m\" }", expect![[r#""#]]);
    check_hcl("bind_addr = \"{{ GetPrivateIP }}\"", expect![[r#""#]]);
    check_hcl("log_level = \"LOUD\"", expect![[r#""#]]);
    check_hcl("client { reserved { reserved_ports = \"22,80-70\" } }", expect![[r#""#]]);
    check_hcl("plugin \"nvidia-gpu\" { config { simulated { count = \"many\" } } }", expect![[r#""#]]);
}

#[test]
fn ports_in_range() {
    check_hcl("ports { http = 70000 }", expect![[r#""#]]);
    check_hcl("ports { rpc = -1 }", expect![[r#""#]]);
    check_hcl("ports { http = 4646\nrpc = 4646 }", expect![[r#""#]]);
    check_hcl("client { min_dynamic_port = 30000\nmax_dynamic_port = 20000 }", expect![[r#""#]]);
}

#[test]
fn validation() {
    check(&[hcl("agent.hcl", "server { enabled = true\nbootstrap_expect = 3 }")], expect![[r#""#]]);
    check(&[hcl("agent.hcl", "data_dir = \"/d\"\nserver { enabled = true }")], expect![[r#""#]]);
    check(&[hcl("agent.hcl", "data_dir = \"/d\"\nserver { enabled = true\nbootstrap_expect = 2 }")], expect![[r#""#]]);
    check(&[hcl("agent.hcl", "data_dir = \"/d\"")], expect![[r#""#]]);
    check(&[hcl("agent.hcl", "client { enabled = true }")], expect![[r#""#]]);
    check_hcl("tls { http = true }", expect![[r#""#]]);
}

#[test]
fn syntax_errors() {
    check(&[hcl("agent.hcl", "server {")], expect![[r#""#]]);
    check(&[json("agent.json", "{\"server\": ")], expect![[r#""#]]);
    check(&[hcl("agent.hcl", "region = \"a\"\nregion = \"b\"")], expect![[r#""#]]);
    check(&[hcl("agent.hcl", "server { enabled = true }\nserver { enabled = false }")], expect![[r#""#]]);
}

#[test]
fn errors_from_several_files_name_each_file() {
    check(
        &[
            hcl("a.hcl", "server { bootstap_expect = 3 }\nports { http = \"x\" }"),
            json("b.json", r#"{"client": {"enabled": "no"}}"#),
        ],
        expect![[r#""#]],
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
