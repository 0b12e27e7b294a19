//! Benchmark helper (not a test): starts `/bin/true` N times, one after the
//! other, with the Rust standard library (`std::process::Command::output`:
//! stdin from /dev/null, stdout and stderr piped and read to the end), the
//! way a program that spawns commands itself would. `bench/core.sh` prints
//! it beside the shell loop as a second view of "spawning directly": the
//! shell's fork of a small process is the cheapest start there is, this is
//! what a typical program pays.
//!
//! Usage: cargo run --release --example std-spawn -- N

use std::process::{Command, Stdio};

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    for _ in 0..count {
        match Command::new("/bin/true").stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!("std-spawn: /bin/true exited with {}", out.status);
                std::process::exit(1);
            }
            Err(err) => {
                eprintln!("std-spawn: cannot start /bin/true: {err}");
                std::process::exit(1);
            }
        }
    }
}
