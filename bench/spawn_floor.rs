//! Benchmark helper (not a test): starts `/bin/true` N times, one after the
//! other, through bootplan's own spawner (`spawn::Command::start`, the path
//! every step command takes) with its output piped and read to the end, as
//! a step's is (after the exit, as for a command that ends within 20 ms),
//! but without the engine, the journal or any telemetry. It
//! shows what starting the processes costs bootplan by itself; `bench/core.sh`
//! prints it beside the plan runs and the shell loop.
//!
//! Usage: cargo run --release --example spawn-floor -- N

use bootplan::spawn::{Command, Stdio};
use tokio::io::AsyncReadExt;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    for _ in 0..count {
        let mut cmd = Command::new("/bin/true");
        cmd.stdout(Stdio::Piped)
            .stderr(Stdio::Piped)
            .own_process_group()
            .kill_on_drop();
        let mut child = match cmd.start() {
            Ok(child) => child,
            Err(err) => {
                eprintln!("spawn-floor: cannot start /bin/true: {err}");
                std::process::exit(1);
            }
        };
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // As a step does with a command that is over within its first
        // 20 ms: the exit first, then the output (`steps::process::run`).
        if let Err(err) = child.wait().await {
            eprintln!("spawn-floor: {err}");
            std::process::exit(1);
        }
        tokio::join!(drain(stdout), drain(stderr));
    }
}

async fn drain(pipe: Option<bootplan::spawn::OutputPipe>) {
    if let Some(mut pipe) = pipe {
        let mut sink = Vec::new();
        let _ = pipe.read_to_end(&mut sink).await;
    }
}
