//! The `caravan` binary, run as a user would.

use std::process::Command;

fn caravan(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caravan")).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn example(name: &str) -> String {
    format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_validates() {
    for name in ["hello.nomad.hcl", "web.nomad.hcl", "gpu-train.nomad.hcl"] {
        let (code, stdout, stderr) = caravan(&["job", "validate", &example(name)]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(stdout.starts_with("Job validation successful"), "{stdout}");
    }
}

#[test]
fn nomad_style_single_dash_flags_work() {
    let (code, _, stderr) = caravan(&["job", "validate", "-var", "image=nginx:1.27", &example("web.nomad.hcl")]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = caravan(&["job", "validate", "-var", "nope=1", &example("web.nomad.hcl")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("nope"), "{stderr}");
}

#[test]
fn invalid_jobs_say_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("caravan-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.nomad.hcl");
    std::fs::write(&bad, "job \"x\" {\n  priority = 500\n  group \"g\" {\n    count = -1\n    task \"t\" {\n      driver = \"raw_exec\"\n    }\n  }\n}\n").unwrap();
    let (code, _, stderr) = caravan(&["job", "validate", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("Priority") && stderr.contains("Count"), "{stderr}");
    let unknown = dir.join("unknown.nomad.hcl");
    std::fs::write(
        &unknown,
        "job \"x\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"raw_exec\"\n      bogus = 1\n    }\n  }\n}\n",
    )
    .unwrap();
    let (code, _, stderr) = caravan(&["job", "validate", unknown.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("bogus"), "{stderr}");
    let (code, _, stderr) = caravan(&["job", "validate", dir.join("missing.hcl").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.hcl"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
