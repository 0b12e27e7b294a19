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
//! So the child is made with `clone(CLONE_VM | CLONE_PIDFD)`: it shares
//! bootplan's memory (nothing is copied) and runs one small function on a
//! stack of its own, while bootplan goes on — unlike vfork, the parent does
//! not sleep until the exec. That matters on a busy machine: a sleeping
//! parent's CPU looks free, the kernel moves the exec'ing child onto it, and
//! the parent then wakes up behind its own child while the other CPU idles
//! (measured: 100 parallel steps took 1.3x the shell's time with vfork,
//! 1.06x without; docs/benchmarks.md).
//!
//! Running beside bootplan's threads in shared memory sets hard rules for
//! the child ([`child_main`]): it reads only data prepared before the clone
//! and kept alive until it has exec'd ([`Launch`], leaked rather than freed
//! if a start is abandoned), writes only its own stack, and makes system
//! calls directly ([`raw`]), because libc's wrappers write `errno`, a
//! thread-local of the parent thread it shares a thread pointer with. All
//! signals are blocked across the clone and every handled signal is back
//! at its default before the child unblocks them, so none of bootplan's
//! handlers can run in it: the kernel resets them (`clone3` with
//! `CLONE_CLEAR_SIGHAND`, Linux 5.5+, x86_64), or else the child does, one
//! system call per signal. The exec's outcome comes back through a
//! close-on-exec pipe: end of file means the exec happened; otherwise the
//! child writes the stage that failed and its errno, then exits. The child
//! is waited for through its pidfd, which also rules out pid reuse.
//!
//! On kernels without pollable pidfds (before 5.3), on architectures [`raw`]
//! does not cover, where seccomp refuses the clone, or with
//! `BOOTPLAN_SPAWN=fork`, the same [`Command`] is spawned through tokio
//! with a `pre_exec` hook: slower, same guarantees.
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

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Stack for the cloned child. It runs one small function that only makes
/// system calls. 32 KiB is what glibc's posix_spawn allows for the same
/// (with room for a compiler's stack checks), and it keeps the stack under
/// malloc's 64 KiB mark above which a free consolidates the heap's
/// small-chunk bins (with 64 KiB, about 40 of a 100-step chain's frees did).
const CHILD_STACK: usize = 32 * 1024;

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

    /// Starts the process and waits until it has exec'd its program: a
    /// program that cannot be started is an error here. It gets `SIGKILL`
    /// if bootplan dies.
    pub async fn spawn(&self) -> io::Result<Child> {
        self.check()?;
        if clone_supported()
            && let Some(started) = clone_outcome(self.spawn_cloned().await)
        {
            return started;
        }
        self.spawn_forked_watched()
    }

    /// Starts the process without waiting for its exec: a program that
    /// cannot be started (not found, not executable, a missing directory)
    /// is reported by [`Child::wait`] instead, after the child exited 127.
    /// For callers that wait for the child anyway: it saves a pipe and a
    /// wake-up per child. It gets `SIGKILL` if bootplan dies.
    pub fn start(&self) -> io::Result<Child> {
        self.check()?;
        if clone_supported()
            && let Some(started) = clone_outcome(self.start_cloned())
        {
            return started;
        }
        self.spawn_forked_watched()
    }

    fn check(&self) -> io::Result<()> {
        if self.program.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the program name is empty",
            ));
        }
        Ok(())
    }

    fn spawn_forked_watched(&self) -> io::Result<Child> {
        crate::lifecycle::reaper::while_spawning(|| self.spawn_forked(), Child::id)
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
            None => base_env()
                .iter()
                .find(|(key, _)| key == "PATH")
                .map(|(_, pair)| OsStr::from_bytes(&pair.to_bytes()["PATH=".len()..]).to_owned())
                .unwrap_or_else(|| DEFAULT_PATH.into()),
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

    /// Everything the cloned child will read, in one box that outlives it.
    fn launch(&self, streams: &Streams) -> io::Result<Box<Launch>> {
        let candidates = self
            .candidates()
            .into_iter()
            .map(|p| cstring(p.into_os_string()))
            .collect::<io::Result<Vec<_>>>()?;
        let argv = std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .map(cstring)
            .collect::<io::Result<Vec<_>>>()?;
        let mut env_owned = Vec::new();
        let env_ptrs = null_terminated(self.child_env(&mut env_owned)?.into_iter());
        let cwd = self
            .cwd
            .as_ref()
            .map(|c| cstring(c.clone().into_os_string()))
            .transpose()?;
        let candidate_ptrs: Vec<*const libc::c_char> =
            candidates.iter().map(|c| c.as_ptr()).collect();
        let argv_ptrs = null_terminated(argv.iter().map(CString::as_c_str));
        // The strings' heap buffers do not move when the vectors move into
        // the box, so the pointers stay valid.
        Ok(Box::new(Launch {
            args: ChildArgs {
                candidates: candidate_ptrs.as_ptr(),
                candidate_count: candidate_ptrs.len(),
                argv: argv_ptrs.as_ptr(),
                envp: env_ptrs.as_ptr(),
                cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                fds: streams.child_fds()?,
                own_group: self.own_group,
                parent: own_pid(),
                failure: AtomicU64::new(0),
            },
            stack: Box::new_uninit_slice(CHILD_STACK),
            cwd,
            _strings: (candidates, argv, env_owned),
            _pointers: (candidate_ptrs, argv_ptrs, env_ptrs),
        }))
    }

    /// Clones the child, registered with the reaper while it is created.
    /// The read ends are made ready first, so that after the clone bootplan
    /// has little left to do before it waits: the new child starts on this
    /// CPU as soon as bootplan sleeps.
    fn clone_child(&self) -> Result<(Pending, Readers), Refused> {
        let mut streams = Streams::open(self.stdout, self.stderr)?;
        let readers = streams.readers()?;
        let launch = self.launch(&streams)?;
        let pending = crate::lifecycle::reaper::while_spawning(
            || clone_concurrent(launch),
            |pending| u32::try_from(pending.pid).ok(),
        )
        .map_err(Refused::Clone)?;
        // The child has its own copies of its ends now; ours must close so
        // that end of file is seen when it exits.
        drop(streams);
        Ok((pending, readers))
    }

    /// [`Command::spawn`] by clone: a close-on-exec pipe tells when the
    /// child has exec'd (end of file) or exited, and the launch data then
    /// says which.
    async fn spawn_cloned(&self) -> Result<Child, Refused> {
        let (exec_read, exec_write) = pipe_cloexec()?;
        let (mut pending, (stdout, stderr)) = self.clone_child()?;
        // The child has its own copy; ours must close so end of file is
        // seen when it execs or exits.
        drop(exec_write);
        wait_for_eof(exec_read).await?;
        if let Some(failure) = pending.failure() {
            pending.reap_failed();
            return Err(Refused::Start(failure.error()));
        }
        let (pid, pidfd, launch) = pending.into_parts()?;
        // Exec'd: the child no longer touches our memory.
        drop(launch);
        let wait = watch_pidfd(pid, pidfd)?;
        Ok(Child::new(pid, wait, stdout, stderr, self.kill_on_drop))
    }

    /// [`Command::start`] by clone: the launch data stays with the
    /// [`Child`] until it is reaped, and tells then whether the start failed.
    fn start_cloned(&self) -> Result<Child, Refused> {
        let (pending, (stdout, stderr)) = self.clone_child()?;
        let (pid, pidfd, launch) = pending.into_parts()?;
        let wait = watch_pidfd(pid, pidfd)?;
        let mut child = Child::new(pid, wait, stdout, stderr, self.kill_on_drop);
        child.launch = Some(launch);
        Ok(child)
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
        let parent = own_pid();
        // SAFETY: die_with_parent makes only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || die_with_parent(libc::SIGKILL, parent));
        }
        let child = cmd.spawn().map_err(|err| self.explain_fork_error(err))?;
        let pid = child.id().unwrap_or_default() as libc::pid_t;
        let (stdout, stderr) = streams.into_parent_ends()?;
        let wait = Wait::Tokio(child);
        Ok(Child::new(pid, wait, stdout, stderr, self.kill_on_drop))
    }

    /// std reports a missing working directory like a missing program;
    /// say which it was, as the clone path does.
    fn explain_fork_error(&self, err: io::Error) -> io::Error {
        match &self.cwd {
            Some(cwd) if !cwd.is_dir() => io::Error::new(
                err.kind(),
                format!("cannot change to directory {}: {err}", cwd.display()),
            ),
            _ => err,
        }
    }
}

/// For a forked child, between fork and exec: `signal` when bootplan
/// (`parent`) dies, and exit at once if it already has. Only
/// async-signal-safe calls (prctl, getppid, _exit).
pub fn die_with_parent(signal: libc::c_int, parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // bootplan may have died between fork and prctl.
    // SAFETY: no arguments; _exit leaves without running parent code.
    if unsafe { libc::getppid() } != parent {
        unsafe { libc::_exit(1) };
    }
    Ok(())
}

/// A started process.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    wait: Wait,
    status: Option<ExitStatus>,
    /// The read end of its stdout, when piped.
    pub stdout: Option<OutputPipe>,
    /// The read end of its stderr, when piped.
    pub stderr: Option<OutputPipe>,
    kill_on_drop: bool,
    /// For a child from [`Command::start`]: what it was started with, kept
    /// until it is reaped (it may still be reading it), which then says
    /// whether the start failed.
    launch: Option<Box<Launch>>,
    /// Why the program could not be started, once known.
    start_failure: Option<StartFailure>,
}

#[derive(Debug)]
enum Wait {
    Pidfd(AsyncFd<OwnedFd>),
    Tokio(tokio::process::Child),
    /// Only while being dropped.
    Dropped,
}

impl Child {
    fn new(
        pid: libc::pid_t,
        wait: Wait,
        stdout: Option<OutputPipe>,
        stderr: Option<OutputPipe>,
        kill_on_drop: bool,
    ) -> Child {
        Child {
            pid,
            wait,
            status: None,
            stdout,
            stderr,
            kill_on_drop,
            launch: None,
            start_failure: None,
        }
    }

    /// The pid, until the child has been waited for (then it may be reused).
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid as u32)
    }

    /// Waits for the child to exit. Cancel-safe; returns the same status
    /// (or start failure) when called again.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return self.outcome(status);
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
        self.reaped(status)
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return self.outcome(status).map(Some);
        }
        let status = match &mut self.wait {
            Wait::Tokio(child) => child.try_wait()?,
            Wait::Pidfd(_) | Wait::Dropped => reap(self.pid)?,
        };
        status.map(|status| self.reaped(status)).transpose()
    }

    /// The child is gone: its launch data can go, after saying whether the
    /// program was started at all.
    fn reaped(&mut self, status: ExitStatus) -> io::Result<ExitStatus> {
        self.status = Some(status);
        if let Some(launch) = self.launch.take() {
            self.start_failure = launch.failure();
        }
        self.outcome(status)
    }

    fn outcome(&self, status: ExitStatus) -> io::Result<ExitStatus> {
        match &self.start_failure {
            Some(failure) => Err(failure.error()),
            None => Ok(status),
        }
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
        // Reap it once it exits, so it does not stay a zombie; its launch
        // data (if any) may go only then.
        let launch = self.launch.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => reap_when_exited(&runtime, self.pid, fd, launch),
            // No runtime to wait on: the child was just killed, so this is short.
            Err(_) if self.kill_on_drop => {
                wait_blocking(self.pid);
                drop(launch);
            }
            // Never reaped here: the child may read its launch data forever.
            Err(_) => {
                launch.map(Box::leak);
            }
        }
    }
}

/// Reaps `pid` from a task once its pidfd says it exited, then frees what
/// it was started with.
fn reap_when_exited(
    runtime: &tokio::runtime::Handle,
    pid: libc::pid_t,
    fd: AsyncFd<OwnedFd>,
    launch: Option<Box<Launch>>,
) {
    runtime.spawn(async move {
        while let Ok(mut ready) = fd.readable().await {
            if !matches!(reap(pid), Ok(None)) {
                drop(launch);
                return;
            }
            ready.clear_ready();
        }
        // The pidfd cannot be waited on: the child may still run.
        launch.map(Box::leak);
    });
}

/// Registers a new child's pidfd with the runtime. A child that could not
/// be waited for is killed and reaped rather than left running.
fn watch_pidfd(pid: libc::pid_t, pidfd: OwnedFd) -> io::Result<Wait> {
    // SAFETY: the AsyncFd owns the pidfd; nothing else closes it.
    match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(pidfd) => Ok(Wait::Pidfd(pidfd)),
        Err(err) => {
            let (pidfd, err) = err.into_parts();
            let _ = pidfd_kill(&pidfd);
            wait_blocking(pid);
            Err(err)
        }
    }
}

/// Where a cloned start fell back, or its result: `None` when a sandbox
/// refused the clone (forks from now on), else what to return.
fn clone_outcome(started: Result<Child, Refused>) -> Option<io::Result<Child>> {
    match started {
        Err(Refused::Clone(err)) if clone_unavailable(&err) => {
            CLONE_WORKS.store(false, Ordering::Relaxed);
            None
        }
        Err(Refused::Clone(err) | Refused::Start(err)) => Some(Err(err)),
        Ok(child) => Some(Ok(child)),
    }
}

/// bootplan's pid, which never changes (it does not fork itself).
fn own_pid() -> libc::pid_t {
    static PID: OnceLock<libc::pid_t> = OnceLock::new();
    *PID.get_or_init(|| std::process::id() as libc::pid_t)
}

/// Blocks until our child `pid` has exited and reaps it. Only for a child
/// that was just killed or is exiting on its own.
fn wait_blocking(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
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

/// Whether children start through [`Command::spawn_cloned`]: an
/// architecture [`raw`] knows, pollable pidfds, and no refused clone yet.
fn clone_supported() -> bool {
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
        && CLONE_WORKS.load(Ordering::Relaxed)
        && pidfd_supported()
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

/// The read ends of a child's stdout and stderr, when piped.
type Readers = (Option<OutputPipe>, Option<OutputPipe>);

/// The read end of a child's output pipe. It is handed to tokio only when a
/// read finds it empty and would have to wait: a command that is over
/// before its output is first read (most short ones, see
/// [`crate::steps::process::run`]) is read without tokio ever watching its
/// pipes, so bootplan is not woken once more for each pipe the command
/// closes as it exits. The fd is non-blocking from the start.
#[derive(Debug)]
pub struct OutputPipe(PipeState);

#[derive(Debug)]
enum PipeState {
    Unwatched(OwnedFd),
    Watched(pipe::Receiver),
    /// Only while switching from one to the other.
    Switching,
}

impl OutputPipe {
    /// `fd` must be a pipe's read end, set non-blocking.
    fn new(fd: OwnedFd) -> OutputPipe {
        OutputPipe(PipeState::Unwatched(fd))
    }

    /// Hands the fd to tokio, for reads that wait.
    fn watch(&mut self) -> io::Result<&mut pipe::Receiver> {
        if matches!(self.0, PipeState::Unwatched(_))
            && let PipeState::Unwatched(fd) = std::mem::replace(&mut self.0, PipeState::Switching)
        {
            self.0 = PipeState::Watched(pipe::Receiver::from_owned_fd_unchecked(fd)?);
        }
        match &mut self.0 {
            PipeState::Watched(receiver) => Ok(receiver),
            _ => Err(io::Error::other("the pipe could not be watched")),
        }
    }
}

impl tokio::io::AsyncRead for OutputPipe {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        if buf.remaining() == 0 {
            // Nothing to read into; a read of zero bytes would look like
            // end of file.
            return Poll::Ready(Ok(()));
        }
        while let PipeState::Unwatched(fd) = &self.0 {
            let room = buf.initialize_unfilled();
            // SAFETY: reads into `room`, initialised memory of that length.
            let read = unsafe { libc::read(fd.as_raw_fd(), room.as_mut_ptr().cast(), room.len()) };
            if read >= 0 {
                buf.advance(read as usize);
                return Poll::Ready(Ok(()));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => break,
                _ => return Poll::Ready(Err(err)),
            }
        }
        // Empty but still open: from now on tokio says when there is more.
        match self.watch() {
            Ok(receiver) => std::pin::Pin::new(receiver).poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
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

    /// Makes the read ends ready for reading (they are close-on-exec, so a
    /// child cloned afterwards does not keep them).
    fn readers(&mut self) -> io::Result<Readers> {
        let wrap = |fd: Option<OwnedFd>| -> io::Result<Option<OutputPipe>> {
            let Some(fd) = fd else { return Ok(None) };
            // A fresh pipe's read end: no other status flag to keep.
            // SAFETY: fcntl on an fd we own.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Some(OutputPipe::new(fd)))
        };
        Ok((wrap(self.stdout.take())?, wrap(self.stderr.take())?))
    }

    /// Closes the child's ends (so end of file is seen when it exits) and
    /// makes the read ends ready for reading.
    fn into_parent_ends(mut self) -> io::Result<Readers> {
        let readers = self.readers()?;
        drop(self.child);
        Ok(readers)
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
    fn code(self) -> u32 {
        match self {
            Stage::None => 0,
            Stage::DeathSignal => 1,
            Stage::ProcessGroup => 2,
            Stage::Redirect => 3,
            Stage::Chdir => 4,
            Stage::Exec => 5,
        }
    }

    fn from_code(code: u32) -> Stage {
        match code {
            1 => Stage::DeathSignal,
            2 => Stage::ProcessGroup,
            3 => Stage::Redirect,
            4 => Stage::Chdir,
            5 => Stage::Exec,
            _ => Stage::None,
        }
    }
}

/// Why a cloned child could not start its program, as it left it in its
/// launch data before exiting.
#[derive(Debug, Clone)]
struct StartFailure {
    stage: Stage,
    errno: i32,
    cwd: Option<PathBuf>,
}

impl StartFailure {
    fn error(&self) -> io::Error {
        let os = io::Error::from_raw_os_error(self.errno);
        let what = match self.stage {
            Stage::DeathSignal => "cannot set the parent-death signal".to_string(),
            Stage::ProcessGroup => "cannot create a process group".to_string(),
            Stage::Redirect => "cannot connect standard streams".to_string(),
            Stage::Chdir => format!(
                "cannot change to directory {}",
                self.cwd.as_deref().unwrap_or(Path::new("")).display()
            ),
            Stage::Exec | Stage::None => return os,
        };
        io::Error::new(os.kind(), format!("{what}: {os}"))
    }
}

/// Everything the cloned child reads, prepared by the parent. The child
/// runs beside bootplan's threads in the same memory, so it only reads
/// this (never written by the parent while the child may run) and writes
/// only to its own stack and to `failure`.
struct ChildArgs {
    candidates: *const *const libc::c_char,
    candidate_count: usize,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    own_group: bool,
    parent: libc::pid_t,
    /// Written by the child just before it exits when it cannot start the
    /// program: the stage (high half) and errno (low half); 0 otherwise.
    /// Read by the parent only once the child has exec'd or exited.
    failure: AtomicU64,
}

/// A start in flight: the child's stack and everything its arguments point
/// into, kept until the child has exec'd or exited.
struct Launch {
    args: ChildArgs,
    /// Written only by the child, below its arguments' frame.
    stack: Box<[std::mem::MaybeUninit<u8>]>,
    /// The working directory the child changes to (also named in a failure).
    cwd: Option<CString>,
    _strings: (Vec<CString>, Vec<CString>, Vec<CString>),
    _pointers: (
        Vec<*const libc::c_char>,
        Vec<*const libc::c_char>,
        Vec<*const libc::c_char>,
    ),
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch").finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers in a Launch point into strings the Launch owns
// (or into bootplan's never-changing environment copy); nothing mutates
// them, so moving the Launch to another thread is sound.
unsafe impl Send for Launch {}

/// A child that may not have exec'd yet. Dropped before the exec is
/// confirmed (a cancelled start), it kills the child and leaks the launch
/// data rather than free memory a still-running child may read.
struct Pending {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    launch: Option<Box<Launch>>,
}

impl Pending {
    /// Hands over the pid, the pidfd and the launch data, which must stay
    /// alive until the child has exec'd or been reaped.
    fn into_parts(mut self) -> io::Result<(libc::pid_t, OwnedFd, Box<Launch>)> {
        let (Some(pidfd), Some(launch)) = (self.pidfd.take(), self.launch.take()) else {
            return Err(io::Error::other("the child's pidfd is gone"));
        };
        Ok((self.pid, pidfd, launch))
    }

    /// What the child left in its launch data. Only meaningful once it has
    /// exec'd or exited.
    fn failure(&self) -> Option<StartFailure> {
        self.launch.as_ref().and_then(|launch| launch.failure())
    }

    /// The child reported a failure and is exiting: wait for it, then
    /// the launch data can go.
    fn reap_failed(&mut self) {
        wait_blocking(self.pid);
        self.pidfd = None;
        drop(self.launch.take());
    }
}

impl Launch {
    /// Why the child could not start its program, if it said so. Read only
    /// after it exec'd or exited (it writes before exiting).
    fn failure(&self) -> Option<StartFailure> {
        let failure = self.args.failure.load(Ordering::Acquire);
        if failure == 0 {
            return None;
        }
        Some(StartFailure {
            stage: Stage::from_code((failure >> 32) as u32),
            errno: failure as u32 as i32,
            cwd: self
                .cwd
                .as_ref()
                .map(|cwd| PathBuf::from(OsStr::from_bytes(cwd.to_bytes()))),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(launch) = self.launch.take() else {
            return;
        };
        // The start was abandoned mid-way: the child may still be reading
        // `launch`, so it is leaked (a few kilobytes, rare), and the child
        // is killed and reaped.
        Box::leak(launch);
        if let Some(pidfd) = self.pidfd.take() {
            let _ = pidfd_kill(&pidfd);
            reap_later(self.pid, pidfd);
        }
    }
}

/// Reaps `pid` once its pidfd says it exited (a task), or now if there is
/// no runtime.
fn reap_later(pid: libc::pid_t, pidfd: OwnedFd) {
    let registered = tokio::runtime::Handle::try_current()
        .ok()
        // SAFETY: the AsyncFd owns the pidfd.
        .and_then(|rt| {
            unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
                .ok()
                .map(|fd| (rt, fd))
        });
    match registered {
        Some((runtime, fd)) => reap_when_exited(&runtime, pid, fd, None),
        None => wait_blocking(pid),
    }
}

/// Waits until the close-on-exec pipe's write end is closed everywhere:
/// the child has exec'd or exited.
async fn wait_for_eof(read: OwnedFd) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    // SAFETY: fcntl on an fd we own; a fresh pipe end has no other flags.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pipe = pipe::Receiver::from_owned_fd_unchecked(read)?;
    let mut byte = [0u8; 1];
    // Nothing writes to it: the only answer is end of file.
    while pipe.read(&mut byte).await? != 0 {}
    Ok(())
}

/// Clones a child that shares our memory and runs [`child_main`] (or
/// [`child_main_handlers_cleared`]) on the launch's stack. Returns at
/// once: the child runs while we go on.
fn clone_concurrent(launch: Box<Launch>) -> io::Result<Pending> {
    let mut launch = launch;
    let base = launch.stack.as_mut_ptr() as usize;
    // The stack grows down; the top must be 16-byte aligned.
    let top = (base + launch.stack.len()) & !15;
    let args: *const ChildArgs = &launch.args;
    let mut pidfd: libc::c_int = -1;
    // Block every signal so none of our handlers runs in the child before
    // it has reset them (the child starts with this mask).
    // SAFETY: zeroed sigsets are valid; sigfillset/pthread_sigmask get valid pointers.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let pid = clone_sharing_memory(base, top, args, &mut pidfd);
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    let pid = pid?;
    Ok(Pending {
        pid,
        // SAFETY: CLONE_PIDFD stored a new fd that nobody else owns.
        pidfd: Some(unsafe { OwnedFd::from_raw_fd(pidfd) }),
        launch: Some(launch),
    })
}

/// Whether this start must skip `clone3`: tests ask for the `clone`
/// fallback on their thread; production never does.
#[cfg(not(test))]
fn clone3_declined() -> bool {
    false
}

#[cfg(test)]
fn clone3_declined() -> bool {
    tests::legacy_clone_here()
}

/// Cleared once this kernel or a seccomp filter refuses `clone3` with
/// `CLONE_CLEAR_SIGHAND` (Linux 5.5+; container runtimes often answer
/// ENOSYS to `clone3`): children then start by `clone` and reset their
/// handlers themselves, one system call per signal.
static CLONE3_WORKS: AtomicBool = AtomicBool::new(raw::HAS_CLONE3);

/// The clone itself, on the stack from `base` to `top` (16-byte aligned).
/// With `clone3` the kernel resets the child's handlers
/// (`CLONE_CLEAR_SIGHAND`), which saves the child about 35 system calls.
fn clone_sharing_memory(
    base: usize,
    top: usize,
    args: *const ChildArgs,
    pidfd: &mut libc::c_int,
) -> io::Result<libc::pid_t> {
    if CLONE3_WORKS.load(Ordering::Relaxed) && !clone3_declined() {
        let clone_args = raw::CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_PIDFD) as u64 | raw::CLONE_CLEAR_SIGHAND,
            pidfd: pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: base as u64,
            stack_size: (top - base) as u64,
            ..raw::CloneArgs::default()
        };
        // SAFETY: the child runs child_main_handlers_cleared on the
        // launch's stack and reads only `args` and what it points to; the
        // launch is kept (or leaked) until the child has exec'd or exited.
        let ret = unsafe {
            raw::clone3(
                &clone_args,
                child_main_handlers_cleared,
                args as *mut libc::c_void,
            )
        };
        match raw::errno_of(ret) {
            0 => return Ok(ret as libc::pid_t),
            libc::ENOSYS | libc::EINVAL | libc::EPERM => {
                CLONE3_WORKS.store(false, Ordering::Relaxed);
            }
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
    // SAFETY: as above, with child_main, which resets its handlers itself.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
            args as *mut libc::c_void,
            pidfd as *mut libc::c_int,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// The child, between clone and exec. It runs *beside* bootplan's threads
/// in shared memory, on a thread pointer that is still the parent
/// thread's: so it makes system calls directly ([`raw`]) — libc's wrappers
/// would write `errno`, a thread-local the parent thread is using — and
/// touches nothing but its arguments and its own stack. No allocation, no
/// locks, no panics.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the launch's ChildArgs, alive and unchanged
    // while this child runs.
    let args = unsafe { &*arg.cast::<ChildArgs>() };
    // SAFETY: raw system calls only.
    unsafe {
        // Handlers belong to bootplan; the child gets the defaults.
        // Only the standard signals can have a handler here: nothing in
        // bootplan handles a real-time signal.
        for signal in 1..32 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP || signal == libc::SIGPIPE {
                continue;
            }
            let mut current = raw::KernelSigaction::default();
            if raw::rt_sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            let handled = current.handler > 1; // neither SIG_DFL (0) nor SIG_IGN (1)
            if handled {
                let default = raw::KernelSigaction::default();
                raw::rt_sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        prepare_and_exec(args)
    }
}

/// [`child_main`] for a child whose handlers the kernel has already reset
/// (`clone3` with `CLONE_CLEAR_SIGHAND`; ignored signals stay ignored).
extern "C" fn child_main_handlers_cleared(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: as in child_main.
    let args = unsafe { &*arg.cast::<ChildArgs>() };
    // SAFETY: raw system calls only.
    unsafe { prepare_and_exec(args) }
}

/// The rest of the child's work once no handler of bootplan's is left:
/// SIGPIPE, the death signal, process group, descriptors, directory, mask
/// and exec. Never returns.
///
/// # Safety
/// Only from [`child_main`] or [`child_main_handlers_cleared`].
unsafe fn prepare_and_exec(args: &ChildArgs) -> ! {
    // SAFETY (whole block): raw system calls on pointers the parent prepared.
    unsafe {
        // SIGPIPE is ignored by Rust programs and must not stay so for
        // children.
        let default = raw::KernelSigaction::default();
        raw::rt_sigaction(libc::SIGPIPE, &default, std::ptr::null_mut());
        let err = raw::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as usize);
        if err != 0 {
            fail(args, Stage::DeathSignal, err);
        }
        // bootplan may have died before prctl took effect.
        if raw::getppid() != args.parent {
            raw::exit(1);
        }
        if args.own_group {
            let err = raw::setpgid();
            if err != 0 {
                fail(args, Stage::ProcessGroup, err);
            }
        }
        for (target, fd) in args.fds.into_iter().enumerate() {
            if fd < 0 {
                continue;
            }
            let err = raw::move_fd(fd, target as RawFd);
            if err != 0 {
                fail(args, Stage::Redirect, err);
            }
        }
        if !args.cwd.is_null() {
            let err = raw::chdir(args.cwd);
            if err != 0 {
                fail(args, Stage::Chdir, err);
            }
        }
        raw::unblock_all_signals();

        // As execvp: try each PATH entry; remember EACCES but keep looking.
        let mut first_error = 0;
        for i in 0..args.candidate_count {
            let path = *args.candidates.add(i);
            let e = raw::execve(path, args.argv, args.envp);
            if e != libc::ENOENT && e != libc::ENOTDIR && e != libc::EACCES {
                first_error = e;
                break;
            }
            if e == libc::EACCES || first_error == 0 {
                first_error = e;
            }
        }
        fail(args, Stage::Exec, first_error)
    }
}

/// Leaves (stage, errno) in the launch data for the parent and exits.
///
/// # Safety
/// Only from the child ([`prepare_and_exec`]).
unsafe fn fail(args: &ChildArgs, stage: Stage, errno: i32) -> ! {
    // Errno 0 cannot happen on a failure; keep the word non-zero anyway.
    let failure = (u64::from(stage.code()) << 32) | u64::from(errno.max(1) as u32);
    // A plain store: no call into libc. The parent reads it after it saw
    // this process exit, which the exit system call orders after the store.
    args.failure.store(failure, Ordering::Release);
    // SAFETY: ends this process only.
    unsafe { raw::exit(127) }
}

/// System calls made directly, without libc's wrappers: they return the
/// negated errno instead of setting the thread-local `errno` (see
/// [`child_main`]). Only what the child needs, for x86_64 and aarch64.
mod raw {
    use std::os::fd::RawFd;

    /// The kernel's `struct sigaction` (same layout on x86_64 and aarch64).
    #[repr(C)]
    #[derive(Default)]
    pub struct KernelSigaction {
        pub handler: usize,
        pub flags: u64,
        pub restorer: usize,
        pub mask: u64,
    }

    /// The errno of a raw return value (0 on success).
    pub fn errno_of(ret: isize) -> i32 {
        if (-4095..0).contains(&ret) {
            -ret as i32
        } else {
            0
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn syscall(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes a valid system call and arguments.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack)
            );
        }
        ret
    }

    /// Other architectures start children through the fork path (see
    /// [`super::clone_supported`]); this only keeps the module compiling.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unsafe fn syscall(_n: libc::c_long, _a: [usize; 6]) -> isize {
        -(libc::ENOSYS as isize)
    }

    #[cfg(target_arch = "aarch64")]
    unsafe fn syscall(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the caller passes a valid system call and arguments.
        unsafe {
            std::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a[0] as isize => ret,
                in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
                options(nostack)
            );
        }
        ret
    }

    /// Whether [`clone3`] is implemented for this architecture.
    pub const HAS_CLONE3: bool = cfg!(target_arch = "x86_64");

    /// `clone3` flag (Linux 5.5+): the child's handled signals start at
    /// their defaults; ignored ones stay ignored.
    pub const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

    /// The kernel's `struct clone_args`, first version (64 bytes).
    #[repr(C)]
    #[derive(Default)]
    pub struct CloneArgs {
        pub flags: u64,
        pub pidfd: u64,
        pub child_tid: u64,
        pub parent_tid: u64,
        pub exit_signal: u64,
        pub stack: u64,
        pub stack_size: u64,
        pub tls: u64,
    }

    /// `clone3` for a child that shares our memory: the child starts on
    /// the stack `args` names, calls `entry(arg)` there and exits with its
    /// return value, never coming back into the caller's code (its stack
    /// is not the caller's). Returns the child's pid or a negated errno.
    ///
    /// # Safety
    /// `args` must name a stack that stays valid while the child runs, and
    /// `entry` must be safe to run on it beside the caller's threads.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn clone3(
        args: &CloneArgs,
        entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
        arg: *mut libc::c_void,
    ) -> isize {
        let ret: isize;
        // SAFETY: the parent only makes the system call; the child (rax
        // 0) is on its new stack, which the kernel aligned as given: it
        // clears the frame pointer, calls entry and exits, as glibc's
        // clone3 does.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "mov edi, eax",
                "mov eax, {exit}",
                "syscall",
                "ud2",
                "2:",
                exit = const libc::SYS_exit,
                inlateout("rax") libc::SYS_clone3 as isize => ret,
                in("rdi") args as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") arg,
                in("r13") entry,
                lateout("rcx") _, lateout("r11") _,
                options(nostack)
            );
        }
        ret
    }

    /// Not implemented here: children start by `clone` ([`HAS_CLONE3`]).
    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn clone3(
        _args: &CloneArgs,
        _entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
        _arg: *mut libc::c_void,
    ) -> isize {
        -(libc::ENOSYS as isize)
    }

    pub unsafe fn rt_sigaction(
        signal: i32,
        act: *const KernelSigaction,
        old: *mut KernelSigaction,
    ) -> i32 {
        // SAFETY: valid (or null) pointers; 8 is the kernel's sigset size.
        errno_of(unsafe {
            syscall(
                libc::SYS_rt_sigaction,
                [signal as usize, act as usize, old as usize, 8, 0, 0],
            )
        })
    }

    pub unsafe fn prctl(option: i32, arg: usize) -> i32 {
        // SAFETY: integer arguments only.
        errno_of(unsafe { syscall(libc::SYS_prctl, [option as usize, arg, 0, 0, 0, 0]) })
    }

    pub unsafe fn getppid() -> libc::pid_t {
        // SAFETY: no arguments.
        unsafe { syscall(libc::SYS_getppid, [0; 6]) as libc::pid_t }
    }

    /// `setpgid(0, 0)`: a new process group led by this process.
    pub unsafe fn setpgid() -> i32 {
        // SAFETY: integer arguments only.
        errno_of(unsafe { syscall(libc::SYS_setpgid, [0; 6]) })
    }

    /// Puts `fd` at `target`, not close-on-exec.
    pub unsafe fn move_fd(fd: RawFd, target: RawFd) -> i32 {
        if fd == target {
            // SAFETY: integer arguments only.
            return errno_of(unsafe {
                syscall(
                    libc::SYS_fcntl,
                    [fd as usize, libc::F_SETFD as usize, 0, 0, 0, 0],
                )
            });
        }
        // SAFETY: integer arguments only.
        errno_of(unsafe { syscall(libc::SYS_dup3, [fd as usize, target as usize, 0, 0, 0, 0]) })
    }

    pub unsafe fn chdir(path: *const libc::c_char) -> i32 {
        // SAFETY: a NUL-terminated path prepared by the parent.
        errno_of(unsafe { syscall(libc::SYS_chdir, [path as usize, 0, 0, 0, 0, 0]) })
    }

    pub unsafe fn unblock_all_signals() {
        let empty: u64 = 0;
        // SAFETY: a valid 8-byte set; no old set wanted.
        unsafe {
            syscall(
                libc::SYS_rt_sigprocmask,
                [
                    libc::SIG_SETMASK as usize,
                    &empty as *const u64 as usize,
                    0,
                    8,
                    0,
                    0,
                ],
            );
        }
    }

    /// Returns only on failure, with its errno.
    pub unsafe fn execve(
        path: *const libc::c_char,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
    ) -> i32 {
        // SAFETY: NUL-terminated strings and NULL-terminated arrays from the parent.
        errno_of(unsafe {
            syscall(
                libc::SYS_execve,
                [path as usize, argv as usize, envp as usize, 0, 0, 0],
            )
        })
    }

    pub unsafe fn exit(code: i32) -> ! {
        // SAFETY: ends this process only (it is not a thread of bootplan's).
        unsafe {
            syscall(libc::SYS_exit, [code as usize, 0, 0, 0, 0, 0]);
        }
        // exit does not return; loop to satisfy the type.
        #[allow(clippy::empty_loop)]
        loop {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::io::AsyncReadExt;

    thread_local! {
        /// Set by a test to start this thread's children with `clone`, as
        /// on kernels without `clone3` (tokio tests run on their thread).
        static LEGACY_CLONE: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn legacy_clone_here() -> bool {
        LEGACY_CLONE.with(Cell::get)
    }

    /// Both ways of starting a child: the clone path (when this kernel has
    /// pidfds) and the fork fallback, which must behave the same.
    fn paths() -> Vec<bool> {
        if clone_supported() {
            vec![true, false]
        } else {
            vec![false]
        }
    }

    async fn spawn(cmd: &Command, cloned: bool) -> io::Result<Child> {
        if cloned {
            cmd.spawn_cloned()
                .await
                .map_err(|(Refused::Clone(e) | Refused::Start(e))| e)
        } else {
            cmd.spawn_forked()
        }
    }

    async fn read_all(pipe: Option<OutputPipe>) -> String {
        let mut out = String::new();
        pipe.expect("piped")
            .read_to_string(&mut out)
            .await
            .expect("read");
        out
    }

    /// An output pipe read before anything is in it is handed to tokio
    /// then, and what comes later still arrives, to the end of file.
    #[tokio::test]
    async fn output_written_after_the_first_read_still_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        let script = format!(
            "while [ ! -e '{}' ]; do sleep 0.01; done; echo late",
            go.display()
        );
        let mut child = sh(&script).start().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 16];
        // Nothing can be written before `go` exists: this read waits.
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            stdout.read(&mut first),
        )
        .await;
        assert!(early.is_err(), "read {early:?} before the command wrote");
        assert!(matches!(stdout.0, PipeState::Watched(_)));
        std::fs::write(&go, "").unwrap();
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "late\n");
        assert_eq!(child.wait().await.unwrap().code(), Some(0));
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
            let mut child = spawn(&cmd, cloned).await.unwrap();
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
        check_child_signals_mask_and_group().await;
    }

    /// The same, for children started by `clone` (kernels before 5.5, or
    /// a seccomp filter refusing `clone3`), which reset their handlers
    /// themselves.
    #[tokio::test]
    async fn the_clone_fallback_gives_the_same_signals_mask_and_group() {
        LEGACY_CLONE.with(|legacy| legacy.set(true));
        check_child_signals_mask_and_group().await;
        LEGACY_CLONE.with(|legacy| legacy.set(false));
    }

    /// On a kernel with `clone3` and `CLONE_CLEAR_SIGHAND` (5.5+) children
    /// start through it: a silent fallback would cost ~35 system calls per
    /// child without failing any other test.
    #[tokio::test]
    async fn clone3_is_used_where_the_kernel_has_it() {
        if !raw::HAS_CLONE3 || !clone_supported() || !kernel_at_least(5, 5) {
            return;
        }
        let mut child = Command::new("true").start().unwrap();
        assert!(child.wait().await.unwrap().success());
        assert!(CLONE3_WORKS.load(Ordering::Relaxed), "clone3 was refused");
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let have_major: u32 = parts.next().unwrap().parse().unwrap();
        let have_minor: u32 = parts.next().unwrap().parse().unwrap();
        (have_major, have_minor) >= (major, minor)
    }

    /// Handled signals at their defaults, ignored ones (SIGURG here) still
    /// ignored, SIGPIPE back to default, nothing blocked, own group.
    async fn check_child_signals_mask_and_group() {
        let sigurg = 1u64 << (libc::SIGURG - 1);
        // SAFETY: SIGURG's default action is to ignore it; this changes
        // only how it shows in children's SigIgn.
        unsafe { libc::signal(libc::SIGURG, libc::SIG_IGN) };
        for cloned in paths() {
            let mut cmd = Command::new("cat");
            cmd.arg("/proc/self/stat")
                .arg("/proc/self/status")
                .stdout(Stdio::Piped)
                .own_process_group();
            let mut child = spawn(&cmd, cloned).await.unwrap();
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
            assert_eq!(field("SigIgn:") & sigurg, sigurg, "ignored stays ignored");
        }
    }

    #[tokio::test]
    async fn start_failures_name_what_failed_and_leave_no_child() {
        for cloned in paths() {
            let err = spawn(&Command::new("bootplan-no-such-program"), cloned)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "cloned={cloned}");

            let err = spawn(&Command::new("/etc/passwd"), cloned)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");

            let mut cmd = Command::new("true");
            cmd.current_dir("/bootplan-no-such-dir");
            let err = spawn(&cmd, cloned).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            if cloned {
                assert!(
                    err.to_string().contains("/bootplan-no-such-dir"),
                    "names the directory: {err}"
                );
            }
        }
        let err = Command::new("").spawn().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = Command::new("true").arg("a\0b").spawn().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // No zombie was left behind by the failed starts. They never
        // reached exec, so they carry this test thread's name (cut to the
        // kernel's 15 bytes; other tests' threads differ there).
        assert_eq!(zombie_children_named("spawn::tests::s"), 0);
    }

    #[tokio::test]
    async fn unconfirmed_start_failures_come_from_wait() {
        // `start` does not wait for the exec: on the clone path the failure
        // comes from `wait` (every time it is asked), on the fork path from
        // `start` itself. Either way it names what failed.
        async fn start_error(cmd: &Command) -> io::Error {
            match cmd.start() {
                Ok(mut child) => {
                    let first = child.wait().await.unwrap_err();
                    let again = child.wait().await.unwrap_err();
                    assert_eq!(first.to_string(), again.to_string());
                    assert!(child.try_wait().is_err());
                    first
                }
                Err(err) => err,
            }
        }
        let err = start_error(&Command::new("bootplan-no-such-program")).await;
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let err = start_error(&Command::new("/etc/passwd")).await;
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        let mut cmd = Command::new("true");
        cmd.current_dir("/bootplan-no-such-dir");
        let err = start_error(&cmd).await;
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        if clone_supported() {
            assert!(err.to_string().contains("/bootplan-no-such-dir"), "{err}");
        }
        // A good start after failed ones: output and status as with spawn.
        let mut child = sh("echo started; exit 4").start().unwrap();
        let stdout = child.stdout.take();
        let (out, status) = tokio::join!(read_all(stdout), child.wait());
        assert_eq!(out, "started\n");
        assert_eq!(status.unwrap().code(), Some(4));
        assert_eq!(zombie_children_named("spawn::tests::u"), 0);
    }

    #[tokio::test]
    async fn dropping_an_unconfirmed_child_kills_and_reaps_it() {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").kill_on_drop();
        let child = cmd.start().unwrap();
        let pid = child.id().unwrap();
        drop(child);
        assert_gone(pid, "start").await;
    }

    #[tokio::test]
    async fn dropping_a_running_child_kills_and_reaps_it() {
        for cloned in paths() {
            let mut cmd = Command::new("sleep");
            cmd.arg("60").kill_on_drop();
            let child = spawn(&cmd, cloned).await.unwrap();
            let pid = child.id().unwrap();
            drop(child);
            assert_gone(pid, &format!("spawn, cloned={cloned}")).await;
        }
    }

    /// Gone, not a zombie: polled until the reaping task has run.
    async fn assert_gone(pid: u32, how: &str) {
        let gone = async {
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), gone)
            .await
            .unwrap_or_else(|_| panic!("pid {pid} still there ({how})"));
    }

    #[tokio::test]
    async fn an_abandoned_start_leaves_no_process() {
        // The start is dropped right after its first poll: usually after the
        // clone and before the exec is confirmed (the Pending path kills the
        // child), sometimes after (the Child path does). Either way nothing
        // may be left running.
        let marker = format!("31.{}", std::process::id());
        let mut cmd = Command::new("sleep");
        cmd.arg(&marker).kill_on_drop();
        tokio::select! {
            biased;
            started = cmd.spawn() => drop(started),
            () = std::future::ready(()) => {}
        }
        let running = || {
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()))
            })
        };
        let gone = async {
            while running() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), gone)
            .await
            .expect("the abandoned child is still running");
    }

    #[tokio::test]
    async fn try_wait_and_start_kill() {
        for cloned in paths() {
            let mut child = spawn(Command::new("sleep").arg("60"), cloned)
                .await
                .unwrap();
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
