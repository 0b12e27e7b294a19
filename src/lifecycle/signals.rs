//! The signals bootplan forwards to a supervised app, listened for from
//! the start of the run (so a SIGHUP during the boot does not kill
//! bootplan, its default action).

use std::task::{Context, Poll};

use tokio::signal::unix::{SignalKind, signal};

/// The signals forwarded to the app.
pub const FORWARDED: [i32; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Listens for the forwarded signals. Created before the plan runs, so a
/// SIGHUP during the boot does not kill bootplan (its default action).
pub struct Forwarder {
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
}

impl Forwarder {
    pub fn new() -> Forwarder {
        let streams = FORWARDED
            .iter()
            .filter_map(|&n| signal(SignalKind::from_raw(n)).ok().map(|s| (n, s)))
            .collect();
        Forwarder { streams }
    }

    /// Forgets signals that arrived before the app existed, but returns a
    /// pending SIGTERM/SIGINT: one the engine handled ended the run before
    /// supervision, so a pending one came after the last step and still
    /// asks bootplan to stop.
    pub(super) fn drain_stale(&mut self) -> Option<i32> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut stop = None;
        for (n, s) in &mut self.streams {
            while let Poll::Ready(Some(())) = s.poll_recv(&mut cx) {
                if *n == libc::SIGTERM || *n == libc::SIGINT {
                    stop = Some(*n);
                }
            }
        }
        stop
    }

    /// Every signal received and not taken yet, for the lean supervisor
    /// to forward.
    pub(super) fn drain_all(&mut self) -> Vec<i32> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut received = Vec::new();
        for (n, s) in &mut self.streams {
            while let Poll::Ready(Some(())) = s.poll_recv(&mut cx) {
                received.push(*n);
            }
        }
        received
    }

    /// The next signal received.
    pub(super) async fn recv(&mut self) -> i32 {
        std::future::poll_fn(|cx| {
            for (n, s) in &mut self.streams {
                if let Poll::Ready(Some(())) = s.poll_recv(cx) {
                    return Poll::Ready(*n);
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder::new()
    }
}
