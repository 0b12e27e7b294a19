//! Zombie reaping for supervise mode (PID 1 or child subreaper).
//!
//! Orphans re-parented to bootplan must be reaped, or they stay zombies.
//! A plain `waitpid(-1)` loop would also steal the exit statuses of the
//! children bootplan waits for ([`crate::process::Child`]), so this reaper
//! only reaps zombies that nobody else waits for:
//!
//! - children started by [`crate::process::Command`] are *owned*: tokio
//!   reaps them (through a pidfd, by pid, when their `Child` is waited for;
//!   by its own orphan queue, on SIGCHLD, when it was dropped), so they are
//!   left alone here. The spawn happens under the same lock the reaper
//!   scans under ([`while_spawning`]), so a fast-exiting child cannot be
//!   reaped before it is registered, and a pid stays owned until it is no
//!   longer a child of bootplan (tokio has reaped it);
//! - children spawned through [`super::Command::spawn_watched`] (the supervised app) are
//!   reaped here and their status is kept in a pid → status map for
//!   [`wait_watched`];
//! - every other zombie child (an orphan) is reaped and counted, once it has
//!   been a zombie for [`ORPHAN_GRACE`]: a child that other code spawned
//!   with tokio directly would be reaped by tokio long before, so even a
//!   spawn that bypasses [`crate::process`] keeps its status.
//!
//! Zombie children are found by scanning `/proc/*/stat` for our pid as the
//! parent; watched pids are also polled directly in case `/proc` is missing.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::Notify;

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
/// Pids whose status we collect, and the statuses collected so far.
static WATCHED: LazyLock<Mutex<HashMap<i32, Option<i32>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static REAPED: LazyLock<Notify> = LazyLock::new(Notify::new);
/// Untracked zombies, and when each was first seen.
static ZOMBIES_SEEN: LazyLock<Mutex<HashMap<i32, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// Runs `spawn`, which starts a child whose exit status the reaper
/// collects (see [`wait_watched`]), and returns its pid. The std child is
/// dropped: that neither waits nor kills, the reaper reaps it.
pub(crate) fn watching(
    spawn: impl FnOnce() -> std::io::Result<std::process::Child>,
) -> std::io::Result<u32> {
    let _owned = lock(&OWNED);
    let child = spawn()?;
    let pid = child.id();
    lock(&WATCHED).insert(pid as i32, None);
    Ok(pid)
}

/// Waits until the watched child `pid` has exited; returns its exit code,
/// or 128+n when a signal ended it.
pub async fn wait_watched(pid: u32) -> i32 {
    let pid = pid as i32;
    loop {
        let notified = REAPED.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(Some(code)) = lock(&WATCHED).get(&pid) {
            return *code;
        }
        notified.await;
    }
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
    tokio::spawn(async {
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
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
    let me = std::process::id() as i32;
    let children = scan_children(me);
    if let Some(children) = &children {
        // Forget owned pids their Child has reaped already.
        owned.retain(|pid| children.iter().any(|(c, _)| c == pid));
    }
    let mut watched = lock(&WATCHED);
    let mut seen = lock(&ZOMBIES_SEEN);
    let now = Instant::now();
    let children = children.unwrap_or_default();
    seen.retain(|pid, _| children.iter().any(|(c, z)| c == pid && *z));
    let mut any = false;
    for (pid, zombie) in children {
        if !zombie || owned.contains(&pid) {
            continue;
        }
        // Watched children are ours at once; others only after the grace.
        if !watched.contains_key(&pid) {
            let first = *seen.entry(pid).or_insert(now);
            if now.duration_since(first) < ORPHAN_GRACE {
                continue;
            }
        }
        if let Some(code) = reap(pid) {
            any = true;
            match watched.get_mut(&pid) {
                Some(slot) => *slot = Some(code),
                None => {
                    ORPHANS_REAPED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    // Without /proc (or when a scan raced), poll the watched pids directly.
    for (pid, slot) in watched.iter_mut().filter(|(_, s)| s.is_none()) {
        if let Some(code) = reap(*pid) {
            *slot = Some(code);
            any = true;
        }
    }
    drop(watched);
    drop(owned);
    if any {
        REAPED.notify_waiters();
    }
}

/// Reaps `pid` if it has exited; its exit code or 128+signal.
fn reap(pid: i32) -> Option<i32> {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Children of `parent` as (pid, is_zombie); `None` when /proc is unreadable.
fn scan_children(parent: i32) -> Option<Vec<(i32, bool)>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        match parse_stat(&stat) {
            Some((state, ppid)) if ppid == parent => children.push((pid, state == 'Z')),
            _ => {}
        }
    }
    Some(children)
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
    fn stat_lines_with_odd_names_parse() {
        assert_eq!(
            parse_stat("42 (a) b (c)) Z 7 42 42 0"),
            Some(('Z', 7)),
            "name with a parenthesis"
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
