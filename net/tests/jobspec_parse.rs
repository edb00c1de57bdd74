//! Jobspec parsing at the boundary: HCL text in, Nomad API JSON out.

use caravan_net::jobspec::parse_jobspec;
use expect_test::{Expect, expect};

const HELLO: &str = include_str!("../../examples/hello.nomad.hcl");
const WEB: &str = include_str!("../../examples/web.nomad.hcl");
const GPU_TRAIN: &str = include_str!("../../examples/gpu-train.nomad.hcl");

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
    check(HELLO, &[], expect![[r#"
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
        }"#]]);
}

#[test]
fn web_example_with_var_override() {
    check(WEB, &[("image", "nginx:1.28-alpine")], expect![[r#"
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
        }"#]]);
}
