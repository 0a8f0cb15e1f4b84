//! `make install-files` (what `make install` does after building) staged into a temporary
//! DESTDIR with PREFIX=/usr/local: the four files land where they should, `msock.pc` names the
//! PREFIX (not the staging dir) with Cargo's name, description and version, pkg-config finds
//! the staged package through PKG_CONFIG_SYSROOT_DIR, a C program using msock's extensions
//! compiles and links against the installed header and library with pkg-config's flags and
//! runs; `make uninstall` removes the files again. Uses the artifacts of this test build (no
//! second cargo build); needs make, cc and pkg-config.

use std::path::{Path, PathBuf};
use std::process::Command;

const PREFIX: &str = "/usr/local";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("preload/ has a parent")
        .to_path_buf()
}

/// The cdylib cargo built for this test run (next to the test binary's `deps/`).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    [deps.join("libmsock.so"), deps.join("../libmsock.so")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libmsock.so not found near {}", deps.display()))
}

/// The `msock` binary of the same profile (built with the workspace), else the release one.
fn msock_binary(lib: &Path) -> PathBuf {
    let beside = lib.with_file_name("msock");
    let release = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
    .join("release/msock");
    [beside, release.clone()]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} not built: run `make` (cargo build --release --workspace) first",
                release.display()
            )
        })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn make(target: &str, destdir: &Path, lib: &Path, bin: &Path) -> String {
    run(Command::new("make")
        .arg("-C")
        .arg(workspace_root())
        .args(["--no-print-directory", target])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("PREFIX={PREFIX}"))
        .arg(format!("MSOCK_BIN={}", bin.display()))
        .arg(format!("MSOCK_LIB={}", lib.display()))
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS"))
}

/// Removes the staging directory however the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const PROGRAM: &str = r#"
#include <stdio.h>
#include <sys/socket.h>
#include <msock.h>

_Static_assert(SOL_MSOCK == 0x4d53, "SOL_MSOCK");
_Static_assert(SO_CONCURRENT_SERVER == 1, "SO_CONCURRENT_SERVER");

int main(void)
{
    int level = SOL_MSOCK, name = SO_CONCURRENT_SERVER;
    if (msock_version() != MSOCK_VERSION)
        return 1;
    printf("level=%d name=%d version=%u fd0=%d\n", level, name, msock_version(),
           msock_is_msock_fd(0));
    return 0;
}
"#;

#[test]
fn install_files_stage_pkg_config_and_uninstall() {
    let lib = library();
    let bin = msock_binary(&lib);
    let dir = TempDir(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("install-test-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("create staging dir");
    let stage = dir.0.join("stage");

    make("install-files", &stage, &lib, &bin);
    let root = stage.join(PREFIX.trim_start_matches('/'));
    let files = [
        ("bin/msock", 0o755),
        ("lib/libmsock.so", 0o755),
        ("include/msock.h", 0o644),
        ("lib/pkgconfig/msock.pc", 0o644),
    ];
    for (file, mode) in files {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(root.join(file))
            .unwrap_or_else(|e| panic!("{file} not installed: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "mode of {file}");
    }
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(read(&root.join("bin/msock")), read(&bin));
    assert_eq!(read(&root.join("lib/libmsock.so")), read(&lib));
    assert_eq!(
        read(&root.join("include/msock.h")),
        read(&workspace_root().join("include/msock.h"))
    );

    let pc = String::from_utf8(read(&root.join("lib/pkgconfig/msock.pc"))).expect("UTF-8 .pc");
    let lines: Vec<&str> = pc.lines().collect();
    for want in [
        format!("prefix={PREFIX}"),
        "Name: msock".to_string(),
        format!("Description: {}", env!("CARGO_PKG_DESCRIPTION")),
        format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Cflags: -I${includedir}".to_string(),
        "Libs: -L${libdir} -lmsock".to_string(),
    ] {
        assert!(
            lines.contains(&want.as_str()),
            "msock.pc lacks `{want}`:\n{pc}"
        );
    }
    assert!(
        !pc.contains('@'),
        "unsubstituted placeholder in msock.pc:\n{pc}"
    );

    // pkg-config on the staged tree: the sysroot prefixes the PREFIX paths.
    let pkg_config = |args: &[&str]| {
        run(Command::new("pkg-config")
            .args(args)
            .env("PKG_CONFIG_PATH", root.join("lib/pkgconfig"))
            .env("PKG_CONFIG_SYSROOT_DIR", &stage))
        .trim()
        .to_string()
    };
    let cflags = pkg_config(&["--cflags", "msock"]);
    let libs = pkg_config(&["--libs", "msock"]);
    assert_eq!(cflags, format!("-I{}", root.join("include").display()));
    assert_eq!(libs, format!("-L{} -lmsock", root.join("lib").display()));
    assert_eq!(
        pkg_config(&["--modversion", "msock"]),
        env!("CARGO_PKG_VERSION")
    );

    // A C program using the extensions, built only with pkg-config's flags.
    let src = dir.0.join("uses_msock.c");
    let exe = dir.0.join("uses_msock");
    std::fs::write(&src, PROGRAM).expect("write C program");
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .args(cflags.split_whitespace())
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(libs.split_whitespace()));
    let out = run(Command::new(&exe)
        .env("LD_LIBRARY_PATH", root.join("lib"))
        .env(
            "MSOCK_CONTROL",
            format!("@msock-install-test-{}-none", std::process::id()),
        )
        .env_remove("LD_PRELOAD"));
    assert_eq!(out.trim(), "level=19795 name=1 version=2 fd0=0");

    make("uninstall", &stage, &lib, &bin);
    for (file, _) in files {
        assert!(!root.join(file).exists(), "{file} left after uninstall");
    }
}
