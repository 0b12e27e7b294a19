//! Crash consistency: SIGKILL bootplan at random moments of a multi-step
//! plan, check what a crash may leave behind, rerun, and check the end state.
//!
//! Checked each time:
//! - while bootplan runs, a watcher reads every target file continuously:
//!   each is absent or complete, never half-written;
//! - after the kill the journal still parses, and no step's process survives;
//! - every step the journal recorded before the kill is skipped by the rerun
//!   (recorded means done), and the rerun ends ready with every file correct.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{Sandbox, code, dump, pid_alive, wait_until};

const ITERATIONS: u64 = 40;

/// The target files and the exact content each must end with.
fn targets() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for (name, lines) in [("a", 20_000), ("b", 15_000), ("c", 10_000)] {
        let content: String = (0..lines).map(|i| format!("{name} line {i}\n")).collect();
        files.insert(format!("out/{name}.txt"), content);
    }
    let rendered: String = (0..5_000)
        .map(|i| format!("rendered crash-test {i}\n"))
        .collect();
    files.insert("out/rendered.conf".into(), rendered);
    files.insert("out/final.txt".into(), "all done\n".into());
    files
}

fn plan_yaml(files: &BTreeMap<String, String>) -> String {
    let block = |text: &str| {
        text.lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    };
    format!(
        r#"version: 1
name: crash
deadline: 60s
kill_grace: 200ms
vars: {{ word: crash-test }}
steps:
  gen-a:
    file:
      path: out/a.txt
      content: |
{a}  gen-b:
    file:
      path: out/b.txt
      content: |
{b}  gen-c:
    file:
      path: out/c.txt
      content: |
{c}  render:
    template:
      inline: "{{% for i in range(5000) %}}rendered {{{{ vars.word }}}} {{{{ i }}}}\n{{% endfor %}}"
      dest: out/rendered.conf
    needs: [gen-a]
  work-1: {{ shell: "echo $$ >> pids; sleep 0.05; echo work-1 >> runs.log", needs: [gen-b] }}
  work-2: {{ shell: "echo $$ >> pids; sleep 0.05; echo work-2 >> runs.log", needs: [work-1] }}
  work-3: {{ shell: "echo $$ >> pids; sleep 0.05; echo work-3 >> runs.log", needs: [work-2, gen-c] }}
  work-4: {{ shell: "echo $$ >> pids; sleep 0.05; echo work-4 >> runs.log", needs: [work-3, render] }}
  final:
    file: {{ path: out/final.txt, content: "all done\n" }}
    needs: [work-4]
"#,
        a = block(&files["out/a.txt"]),
        b = block(&files["out/b.txt"]),
        c = block(&files["out/c.txt"]),
    )
}

/// Reads every target until stopped; returns the first torn read seen, if any.
fn watch(
    dir: std::path::PathBuf,
    files: BTreeMap<String, String>,
    stop: Arc<AtomicBool>,
) -> Option<String> {
    while !stop.load(Ordering::Relaxed) {
        for (name, expected) in &files {
            if let Ok(actual) = std::fs::read_to_string(dir.join(name))
                && &actual != expected
            {
                return Some(format!(
                    "{name} seen with {} bytes, expected {}",
                    actual.len(),
                    expected.len()
                ));
            }
        }
    }
    None
}

/// The atomic writes' temp files (`.NAME.PID.RANDOM.tmp`) under `dir`.
fn temp_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                dirs.push(path);
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                found.push(path);
            }
        }
    }
    found
}

fn journal_steps(sb: &Sandbox) -> Vec<String> {
    let path = sb.state_dir().join("journal.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("journal unreadable after SIGKILL: {e}\n{text}"));
    doc["plans"]["crash"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn sigkill_at_random_moments_always_converges() {
    let files = targets();
    let plan = plan_yaml(&files);
    let rng = fastrand::Rng::with_seed(0xC4A5);
    let mut rng = rng;
    let mut killed_mid_run = 0;
    for iteration in 0..ITERATIONS {
        let sb = Sandbox::new();
        sb.plan(&plan);

        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (dir, files, stop) = (sb.path().to_path_buf(), files.clone(), stop.clone());
            std::thread::spawn(move || watch(dir, files, stop))
        };
        let mut child = sb
            .cmd()
            .args(["run", "plan.yaml"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The kill moment is the random variable under test, not a synchronisation.
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed_mid_run += 1;
        }

        let recorded = journal_steps(&sb);
        for pid in sb
            .read("pids")
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            wait_until(
                &format!("step process {pid} to die with bootplan"),
                Duration::from_secs(5),
                || !pid_alive(pid),
            );
        }

        let out = sb.run();
        stop.store(true, Ordering::Relaxed);
        let torn = watcher.join().unwrap();
        assert!(torn.is_none(), "iteration {iteration}: torn file: {torn:?}");
        assert_eq!(
            code(&out),
            0,
            "iteration {iteration}: rerun failed: {}",
            dump(&out)
        );
        for step in &recorded {
            assert_eq!(
                sb.step(step)["state"],
                "skipped",
                "iteration {iteration}: {step} was recorded done but ran again"
            );
        }
        for (name, expected) in &files {
            assert_eq!(
                &sb.read(name),
                expected,
                "iteration {iteration}: {name} wrong after rerun"
            );
        }
        let runs = sb.read("runs.log");
        for work in ["work-1", "work-2", "work-3", "work-4"] {
            assert!(
                runs.lines().any(|l| l == work),
                "iteration {iteration}: {work} never completed: {runs}"
            );
        }
        assert_eq!(
            journal_steps(&sb).len(),
            9,
            "iteration {iteration}: journal incomplete"
        );
        let litter = temp_files(sb.path());
        assert!(
            litter.is_empty(),
            "iteration {iteration}: temp files of the killed run left behind: {litter:?}"
        );
    }
    // Guard against a test that never actually interrupts a run.
    assert!(
        killed_mid_run >= ITERATIONS / 2,
        "only {killed_mid_run} of {ITERATIONS} kills landed mid-run"
    );
}
