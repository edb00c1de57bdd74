//! Jobspec parsing at the boundary: HCL text in, Nomad API JSON out.

use caravan_net::jobspec::parse_jobspec;
use expect_test::{Expect, expect};

const HELLO: &str = include_str!("../../examples/hello.nomad.hcl");
const WEB: &str = include_str!("../../examples/web.nomad.hcl");
const GPU_TRAIN: &str = include_str!("../../examples/gpu-train.nomad.hcl");
const NIGHTLY_REPORT: &str = include_str!("../../examples/nightly-report.nomad.hcl");

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn check(source: &str, cli_vars: &[(&str, &str)], expect: Expect) {
    let job = parse_jobspec(source, &vars(cli_vars), &[]).expect("parses");
    expect.assert_eq(&serde_json::to_string_pretty(&job).unwrap());
}

fn parse_err(source: &str) -> String {
    parse_err_with(source, &[], &[])
}

fn parse_err_with(source: &str, cli_vars: &[(&str, &str)], var_files: &[&str]) -> String {
    match parse_jobspec(source, &vars(cli_vars), var_files) {
        Ok(job) => panic!("expected an error, parsed {job}"),
        Err(err) => err.to_string(),
    }
}

fn job_with_group_body(group_body: &str) -> String {
    format!("job \"j\" {{\n  group \"g\" {{\n{group_body}\n  }}\n}}\n")
}

#[test]
fn hello_example() {
    check(
        HELLO,
        &[],
        expect![[r#"
        {
          "Job": {
            "Datacenters": [
              "dc1"
            ],
            "ID": "hello",
            "Name": "hello",
            "TaskGroups": [
              {
                "Count": 1,
                "Name": "hello",
                "Tasks": [
                  {
                    "Config": {
                      "args": [
                        "hello from caravan"
                      ],
                      "command": "/bin/echo"
                    },
                    "Driver": "raw_exec",
                    "Name": "echo",
                    "Resources": {
                      "CPU": 100,
                      "MemoryMB": 64
                    }
                  }
                ]
              }
            ],
            "Type": "batch"
          }
        }"#]],
    );
}

#[test]
fn web_example_with_var_override() {
    check(
        WEB,
        &[("image", "nginx:1.28-alpine")],
        expect![[r#"
        {
          "Job": {
            "Constraints": [
              {
                "LTarget": "${attr.kernel.name}",
                "RTarget": "linux"
              }
            ],
            "Datacenters": [
              "dc1",
              "dc2"
            ],
            "ID": "web",
            "Name": "web",
            "TaskGroups": [
              {
                "Affinities": [
                  {
                    "LTarget": "${node.class}",
                    "RTarget": "frontend",
                    "Weight": 50
                  }
                ],
                "Count": 3,
                "Name": "web",
                "Networks": [
                  {
                    "DynamicPorts": [
                      {
                        "Label": "http",
                        "To": 8080
                      }
                    ],
                    "ReservedPorts": [
                      {
                        "Label": "admin",
                        "Value": 9090
                      }
                    ]
                  }
                ],
                "RestartPolicy": {
                  "Attempts": 3,
                  "Delay": 15000000000,
                  "Interval": 1800000000000,
                  "Mode": "fail"
                },
                "Spreads": [
                  {
                    "Attribute": "${node.datacenter}",
                    "SpreadTarget": [
                      {
                        "Percent": 60,
                        "Value": "dc1"
                      },
                      {
                        "Percent": 40,
                        "Value": "dc2"
                      }
                    ],
                    "Weight": 100
                  }
                ],
                "Tasks": [
                  {
                    "Config": {
                      "image": "nginx:1.28-alpine",
                      "ports": [
                        "http",
                        "admin"
                      ]
                    },
                    "Driver": "docker",
                    "Env": {
                      "ALLOC": "${NOMAD_ALLOC_ID}",
                      "SERVICE": "WEB"
                    },
                    "Name": "server",
                    "Resources": {
                      "CPU": 500,
                      "MemoryMB": 256
                    }
                  }
                ],
                "Update": {
                  "AutoRevert": true,
                  "HealthyDeadline": 300000000000,
                  "MaxParallel": 1,
                  "MinHealthyTime": 10000000000
                }
              }
            ],
            "Type": "service"
          }
        }"#]],
    );
}

#[test]
fn web_example_default_image() {
    let job = parse_jobspec(WEB, &[], &[]).unwrap();
    assert_eq!(job["Job"]["TaskGroups"][0]["Tasks"][0]["Config"]["image"], "nginx:1.27");
}

#[test]
fn gpu_train_example() {
    let job = parse_jobspec(GPU_TRAIN, &[], &[]).unwrap();
    let group = &job["Job"]["TaskGroups"][0];
    assert_eq!(group["Count"], 4);
    assert_eq!(group["Gang"], true);
    assert_eq!(group["GangTopology"], "${meta.rack}");
    let device = &group["Tasks"][0]["Resources"]["Devices"][0];
    check_json(
        device,
        expect![[r#"
            {
              "Constraints": [
                {
                  "LTarget": "${device.attr.memory}",
                  "Operand": ">=",
                  "RTarget": "80 GiB"
                }
              ],
              "Count": 8,
              "Name": "nvidia/gpu"
            }"#]],
    );
}

fn check_json(value: &serde_json::Value, expect: Expect) {
    expect.assert_eq(&serde_json::to_string_pretty(value).unwrap());
}

#[test]
fn variables_locals_and_functions() {
    let source = r#"
variable "dcs" {
  type    = list(string)
  default = ["dc1"]
}
variable "count" {
  type    = number
  default = 1
}
variable "enabled" {
  type    = bool
  default = false
}
variable "region" {}
locals {
  # locals may use locals declared after them
  full   = "${local.prefix}-${var.region}"
  prefix = lower("API")
  tags   = concat(["a"], ["b", "c"])
}
job "j" {
  datacenters = var.dcs
  region      = var.region
  meta {
    full    = local.full
    joined  = join(",", local.tags)
    n       = length(local.tags)
    fmt     = format("%s-%d", upper(var.region), var.count)
    enabled = var.enabled
  }
  group "g" {
    count = var.count
  }
}
"#;
    let cli = [("count", "5"), ("enabled", "true"), ("dcs", r#"["x", "y"]"#)];
    let job = parse_jobspec(source, &vars(&cli), &["region = \"eu\""]).unwrap();
    check_json(
        &job,
        expect![[r#"
            {
              "Job": {
                "Datacenters": [
                  "x",
                  "y"
                ],
                "ID": "j",
                "Meta": {
                  "enabled": "true",
                  "fmt": "EU-5",
                  "full": "api-eu",
                  "joined": "a,b,c",
                  "n": "3"
                },
                "Name": "j",
                "Region": "eu",
                "TaskGroups": [
                  {
                    "Count": 5,
                    "Name": "g"
                  }
                ]
              }
            }"#]],
    );
}

#[test]
fn cli_vars_override_var_files() {
    let source = "variable \"x\" { default = \"d\" }\njob \"j\" { name = var.x }\n";
    let name = |cli: &[(&str, &str)], files: &[&str]| {
        parse_jobspec(source, &vars(cli), files).unwrap()["Job"]["Name"].as_str().unwrap().to_string()
    };
    assert_eq!(name(&[], &[]), "d");
    assert_eq!(name(&[], &["x = \"f1\"", "x = \"f2\""]), "f2");
    assert_eq!(name(&[("x", "cli")], &["x = \"f1\""]), "cli");
}

#[test]
fn runtime_references_stay_literal() {
    let source = r#"
variable "v" { default = "evaluated" }
job "j" {
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }
  constraint {
    distinct_hosts = true
  }
  constraint {
    attribute = "${meta.rack}"
    operator  = "distinct_property"
    value     = "2"
  }
  constraint {
    distinct_property = "${node.unique.id}"
  }
  constraint {
    attribute = "${attr.os.version}"
    version   = ">= 20.04"
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "${NOMAD_TASK_DIR}/run"
        args    = ["${var.v}", "${env.HOME}", "mixed ${node.region} and ${var.v}"]
      }
    }
  }
}
"#;
    let job = parse_jobspec(source, &[], &[]).unwrap();
    check_json(
        &job["Job"]["Constraints"],
        expect![[r#"
            [
              {
                "LTarget": "${attr.kernel.name}",
                "RTarget": "linux"
              },
              {
                "Operand": "distinct_hosts"
              },
              {
                "LTarget": "${meta.rack}",
                "Operand": "distinct_property",
                "RTarget": "2"
              },
              {
                "LTarget": "${node.unique.id}",
                "Operand": "distinct_property"
              },
              {
                "LTarget": "${attr.os.version}",
                "Operand": "version",
                "RTarget": ">= 20.04"
              }
            ]"#]],
    );
    check_json(
        &job["Job"]["TaskGroups"][0]["Tasks"][0]["Config"],
        expect![[r#"
            {
              "args": [
                "evaluated",
                "${env.HOME}",
                "mixed ${node.region} and evaluated"
              ],
              "command": "${NOMAD_TASK_DIR}/run"
            }"#]],
    );
}

#[test]
fn config_blocks_become_arrays() {
    let source = job_with_group_body(
        r#"
    task "t" {
      driver = "docker"
      config {
        image = "redis"
        mount {
          type   = "bind"
          source = "/a"
        }
        mount {
          type   = "bind"
          source = "/b"
        }
        logging {
          type = "syslog"
        }
      }
      lifecycle {
        hook    = "prestart"
        sidecar = false
      }
      dispatch_payload {
        file = "config.json"
      }
      kill_timeout = "1h30m"
    }
    ephemeral_disk {
      size = 300
    }
    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      unlimited      = true
    }
    migrate {
      max_parallel = 2
    }"#,
    );
    let job = parse_jobspec(&source, &[], &[]).unwrap();
    check_json(
        &job["Job"]["TaskGroups"][0],
        expect![[r#"
            {
              "EphemeralDisk": {
                "SizeMB": 300
              },
              "Migrate": {
                "MaxParallel": 2
              },
              "Name": "g",
              "ReschedulePolicy": {
                "Delay": 30000000000,
                "DelayFunction": "exponential",
                "Unlimited": true
              },
              "Tasks": [
                {
                  "Config": {
                    "image": "redis",
                    "logging": [
                      {
                        "type": "syslog"
                      }
                    ],
                    "mount": [
                      {
                        "source": "/a",
                        "type": "bind"
                      },
                      {
                        "source": "/b",
                        "type": "bind"
                      }
                    ]
                  },
                  "DispatchPayload": {
                    "File": "config.json"
                  },
                  "Driver": "docker",
                  "KillTimeout": 5400000000000,
                  "Lifecycle": {
                    "Hook": "prestart",
                    "Sidecar": false
                  },
                  "Name": "t"
                }
              ]
            }"#]],
    );
}

#[test]
fn syntax_error_has_position() {
    let err = parse_err("job \"j\" {\n  type = \n}\n");
    assert!(err.starts_with("syntax error"), "{err}");
    assert!(err.contains("line 2, column 10"), "names line and column: {err}");
}

#[test]
fn unknown_argument_and_block_are_rejected() {
    let err = parse_err(&job_with_group_body("    cuont = 3"));
    assert!(err.contains("unsupported argument") && err.contains("\"cuont\""), "{err}");
    assert!(err.contains("job \"j\" > group \"g\""), "names the block path: {err}");

    let err = parse_err(&job_with_group_body("    task \"t\" {\n      resource { cpu = 1 }\n    }"));
    assert!(err.contains("unsupported block type") && err.contains("\"resource\""), "{err}");
    assert!(err.contains("job \"j\" > group \"g\" > task \"t\""), "{err}");

    let err = parse_err("jobb \"j\" {}\n");
    assert!(err.contains("unsupported block type") && err.contains("\"jobb\""), "{err}");
}

#[test]
fn wrong_types_are_rejected() {
    let err = parse_err(&job_with_group_body("    count = \"three\""));
    assert!(err.contains("count") && err.contains("wrong type") && err.contains("\"three\""), "{err}");

    let err = parse_err("job \"j\" { datacenters = \"dc1\" }\n");
    assert!(err.contains("datacenters") && err.contains("list of strings"), "{err}");

    let err = parse_err(&job_with_group_body("    gang = 3"));
    assert!(err.contains("gang") && err.contains("expected a bool"), "{err}");
}

#[test]
fn job_block_count() {
    let err = parse_err("variable \"x\" { default = 1 }\n");
    assert!(err.contains("missing job block"), "{err}");

    let err = parse_err("job \"a\" {}\njob \"b\" {}\n");
    assert!(err.contains("duplicate job block"), "{err}");

    let err = parse_err("job {}\n");
    assert!(err.contains("job block expects 1 label"), "{err}");
}

#[test]
fn bad_duration_is_rejected() {
    let err = parse_err(&job_with_group_body("    restart {\n      delay = \"5 minutes\"\n    }"));
    assert!(err.contains("invalid duration \"5 minutes\"") && err.contains("delay"), "{err}");
    assert!(err.contains("group \"g\" > restart"), "{err}");
}

#[test]
fn duplicate_single_block_is_rejected() {
    let err = parse_err(&job_with_group_body("    restart {}\n    restart {}"));
    assert!(err.contains("duplicate restart block"), "{err}");
}

#[test]
fn variable_errors() {
    let source = "variable \"image\" {\n  type = string\n}\njob \"j\" { name = var.image }\n";
    let err = parse_err(source);
    assert!(err.contains("variable \"image\" is required"), "{err}");

    let err = parse_err_with(source, &[("imgae", "x")], &[]);
    assert!(err.contains("undefined variable \"imgae\"") && err.contains("-var"), "{err}");

    let err = parse_err_with(source, &[], &["other = 1"]);
    assert!(err.contains("undefined variable \"other\"") && err.contains("var file 0"), "{err}");

    let err = parse_err_with(source, &[], &["image = "]);
    assert!(err.contains("var file 0: syntax error"), "{err}");

    let typed = "variable \"n\" {\n  type = number\n}\njob \"j\" { priority = var.n }\n";
    let err = parse_err_with(typed, &[("n", "many")], &[]);
    assert!(err.contains("variable \"n\"") && err.contains("not a number"), "{err}");

    let err = parse_err("job \"j\" { name = var.missing }\n");
    assert!(err.contains("name") && err.contains("missing"), "{err}");

    let err = parse_err("job \"j\" { name = nosuchfunc(\"x\") }\n");
    assert!(err.contains("nosuchfunc"), "{err}");
}

/// Truncated and byte-mutated inputs must return (Ok or Err), never panic.
#[test]
fn mangled_inputs_never_panic() {
    for source in [HELLO, WEB, GPU_TRAIN] {
        let bytes = source.as_bytes();
        for end in (0..bytes.len()).step_by(7) {
            let text = String::from_utf8_lossy(&bytes[..end]);
            let _ = parse_jobspec(&text, &[], &[]);
        }
        // A fixed LCG keeps the run reproducible; the seed is the state's first value.
        let mut state: u64 = 0x5eed;
        let replacements = b"{}[]\"$=#\n x0.-(),";
        for _ in 0..400 {
            let mut mutated = bytes.to_vec();
            for _ in 0..3 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = usize::try_from(state >> 33).unwrap() % mutated.len();
                let with = replacements[usize::try_from(state >> 20).unwrap() % replacements.len()];
                mutated[at] = with;
            }
            let text = String::from_utf8_lossy(&mutated);
            let _ = parse_jobspec(&text, &[], &[]);
        }
    }
}

#[test]
fn locals_cycle_is_an_error() {
    let err = parse_err("locals {\n  a = local.b\n  b = local.a\n}\njob \"j\" {}\n");
    assert!(err.starts_with("locals: a:"), "{err}");
}

#[test]
fn heredoc_keeps_runtime_references() {
    let source =
        "job \"j\" {\n  meta {\n    script = <<EOT\ncd ${NOMAD_TASK_DIR} && echo ${upper(\"x\")}\nEOT\n  }\n}\n";
    let job = parse_jobspec(source, &[], &[]).unwrap();
    assert_eq!(job["Job"]["Meta"]["script"], "cd ${NOMAD_TASK_DIR} && echo X\n");
}

#[test]
fn periodic_blocks() {
    let job = parse_jobspec(NIGHTLY_REPORT, &[], &[]).expect("parses");
    check_json(
        &job["Job"]["Periodic"],
        expect![[r#"
            {
              "ProhibitOverlap": true,
              "Specs": [
                "30 2 * * *",
                "0 12 * * MON-FRI"
              ],
              "TimeZone": "America/New_York"
            }"#]],
    );
    // The legacy single `cron`, and `enabled`.
    let legacy = "job \"j\" {\n  type = \"batch\"\n  periodic {\n    cron = \"@hourly\"\n    enabled = false\n  }\n}\n";
    let job = parse_jobspec(legacy, &[], &[]).expect("parses");
    check_json(
        &job["Job"]["Periodic"],
        expect![[r#"
            {
              "Enabled": false,
              "Spec": "@hourly",
              "SpecType": "cron"
            }"#]],
    );
    assert!(parse_err("job \"j\" {\n  periodic {\n    every = \"1h\"\n  }\n}\n").contains("every"));
}
