//! `msock run -- PROG ARGS`: execute PROG with libmsock.so in LD_PRELOAD.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn command(args: &[String]) -> i32 {
    let (flags, positional) = match super::parse_flags(args, &["lib"], &[]) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("msock run: {e}");
            return 2;
        }
    };
    let Some((program, program_args)) = positional.split_first() else {
        eprintln!("msock run: usage: msock run [--lib PATH] -- PROG [ARGS...]");
        return 2;
    };
    let lib = match flags.iter().find(|(n, _)| n == "lib") {
        Some((_, path)) => PathBuf::from(path),
        None => match find_library() {
            Some(p) => p,
            None => {
                eprintln!(
                    "msock run: libmsock.so not found next to the msock binary or in ../lib; \
                     pass --lib PATH or set MSOCK_LIB"
                );
                return 1;
            }
        },
    };
    let lib = lib.canonicalize().unwrap_or(lib);
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{} {existing}", lib.display()),
        _ => lib.display().to_string(),
    };
    let err = Command::new(program)
        .args(program_args)
        .env("LD_PRELOAD", preload)
        .exec();
    eprintln!("msock run: cannot execute {program}: {err}");
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// `MSOCK_LIB`, else `libmsock.so` beside the executable (cargo's target dir), else
/// `../lib/libmsock.so` (an installed prefix).
fn find_library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MSOCK_LIB") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("libmsock.so"), dir.join("../lib/libmsock.so")]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}
