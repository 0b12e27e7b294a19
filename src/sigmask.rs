//! Which thread takes bootplan's signals: the main thread, only. The
//! signals bootplan handles (the ones it forwards to a supervised app, and
//! SIGCHLD) are blocked in every other thread it starts, so that blocking
//! them in the main thread holds them pending: across the `exec` into the
//! lean supervisor, none is taken by a thread that is about to vanish.

use nix::sys::signal::{SigSet, Signal};

/// The signals bootplan handles.
pub fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(signal);
    }
    set
}

/// Blocks [`handled`] in the calling thread: call it first thing in every
/// thread bootplan starts, and in the main thread to hold them pending.
pub fn block_handled() {
    let _ = handled().thread_block();
}
