//! Zombie reaping for supervise mode (PID 1 or child subreaper).
//!
//! Orphans re-parented to bootplan must be reaped, or they stay zombies.
//! A plain `waitpid(-1)` loop would also steal the exit statuses of the
//! children bootplan waits for ([`crate::process::Child`]), so this reaper
//! only reaps zombies that nobody else waits for:
//!
//! - children started by [`crate::process::Command`] (steps, services, the
//!   supervised app) are *owned*: tokio reaps them (through a pidfd, the
//!   moment their `Child` is waited for; by its own orphan queue, on
//!   SIGCHLD, when it was dropped), so they are left alone here. The spawn
//!   happens under the same lock the reaper scans under
//!   ([`while_spawning`]), so a fast-exiting child cannot be reaped before
//!   it is registered, and a pid stays owned until it is no longer a child
//!   of bootplan (tokio has reaped it);
//! - every other zombie child (an orphan) is reaped and counted, once it has
//!   been a zombie for [`ORPHAN_GRACE`]: a child that other code spawned
//!   with tokio directly would be reaped by tokio long before, so even a
//!   spawn that bypasses [`crate::process`] keeps its status.
//!
//! A scan looks at bootplan's own children only (`/proc/self/task/*/children`),
//! on SIGCHLD and at least every [`SCAN_EVERY`]; where the kernel does not
//! list children, it reads every `/proc/PID/stat` instead.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How often to scan even without SIGCHLD (signals can coalesce).
const SCAN_EVERY: Duration = Duration::from_millis(500);

/// How long an untracked zombie is left for its possible owner first. A
/// child some other code spawned with tokio directly (not through
/// [`crate::process`]) is reaped by tokio within milliseconds of its exit;
/// an orphan has no owner and is reaped after this.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);

static ACTIVE: AtomicBool = AtomicBool::new(false);
static ORPHANS_REAPED: AtomicU64 = AtomicU64::new(0);
/// Pids tokio reaps (children of [`crate::process::Command`]). Also the lock
/// that orders spawns against scans.
static OWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
/// Untracked zombies, and when each was first seen.
static ZOMBIES_SEEN: LazyLock<Mutex<HashMap<i32, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps every child that has exited, for a supervisor that is the only
/// waiter in its process (the lean supervisor, see
/// `lifecycle::lean`). Returns the exit code of `pid` (128+n for signal
/// n) when it was among them, and how many other children were reaped.
pub fn reap_exited(pid: u32) -> (Option<i32>, u64) {
    let (mut code, mut others) = (None, 0);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, status)) if p.as_raw() as u32 == pid => code = Some(status),
            Ok(WaitStatus::Signaled(p, signal, _)) if p.as_raw() as u32 == pid => {
                code = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return (code, others),
            Ok(_) => others += 1,
        }
    }
}

/// Runs `spawn`, which starts one child that bootplan will wait for
/// itself, under the lock the reaper scans under, and keeps the reaper off
/// that child (`pid_of` names it). Every [`crate::process::Command`] spawns
/// through here.
pub fn while_spawning<T>(
    spawn: impl FnOnce() -> std::io::Result<T>,
    pid_of: impl FnOnce(&T) -> Option<u32>,
) -> std::io::Result<T> {
    let mut owned = lock(&OWNED);
    let spawned = spawn()?;
    if let (true, Some(pid)) = (ACTIVE.load(Ordering::SeqCst), pid_of(&spawned)) {
        owned.insert(pid as i32);
    }
    Ok(spawned)
}

/// How many orphans (children bootplan did not start) were reaped.
pub fn orphans_reaped() -> u64 {
    ORPHANS_REAPED.load(Ordering::Relaxed)
}

/// Makes this process a child subreaper (so orphans of its descendants come
/// back to it, as they would to PID 1) and starts the reaping task.
/// Must be called inside the runtime, before any child is spawned.
pub fn start() -> tokio::task::JoinHandle<()> {
    if std::process::id() != 1 {
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    ACTIVE.store(true, Ordering::SeqCst);
    // Registered now, not when the task first runs: a SIGCHLD before that
    // is not lost.
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    tokio::spawn(async move {
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(SCAN_EVERY, s.recv()).await;
                }
                None => tokio::time::sleep(SCAN_EVERY).await,
            }
            reap_once();
        }
    })
}

/// One pass: reap every zombie child nobody else waits for.
pub fn reap_once() {
    let mut owned = lock(&OWNED);
    let children = children();
    // Forget owned pids their Child has reaped already.
    owned.retain(|pid| children.iter().any(|(c, _)| c == pid));
    let mut seen = lock(&ZOMBIES_SEEN);
    let now = Instant::now();
    seen.retain(|pid, _| children.iter().any(|(c, z)| c == pid && *z));
    for (pid, zombie) in children {
        if !zombie || owned.contains(&pid) {
            continue;
        }
        let first = *seen.entry(pid).or_insert(now);
        if now.duration_since(first) >= ORPHAN_GRACE && reap(pid) {
            ORPHANS_REAPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reaps `pid` if it has exited.
fn reap(pid: i32) -> bool {
    matches!(
        waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
    )
}

/// bootplan's children as (pid, is_zombie).
fn children() -> Vec<(i32, bool)> {
    let pids = listed_children().unwrap_or_else(|| scan_children(std::process::id() as i32));
    pids.into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, _) = parse_stat(&stat)?;
            Some((pid, state == 'Z'))
        })
        .collect()
}

/// The children the kernel lists for each of bootplan's threads; `None`
/// where it does not (no `CONFIG_PROC_CHILDREN`).
fn listed_children() -> Option<Vec<i32>> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).ok()?;
        pids.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(pids)
}

/// Children of `parent`, found by reading every `/proc/PID/stat`.
fn scan_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(_, ppid)| ppid == parent)
        })
        .collect()
}

/// State and parent pid from a `/proc/PID/stat` line. The command name may
/// hold spaces and parentheses, so parse from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_list_of_children_matches_a_full_scan() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let listed = listed_children().expect("this kernel lists children");
        let scanned = scan_children(std::process::id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert!(listed.contains(&pid), "{listed:?}");
        assert!(scanned.contains(&pid), "{scanned:?}");
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        assert_eq!(
            parse_stat("42 (a) b (c)) Z 7 42 42 0"),
            Some(('Z', 7)),
            "name with a parenthesis"
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
