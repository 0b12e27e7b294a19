//! Starting a child: [`Command`] builds a `std::process::Command` and
//! spawns it through tokio (reaped through a pidfd by tokio's own reaper).
//! Every child gets stdin from /dev/null unless asked otherwise, its own
//! process group (`process_group(0)`), SIGKILL when it is dropped before it
//! exited, SIGKILL when bootplan dies (`PR_SET_PDEATHSIG`), and, when the
//! run has a cgroup, a leaf of it ([`super::cgroup`]). When its first
//! process exits, the rest of its tree is killed.
//!
//! The one piece of code that runs between fork and exec is
//! [`ChildSetup::apply`]: it sets the death signal, moves the child into its
//! cgroup, for the supervised app on a terminal takes the foreground, and,
//! when the command has [`Restrictions`], sets its limits and drops to its
//! user and groups, umask and `no_new_privs`. It makes only
//! async-signal-safe system calls (the child of a multi-threaded parent may
//! not allocate or take locks) on values prepared before the fork.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not only
//! the process. bootplan spawns from its runtime's thread, which lives as
//! long as bootplan; spawning from a short-lived thread (a `spawn_blocking`
//! worker) would kill children early.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::Resource;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Pid, Uid};

use super::cgroup::{self, Leaf};
use super::reaper;

/// What a child's standard stream is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// A pipe to bootplan ([`Child::stdout`], [`Child::stderr`]).
    Piped,
    /// bootplan's own stream.
    Inherit,
}

impl Stdio {
    fn std(self) -> std::process::Stdio {
        match self {
            Stdio::Null => std::process::Stdio::null(),
            Stdio::Piped => std::process::Stdio::piped(),
            Stdio::Inherit => std::process::Stdio::inherit(),
        }
    }
}

/// A process to start. Its arguments and environment are rendered values
/// that may hold secrets, so its `Debug` shows the program, the number of
/// arguments and the names of the variables only.
#[derive(Clone)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    /// Changes to bootplan's environment, in order: `None` removes.
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    foreground: bool,
    restrictions: Option<Arc<Restrictions>>,
    stop_signal: Signal,
}

/// Who a child runs as and what it may do: set between fork and exec (or,
/// for the final exec, in bootplan itself just before it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// The user and groups to drop to.
    pub ids: Option<Ids>,
    /// The umask (the permission bits new files do not get).
    pub umask: Option<u32>,
    /// `PR_SET_NO_NEW_PRIVS`: setuid programs and file capabilities grant nothing.
    pub no_new_privs: bool,
    /// Resource limits: (resource, soft, hard), `None` meaning unlimited.
    pub limits: Vec<(Resource, Option<u64>, Option<u64>)>,
}

/// A user id, its primary group and its supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Ids {
    pub fn new(uid: u32, gid: u32, groups: &[u32]) -> Ids {
        Ids {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            groups: groups.iter().map(|g| Gid::from_raw(*g)).collect(),
        }
    }
}

impl Restrictions {
    /// Applies the limits, then the groups, group and user (in that order:
    /// each later step gives up the right to the earlier ones), the umask
    /// and `no_new_privs`, to the calling process. Makes only
    /// async-signal-safe system calls on values made before, so it may run
    /// between fork and exec.
    pub fn apply(&self) -> io::Result<()> {
        const INFINITY: u64 = libc::RLIM_INFINITY;
        for &(resource, soft, hard) in &self.limits {
            nix::sys::resource::setrlimit(
                resource,
                soft.unwrap_or(INFINITY),
                hard.unwrap_or(INFINITY),
            )?;
        }
        if let Some(ids) = &self.ids {
            nix::unistd::setgroups(&ids.groups)?;
            nix::unistd::setgid(ids.gid)?;
            nix::unistd::setuid(ids.uid)?;
        }
        if let Some(mask) = self.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        }
        if self.no_new_privs {
            nix::sys::prctl::set_no_new_privs()?;
        }
        Ok(())
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.env.iter().map(|(name, _)| name).collect();
        f.debug_struct("Command")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .field("env", &names)
            .finish_non_exhaustive()
    }
}

/// Variables of bootplan's own environment that no child inherits (secrets
/// and credentials bootplan uses); see [`withhold_env`].
static WITHHELD: std::sync::OnceLock<Vec<OsString>> = std::sync::OnceLock::new();

/// Names variables of bootplan's environment that children do not
/// inherit: every [`Command`] starts without them (a step's own `env:`
/// may still pass one on). Set once, at the start of a run.
pub fn withhold_env(names: impl IntoIterator<Item = String>) {
    let _ = WITHHELD.set(names.into_iter().map(OsString::from).collect());
}

/// The withheld variables, for a child started outside [`Command`] (the
/// final exec).
pub fn withheld_env() -> &'static [OsString] {
    WITHHELD.get().map_or(&[], Vec::as_slice)
}

impl Command {
    /// A command for `program` (searched in the child's `PATH` unless it
    /// contains a `/`): stdin from /dev/null, output inherited, without
    /// the [`withheld`](withhold_env) variables.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: withheld_env()
                .iter()
                .map(|name| (name.clone(), None))
                .collect(),
            cwd: None,
            stdin: Stdio::Null,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            foreground: false,
            restrictions: None,
            stop_signal: Signal::SIGTERM,
        }
    }

    #[cfg(test)]
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    pub fn stdin(&mut self, io: Stdio) -> &mut Self {
        self.stdin = io;
        self
    }

    pub fn stdout(&mut self, io: Stdio) -> &mut Self {
        self.stdout = io;
        self
    }

    pub fn stderr(&mut self, io: Stdio) -> &mut Self {
        self.stderr = io;
        self
    }

    /// When bootplan's stdin is a terminal, the child's process group
    /// becomes its foreground group, so the child can read from it.
    pub fn foreground(&mut self) -> &mut Self {
        self.foreground = true;
        self
    }

    /// Runs the child as another user, with limits, a umask or `no_new_privs`.
    pub fn restrict(&mut self, restrictions: Restrictions) -> &mut Self {
        self.restrictions = Some(Arc::new(restrictions));
        self
    }

    /// The signal [`Child::terminate`] asks the child's tree to stop with
    /// (default SIGTERM).
    pub fn stop_signal(&mut self, signal: Signal) -> &mut Self {
        self.stop_signal = signal;
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// Starts the process. A program that cannot be started (not found,
    /// not executable, a missing directory) is an error here. Must be
    /// called inside the runtime.
    pub fn spawn(&self) -> io::Result<Child> {
        let (child, tree) = self.contained(|cmd| {
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.kill_on_drop(true);
            reaper::while_spawning(|| cmd.spawn(), tokio::process::Child::id)
        })?;
        let pid = child.id().unwrap_or_default();
        let mut child = Child {
            inner: child,
            pid,
            tree,
            status: None,
            stop_signal: self.stop_signal,
            stdin: None,
            stdout: None,
            stderr: None,
        };
        child.stdin = child.inner.stdin.take();
        child.stdout = child.inner.stdout.take();
        child.stderr = child.inner.stderr.take();
        Ok(child)
    }

    /// Runs `start` with the std command to spawn, in a cgroup leaf when
    /// the run has a group. A contained start that fails where the same
    /// start without the leaf works means children cannot be moved here:
    /// containment is turned off for the run (and said so).
    pub(crate) fn contained<T>(
        &self,
        mut start: impl FnMut(std::process::Command) -> io::Result<T>,
    ) -> io::Result<(T, Tree)> {
        if self.program.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the program name is empty",
            ));
        }
        let leaf = cgroup::leaf();
        if let Some(leaf) = leaf {
            match self.build(Some(&leaf)).and_then(&mut start) {
                Ok(started) => return Ok((started, Tree::new(Some(leaf)))),
                Err(contained) => {
                    let where_to = leaf.path().display().to_string();
                    drop(leaf);
                    let started = start(self.build(None)?).map_err(|e| self.explain(e))?;
                    cgroup::disable(format!(
                        "cannot start a child in cgroup {where_to} ({contained}), only outside it"
                    ));
                    return Ok((started, Tree::new(None)));
                }
            }
        }
        let started = start(self.build(None)?).map_err(|e| self.explain(e))?;
        Ok((started, Tree::new(None)))
    }

    /// The std command, with the setup that runs between fork and exec.
    fn build(&self, leaf: Option<&Leaf>) -> io::Result<std::process::Command> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(self.stdin.std())
            .stdout(self.stdout.std())
            .stderr(self.stderr.std())
            .process_group(0);
        let terminal = match self.foreground {
            true => foreground_terminal(),
            false => None,
        };
        let setup = ChildSetup {
            parent: nix::unistd::getpid(),
            cgroup_procs: leaf.map(Leaf::procs_writer).transpose()?,
            terminal,
            ttou: SigSet::from(Signal::SIGTTOU),
            restrictions: self.restrictions.clone(),
        };
        // SAFETY: the hook runs in the forked child before exec and makes
        // only async-signal-safe system calls (prctl, getppid, write,
        // pthread_sigmask, tcsetpgrp, getpid, setrlimit, setgroups, setgid,
        // setuid, umask) on values made before the fork; it allocates
        // nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        Ok(cmd)
    }

    /// std reports a missing working directory like a missing program; say
    /// which it was.
    fn explain(&self, err: io::Error) -> io::Error {
        match &self.cwd {
            Some(cwd) if !cwd.is_dir() => io::Error::new(
                err.kind(),
                format!("cannot change to directory {}: {err}", cwd.display()),
            ),
            _ => err,
        }
    }
}

/// A duplicate of bootplan's stdin when it is a terminal.
fn foreground_terminal() -> Option<OwnedFd> {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    match nix::unistd::isatty(fd) {
        Ok(true) => fd.try_clone_to_owned().ok(),
        _ => None,
    }
}

/// What the child does between fork and exec, prepared by bootplan.
struct ChildSetup {
    /// bootplan's pid.
    parent: Pid,
    /// The child's cgroup leaf's `cgroup.procs`, open for writing.
    cgroup_procs: Option<OwnedFd>,
    /// The terminal to take the foreground of.
    terminal: Option<OwnedFd>,
    /// SIGTTOU alone: blocked while taking the foreground, which a
    /// background group otherwise gets stopped for.
    ttou: SigSet,
    /// The user, limits and the rest to apply last.
    restrictions: Option<Arc<Restrictions>>,
}

impl ChildSetup {
    /// In the child, after fork (std has set up its streams, directory and
    /// process group), before exec. Async-signal-safe calls only.
    fn apply(&self) -> io::Result<()> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        // bootplan may have died before the death signal was set.
        if nix::unistd::getppid() != self.parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        if let Some(procs) = &self.cgroup_procs {
            nix::unistd::write(procs, b"0")?;
        }
        if let Some(terminal) = &self.terminal {
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&self.ttou), None)?;
            let _ = nix::unistd::tcsetpgrp(terminal, nix::unistd::getpid());
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&self.ttou), None)?;
        }
        // Last: moving into the cgroup and taking the terminal need
        // bootplan's own rights.
        if let Some(restrictions) = &self.restrictions {
            restrictions.apply()?;
            if restrictions.ids.is_some() {
                // A change of user clears the death signal: set it again,
                // and make sure bootplan did not die in between.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid() != self.parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
        }
        Ok(())
    }
}

/// Where a child's descendants are: its cgroup leaf, or else only its
/// process group (whose id is the child's pid). Dropped, it kills what is
/// left and removes the leaf.
#[derive(Debug)]
pub(crate) struct Tree {
    leaf: Option<Leaf>,
}

impl Tree {
    fn new(leaf: Option<Leaf>) -> Tree {
        Tree { leaf }
    }

    /// `signal` to every process of the tree, once each: the leaf's
    /// processes (its process group is among them), else the group.
    /// `pgid` is the child's pid; the caller knows it still names the
    /// child's group (the child has not been reaped).
    pub(crate) fn signal(&self, pgid: u32, signal: Signal) {
        match &self.leaf {
            Some(leaf) => leaf.signal(signal),
            None => {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pgid as i32), signal);
            }
        }
    }

    /// The tree's processes, for membership checks; `leader` is the child.
    pub(crate) fn members(&self, leader: u32) -> Members {
        Members {
            leader,
            leaf: self.leaf.as_ref().map(|l| l.path().to_path_buf()),
        }
    }

    /// SIGKILL to the whole tree: the cgroup leaf at once (none can fork
    /// away from it), else the process group.
    pub(crate) fn kill(&self, pgid: u32) {
        match &self.leaf {
            Some(leaf) => leaf.kill(),
            None => {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// The processes of one child's tree: its cgroup leaf when it has one,
/// else its process group and descendants.
#[derive(Debug, Clone)]
pub struct Members {
    leader: u32,
    leaf: Option<PathBuf>,
}

impl Members {
    /// Process `leader`, its process group and its descendants.
    #[cfg(test)]
    pub fn process(leader: u32) -> Members {
        Members { leader, leaf: None }
    }

    /// Whether process `pid` is the child or one of its descendants.
    pub fn contains(&self, pid: u32) -> bool {
        match &self.leaf {
            Some(leaf) => cgroup::pids_in_tree(leaf).contains(&(pid as i32)),
            None => {
                pid == self.leader
                    || process_group(pid) == Some(self.leader)
                    || descends_from(pid, self.leader)
            }
        }
    }
}

/// The process group of `pid` (`/proc/PID/stat` field 5).
fn process_group(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// A child given up by one supervisor ([`Child::release`]), for another to
/// take over ([`Released::adopt`]): across an `exec` of bootplan, it is
/// passed on as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Released {
    pub pid: u32,
    pub stop_signal: i32,
    /// Its cgroup leaf, when it has one.
    pub leaf: Option<PathBuf>,
}

impl Released {
    /// Takes the child over: its tree is killed when it ends, as for a
    /// [`Child`]. The caller must be the child's parent and reap it itself.
    pub fn adopt(self) -> Adopted {
        Adopted {
            pid: self.pid,
            stop_signal: Signal::try_from(self.stop_signal).unwrap_or(Signal::SIGTERM),
            tree: Tree::new(self.leaf.map(Leaf::adopt)),
        }
    }
}

/// A child taken over from another supervisor; its owner reaps it.
#[derive(Debug)]
pub struct Adopted {
    pid: u32,
    stop_signal: Signal,
    tree: Tree,
}

impl Adopted {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What asks it to stop (its `stop_signal`, SIGTERM unless set).
    pub fn stop_signal(&self) -> Signal {
        self.stop_signal
    }

    /// Once it has been reaped: SIGKILL to what it left, and its cgroup
    /// leaf removed.
    pub fn exited(self) {
        self.tree.kill(self.pid);
    }
}

/// The parent of process `pid` (`/proc/PID/stat`), while it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Whether `ancestor` is among `pid`'s parents.
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    // A process tree is not deeper than this; a loop in a racing read is cut.
    for _ in 0..128 {
        let Some(parent) = parent_of(current) else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// The fields of `/proc/PID/stat` after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A started process.
#[derive(Debug)]
pub struct Child {
    inner: tokio::process::Child,
    pid: u32,
    tree: Tree,
    status: Option<ExitStatus>,
    stop_signal: Signal,
    /// The write end of its stdin, when piped.
    pub stdin: Option<tokio::process::ChildStdin>,
    /// The read end of its stdout, when piped.
    pub stdout: Option<tokio::process::ChildStdout>,
    /// The read end of its stderr, when piped.
    pub stderr: Option<tokio::process::ChildStderr>,
}

impl Child {
    /// The pid, until the child has been waited for (then it may be reused).
    #[cfg(test)]
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid)
    }

    /// The child's pid (its process group's id too).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Who belongs to this child's tree, to check a process against later
    /// (e.g. the sender of a notification).
    pub fn members(&self) -> Members {
        self.tree.members(self.pid)
    }

    /// Waits for the child to exit; then kills what it left in its tree.
    /// Cancel-safe; returns the same status when called again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.inner.wait().await?;
        Ok(self.exited(status))
    }

    /// The exit status if the child has exited, without waiting (what it
    /// left is killed then, as by [`Child::wait`]).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        Ok(self.inner.try_wait()?.map(|status| self.exited(status)))
    }

    fn exited(&mut self, status: ExitStatus) -> ExitStatus {
        self.status = Some(status);
        // Its leftovers go with it. Its group id cannot name another group
        // while any of them is in it.
        self.tree.kill(self.pid);
        status
    }

    /// Gives the running child up to another supervisor (see
    /// [`Released`]): nothing here kills, signals or waits for it any
    /// more. The runtime's handle on it is leaked on purpose: dropping it
    /// would kill the child, and the new supervisor reaps the child with
    /// `waitpid` (in this process, or in the image an `exec` puts here).
    pub fn release(mut self) -> Released {
        let leaf = self.tree.leaf.take().map(Leaf::release);
        let released = Released {
            pid: self.pid,
            stop_signal: self.stop_signal as i32,
            leaf,
        };
        std::mem::forget(self);
        released
    }

    /// SIGKILL to the child alone, if it has not been waited for.
    #[cfg(test)]
    pub fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.inner.start_kill()
    }

    /// SIGKILL to the child's whole tree, then waits for the child.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            self.tree.kill(self.pid);
        }
        self.wait().await
    }

    /// The command's stop signal (SIGTERM unless it set another) to the
    /// child's whole tree; SIGKILL after `grace` if the child is still
    /// there; waits for it.
    pub async fn terminate(&mut self, grace: Duration) {
        if self.status.is_some() {
            return;
        }
        self.tree.signal(self.pid, self.stop_signal);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            let _ = self.kill().await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // tokio kills the child itself (kill_on_drop) and reaps it later;
        // the rest of the tree goes now. Not reaped yet, the child keeps
        // its group id from being reused.
        if self.status.is_none() {
            self.tree.kill(self.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
        let mut out = String::new();
        pipe.expect("piped")
            .read_to_string(&mut out)
            .await
            .expect("read");
        out
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdout(Stdio::Piped)
            .stderr(Stdio::Piped);
        cmd
    }

    #[tokio::test]
    async fn output_env_cwd_and_exit_status_reach_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = sh("echo out; echo err >&2; echo \"$SET ${GONE-unset}\"; pwd; exit 3");
        cmd.env("SET", "yes")
            .env("GONE", "here")
            .env_remove("GONE")
            .current_dir(dir.path());
        let mut child = cmd.spawn().unwrap();
        let out = read_all(child.stdout.take()).await;
        let err = read_all(child.stderr.take()).await;
        let status = child.wait().await.unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(out, format!("out\nyes unset\n{}\n", cwd.display()));
        assert_eq!(err, "err\n");
        assert_eq!(status.code(), Some(3));
        // A second wait returns the same status; the pid is no longer ours.
        assert_eq!(child.wait().await.unwrap().code(), Some(3));
        assert_eq!(child.id(), None);
    }

    /// Own group, stdin from /dev/null, nothing blocked, no handler of
    /// bootplan's, SIGPIPE at its default, SIGKILL as the death signal.
    #[tokio::test]
    async fn the_child_gets_its_own_group_null_stdin_default_signals_and_a_death_signal() {
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/stat")
            .arg("/proc/self/status")
            .stdout(Stdio::Piped);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0"));
        let out = read_all(child.stdout.take()).await;
        assert!(child.wait().await.unwrap().success());
        // /proc/PID/stat: "pid (comm) state ppid pgrp ..."
        let after_comm = &out[out.find(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        assert_eq!(fields[2], pid.to_string(), "own group");
        if let Ok(stdin) = stdin {
            assert_eq!(stdin, Path::new("/dev/null"));
        }
        let field = |name: &str| {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(field("SigBlk:"), 0, "nothing blocked");
        assert_eq!(field("SigCgt:"), 0, "no handler survives exec");
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_eq!(field("SigIgn:") & sigpipe, 0, "SIGPIPE back to default");
    }

    #[tokio::test]
    async fn start_failures_name_what_failed() {
        let err = Command::new("bootplan-no-such-program")
            .spawn()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = Command::new("/etc/passwd").spawn().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        let mut cmd = Command::new("true");
        cmd.current_dir("/bootplan-no-such-dir");
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(
            err.to_string().contains("/bootplan-no-such-dir"),
            "names the directory: {err}"
        );
        let err = Command::new("").spawn().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = Command::new("true").arg("a\0b").spawn().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// Descriptors of `pid`, from /proc.
    fn fds_of(pid: &str) -> Vec<i32> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        fds
    }

    /// Whether this process's `fd` is close-on-exec (fdinfo's octal flags).
    fn close_on_exec(fd: i32) -> bool {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        flags & libc::O_CLOEXEC as u32 != 0
    }

    #[tokio::test]
    async fn the_child_gets_no_descriptor_bootplan_opened() {
        // A file and the child's own pipes are open here while it starts;
        // only what this process was given without close-on-exec (by
        // whoever started it) may reach the child beside its streams.
        let held = std::fs::File::open("/proc/self/stat").unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdout(Stdio::Piped).stderr(Stdio::Piped);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        let passed_on: Vec<i32> = fds_of("self")
            .into_iter()
            .filter(|fd| *fd > 2 && !close_on_exec(*fd))
            .collect();
        // The program may hold a file for a moment while it starts (its
        // locale); an inherited descriptor stays.
        let extra = || -> Vec<i32> {
            fds_of(&pid.to_string())
                .into_iter()
                .filter(|fd| *fd > 2 && !passed_on.contains(fd))
                .collect()
        };
        let mut left = extra();
        for _ in 0..200 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = extra();
        }
        child.kill().await.unwrap();
        assert_eq!(left, [0i32; 0], "descriptors leaked into the child");
        drop(held);
    }

    #[tokio::test]
    async fn dropping_a_running_child_kills_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "sleep 60 & echo $$ $! > {0}.tmp; mv {0}.tmp {0}; wait",
            pids.display()
        );
        let child = sh(&script).spawn().unwrap();
        let text = wait_for_file(&pids).await;
        drop(child);
        for pid in text.split_whitespace() {
            assert_gone(pid.parse().unwrap()).await;
        }
    }

    #[tokio::test]
    async fn what_a_child_leaves_in_its_group_dies_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 60 & echo $! > {0}.tmp; mv {0}.tmp {0}",
            pid_file.display()
        );
        let mut child = sh(&script).spawn().unwrap();
        assert!(child.wait().await.unwrap().success());
        let left: u32 = wait_for_file(&pid_file).await.trim().parse().unwrap();
        assert_gone(left).await;
    }

    #[tokio::test]
    async fn terminate_sends_sigterm_to_the_group_then_sigkill_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let mut trapped = sh(&format!(
            "trap 'exit 7' TERM; touch {}; while :; do sleep 0.01; done",
            ready.display()
        ))
        .spawn()
        .unwrap();
        wait_for_file(&ready).await;
        trapped.terminate(Duration::from_secs(10)).await;
        assert_eq!(trapped.wait().await.unwrap().code(), Some(7));

        let ignoring = dir.path().join("ignoring");
        let mut stubborn = sh(&format!(
            "trap '' TERM; touch {}; while :; do sleep 0.01; done",
            ignoring.display()
        ))
        .spawn()
        .unwrap();
        wait_for_file(&ignoring).await;
        stubborn.terminate(Duration::from_millis(100)).await;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(stubborn.wait().await.unwrap().signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn try_wait_and_start_kill() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        assert!(child.try_wait().unwrap().is_none());
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(child.try_wait().unwrap(), Some(status));
        assert_eq!(child.id(), None);
    }

    #[test]
    fn debug_shows_no_argument_or_value() {
        let mut cmd = Command::new("helper");
        cmd.arg("--token=s3cr3t").env("PASSWORD", "hunter2");
        let shown = format!("{cmd:?}");
        assert!(
            shown.contains("helper") && shown.contains("PASSWORD"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    async fn wait_for_file(path: &Path) -> String {
        let found = async {
            loop {
                if let Ok(text) = std::fs::read_to_string(path) {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), found)
            .await
            .unwrap_or_else(|_| panic!("{} never appeared", path.display()))
    }

    /// Gone, not a zombie: polled until the reaping has happened.
    async fn assert_gone(pid: u32) {
        let gone = async {
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
                match stat {
                    Err(_) => return,
                    Ok(stat)
                        if stat
                            .rsplit(')')
                            .next()
                            .is_some_and(|r| r.trim_start().starts_with('Z')) =>
                    {
                        return;
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .unwrap_or_else(|_| panic!("pid {pid} still runs"));
    }
}
