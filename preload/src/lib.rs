//! libmsock.so: the C edge of msock (paper §3, §4.4).
//!
//! Loaded with `LD_PRELOAD` (see `msock run`), it interposes the socket API of unmodified
//! programs. Every export has the same shape (after OpenOnload's `transport/unix`):
//!
//! 1. not initialised (constructor not yet run) or re-entered (this thread is already inside
//!    msock, or is msock's receive thread) → call the real libc function;
//! 2. look the descriptor up in the client runtime's fd table;
//! 3. ours → convert the C arguments to safe types and run the safe operation in
//!    [`core_stack::client::api`]; not ours → pass through;
//! 4. the outcome is three-way: done, bypass (call libc after all), or errno.
//!
//! Real functions come from `dlsym(RTLD_NEXT)` ([`real`]). A panic never unwinds into C: it is
//! caught at the edge and reported as EIO. Only the symbols listed in `exports.map` are exported
//! (checked by a test against `nm -D`). Debug logging (`MSOCK_DEBUG=1`) writes with raw
//! `write(2, ...)` from a stack buffer, never through Rust's stdio.
//!
//! Variadic functions: `fcntl`, `fcntl64` and `ioctl` are defined with one `unsigned long`
//! argument after the fixed ones. On x86_64 (System V) and aarch64 (AAPCS64 as used by Linux) a
//! variadic integer or pointer argument travels in the same register as a fixed one, so this is
//! ABI-compatible for every command (each takes at most one argument). Other targets are not
//! supported.

pub mod capi;
mod edge;
mod process;
mod real;
mod signals;

pub use capi::*;
pub use edge::*;
