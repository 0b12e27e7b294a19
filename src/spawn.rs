//! Starting child processes without `fork()`, while keeping the guarantee
//! that no child outlives a killed bootplan.
//!
//! Why not `tokio::process::Command`: a child must die with bootplan
//! (`PR_SET_PDEATHSIG`), which needs code to run in the child between
//! creation and exec. std only offers that through a `pre_exec` hook, and a
//! hook turns std's `posix_spawn` (vfork: no page-table copy) into a full
//! `fork()` — which the benchmark showed to be most of bootplan's own cost
//! per step (page-table copy, copy-on-write faults, TLB-shootdown IPIs).
//!
//! So we do what glibc's `posix_spawn` does, plus the one call it lacks:
//! `clone(CLONE_VM | CLONE_VFORK)` onto a small separate stack; the child
//! only calls async-signal-safe system call wrappers on data the parent
//! prepared (no allocation, no locks), and the parent thread sleeps until
//! the child has exec'd or failed. All signals are blocked across the clone, and the child resets
//! every handled signal to its default before unblocking, so none of
//! bootplan's handlers can run in the child. The child is created with a
//! pidfd (`CLONE_PIDFD`), which becomes readable when it exits: waiting
//! needs no SIGCHLD handling and cannot race with pid reuse.
//!
//! On kernels without pollable pidfds (before 5.3) or where seccomp refuses
//! them, the same [`Command`] is spawned through tokio with a `pre_exec`
//! hook: slower, same guarantees.
//!
//! Every child is registered with the supervise-mode reaper while it is
//! created (see [`crate::lifecycle::reaper`]), so the reaper never takes
//! its exit status.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created the child exits,
//! not only the process. bootplan spawns from its runtime thread, which
//! lives as long as bootplan; spawning from a short-lived thread (a
//! `spawn_blocking` worker, a thread of a multi-threaded runtime that may
//! be retired) would kill children early.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Stack for the cloned child. It runs one small function that only makes
/// system calls; glibc's posix_spawn gets by with less.
const CHILD_STACK: usize = 64 * 1024;

/// Used when the child's environment has no `PATH` (as execvp does).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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

/// A process to start. The builder mirrors `std::process::Command` for the
/// parts bootplan uses.
#[derive(Debug, Clone)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    /// Changes to bootplan's environment: `None` removes the variable.
    env: BTreeMap<OsString, Option<OsString>>,
    cwd: Option<PathBuf>,
    stdout: Stdio,
    stderr: Stdio,
    own_group: bool,
    kill_on_drop: bool,
}

impl Command {
    /// A command for `program` (searched in the child's `PATH` unless it
    /// contains a `/`), with output inherited. Stdin is always /dev/null.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            own_group: false,
            kill_on_drop: false,
        }
    }

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
            .insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
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
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_owned());
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

    /// Puts the child in a new process group whose id is its pid, so the
    /// whole group can be signalled.
    pub fn own_process_group(&mut self) -> &mut Self {
        self.own_group = true;
        self
    }

    /// Kills the child (SIGKILL) when its [`Child`] is dropped before it exited.
    pub fn kill_on_drop(&mut self) -> &mut Self {
        self.kill_on_drop = true;
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// Starts the process. It gets `SIGKILL` if bootplan dies.
    pub fn spawn(&self) -> io::Result<Child> {
        if self.program.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the program name is empty",
            ));
        }
        crate::lifecycle::reaper::while_spawning(|| {
            if CLONE_WORKS.load(Ordering::Relaxed) && pidfd_supported() {
                match self.spawn_cloned() {
                    Err(Refused::Clone(err)) if clone_unavailable(&err) => {
                        // A sandbox (seccomp) that refuses this clone: fork from now on.
                        CLONE_WORKS.store(false, Ordering::Relaxed);
                    }
                    Err(Refused::Clone(err) | Refused::Start(err)) => return Err(err),
                    Ok(child) => return Ok(child),
                }
            }
            self.spawn_forked()
        })
    }

    /// The child's environment as `KEY=VALUE` strings: bootplan's own
    /// (converted once) with this command's changes applied. `owned` keeps
    /// the strings made for the changes alive.
    fn child_env<'a>(&self, owned: &'a mut Vec<CString>) -> io::Result<Vec<&'a CStr>>
    where
        Self: 'a,
    {
        for (key, value) in &self.env {
            if let Some(value) = value {
                let mut pair = key.clone();
                pair.push("=");
                pair.push(value);
                owned.push(cstring(pair)?);
            }
        }
        let inherited = base_env()
            .iter()
            .filter(|(key, _)| !self.env.contains_key(key))
            .map(|(_, pair)| pair.as_c_str());
        Ok(inherited
            .chain(owned.iter().map(CString::as_c_str))
            .collect())
    }

    /// The `PATH` the child will have.
    fn child_path(&self) -> OsString {
        match self.env.get(OsStr::new("PATH")) {
            Some(Some(path)) => path.clone(),
            Some(None) => DEFAULT_PATH.into(),
            None => std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        }
    }

    /// The paths to try, in order, as execvp would.
    fn candidates(&self) -> Vec<PathBuf> {
        if self.program.as_bytes().contains(&b'/') {
            return vec![PathBuf::from(&self.program)];
        }
        std::env::split_paths(&self.child_path())
            .map(|dir| {
                let dir = if dir.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    dir
                };
                dir.join(&self.program)
            })
            .collect()
    }

    fn spawn_cloned(&self) -> Result<Child, Refused> {
        let candidates = self
            .candidates()
            .into_iter()
            .map(|p| cstring(p.into_os_string()))
            .collect::<io::Result<Vec<_>>>()?;
        let argv = std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .map(cstring)
            .collect::<io::Result<Vec<_>>>()?;
        let mut owned_env = Vec::new();
        let envp = self.child_env(&mut owned_env)?;
        let cwd = self
            .cwd
            .as_ref()
            .map(|c| cstring(c.clone().into_os_string()))
            .transpose()?;
        let streams = Streams::open(self.stdout, self.stderr)?;

        let candidate_ptrs: Vec<*const libc::c_char> =
            candidates.iter().map(|c| c.as_ptr()).collect();
        let argv_ptrs = null_terminated(argv.iter().map(CString::as_c_str));
        let envp_ptrs = null_terminated(envp.into_iter());
        let mut args = ChildArgs {
            candidates: &candidate_ptrs,
            argv: argv_ptrs.as_ptr(),
            envp: envp_ptrs.as_ptr(),
            cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            fds: streams.child_fds()?,
            own_group: self.own_group,
            parent: std::process::id() as libc::pid_t,
            failed_at: Stage::None,
            errno: 0,
        };
        let (pid, pidfd) = clone_vfork(&mut args).map_err(Refused::Clone)?;
        if args.failed_at != Stage::None {
            // The child has exited; reap it so no zombie is left.
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            drop(pidfd);
            return Err(Refused::Start(args.failed_at.error(args.errno, self)));
        }
        // SAFETY: the AsyncFd owns the pidfd; nothing else closes it.
        let pidfd = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
            Ok(pidfd) => pidfd,
            Err(err) => {
                // It could never be waited for: do not leave it running.
                let (pidfd, err) = err.into_parts();
                let _ = pidfd_kill(&pidfd);
                let mut status = 0;
                // SAFETY: waiting for our own, just killed, child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                return Err(Refused::Start(err));
            }
        };
        let (stdout, stderr) = streams.into_parent_ends()?;
        Ok(Child {
            pid,
            wait: Wait::Pidfd(pidfd),
            status: None,
            stdout,
            stderr,
            kill_on_drop: self.kill_on_drop,
        })
    }

    /// The fallback: tokio's spawner with a `pre_exec` hook (a full fork).
    fn spawn_forked(&self) -> io::Result<Child> {
        let mut cmd = tokio::process::Command::new(&self.program);
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
        if self.own_group {
            cmd.process_group(0);
        }
        let streams = Streams::open(self.stdout, self.stderr)?;
        let [stdin, stdout, stderr] = streams.child_stdio()?;
        cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        cmd.kill_on_drop(self.kill_on_drop);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // bootplan may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id().unwrap_or_default() as libc::pid_t;
        let (stdout, stderr) = streams.into_parent_ends()?;
        Ok(Child {
            pid,
            wait: Wait::Tokio(child),
            status: None,
            stdout,
            stderr,
            kill_on_drop: self.kill_on_drop,
        })
    }
}

/// A started process.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    wait: Wait,
    status: Option<ExitStatus>,
    /// The read end of its stdout, when piped.
    pub stdout: Option<pipe::Receiver>,
    /// The read end of its stderr, when piped.
    pub stderr: Option<pipe::Receiver>,
    kill_on_drop: bool,
}

#[derive(Debug)]
enum Wait {
    Pidfd(AsyncFd<OwnedFd>),
    Tokio(tokio::process::Child),
    /// Only while being dropped.
    Dropped,
}

impl Child {
    /// The pid, until the child has been waited for (then it may be reused).
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid as u32)
    }

    /// Waits for the child to exit. Cancel-safe; returns the same status
    /// when called again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = match &mut self.wait {
            Wait::Tokio(child) => child.wait().await?,
            Wait::Pidfd(fd) => loop {
                let mut ready = fd.readable().await?;
                if let Some(status) = reap(self.pid)? {
                    break status;
                }
                ready.clear_ready();
            },
            Wait::Dropped => return Err(io::Error::other("the child was given up")),
        };
        self.status = Some(status);
        Ok(status)
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = match &mut self.wait {
                Wait::Tokio(child) => child.try_wait()?,
                Wait::Pidfd(_) | Wait::Dropped => reap(self.pid)?,
            };
        }
        Ok(self.status)
    }

    /// Sends SIGKILL to the child alone (not its group) if it has not been
    /// waited for.
    pub fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        match &mut self.wait {
            Wait::Tokio(child) => child.start_kill(),
            Wait::Pidfd(fd) => pidfd_kill(fd.get_ref()),
            Wait::Dropped => Ok(()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // tokio kills (if asked) and reaps its own children.
        let Wait::Pidfd(fd) = std::mem::replace(&mut self.wait, Wait::Dropped) else {
            return;
        };
        if self.kill_on_drop {
            let _ = pidfd_kill(fd.get_ref());
        }
        // Reap it once it exits, so it does not stay a zombie.
        let pid = self.pid;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    while let Ok(mut ready) = fd.readable().await {
                        if !matches!(reap(pid), Ok(None)) {
                            return;
                        }
                        ready.clear_ready();
                    }
                });
            }
            Err(_) if self.kill_on_drop => {
                // No runtime to wait on: the child was just killed, so this is short.
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
            Err(_) => {}
        }
    }
}

/// `waitpid(pid, WNOHANG)`: the status once the child has exited.
fn reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; status is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match rc {
            0 => return Ok(None),
            -1 => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            _ => return Ok(Some(ExitStatus::from_raw(status))),
        }
    }
}

fn pidfd_kill(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this kernel gives pollable pidfds (Linux 5.3+) and seccomp lets
/// us have them. Checked once.
fn pidfd_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        if std::env::var_os("BOOTPLAN_SPAWN").is_some_and(|v| v == "fork") {
            // The operator's escape hatch (and how tests reach the fallback).
            return false;
        }
        // SAFETY: pidfd_open on our own pid; the fd is closed right away.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) };
        if fd < 0 {
            return false;
        }
        // SAFETY: fd was just returned to us and is not used elsewhere.
        drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        true
    })
}

fn cstring(s: OsString) -> io::Result<CString> {
    CString::new(s.into_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument, variable or path contains a NUL byte",
        )
    })
}

fn null_terminated<'a>(strings: impl Iterator<Item = &'a CStr>) -> Vec<*const libc::c_char> {
    strings
        .map(CStr::as_ptr)
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// bootplan's environment as (key, `KEY=VALUE`), converted at the first
/// spawn. bootplan never changes its own environment (`set_var` is not
/// used anywhere), so converting it once per spawn would be wasted work.
fn base_env() -> &'static [(OsString, CString)] {
    static BASE: OnceLock<Vec<(OsString, CString)>> = OnceLock::new();
    BASE.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(key, value)| {
                let mut pair = key.clone();
                pair.push("=");
                pair.push(value);
                // A variable with a NUL byte cannot exist; skip rather than fail.
                cstring(pair).ok().map(|pair| (key, pair))
            })
            .collect()
    })
}

/// Why a cloned start did not happen: the clone itself was refused (the
/// fallback may work), or the child could not start the program.
enum Refused {
    Clone(io::Error),
    Start(io::Error),
}

impl From<io::Error> for Refused {
    fn from(err: io::Error) -> Self {
        Refused::Start(err)
    }
}

/// Cleared when a sandbox refuses our clone, so later spawns fork at once.
static CLONE_WORKS: AtomicBool = AtomicBool::new(true);

fn clone_unavailable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)
    )
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element out array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One of the child's standard streams, as bootplan sets it up.
enum ChildEnd {
    Inherit,
    Null,
    /// The write end of a pipe whose read end bootplan keeps.
    Pipe(OwnedFd),
}

/// The child's three standard streams, and the read ends bootplan keeps.
struct Streams {
    child: [ChildEnd; 3],
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl Streams {
    fn open(stdout: Stdio, stderr: Stdio) -> io::Result<Streams> {
        let mut streams = Streams {
            // stdin is always /dev/null: steps never read bootplan's input.
            child: [ChildEnd::Null, ChildEnd::Inherit, ChildEnd::Inherit],
            stdout: None,
            stderr: None,
        };
        for (i, io) in [(1, stdout), (2, stderr)] {
            streams.child[i] = match io {
                Stdio::Inherit => ChildEnd::Inherit,
                Stdio::Null => ChildEnd::Null,
                Stdio::Piped => {
                    let (read, write) = pipe_cloexec()?;
                    match i {
                        1 => streams.stdout = Some(read),
                        _ => streams.stderr = Some(read),
                    }
                    ChildEnd::Pipe(write)
                }
            };
        }
        Ok(streams)
    }

    /// Raw fds to dup onto 0, 1, 2 in the child (-1: leave as is).
    fn child_fds(&self) -> io::Result<[RawFd; 3]> {
        let mut fds = [-1; 3];
        for (fd, end) in fds.iter_mut().zip(&self.child) {
            *fd = match end {
                ChildEnd::Inherit => -1,
                ChildEnd::Null => dev_null()?,
                ChildEnd::Pipe(write) => write.as_raw_fd(),
            };
        }
        Ok(fds)
    }

    fn child_stdio(&self) -> io::Result<[std::process::Stdio; 3]> {
        let one = |end: &ChildEnd| -> io::Result<std::process::Stdio> {
            Ok(match end {
                ChildEnd::Inherit => std::process::Stdio::inherit(),
                ChildEnd::Null => std::process::Stdio::null(),
                ChildEnd::Pipe(write) => write.try_clone()?.into(),
            })
        };
        let [a, b, c] = &self.child;
        Ok([one(a)?, one(b)?, one(c)?])
    }

    /// Closes the child's ends (so end of file is seen when it exits) and
    /// wraps the read ends for tokio.
    fn into_parent_ends(self) -> io::Result<(Option<pipe::Receiver>, Option<pipe::Receiver>)> {
        drop(self.child);
        let wrap = |fd: Option<OwnedFd>| -> io::Result<Option<pipe::Receiver>> {
            let Some(fd) = fd else { return Ok(None) };
            // A fresh pipe's read end: no other status flag to keep.
            // SAFETY: fcntl on an fd we own.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
                return Err(io::Error::last_os_error());
            }
            pipe::Receiver::from_owned_fd_unchecked(fd).map(Some)
        };
        Ok((wrap(self.stdout)?, wrap(self.stderr)?))
    }
}

/// One /dev/null for every child, opened once (children get dups of it).
fn dev_null() -> io::Result<RawFd> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/null: {e}")))?;
    Ok(NULL.get_or_init(|| file.into()).as_raw_fd())
}

/// Where the child gave up, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    None,
    DeathSignal,
    ProcessGroup,
    Redirect,
    Chdir,
    Exec,
}

impl Stage {
    fn error(self, errno: i32, cmd: &Command) -> io::Error {
        let os = io::Error::from_raw_os_error(errno);
        let what = match self {
            Stage::DeathSignal => "cannot set the parent-death signal".to_string(),
            Stage::ProcessGroup => "cannot create a process group".to_string(),
            Stage::Redirect => "cannot connect standard streams".to_string(),
            Stage::Chdir => format!(
                "cannot change to directory {}",
                cmd.cwd.as_deref().unwrap_or(Path::new("")).display()
            ),
            Stage::Exec | Stage::None => return os,
        };
        io::Error::new(os.kind(), format!("{what}: {os}"))
    }
}

/// Everything the cloned child reads, prepared by the parent. The child
/// writes only `failed_at` and `errno`, which the parent reads after the
/// child is gone (CLONE_VFORK orders the two).
struct ChildArgs<'a> {
    candidates: &'a [*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    own_group: bool,
    parent: libc::pid_t,
    failed_at: Stage,
    errno: i32,
}

/// Clones a child sharing our memory that runs [`child_main`]; returns
/// after it has exec'd or exited.
fn clone_vfork(args: &mut ChildArgs<'_>) -> io::Result<(libc::pid_t, OwnedFd)> {
    thread_local! {
        /// One child stack per spawning thread, reused: the thread sleeps
        /// while its child uses it, so it is never used twice at once.
        static STACK: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
    }
    let mut stack = STACK
        .take()
        .unwrap_or_else(|| vec![0u8; CHILD_STACK].into_boxed_slice());
    // The stack grows down; the top must be 16-byte aligned.
    let top = stack.as_mut_ptr() as usize + CHILD_STACK;
    let top = (top & !15) as *mut libc::c_void;
    let mut pidfd: libc::c_int = -1;

    // Block every signal so none of our handlers runs in the child before
    // it has reset them.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs child_main on its own stack and only reads
    // `args` (alive until clone returns: CLONE_VFORK suspends this thread
    // until the child execs or exits) and writes its two result fields.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (args as *mut ChildArgs<'_>).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    STACK.set(Some(stack));
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: CLONE_PIDFD stored a new fd that nobody else owns.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// The child, between clone and exec. Only raw system calls on prepared
/// data: it shares the parent's memory, so it must not allocate, lock or
/// unwind.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive and not otherwise
    // touched while this child runs (the parent thread is suspended).
    let args = unsafe { &mut *arg.cast::<ChildArgs<'_>>() };
    fn fail(args: &mut ChildArgs<'_>, stage: Stage) -> ! {
        args.errno = errno();
        args.failed_at = stage;
        // SAFETY: leaving the child without running any parent code.
        unsafe { libc::_exit(127) }
    }
    // SAFETY (whole block): async-signal-safe system call wrappers on
    // pointers the parent prepared.
    unsafe {
        // Handlers belong to bootplan; the child gets the defaults. SIGPIPE
        // is ignored by Rust programs and must not stay so for children.
        // Only the standard signals can have a handler here: nothing in
        // bootplan handles a real-time signal, and glibc's internal ones
        // (32, 33) are sent to bootplan's threads, never to this child.
        for signal in 1..libc::SIGRTMIN() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            let handled =
                current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
            if handled || signal == libc::SIGPIPE {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail(args, Stage::DeathSignal);
        }
        // bootplan may have died before prctl took effect.
        if libc::getppid() != args.parent {
            libc::_exit(1);
        }
        if args.own_group && libc::setpgid(0, 0) != 0 {
            fail(args, Stage::ProcessGroup);
        }
        for (target, fd) in args.fds.into_iter().enumerate() {
            if fd >= 0 && libc::dup2(fd, target as libc::c_int) < 0 {
                fail(args, Stage::Redirect);
            }
        }
        if !args.cwd.is_null() && libc::chdir(args.cwd) != 0 {
            fail(args, Stage::Chdir);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        // As execvp: try each PATH entry; remember EACCES but keep looking.
        let mut first_error = 0;
        for &path in args.candidates {
            libc::execve(path, args.argv, args.envp);
            let e = errno();
            if e != libc::ENOENT && e != libc::ENOTDIR && e != libc::EACCES {
                first_error = e;
                break;
            }
            if e == libc::EACCES || first_error == 0 {
                first_error = e;
            }
        }
        args.errno = first_error;
        args.failed_at = Stage::Exec;
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Both ways of starting a child: the clone path (when this kernel has
    /// pidfds) and the fork fallback, which must behave the same.
    fn paths() -> Vec<bool> {
        if pidfd_supported() {
            vec![true, false]
        } else {
            vec![false]
        }
    }

    fn spawn(cmd: &Command, cloned: bool) -> io::Result<Child> {
        crate::lifecycle::reaper::while_spawning(|| {
            if cloned {
                cmd.spawn_cloned()
                    .map_err(|(Refused::Clone(e) | Refused::Start(e))| e)
            } else {
                cmd.spawn_forked()
            }
        })
    }

    async fn read_all(pipe: Option<pipe::Receiver>) -> String {
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
        for cloned in paths() {
            let mut cmd = sh("echo out; echo err >&2; echo \"$SET ${GONE-unset}\"; pwd; exit 3");
            cmd.env("SET", "yes")
                .env("GONE", "here")
                .env_remove("GONE")
                .current_dir(dir.path());
            let mut child = spawn(&cmd, cloned).unwrap();
            let out = read_all(child.stdout.take()).await;
            let err = read_all(child.stderr.take()).await;
            let status = child.wait().await.unwrap();
            let cwd = dir.path().canonicalize().unwrap();
            assert_eq!(
                out,
                format!("out\nyes unset\n{}\n", cwd.display()),
                "cloned={cloned}"
            );
            assert_eq!(err, "err\n", "cloned={cloned}");
            assert_eq!(status.code(), Some(3), "cloned={cloned}");
            // A second wait returns the same status; the pid is no longer ours.
            assert_eq!(child.wait().await.unwrap().code(), Some(3));
            assert_eq!(child.id(), None);
        }
    }

    #[tokio::test]
    async fn the_child_gets_default_signals_an_empty_mask_and_its_own_group() {
        for cloned in paths() {
            let mut cmd = Command::new("cat");
            cmd.arg("/proc/self/stat")
                .arg("/proc/self/status")
                .stdout(Stdio::Piped)
                .own_process_group();
            let mut child = spawn(&cmd, cloned).unwrap();
            let pid = child.id().unwrap();
            let out = read_all(child.stdout.take()).await;
            assert!(child.wait().await.unwrap().success());
            // /proc/PID/stat: "pid (comm) state ppid pgrp ..."
            let after_comm = &out[out.find(')').unwrap() + 2..];
            let fields: Vec<&str> = after_comm.split_whitespace().collect();
            assert_eq!(fields[2], pid.to_string(), "own group, cloned={cloned}");
            let field = |name: &str| {
                let line = out.lines().find(|l| l.starts_with(name)).unwrap();
                u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
            };
            assert_eq!(field("SigBlk:"), 0, "nothing blocked, cloned={cloned}");
            assert_eq!(field("SigCgt:"), 0, "no handler survives exec");
            let sigpipe = 1u64 << (libc::SIGPIPE - 1);
            assert_eq!(field("SigIgn:") & sigpipe, 0, "SIGPIPE back to default");
        }
    }

    #[tokio::test]
    async fn start_failures_name_what_failed_and_leave_no_child() {
        for cloned in paths() {
            let err = spawn(&Command::new("bootplan-no-such-program"), cloned).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "cloned={cloned}");

            let err = spawn(&Command::new("/etc/passwd"), cloned).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");

            let mut cmd = Command::new("true");
            cmd.current_dir("/bootplan-no-such-dir");
            let err = spawn(&cmd, cloned).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            if cloned {
                assert!(
                    err.to_string().contains("/bootplan-no-such-dir"),
                    "names the directory: {err}"
                );
            }
        }
        let err = Command::new("").spawn().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = Command::new("true").arg("a\0b").spawn().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // No zombie was left behind by the failed starts. They never
        // reached exec, so they carry this test thread's name.
        assert_eq!(zombie_children_named("spawn::tests"), 0);
    }

    #[tokio::test]
    async fn dropping_a_running_child_kills_and_reaps_it() {
        for cloned in paths() {
            let mut cmd = Command::new("sleep");
            cmd.arg("60").kill_on_drop();
            let child = spawn(&cmd, cloned).unwrap();
            let pid = child.id().unwrap();
            drop(child);
            // Gone, not a zombie: polled until the reaping task has run.
            let gone = async {
                while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), gone)
                .await
                .unwrap_or_else(|_| panic!("pid {pid} still there, cloned={cloned}"));
        }
    }

    #[tokio::test]
    async fn try_wait_and_start_kill() {
        for cloned in paths() {
            let mut child = spawn(Command::new("sleep").arg("60"), cloned).unwrap();
            assert!(child.try_wait().unwrap().is_none());
            child.start_kill().unwrap();
            let status = child.wait().await.unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
            assert_eq!(child.try_wait().unwrap(), Some(status));
        }
    }

    fn zombie_children_named(prefix: &str) -> usize {
        let me = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                    return false;
                };
                let mut f = stat[close + 1..].split_whitespace();
                stat[open + 1..close].starts_with(prefix)
                    && f.next() == Some("Z")
                    && f.next() == Some(me.as_str())
            })
            .count()
    }
}
