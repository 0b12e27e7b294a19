//! Containing a run's process trees in a cgroup v2 group.
//!
//! Layout. bootplan stays in its own cgroup `OWN` (the `0::` line of
//! `/proc/self/cgroup`, under the cgroup2 mount `/proc/self/mountinfo`
//! names: `/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
//! For a run it creates the run group `OWN/bootplan-PID/`, and one leaf
//! `OWN/bootplan-PID/N/` for each child it starts ([`leaf`]). Under systemd
//! `OWN` is the unit's cgroup, and it is used only when the unit delegates
//! it (`Delegate=yes`, seen as the `trusted.delegate`/`user.delegate`
//! attribute systemd sets): systemd owns the cgroups of other units.
//!
//! Moving in. The child moves itself into its leaf between fork and exec,
//! by writing `0` to the leaf's `cgroup.procs` through a descriptor bootplan
//! opened before the fork (see `process::command`). So the program never
//! runs outside the leaf, and nothing it forks can stay behind: moving the
//! pid after the spawn would leave a window in which the program has forked
//! already. (`clone3(CLONE_INTO_CGROUP)` would save the migration, but
//! neither std nor tokio can ask for it.)
//!
//! No internal processes. cgroup v2 refuses processes in a non-root cgroup
//! that enables controllers for its children (`cgroup.subtree_control`).
//! bootplan enables none: the run group holds only leaves, the leaves only
//! processes, and `OWN`, which holds bootplan itself, has no controllers
//! enabled (no populated non-root cgroup can; the root is exempt). Nothing
//! has to move into a separate leaf first. A cgroup that cannot hold
//! processes at all (a threaded subtree: `cgroup.type` is not `domain`) is
//! found when the run group is made, and the run falls back.
//!
//! Ending. When a child's first process exits, `cgroup.kill` on its leaf
//! ends everything it left (unlike a signal to a process group, this
//! reaches processes that changed group, and none can fork away from it),
//! and the leaf is removed once empty. When the run ends, the whole run
//! group is killed, waited for and removed ([`RunContainment`]'s drop).
//!
//! After a SIGKILL of bootplan its direct children die with it
//! (`PR_SET_PDEATHSIG`); what they forked lives on in the leaves. The run
//! dir's [`RECORD_FILE`] names the run group and the pid that made it; the
//! next run's [`reclaim_leftovers`] kills and removes it.
//!
//! Fallback. Without a cgroup2 mount, without write access (not root, a
//! read-only cgroupfs), in a systemd unit without delegation, without
//! `cgroup.kill` (Linux before 5.14), or when a child cannot be moved, the
//! children are contained by their process groups only (SIGTERM to the
//! group, the grace, SIGKILL): what changes its process group escapes
//! them, and after a SIGKILL of bootplan only the direct children die.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::telemetry::{Level, Reporter};

/// The record of the run group, in the run dir.
pub const RECORD_FILE: &str = "cgroup.json";

/// Run groups are named `bootplan-PID` (`bootplan-PID.N` if that exists).
const GROUP_PREFIX: &str = "bootplan-";

/// How long killed processes get to be gone before a group counts as stuck.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// What went wrong while reclaiming or removing a run group.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a record of a bootplan run's cgroup ({reason}); removed it")]
    Record { path: PathBuf, reason: String },
    #[error("cannot kill the processes in cgroup {path}: {source}")]
    Kill {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the processes in cgroup {path} were still there {} after SIGKILL",
        humantime::format_duration(*after)
    )]
    Lingering { path: PathBuf, after: Duration },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`reclaim_leftovers`] found and ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// The pid of the bootplan that made the group.
    pub pid: u32,
    /// How many processes were still in it.
    pub processes: usize,
    pub cgroup: PathBuf,
}

impl fmt::Display for Reclaimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pid, cgroup) = (self.pid, self.cgroup.display());
        match self.processes {
            0 => write!(
                f,
                "removed the cgroup {cgroup} left by a previous bootplan run (pid {pid}); no process was left in it"
            ),
            1 => write!(
                f,
                "killed 1 process left by a previous bootplan run (pid {pid}) in cgroup {cgroup}"
            ),
            n => write!(
                f,
                "killed {n} processes left by a previous bootplan run (pid {pid}) in cgroup {cgroup}"
            ),
        }
    }
}

/// The run dir's record of a run group.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Record {
    /// The bootplan that made the group, and its start time (clock ticks
    /// after boot, `/proc/PID/stat`), so a reused pid is not taken for it.
    pid: u32,
    start_time: u64,
    cgroup: PathBuf,
}

/// Finds the run group a killed bootplan left (named in `run_dir`'s
/// [`RECORD_FILE`]), kills what is in it, and removes it. `None` when there
/// is nothing to reclaim: no record, the group is gone already, or the
/// bootplan that made it still runs. Call it before [`contain_run`], with
/// the run's lock held.
pub fn reclaim_leftovers(run_dir: &Path) -> Result<Option<Reclaimed>, CgroupError> {
    let record_path = run_dir.join(RECORD_FILE);
    let text = match fs::read_to_string(&record_path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CgroupError::Read {
                path: record_path,
                source,
            });
        }
    };
    let bad_record = |reason: String| {
        let _ = fs::remove_file(&record_path);
        CgroupError::Record {
            path: record_path.clone(),
            reason,
        }
    };
    let record: Record = serde_json::from_str(&text).map_err(|e| bad_record(e.to_string()))?;
    if start_time_of(record.pid) == Some(record.start_time) {
        // That bootplan still runs (with this run dir): the group is its own.
        return Ok(None);
    }
    if !record.cgroup.exists() {
        let _ = fs::remove_file(&record_path);
        return Ok(None);
    }
    check_run_group(&record.cgroup, record.pid).map_err(bad_record)?;
    let processes = pids_in_tree(&record.cgroup).len();
    end_group(&record.cgroup)?;
    let _ = fs::remove_file(&record_path);
    Ok(Some(Reclaimed {
        pid: record.pid,
        processes,
        cgroup: record.cgroup,
    }))
}

/// Only a directory of a cgroup2 file system named for `pid` by
/// [`contain_run`] is ever killed on a record's word.
fn check_run_group(path: &Path, pid: u32) -> Result<(), String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let expected = format!("{GROUP_PREFIX}{pid}");
    let named_right = name == expected
        || name
            .strip_prefix(&expected)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !path.is_absolute() || !named_right {
        return Err(format!(
            "{} is not a run group of pid {pid}",
            path.display()
        ));
    }
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Ok(()),
        Ok(_) => Err(format!(
            "{} is not on a cgroup2 file system",
            path.display()
        )),
        Err(err) => Err(format!("cannot check {}: {err}", path.display())),
    }
}

/// How this run's children are contained. Dropping it ends and removes the
/// run group (every process still in it is killed) and its record.
#[must_use = "the run's cgroup is removed when this is dropped"]
#[derive(Debug)]
pub struct RunContainment {
    group: Option<PathBuf>,
    why_not: Option<String>,
    record: PathBuf,
    record_error: Option<String>,
}

/// Creates this run's group under bootplan's own cgroup, records it in
/// `run_dir`, and from then on starts every child in a leaf of it. Where no
/// group can be made, says why ([`RunContainment::notices`]) and children
/// are contained by their process groups only. Problems met later (a leaf
/// that cannot be made, a child that cannot be moved) go to `reporter`.
pub fn contain_run(run_dir: &Path, reporter: &Arc<Reporter>) -> RunContainment {
    let record = run_dir.join(RECORD_FILE);
    match create_run_group(&record) {
        Ok((group, record_error)) => {
            *lock() = Some(RunGroup {
                path: group.clone(),
                next_leaf: 0,
                unremoved: Vec::new(),
                disabled: false,
                warned: false,
                reporter: reporter.clone(),
            });
            RunContainment {
                group: Some(group),
                why_not: None,
                record,
                record_error,
            }
        }
        Err(why_not) => RunContainment {
            group: None,
            why_not: Some(why_not),
            record,
            record_error: None,
        },
    }
}

/// A run group given up by one supervisor ([`RunContainment::release`])
/// for another to end ([`ReleasedGroup::adopt`]); passed on as JSON across
/// an `exec` of bootplan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedGroup {
    pub group: PathBuf,
    pub record: PathBuf,
}

impl ReleasedGroup {
    /// Takes the group over: it is ended (killed, emptied, removed, its
    /// record deleted) when the containment is dropped. No new leaves are
    /// made in it.
    pub fn adopt(self) -> RunContainment {
        RunContainment {
            group: Some(self.group),
            why_not: None,
            record: self.record,
            record_error: None,
        }
    }
}

impl RunContainment {
    /// Gives the run group up without ending it, for another supervisor
    /// of the same run; `None` when the run has no group. No leaf is made
    /// from now on.
    pub fn release(mut self) -> Option<ReleasedGroup> {
        lock().take();
        let group = self.group.take()?;
        Some(ReleasedGroup {
            group,
            record: std::mem::take(&mut self.record),
        })
    }

    /// What the operator should know: where the children go, or why they
    /// are not in a cgroup.
    pub fn notices(&self) -> Vec<(Level, String)> {
        let mut notices = Vec::new();
        match (&self.group, &self.why_not) {
            (Some(group), _) => notices.push((
                Level::Debug,
                format!("child processes run in cgroup {}", group.display()),
            )),
            (None, why) => notices.push((
                Level::Info,
                format!(
                    "child processes are not contained in a cgroup ({}); each is stopped through its process group, which a process that leaves it escapes",
                    why.as_deref().unwrap_or("no cgroup v2")
                ),
            )),
        }
        if let Some(err) = &self.record_error {
            notices.push((
                Level::Warn,
                format!(
                    "cannot record the run's cgroup ({err}): if bootplan is killed, the next run will not find what it left"
                ),
            ));
        }
        notices
    }
}

impl Drop for RunContainment {
    fn drop(&mut self) {
        let Some(group) = self.group.take() else {
            return;
        };
        // No leaf is made from now on.
        lock().take();
        // A group that cannot be removed stays recorded: the next run tries.
        if end_group(&group).is_ok() {
            let _ = fs::remove_file(&self.record);
        }
    }
}

/// The run group while the run lasts.
struct RunGroup {
    path: PathBuf,
    next_leaf: u64,
    /// Leaves whose processes were killed but had not all exited yet.
    unremoved: Vec<PathBuf>,
    /// Set when a child could not be moved into its leaf.
    disabled: bool,
    /// Whether a failed leaf was reported already.
    warned: bool,
    reporter: Arc<Reporter>,
}

static RUN: Mutex<Option<RunGroup>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<RunGroup>> {
    RUN.lock().unwrap_or_else(|p| p.into_inner())
}

/// One child's cgroup, a leaf of the run group. Dropping it kills what is
/// still in it and removes it (later, if its processes take a moment to go).
#[derive(Debug)]
pub(crate) struct Leaf {
    path: PathBuf,
}

/// A new leaf for the next child, when the run has a group.
pub(crate) fn leaf() -> Option<Leaf> {
    let mut run = lock();
    let group = run.as_mut().filter(|g| !g.disabled)?;
    group.unremoved.retain(|path| remove_tree(path).is_err());
    group.next_leaf += 1;
    let path = group.path.join(group.next_leaf.to_string());
    match fs::create_dir(&path) {
        Ok(()) => Some(Leaf { path }),
        Err(err) => {
            if !group.warned {
                group.warned = true;
                group.reporter.notice(
                    Level::Warn,
                    format!(
                        "cannot create cgroup {}: {err}; such children are contained by their process group only",
                        path.display()
                    ),
                );
            }
            None
        }
    }
}

/// Stops putting children in cgroups for the rest of the run (the ones in
/// leaves already stay there), and says why.
pub(crate) fn disable(why: String) {
    if let Some(group) = lock().as_mut()
        && !group.disabled
    {
        group.disabled = true;
        group.reporter.notice(
            Level::Warn,
            format!(
                "{why}; children started from now on are contained by their process group only"
            ),
        );
    }
}

impl Leaf {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the leaf up without killing what is in it (see
    /// [`crate::process::Child::release`]).
    pub(crate) fn release(mut self) -> PathBuf {
        let path = std::mem::take(&mut self.path);
        std::mem::forget(self);
        path
    }

    /// Takes over a leaf another supervisor gave up.
    pub(crate) fn adopt(path: PathBuf) -> Leaf {
        Leaf { path }
    }

    /// The leaf's `cgroup.procs`, open for writing (close-on-exec): a child
    /// writes `0` to it to move itself in.
    pub(crate) fn procs_writer(&self) -> io::Result<OwnedFd> {
        let path = self.path.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
    }

    /// Sends `signal` to every process in the leaf. A process forked while
    /// this runs may miss it; [`Leaf::kill`] misses none.
    pub(crate) fn signal(&self, signal: Signal) {
        for pid in pids_in_tree(&self.path) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILL to every process in the leaf (`cgroup.kill`).
    pub(crate) fn kill(&self) {
        let _ = kill_group(&self.path);
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        self.kill();
        if remove_tree(&self.path).is_err()
            && let Some(group) = lock().as_mut()
        {
            group.unremoved.push(std::mem::take(&mut self.path));
        }
    }
}

/// Makes the run group under bootplan's own cgroup, recorded at `record`
/// first (so a kill right after the mkdir still leaves it findable), and
/// checks that it can hold processes and be killed. The error says why
/// there is no group; the second value is a failure to record it.
fn create_run_group(record: &Path) -> Result<(PathBuf, Option<String>), String> {
    let own = own_cgroup()?;
    if let Some(why) = systemd_objection(&own) {
        return Err(why);
    }
    let own_procs = own.join("cgroup.procs");
    nix::unistd::access(&own_procs, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("cannot move processes out of cgroup {}: {e}", own.display()))?;
    let pid = std::process::id();
    let group = (0..100)
        .map(|n| match n {
            0 => own.join(format!("{GROUP_PREFIX}{pid}")),
            n => own.join(format!("{GROUP_PREFIX}{pid}.{n}")),
        })
        .find(|candidate| !candidate.exists())
        .ok_or_else(|| {
            format!(
                "cgroups named {GROUP_PREFIX}{pid} exist already in {}",
                own.display()
            )
        })?;
    let written = Record {
        pid,
        start_time: start_time_of(pid).unwrap_or(0),
        cgroup: group.clone(),
    };
    let record_error = write_record(record, &written).err();
    if let Err(err) = fs::create_dir(&group) {
        if record_error.is_none() {
            let _ = fs::remove_file(record);
        }
        return Err(format!("cannot create cgroup {}: {err}", group.display()));
    }
    if let Err(why) = check_usable(&group) {
        let _ = fs::remove_dir(&group);
        if record_error.is_none() {
            let _ = fs::remove_file(record);
        }
        return Err(why);
    }
    Ok((group, record_error))
}

fn write_record(path: &Path, record: &Record) -> Result<(), String> {
    let json = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    crate::fsutil::replace_file(path, &json, 0o600).map_err(|e| e.to_string())
}

/// A group children can be moved into and killed as one.
fn check_usable(group: &Path) -> Result<(), String> {
    if !group.join("cgroup.kill").exists() {
        return Err("this kernel has no cgroup.kill (Linux 5.14 or later has)".into());
    }
    let kind = fs::read_to_string(group.join("cgroup.type")).unwrap_or_default();
    if kind.trim() != "domain" {
        return Err(format!(
            "cgroup {} is of type `{}` and cannot hold processes",
            group.display(),
            kind.trim()
        ));
    }
    Ok(())
}

/// This process's own cgroup directory in the cgroup v2 hierarchy, or why
/// there is none.
pub fn own_cgroup() -> Result<PathBuf, String> {
    let cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = unified_path(&cgroup).ok_or("this process is in no cgroup v2 hierarchy")?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mounts = cgroup2_mounts(&mountinfo);
    if mounts.is_empty() {
        return Err("no cgroup2 file system is mounted".into());
    }
    mounts
        .iter()
        .find_map(|(root, point)| {
            let rest = Path::new(own).strip_prefix(root).ok()?;
            let dir = point.join(rest);
            dir.join("cgroup.procs").is_file().then_some(dir)
        })
        .ok_or_else(|| format!("cgroup {own} is under no cgroup2 mount"))
}

/// The path of the `0::` (cgroup v2) line of `/proc/PID/cgroup`; `None`
/// when there is none or the cgroup was deleted.
fn unified_path(proc_cgroup: &str) -> Option<&str> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// (root inside the hierarchy, mount point) of each cgroup2 mount in a
/// `/proc/PID/mountinfo`.
fn cgroup2_mounts(mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = mount.split(' ');
            let root = fields.nth(3)?;
            let point = fields.next()?;
            Some((
                PathBuf::from(unescape(root)),
                PathBuf::from(unescape(point)),
            ))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why bootplan must not make cgroups under systemd: it runs in a unit's
/// cgroup that the unit does not delegate. `None` outside systemd.
fn systemd_objection(own: &Path) -> Option<String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let unit = own.ancestors().find(|dir| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".service") || n.ends_with(".scope"))
    })?;
    if delegated(unit) {
        return None;
    }
    Some(format!(
        "the systemd unit's cgroup {} is not delegated to bootplan (Delegate=yes)",
        unit.display()
    ))
}

/// Whether systemd marked `dir` as delegated (systemd 251 and later).
fn delegated(dir: &Path) -> bool {
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        rustix::fs::getxattr(dir, *name, &mut value[..]).is_ok_and(|n| value[..n] == *b"1")
    })
}

/// The start time of process `pid` (clock ticks after boot), if it runs.
fn start_time_of(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_time_in(&stat)
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn start_time_in(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The pids in the cgroup at `path` and in its descendants.
pub(crate) fn pids_in_tree(path: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for child in subgroups(path) {
        pids.extend(pids_in_tree(&child));
    }
    pids
}

fn subgroups(path: &Path) -> Vec<PathBuf> {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL to everything in the cgroup at `path` and its descendants.
fn kill_group(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))?
        .write_all(b"1")
}

/// Kills everything in the group, waits until it is empty and removes it.
fn end_group(path: &Path) -> Result<(), CgroupError> {
    match kill_group(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound && !path.exists() => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Kill {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    wait_empty(path, EXIT_WITHIN)?;
    remove_tree(path).map_err(|source| CgroupError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

/// Waits (blocking, polling `cgroup.events`) until no process is left in
/// the group or its descendants. Killed processes go within microseconds
/// unless the kernel holds them; `limit` bounds the wait.
fn wait_empty(path: &Path, limit: Duration) -> Result<(), CgroupError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let events = match fs::read_to_string(path.join("cgroup.events")) {
            Ok(events) => events,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(CgroupError::Read {
                    path: path.join("cgroup.events"),
                    source,
                });
            }
        };
        if events.lines().any(|l| l.trim() == "populated 0") {
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(CgroupError::Lingering {
                path: path.to_path_buf(),
                after: limit,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Removes the cgroup at `path` and its descendants, deepest first. Fails
/// (EBUSY) while a process is in one of them.
fn remove_tree(path: &Path) -> io::Result<()> {
    for child in subgroups(path) {
        remove_tree(&child)?;
    }
    match fs::remove_dir(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_of_proc_cgroup_is_found() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/\n";
        assert_eq!(unified_path(hybrid), Some("/"));
        let unit = "0::/system.slice/bootplan.service\n";
        assert_eq!(unified_path(unit), Some("/system.slice/bootplan.service"));
        assert_eq!(unified_path("4:memory:/x\n"), None, "cgroup v1 only");
        assert_eq!(unified_path("0::/gone (deleted)\n"), None);
    }

    #[test]
    fn cgroup2_mounts_are_read_from_mountinfo_with_escapes() {
        let mountinfo = "\
31 25 0:27 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
50 30 0:40 /container /mnt/with\\040space rw shared:1 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mounts(mountinfo),
            [
                ("/".into(), "/sys/fs/cgroup/unified".into()),
                ("/container".into(), "/mnt/with space".into()),
            ]
        );
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        assert_eq!(start_time_in(stat), Some(98765));
        assert_eq!(start_time_in("garbage"), None);
        let me = start_time_of(std::process::id());
        assert!(me.is_some_and(|t| t > 0), "{me:?}");
    }

    #[test]
    fn a_record_only_points_at_a_cgroup_named_for_its_pid() {
        assert!(
            check_run_group(Path::new("/tmp/bootplan-42"), 42).is_err(),
            "not cgroupfs"
        );
        assert!(check_run_group(Path::new("/sys/fs/cgroup/other"), 42).is_err());
        assert!(check_run_group(Path::new("/sys/fs/cgroup/bootplan-421"), 42).is_err());
        assert!(check_run_group(Path::new("/sys/fs/cgroup/bootplan-42.x"), 42).is_err());
        assert!(
            check_run_group(Path::new("bootplan-42"), 42).is_err(),
            "relative"
        );
    }

    #[test]
    fn reclaiming_without_a_record_finds_nothing_and_a_bad_record_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(reclaim_leftovers(dir.path()).unwrap().is_none());
        let record = dir.path().join(RECORD_FILE);
        fs::write(&record, "{\"pid\": \"nope\"}").unwrap();
        let err = reclaim_leftovers(dir.path()).unwrap_err();
        assert!(matches!(err, CgroupError::Record { .. }), "{err}");
        assert!(!record.exists());
        // A record of a group that is gone is simply dropped.
        let gone = Record {
            pid: 999_999_999,
            start_time: 1,
            cgroup: dir.path().join("bootplan-999999999"),
        };
        fs::write(&record, serde_json::to_vec(&gone).unwrap()).unwrap();
        assert!(reclaim_leftovers(dir.path()).unwrap().is_none());
        assert!(!record.exists());
        // A record pointing at an ordinary directory is refused, not obeyed.
        fs::create_dir(&gone.cgroup).unwrap();
        fs::write(&record, serde_json::to_vec(&gone).unwrap()).unwrap();
        let err = reclaim_leftovers(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not on a cgroup2"), "{err}");
        assert!(gone.cgroup.exists());
    }

    #[test]
    fn the_notice_counts_what_was_killed() {
        let reclaimed = |processes| Reclaimed {
            pid: 1234,
            processes,
            cgroup: "/sys/fs/cgroup/bootplan-1234".into(),
        };
        assert_eq!(
            reclaimed(2).to_string(),
            "killed 2 processes left by a previous bootplan run (pid 1234) in cgroup /sys/fs/cgroup/bootplan-1234"
        );
        assert!(
            reclaimed(1)
                .to_string()
                .starts_with("killed 1 process left")
        );
        assert!(reclaimed(0).to_string().contains("no process was left"));
    }
}
