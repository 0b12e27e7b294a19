//! Printing that never panics and never blocks on a reader that went away:
//! `bootplan schema | head -1` and `bootplan status | head -1` end quietly
//! with their own exit code. (Rust's `println!` panics when the pipe is
//! closed; bootplan ignores SIGPIPE so that a closed log reader cannot kill
//! a PID 1.) Run-time logs go through the telemetry sinks' bounded queue
//! instead; these are for command output and last-resort messages.

use std::io::Write;

/// Writes one line to stdout; errors (a closed pipe) are ignored.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

/// Writes text to stdout as it is; errors are ignored.
pub fn write_out_raw(bytes: &[u8]) {
    let _ = std::io::stdout().lock().write_all(bytes);
}

/// Writes one line to stderr; errors are ignored.
pub fn write_err(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` that ignores a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::stdio::write_out(format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::stdio::write_err(format_args!($($arg)*)) };
}

pub(crate) use {errln, outln};
