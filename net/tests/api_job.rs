//! Submitted jobs: Nomad's JSON in, canonical engine job out, and back.

use caravan_net::api::{self, BODY_BYTES_MAX, decode_api_job, decode_job_request, job_from_api, job_to_api};
use expect_test::{Expect, expect};

const FULL_JOB: &str = include_str!("data/full_job.json");
const MINIMAL_JOB: &str =
    r#"{"Job":{"ID":"x","TaskGroups":[{"Name":"g","Tasks":[{"Name":"t","Driver":"raw_exec"}]}]}}"#;

fn canonical_json(body: &str) -> String {
    let job = decode_job_request(body.as_bytes()).expect("job decodes");
    serde_json::to_string_pretty(&job_to_api(&job)).expect("serializes")
}

#[test]
fn full_job_round_trips() {
    let job = decode_job_request(FULL_JOB.as_bytes()).expect("full job decodes");
    let rendered = job_to_api(&job);
    let again = job_from_api(rendered.clone()).expect("rendered job converts back");
    assert_eq!(again, job, "job_from_api(job_to_api(x)) == x");
    assert_eq!(job_to_api(&again), rendered);
    let text = serde_json::to_string_pretty(&rendered).unwrap();
    // The rendered text parses back as a request body too.
    assert_eq!(decode_job_request(text.as_bytes()).unwrap(), job);
    expect_test::expect_file!["data/full_job.canonical.json"].assert_eq(&text);
}

#[test]
fn bare_job_is_accepted() {
    let wrapped = decode_job_request(MINIMAL_JOB.as_bytes()).unwrap();
    let bare = r#"{"ID":"x","TaskGroups":[{"Name":"g","Tasks":[{"Name":"t","Driver":"raw_exec"}]}]}"#;
    assert_eq!(decode_job_request(bare.as_bytes()).unwrap(), wrapped);
}

#[test]
fn minimal_job_gets_every_default() {
    check_ok(
        MINIMAL_JOB,
        expect![[r#"
            {
              "Region": "global",
              "Namespace": "default",
              "ID": "x",
              "Name": "x",
              "Type": "service",
              "Priority": 50,
              "AllAtOnce": false,
              "Datacenters": [
                "*"
              ],
              "NodePool": "default",
              "Constraints": [],
              "Affinities": [],
              "Spreads": [],
              "TaskGroups": [
                {
                  "Name": "g",
                  "Count": 1,
                  "Constraints": [],
                  "Affinities": [],
                  "Spreads": [],
                  "Tasks": [
                    {
                      "Name": "t",
                      "Driver": "raw_exec",
                      "User": "",
                      "Config": null,
                      "Constraints": [],
                      "Affinities": [],
                      "Env": {},
                      "Resources": {
                        "CPU": 100,
                        "Cores": 0,
                        "MemoryMB": 300,
                        "MemoryMaxMB": 0,
                        "Devices": []
                      },
                      "Meta": {},
                      "KillTimeout": 5000000000,
                      "Leader": false,
                      "Lifecycle": null,
                      "DispatchPayload": null
                    }
                  ],
                  "RestartPolicy": {
                    "Interval": 1800000000000,
                    "Attempts": 2,
                    "Delay": 15000000000,
                    "Mode": "fail"
                  },
                  "ReschedulePolicy": {
                    "Attempts": 0,
                    "Interval": 0,
                    "Delay": 30000000000,
                    "DelayFunction": "exponential",
                    "MaxDelay": 3600000000000,
                    "Unlimited": true
                  },
                  "EphemeralDisk": {
                    "Sticky": false,
                    "Migrate": false,
                    "SizeMB": 300
                  },
                  "Update": {
                    "Stagger": 30000000000,
                    "MaxParallel": 1,
                    "HealthCheck": "checks",
                    "MinHealthyTime": 10000000000,
                    "HealthyDeadline": 300000000000,
                    "ProgressDeadline": 600000000000,
                    "Canary": 0,
                    "AutoRevert": false,
                    "AutoPromote": false
                  },
                  "Migrate": {
                    "MaxParallel": 1,
                    "HealthCheck": "checks",
                    "MinHealthyTime": 10000000000,
                    "HealthyDeadline": 300000000000
                  },
                  "Networks": null,
                  "Meta": {},
                  "MaxClientDisconnect": null,
                  "Gang": false,
                  "GangTopology": null
                }
              ],
              "Update": {
                "Stagger": 30000000000,
                "MaxParallel": 1,
                "HealthCheck": "checks",
                "MinHealthyTime": 10000000000,
                "HealthyDeadline": 300000000000,
                "ProgressDeadline": 600000000000,
                "Canary": 0,
                "AutoRevert": false,
                "AutoPromote": false
              },
              "Reschedule": null,
              "Migrate": null,
              "Meta": {},
              "Stop": false,
              "Gang": false,
              "Status": "pending",
              "StatusDescription": "",
              "Stable": false,
              "Version": 0,
              "SubmitTime": 0,
              "CreateIndex": 0,
              "ModifyIndex": 0,
              "JobModifyIndex": 0
            }"#]],
    );
}

fn check_ok(body: &str, expect: Expect) {
    expect.assert_eq(&canonical_json(body));
}

fn check_err(body: &[u8], expect: Expect) {
    let err = decode_job_request(body).expect_err("must be refused");
    expect.assert_eq(&err.to_string());
}

fn with_group(group: &str) -> String {
    format!(r#"{{"Job":{{"ID":"x","TaskGroups":[{group}]}}}}"#)
}

#[test]
fn malformed_json() {
    check_err(
        br#"{"Job": {"ID": "x""#,
        expect!["1 error: malformed JSON: EOF while parsing an object at line 1 column 18"],
    );
    check_err(b"", expect!["1 error: malformed JSON: EOF while parsing a value at line 1 column 0"]);
    check_err(b"[1,2]", expect!["1 error: malformed JSON: trailing characters at line 1 column 4"]);
}

#[test]
fn string_where_number_belongs() {
    let body = with_group(
        r#"{"Name":"g","Tasks":[{"Name":"a","Driver":"exec"},{"Name":"t","Driver":"exec","Resources":{"CPU":"lots"}}]}"#,
    );
    check_err(
        body.as_bytes(),
        expect![[r#"1 error: TaskGroups[0].Tasks[1].Resources.CPU: invalid type: string "lots", expected i64"#]],
    );
}

#[test]
fn out_of_range_numbers() {
    let body = r#"{"Job":{"ID":"x","Priority":1000,"TaskGroups":[{"Name":"g","Count":-3,"Tasks":[{"Name":"t","Driver":"exec","Resources":{"MemoryMB":99999999999999}}]}]}}"#;
    check_err(
        body.as_bytes(),
        expect![
            "3 errors: Priority: must be between 1 and 100, got 1000; TaskGroups[0].Count: must not be negative, got -3; TaskGroups[0].Tasks[0].Resources.MemoryMB: must be between 0 and 4294967295, got 99999999999999"
        ],
    );
    check_err(
        br#"{"Job":{"ID":"x","Priority":1e999}}"#,
        expect!["1 error: malformed JSON: number out of range at line 1 column 33"],
    );
    check_err(
        br#"{"Job":{"ID":"x","Priority":99999999999999999999999}}"#,
        expect!["1 error: Priority: invalid type: floating point `1e+23`, expected i64"],
    );
}

#[test]
fn unknown_operator_and_unsupported_fields() {
    let body = r#"{"Job":{"ID":"x","Multiregion":{"Strategy":{"MaxParallel":1}},"Constraints":[{"LTarget":"${attr.a}","RTarget":"b","Operand":"~="}],"TaskGroups":[{"Name":"g","Tasks":[{"Name":"t","Driver":"exec","Templates":[{"DestPath":"x"}]}]}]}}"#;
    check_err(
        body.as_bytes(),
        expect![[
            r#"3 errors: Multiregion: not supported by Caravan; Constraints[0].Operand: unknown constraint operator "~="; TaskGroups[0].Tasks[0].Templates: not supported by Caravan"#
        ]],
    );
}

#[test]
fn validation_problems_are_folded_in() {
    check_err(
        br#"{"Job":{"ID":"has space","TaskGroups":[]}}"#,
        expect![[r#"2 errors: job id "has space" contains a space; missing task groups"#]],
    );
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!(r#"{{"Job":{{"ID":"x","Meta":{}{}}}}}"#, "[".repeat(200), "]".repeat(200));
    check_err(
        deep.as_bytes(),
        expect![
            "1 error: Meta[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nested deeper than 64 levels"
        ],
    );
    // Deep config built by a caller, not through the decoder, is refused too.
    let mut config = serde_json::json!(1);
    for _ in 0..100 {
        config = serde_json::json!({ "a": config });
    }
    let mut job = decode_api_job(MINIMAL_JOB.as_bytes()).unwrap();
    job.task_groups.as_mut().unwrap()[0].tasks.as_mut().unwrap()[0].config = config.as_object().cloned();
    let err = job_from_api(job).unwrap_err().to_string();
    assert!(err.contains("nested deeper than 64 levels"), "{err}");
}

#[test]
fn body_over_the_limit_is_refused() {
    let mut body = MINIMAL_JOB.as_bytes().to_vec();
    body.resize(BODY_BYTES_MAX + 1, b' ');
    check_err(&body, expect!["1 error: request body is 8388609 bytes, more than the limit of 8388608"]);
}

#[test]
fn invalid_utf8_is_refused() {
    let mut body = MINIMAL_JOB.as_bytes().to_vec();
    body[10] = 0xFF;
    check_err(&body, expect!["1 error: request body is not UTF-8: invalid byte at offset 10"]);
}

#[test]
fn random_mutations_never_panic() {
    // A fixed-seed xorshift: the same mutations every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let original = FULL_JOB.as_bytes();
    let interesting = b"{}[]\":,-0123456789eE.\\ntrufalsenul\xff\x00";
    let (mut ok, mut err) = (0, 0);
    for _ in 0..2000 {
        let mut body = original.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % body.len() as u64) as usize;
            match next() % 3 {
                0 => body[at] = interesting[(next() % interesting.len() as u64) as usize],
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, interesting[(next() % interesting.len() as u64) as usize]),
            }
        }
        match decode_job_request(&body) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.problems.is_empty());
                err += 1;
            }
        }
    }
    assert_eq!(ok + err, 2000);
    assert!(err > 0);
}

#[test]
fn api_error_bounds_its_problems() {
    let groups: Vec<String> = (0..300).map(|i| format!(r#"{{"Name":"g{i}","Count":-1,"Tasks":[]}}"#)).collect();
    let body = with_group(&groups.join(","));
    let err = decode_job_request(body.as_bytes()).unwrap_err();
    assert_eq!(err.problems.len(), api::API_PROBLEMS_MAX);
    assert_eq!(err.omitted, 200);
}

#[test]
fn lifecycle_hooks_round_trip() {
    let body = with_group(
        r#"{"Name":"g","Tasks":[
            {"Name":"init","Driver":"exec","Lifecycle":{"Hook":"prestart"}},
            {"Name":"proxy","Driver":"exec","Lifecycle":{"Hook":"prestart","Sidecar":true}},
            {"Name":"main","Driver":"exec","Lifecycle":null},
            {"Name":"plain","Driver":"exec","Lifecycle":{"Hook":""}},
            {"Name":"cleanup","Driver":"exec","Lifecycle":{"Hook":"poststop","Sidecar":false}}]}"#,
    );
    let job = decode_job_request(body.as_bytes()).unwrap();
    let rendered = job_to_api(&job);
    assert_eq!(job_from_api(rendered.clone()).unwrap(), job, "job_from_api(job_to_api(x)) == x");
    let tasks = serde_json::to_value(&rendered).unwrap()["TaskGroups"][0]["Tasks"].clone();
    let lifecycles: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}: {}", t["Name"].as_str().unwrap(), t["Lifecycle"]))
        .collect();
    expect![[r#"
        init: {"Hook":"prestart","Sidecar":false}
        proxy: {"Hook":"prestart","Sidecar":true}
        main: null
        plain: null
        cleanup: {"Hook":"poststop","Sidecar":false}"#]]
    .assert_eq(&lifecycles.join("\n"));
}

#[test]
fn bad_lifecycle_hooks_are_refused() {
    let body = with_group(
        r#"{"Name":"g","Tasks":[
            {"Name":"a","Driver":"exec","Lifecycle":{"Hook":"prestrat"}},
            {"Name":"b","Driver":"exec","Lifecycle":{"Hook":7,"Sidecar":"yes"}},
            {"Name":"c","Driver":"exec","Lifecycle":[]},
            {"Name":"t","Driver":"exec"}]}"#,
    );
    check_err(
        body.as_bytes(),
        expect![[
            r#"4 errors: TaskGroups[0].Tasks[0].Lifecycle.Hook: invalid hook "prestrat": must be "prestart", "poststart" or "poststop"; TaskGroups[0].Tasks[1].Lifecycle.Sidecar: must be a boolean; TaskGroups[0].Tasks[1].Lifecycle.Hook: must be a string; TaskGroups[0].Tasks[2].Lifecycle: must be an object"#
        ]],
    );
    // Hooks only: nothing for them to run around.
    let body = with_group(r#"{"Name":"g","Tasks":[{"Name":"a","Driver":"exec","Lifecycle":{"Hook":"prestart"}}]}"#);
    check_err(
        body.as_bytes(),
        expect![[r#"1 error: group "g": must have at least one main task (a task without a lifecycle hook)"#]],
    );
}

#[test]
fn dispatch_payload_round_trips() {
    let body = with_group(
        r#"{"Name":"g","Tasks":[
            {"Name":"a","Driver":"exec","DispatchPayload":{"File":"input/config.json"}},
            {"Name":"b","Driver":"exec","DispatchPayload":{"File":""}},
            {"Name":"c","Driver":"exec","DispatchPayload":null},
            {"Name":"d","Driver":"exec","DispatchPayload":{"File":"x/../y.txt"}}]}"#,
    );
    let job = decode_job_request(body.as_bytes()).unwrap();
    let rendered = job_to_api(&job);
    assert_eq!(job_from_api(rendered.clone()).unwrap(), job, "job_from_api(job_to_api(x)) == x");
    let tasks = serde_json::to_value(&rendered).unwrap()["TaskGroups"][0]["Tasks"].clone();
    let payloads: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}: {}", t["Name"].as_str().unwrap(), t["DispatchPayload"]))
        .collect();
    expect![[r#"
        a: {"File":"input/config.json"}
        b: null
        c: null
        d: {"File":"x/../y.txt"}"#]]
    .assert_eq(&payloads.join("\n"));
}

#[test]
fn dispatch_payload_files_outside_local_are_refused() {
    let body = with_group(
        r#"{"Name":"g","Tasks":[
            {"Name":"a","Driver":"exec","DispatchPayload":{"File":"../secrets/token"}},
            {"Name":"b","Driver":"exec","DispatchPayload":{"File":"/etc/passwd"}},
            {"Name":"c","Driver":"exec","DispatchPayload":{"File":"x/../../y"}},
            {"Name":"d","Driver":"exec","DispatchPayload":{"File":"dir/"}},
            {"Name":"e","Driver":"exec","DispatchPayload":{"File":7}},
            {"Name":"f","Driver":"exec","DispatchPayload":"in.json"}]}"#,
    );
    check_err(
        body.as_bytes(),
        expect![[
            r#"6 errors: TaskGroups[0].Tasks[0].DispatchPayload.File: "../secrets/token" escapes the task's local/ directory; TaskGroups[0].Tasks[1].DispatchPayload.File: "/etc/passwd" must be a path relative to the task's local/ directory, not absolute; TaskGroups[0].Tasks[2].DispatchPayload.File: "x/../../y" escapes the task's local/ directory; TaskGroups[0].Tasks[3].DispatchPayload.File: "dir/" must name a file inside the task's local/ directory; TaskGroups[0].Tasks[4].DispatchPayload.File: must be a string; TaskGroups[0].Tasks[5].DispatchPayload: must be an object"#
        ]],
    );
}
