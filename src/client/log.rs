//! `MSOCK_DEBUG=1` logging that is safe inside interposed calls: formats into a fixed stack
//! buffer and writes it with one raw `write(2, ...)`. No allocation, no Rust stdio, no locks.
//! Long lines are truncated to [`LINE_MAX`] bytes. `MSOCK_DEBUG=/absolute/path` appends the
//! lines to that file instead (a program whose stderr is a socket, e.g. an inetd service,
//! would otherwise send them to its peer); the file is opened once per program image.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};

/// Longest log line in bytes.
pub const LINE_MAX: usize = 256;

// 0 = not read yet, 1 = off, 2 = on.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether `MSOCK_DEBUG` is set to something other than `0` or empty (read once).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("MSOCK_DEBUG").is_some_and(|v| !v.is_empty() && v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_MAX - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats `args` as one line `msock[pid]: ...\n` (truncated) into `out`; returns its length.
pub fn format_line(out: &mut [u8; LINE_MAX], args: fmt::Arguments<'_>) -> usize {
    let mut line = LineBuf {
        buf: [0; LINE_MAX],
        len: 0,
    };
    let _ = write!(line, "msock[{}]: ", std::process::id());
    let _ = line.write_fmt(args);
    line.buf[line.len] = b'\n';
    line.len += 1;
    out.copy_from_slice(&line.buf);
    line.len
}

/// Writes one debug line to stderr if enabled.
pub fn write_line(args: fmt::Arguments<'_>) {
    if !enabled() {
        return;
    }
    let mut buf = [0u8; LINE_MAX];
    let n = format_line(&mut buf, args);
    match log_file() {
        Some(fd) => crate::client::sys::write_fd(fd, &buf[..n]),
        None => crate::client::sys::write_stderr(&buf[..n]),
    }
}

/// The `MSOCK_DEBUG=/path` file's descriptor (-1: not opened yet, -2: stderr).
static FILE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn log_file() -> Option<i32> {
    match FILE.load(Ordering::Relaxed) {
        -1 => {
            let fd = std::env::var_os("MSOCK_DEBUG")
                .filter(|v| v.as_encoded_bytes().starts_with(b"/"))
                .and_then(|path| crate::client::sys::open_append(std::path::Path::new(&path)).ok())
                .unwrap_or(-2);
            FILE.store(fd, Ordering::Relaxed);
            (fd >= 0).then_some(fd)
        }
        fd => (fd >= 0).then_some(fd),
    }
}

/// `msock_debug!("fmt", args...)`: one line on stderr when `MSOCK_DEBUG=1`.
#[macro_export]
macro_rules! msock_debug {
    ($($arg:tt)*) => {
        if $crate::client::log::enabled() {
            $crate::client::log::write_line(format_args!($($arg)*));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_terminated_and_truncated() {
        let mut buf = [0u8; LINE_MAX];
        let n = format_line(&mut buf, format_args!("sendto fd {} -> {}", 5, 64));
        let s = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(s.starts_with("msock["));
        assert!(s.ends_with("]: sendto fd 5 -> 64\n"));

        let long = "x".repeat(1000);
        let n = format_line(&mut buf, format_args!("{long}"));
        assert_eq!(n, LINE_MAX);
        assert_eq!(buf[n - 1], b'\n');
    }
}
