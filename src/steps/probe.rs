//! Readiness probes for processes bootplan starts (services and the
//! supervised app). Unlike `steps::wait`, a [`Probe`] is rendered once and
//! then owns everything it needs, so a service restarted long after its step
//! finished can be checked again. The `notify` target listens on a datagram
//! socket given to the process as `NOTIFY_SOCKET` and waits for `READY=1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::plan::{WaitSpec, WaitTarget};
use crate::steps::process::Cmd;
use crate::steps::{StepContext, StepError, StepInputs};
use crate::telemetry::{EventKind, Reporter};

/// How often a long wait reports that it is still waiting.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Longest notify message read; systemd's own limit is similar.
const MAX_NOTIFY_MESSAGE: usize = 4096;

/// A socket a child process sends sd_notify messages to. Only messages
/// from the process it was given to (and its descendants) count: the
/// kernel attaches each sender's pid (`SO_PASSCRED`), so another process
/// that finds the socket cannot declare the service ready.
pub struct NotifyListener {
    path: PathBuf,
    socket: tokio::net::UnixDatagram,
    /// The processes allowed to notify: set once the process is started.
    members: std::sync::Mutex<Option<crate::process::Members>>,
    /// Where ignored messages are reported.
    reporter: Option<Arc<Reporter>>,
}

impl NotifyListener {
    /// Binds `dir/name.sock`, replacing a stale socket from an earlier run.
    pub fn bind(dir: &Path, name: &str) -> std::io::Result<NotifyListener> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = tokio::net::UnixDatagram::bind(&path)?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(std::io::Error::from)?;
        Ok(NotifyListener {
            path,
            socket,
            members: std::sync::Mutex::new(None),
            reporter: None,
        })
    }

    /// Reports messages from other processes, which are ignored.
    pub fn with_reporter(mut self, reporter: Arc<Reporter>) -> NotifyListener {
        self.reporter = Some(reporter);
        self
    }

    /// Accepts messages from `members` only (the process just started).
    pub fn expect_from(&self, members: crate::process::Members) {
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = Some(members);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops messages left from an earlier process (before a restart).
    pub fn clear(&self) {
        while let Ok(Some(_)) = self.try_recv() {}
    }

    /// Waits for one message from the expected process; `Ok(true)` when it
    /// says READY=1.
    async fn next(&self) -> std::io::Result<(bool, Option<String>)> {
        loop {
            let (text, sender) = self
                .socket
                .async_io(tokio::io::Interest::READABLE, || {
                    self.try_recv()?
                        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::WouldBlock))
                })
                .await?;
            if !self.sent_by_expected(sender) {
                if let Some(reporter) = &self.reporter {
                    let who = sender.map_or("a process of unknown pid".into(), |pid| {
                        format!("pid {pid}")
                    });
                    reporter.notice(
                        crate::telemetry::Level::Warn,
                        format!(
                            "ignored a notification on {} from {who}, which is not the service's process",
                            self.path.display()
                        ),
                    );
                }
                continue;
            }
            let ready = text.lines().any(|l| l.trim() == "READY=1");
            let status = text
                .lines()
                .find_map(|l| l.strip_prefix("STATUS="))
                .map(str::to_string);
            return Ok((ready, status));
        }
    }

    fn sent_by_expected(&self, sender: Option<u32>) -> bool {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        matches!((members.as_ref(), sender), (Some(members), Some(pid)) if members.contains(pid))
    }

    /// One message without waiting, with its sender's pid.
    fn try_recv(&self) -> std::io::Result<Option<(String, Option<u32>)>> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; MAX_NOTIFY_MESSAGE];
        let mut space = nix::cmsg_space!(UnixCredentials);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let received = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let msg = match received {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let sender = msg.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid() as u32),
                _ => None,
            })
        });
        let len = msg.bytes;
        Ok(Some((
            String::from_utf8_lossy(&buf[..len]).into_owned(),
            sender,
        )))
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a probe checks, rendered.
enum Target {
    Tcp(String),
    Http(String),
    File(PathBuf),
    Command(Cmd),
    Notify(Arc<NotifyListener>),
}

/// A rendered readiness check.
pub struct Probe {
    step: String,
    target: Target,
    description: String,
    interval: Duration,
    attempt_timeout: Duration,
    http: reqwest::Client,
    reporter: Arc<Reporter>,
    bootstrap_id: String,
}

impl Probe {
    /// Renders `spec` for the step in `inputs`; `field` names it in
    /// messages (`ready`, `wait`). A `notify` spec needs `listener`.
    pub fn new(
        spec: &WaitSpec,
        field: &str,
        inputs: &StepInputs<'_>,
        ctx: &StepContext,
        listener: Option<Arc<NotifyListener>>,
    ) -> Result<Probe, StepError> {
        let target = match &spec.target {
            WaitTarget::Tcp(addr) => {
                Target::Tcp(inputs.render(addr, &format!("{field}.tcp"), ctx)?)
            }
            WaitTarget::Http(url) => {
                Target::Http(inputs.render(url, &format!("{field}.http"), ctx)?)
            }
            WaitTarget::File(path) => {
                Target::File(inputs.path(path, &format!("{field}.file"), ctx)?)
            }
            WaitTarget::Command(argv) => {
                let mut cmd = inputs.command(&[], ctx)?;
                cmd.argv = inputs.command(argv, ctx)?.argv;
                Target::Command(cmd)
            }
            WaitTarget::Notify => match listener {
                Some(listener) => Target::Notify(listener),
                None => {
                    return Err(StepError::Render {
                        what: format!("{field}.notify"),
                        message: "no notify socket".into(),
                    });
                }
            },
        };
        let description = match &target {
            Target::Tcp(a) => format!("tcp {a}"),
            Target::Http(u) => u.clone(),
            Target::File(p) => format!("file {}", p.display()),
            Target::Command(c) => format!("command `{}`", c.argv.join(" ")),
            Target::Notify(_) => "sd_notify READY=1".into(),
        };
        Ok(Probe {
            step: inputs.step.name.clone(),
            target,
            description,
            interval: spec.interval,
            attempt_timeout: spec.attempt_timeout,
            http: ctx.http().clone(),
            reporter: ctx.reporter.clone(),
            bootstrap_id: ctx.bootstrap_id.clone(),
        })
    }

    /// Prepares for a fresh process: forgets old notify messages.
    pub fn reset(&self) {
        if let Target::Notify(listener) = &self.target {
            listener.clear();
        }
    }

    /// Checks until ready, `limit` passes, `cancel` fires, or `gone` reports
    /// that the process exited (asked before each check).
    pub async fn wait(
        &self,
        limit: Option<Duration>,
        cancel: &CancellationToken,
        mut gone: impl FnMut() -> Option<StepError>,
    ) -> Result<(), StepError> {
        let started = Instant::now();
        let mut next_report = REPORT_EVERY;
        loop {
            if let Some(err) = gone() {
                return Err(err);
            }
            let last = tokio::select! {
                r = tokio::time::timeout(self.attempt_timeout, self.check()) => match r {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(why)) => why,
                    Err(_) => format!("check timed out after {}", humantime::format_duration(self.attempt_timeout)),
                },
                () = cancel.cancelled() => return Err(StepError::Cancelled),
            };
            let elapsed = started.elapsed();
            if limit.is_some_and(|limit| elapsed + self.interval > limit) {
                return Err(StepError::WaitTimeout {
                    target: self.description.clone(),
                    after: elapsed,
                    last,
                });
            }
            if elapsed >= next_report {
                self.reporter.emit(EventKind::Waiting {
                    step: self.step.clone(),
                    target: format!("{} ({last})", self.description),
                    elapsed,
                });
                next_report += REPORT_EVERY;
            }
            // A notify check already waited for a message; poll again at once.
            if matches!(self.target, Target::Notify(_)) {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = cancel.cancelled() => return Err(StepError::Cancelled),
            }
        }
    }

    async fn check(&self) -> Result<(), String> {
        match &self.target {
            Target::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("connect: {e}")),
            Target::Http(url) => match self.http.get(url).send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(format!("HTTP {}", resp.status())),
                Err(e) => Err(crate::http::describe_error(&e)),
            },
            Target::File(path) => tokio::fs::metadata(path)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Target::Command(cmd) => self.check_command(cmd).await,
            Target::Notify(listener) => loop {
                match listener.next().await {
                    Ok((true, _)) => return Ok(()),
                    Ok((false, Some(status))) => {
                        return Err(format!("not ready yet; status: {status}"));
                    }
                    Ok((false, None)) => continue,
                    Err(e) => return Err(format!("notify socket: {e}")),
                }
            },
        }
    }

    async fn check_command(&self, cmd: &Cmd) -> Result<(), String> {
        let mut command = cmd.command_for(&self.bootstrap_id, &self.step);
        command
            .stdout(crate::process::Stdio::Null)
            .stderr(crate::process::Stdio::Null);
        let mut child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
        // Dropped when the check times out, the child's tree is killed;
        // when it exits, what it left is killed with it.
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("command exited with {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notify_listener_reads_status_then_ready_and_clears_old_messages() {
        let dir = tempfile::tempdir().unwrap();
        let listener = NotifyListener::bind(dir.path(), "svc").unwrap();
        // A message from a process that is not the service is ignored.
        let foreign = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'READY=1', sys.argv[1])",
            ])
            .arg(listener.path())
            .status()
            .unwrap();
        assert!(foreign.success());
        listener.expect_from(crate::process::Members::process(std::process::id()));
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender
            .send_to(b"STATUS=warming up", listener.path())
            .unwrap();
        sender
            .send_to(b"MAINPID=42\nREADY=1\n", listener.path())
            .unwrap();
        assert_eq!(
            listener.next().await.unwrap(),
            (false, Some("warming up".into()))
        );
        assert_eq!(listener.next().await.unwrap(), (true, None));
        // A restart must not see the previous process's READY=1.
        sender.send_to(b"READY=1", listener.path()).unwrap();
        listener.clear();
        let next = tokio::time::timeout(Duration::from_millis(100), listener.next()).await;
        assert!(next.is_err(), "a cleared message was read");
        let path = listener.path().to_path_buf();
        drop(listener);
        assert!(
            !path.exists(),
            "the socket file is removed with the listener"
        );
    }
}
