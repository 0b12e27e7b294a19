//! Invalid plans: each fixture in `tests/fixtures/invalid/` must be rejected
//! with exit 65 and a message containing every line of its `.expect` file;
//! and no input, however mangled, may make the loader panic.

use std::path::{Path, PathBuf};

use crate::harness::{Sandbox, bin, code, dump};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut plans: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "expect"))
        .collect();
    plans.sort();
    plans
}

#[test]
fn every_invalid_fixture_is_rejected_with_its_message() {
    let plans = fixtures();
    assert!(plans.len() >= 25, "only {} invalid fixtures", plans.len());
    let mut failures = Vec::new();
    for plan in &plans {
        let expect_path = plan.with_extension("expect");
        let expected = std::fs::read_to_string(&expect_path)
            .unwrap_or_else(|_| panic!("{} has no .expect file", plan.display()));
        let out = std::process::Command::new(bin())
            .arg("check")
            .arg(plan)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if code(&out) != 65 {
            failures.push(format!(
                "{}: exit {} instead of 65\n{stderr}",
                plan.display(),
                code(&out)
            ));
            continue;
        }
        if !stderr.contains(&plan.display().to_string()) {
            failures.push(format!(
                "{}: message does not name the file:\n{stderr}",
                plan.display()
            ));
        }
        for line in expected.lines().filter(|l| !l.is_empty()) {
            if !stderr.contains(line) {
                failures.push(format!(
                    "{}: expected `{line}` in:\n{stderr}",
                    plan.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_json_lists_every_problem() {
    let plan =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid/many-errors.yaml");
    let out = std::process::Command::new(bin())
        .args(["check", "--json"])
        .arg(&plan)
        .output()
        .unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["code"], "plan.invalid");
    let diags = doc["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 3, "{doc}");
    assert!(
        diags
            .iter()
            .all(|d| d["position"]["line"].as_u64().unwrap_or(0) > 0),
        "{doc}"
    );
}

#[test]
fn valid_plans_in_every_format_load() {
    let sb = Sandbox::new();
    let yaml = "version: 1\nname: fmt\nsteps:\n  a: { run: [\"true\"] }\n  b: { run: [\"true\"], needs: [a] }\n";
    let toml = "version = 1\nname = \"fmt\"\n[steps.a]\nrun = [\"true\"]\n[steps.b]\nrun = [\"true\"]\nneeds = [\"a\"]\n";
    let json = r#"{"version": 1, "name": "fmt", "steps": {"a": {"run": ["true"]}, "b": {"run": ["true"], "needs": ["a"]}}}"#;
    // The same steps in three formats: the first run does them; the others
    // see identical fingerprints (format-independent) and skip them.
    for (name, text, state) in [
        ("p.yaml", yaml, "done"),
        ("p.toml", toml, "skipped"),
        ("p.json", json, "skipped"),
    ] {
        sb.write(name, text);
        let out = sb.cmd().args(["run", name]).output().unwrap();
        assert_eq!(code(&out), 0, "{name}: {}", dump(&out));
        assert_eq!(sb.step("b")["state"], state, "{name}");
    }
}

/// Mangles a valid plan thousands of ways (cut short, bytes dropped, YAML
/// punctuation inserted) and loads each in-process: every result must be a
/// value or an error, never a panic.
#[test]
fn mangled_plans_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml"),
    )
    .unwrap();
    let noise = [
        ":", "{", "}", "[", "]", "-", "\n", "  ", "\t", "'", "\"", "&a", "*a", "!!", "{{", "%",
        "#", "\u{0}", "é", "..", "0x",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let plan_path = dir.path().join("plan.yaml");
    std::fs::create_dir_all(dir.path().join("quickstart")).unwrap();
    std::fs::write(
        dir.path().join("quickstart/page.html.j2"),
        "{{ vars.greeting }}",
    )
    .unwrap();
    for i in 0..3000 {
        let mut text: Vec<char> = base.chars().collect();
        match i % 3 {
            0 => text.truncate(rng.usize(..=text.len())),
            1 => {
                for _ in 0..rng.usize(1..8) {
                    if !text.is_empty() {
                        let at = rng.usize(..text.len());
                        text.remove(at);
                    }
                }
            }
            _ => {
                for _ in 0..rng.usize(1..5) {
                    let at = rng.usize(..=text.len());
                    let piece = noise[rng.usize(..noise.len())];
                    for (k, c) in piece.chars().enumerate() {
                        text.insert(at + k, c);
                    }
                }
            }
        }
        let mangled: String = text.into_iter().collect();
        std::fs::write(&plan_path, &mangled).unwrap();
        let result = std::panic::catch_unwind(|| bootplan::plan::load(&plan_path));
        assert!(result.is_ok(), "the loader panicked on:\n{mangled}");
    }
}

/// `check` output for a plan written into a fresh sandbox.
fn check_text(plan: &str) -> String {
    let sb = Sandbox::new();
    sb.plan(plan);
    let out = sb.cmd().args(["check", "plan.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_reports_every_broken_step_and_the_rest_of_the_plan_in_one_run() {
    let err = check_text(concat!(
        "version: 1\nname: many\nsteps:\n",
        "  a: { run: 5 }\n",                            // a type error
        "  b: { run: [\"true\"], needs: [c, nope] }\n", // an unknown need
        "  c: { run: [\"true\"], needs: [d] }\n",
        "  d: { shell: [1, 2], needs: [c] }\n", // another type error, in a cycle
        "  e: { run: [\"true\"], neds: [a] }\n", // an unknown field
        "  f: { run: [\"a\\0b\"] }\n",          // a NUL byte
    ));
    for expected in [
        "plan.yaml:4:",
        "steps.b.needs: unknown step `nope`",
        "steps.d",
        "steps.e",
        "unknown field `neds`",
        "dependency cycle: c -> d -> c",
        "steps.f.argv[0]: the value holds a NUL byte",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn every_problem_has_a_line_and_column() {
    for (plan, field) in [
        (
            "version: 1\nname: \"\"\nsteps:\n  a: { run: [\"true\"] }\n",
            "name",
        ),
        ("version: 1\nname: x\nsteps: {}\n", "steps"),
        (
            "version: 1\nname: x\nfacts: { attempt_timeout: 0s }\nsteps:\n  a: { run: [\"true\"] }\n",
            "facts.attempt_timeout",
        ),
        (
            "version: 1\nname: x\nsecrets:\n  s: { file: { path: a }, env: { name: B } }\nsteps:\n  a: { run: [\"true\"] }\n",
            "secrets.s",
        ),
        (
            "version: 1\nname: x\nregister:\n  etcd: { endpoints: [], key: /k }\nsteps:\n  a: { run: [\"true\"] }\n",
            "register.etcd.endpoints",
        ),
    ] {
        let err = check_text(plan);
        let line = err
            .lines()
            .find(|l| l.contains(&format!(": {field}")))
            .unwrap_or_else(|| panic!("no `{field}` in:\n{err}"));
        let pos = line
            .split("plan.yaml:")
            .nth(1)
            .and_then(|rest| rest.split(": ").next())
            .unwrap_or("");
        let parts: Vec<&str> = pos.split(':').collect();
        assert!(
            parts.len() == 2 && parts.iter().all(|p| p.parse::<u32>().is_ok_and(|n| n > 0)),
            "`{line}` has no line:column"
        );
    }
}

#[test]
fn a_long_cycle_is_named_in_a_readable_line() {
    let mut plan = String::from("version: 1\nname: ring\nsteps:\n");
    let n = 5000;
    for i in 0..n {
        plan.push_str(&format!(
            "  s{i}: {{ run: [\"true\"], needs: [s{}] }}\n",
            (i + 1) % n
        ));
    }
    let err = check_text(&plan);
    let line = err
        .lines()
        .find(|l| l.contains("dependency cycle"))
        .unwrap();
    assert!(line.len() < 300, "{} bytes: {line}", line.len());
    assert!(line.contains("(5000 steps)"), "{line}");
}

#[test]
fn a_plan_that_is_not_a_regular_file_is_refused_without_reading_it() {
    let sb = Sandbox::new();
    std::os::unix::fs::symlink("/dev/zero", sb.path().join("zero.yaml")).unwrap();
    let fifo = sb.path().join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for name in ["zero.yaml", "fifo.yaml"] {
        // A FIFO without a writer would block a reader forever: the
        // command must come back on its own.
        let out = sb.cmd().args(["check", name]).output().unwrap();
        assert_eq!(code(&out), 65, "{name}: {}", dump(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
            "{}",
            dump(&out)
        );
    }
    // Not UTF-8 on line 3: the position says where.
    std::fs::write(
        sb.path().join("latin1.yaml"),
        b"version: 1\nname: x\nsteps: { a: { run: [\"caf\xe9\"] } }\n",
    )
    .unwrap();
    let out = sb.cmd().args(["check", "latin1.yaml"]).output().unwrap();
    assert_eq!(code(&out), 65, "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("latin1.yaml:3:"),
        "{}",
        dump(&out)
    );
}
