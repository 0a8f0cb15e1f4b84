//! Shared support for msock's benchmarks (`harness = false` benches include it with
//! `#[path = "support/mod.rs"] mod support;`): timing and summary statistics, and the writer
//! of `BENCHMARKS.md`, where each bench owns one section between `<!-- bench:NAME -->` and
//! `<!-- /bench:NAME -->` that it replaces (or appends) on every run, stamped with the date, the
//! kernel release and the CPU model so figures from different machines are never confused.
//!
//! Writers take an exclusive lock on the file (`File::lock`), so benches run concurrently
//! cannot lose each other's sections; the file is rewritten in place to keep its owner.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Top of a freshly created `BENCHMARKS.md` (the sections follow it).
pub const HEADER: &str = "\
# msock benchmarks

Every section below is generated: each benchmark program under `benches/` rewrites its own
section (between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers) each time it runs,
and leaves the others alone. Do not edit sections by hand; rerun the benchmark instead.

Regenerate everything with

    make bench

or one section with the command printed in it (e.g. `cargo bench --bench checksum`). Each
section records when and where it was measured (date, `uname -r`, CPU model); compare figures
only within one section, or across sections measured on the same machine. Benches that need
network namespaces (`udp_rtt`) need root and a built tree (`make build`); they skip themselves
otherwise and leave their previous section in place.
";

/// A markdown table: a header row and data rows (cells are plain markdown text).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Renders the table as GitHub-flavoured markdown; `|` in cells is escaped, short rows are
    /// padded with empty cells.
    pub fn to_markdown(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for i in 0..width {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                s.push(' ');
                s.push_str(&cell.replace('|', "\\|"));
                s.push_str(" |");
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        out.push('|');
        for _ in 0..width {
            out.push_str(" --- |");
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Where and when a measurement was taken.
#[derive(Debug, Clone)]
pub struct Environment {
    /// UTC date and time, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// Kernel release, as `uname -r` prints it.
    pub kernel: String,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu: String,
    /// CPUs available to this process.
    pub cpus: usize,
}

/// Collects the date, `uname -r`, the CPU model and the CPU count.
pub fn environment() -> Environment {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Environment {
        date: utc_date(secs),
        kernel: kernel_release(),
        cpu: cpu_model(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}

fn kernel_release() -> String {
    let from_uname = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    from_uname
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/osrelease").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // x86 says "model name"; some ARM kernels say "Hardware" or "CPU part" only.
    for key in ["model name", "Hardware", "cpu model", "Processor"] {
        for line in info.lines() {
            if let Some((k, v)) = line.split_once(':')
                && k.trim() == key
                && !v.trim().is_empty()
            {
                return v.split_whitespace().collect::<Vec<_>>().join(" ");
            }
        }
    }
    format!("unknown ({})", std::env::consts::ARCH)
}

/// `YYYY-MM-DD HH:MM UTC` for a Unix time (proleptic Gregorian civil date from days).
fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to (y, m, d), after H. Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Path of `BENCHMARKS.md` at the repository root (`MSOCK_BENCHMARKS_MD` overrides, for trial
/// runs that must not touch the checked-in file).
pub fn benchmarks_path() -> PathBuf {
    match std::env::var_os("MSOCK_BENCHMARKS_MD") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"),
    }
}

/// Replaces (or appends) section `name` of `BENCHMARKS.md` with a heading, `description`, the
/// measurement environment, `table` and the command that reproduces it. Returns the file path.
pub fn write_section(
    name: &str,
    description: &str,
    table: &Table,
    command: &str,
) -> io::Result<PathBuf> {
    let body = format!("{}\n\n{}", description.trim(), table.to_markdown());
    write_section_markdown(name, &body, command)
}

/// Like [`write_section`], with a free markdown body (several tables, notes).
pub fn write_section_markdown(name: &str, body: &str, command: &str) -> io::Result<PathBuf> {
    let env = environment();
    let section = format!(
        "{open}\n## {name}\n\nReproduce: `{command}`  \nMeasured: {date}, Linux `{kernel}`, {cpu} ({cpus} CPUs).\n\n{body}\n{close}\n",
        open = open_marker(name),
        close = close_marker(name),
        date = env.date,
        kernel = env.kernel,
        cpu = env.cpu,
        cpus = env.cpus,
        body = body.trim_end().to_string() + "\n",
    );
    let path = benchmarks_path();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    file.lock()?;
    let mut old = String::new();
    file.read_to_string(&mut old)?;
    let new = splice_section(&old, name, &section)?;
    rewrite(&mut file, &new)?;
    file.unlock()?;
    Ok(path)
}

fn open_marker(name: &str) -> String {
    format!("<!-- bench:{name} -->")
}

fn close_marker(name: &str) -> String {
    format!("<!-- /bench:{name} -->")
}

/// `old` with section `name` replaced by `section` (which includes its markers), or with
/// `section` appended if `old` has no such section. An empty `old` gets [`HEADER`] first.
fn splice_section(old: &str, name: &str, section: &str) -> io::Result<String> {
    let (open, close) = (open_marker(name), close_marker(name));
    let Some(start) = old.find(&open) else {
        let mut out = if old.trim().is_empty() {
            HEADER.to_string()
        } else {
            old.to_string()
        };
        while !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(section);
        return Ok(out);
    };
    let Some(end_rel) = old[start..].find(&close) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("BENCHMARKS.md: `{open}` without `{close}`; fix the file by hand"),
        ));
    };
    let mut end = start + end_rel + close.len();
    if old[end..].starts_with('\n') {
        end += 1;
    }
    Ok(format!("{}{}{}", &old[..start], section, &old[end..]))
}

fn rewrite(file: &mut File, contents: &str) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.set_len(0)?;
    file.write_all(contents.as_bytes())?;
    file.sync_data()
}

/// Median of `samples` (NaN if empty).
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

/// 99th percentile of `samples` (NaN if empty).
pub fn p99(samples: &[f64]) -> f64 {
    percentile(samples, 99.0)
}

/// The `p`-th percentile (0..=100) of `samples`, linearly interpolated between closest ranks
/// (NaN if empty).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// Arithmetic mean of `samples` (NaN if empty).
pub fn mean(samples: &[f64]) -> f64 {
    samples.iter().sum::<f64>() / samples.len() as f64
}

/// Runs `f` `iters` times and returns the mean nanoseconds per call; results go through
/// `black_box` so the work cannot be optimized away.
pub fn ns_per_call<R>(iters: u64, mut f: impl FnMut() -> R) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

/// Iterations of `f` that take about `target` (at least 1), found by doubling; doubles as the
/// warm-up.
pub fn calibrate<R>(target: Duration, mut f: impl FnMut() -> R) -> u64 {
    let mut iters = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        let t = start.elapsed();
        if t >= target / 4 || iters >= 1 << 40 {
            let per = t.as_secs_f64() / iters as f64;
            return ((target.as_secs_f64() / per.max(1e-12)) as u64).max(1);
        }
        iters *= 2;
    }
}

/// `samples` measurements of nanoseconds per call of `f`, each over about `per_sample` of
/// running time (after a calibration that also warms up).
pub fn sample_ns<R>(samples: usize, per_sample: Duration, mut f: impl FnMut() -> R) -> Vec<f64> {
    let iters = calibrate(per_sample, &mut f);
    (0..samples).map(|_| ns_per_call(iters, &mut f)).collect()
}

/// `ip netns exec NS`, to add the program and its arguments to.
pub fn netns(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    c
}

/// Waits (up to 5 s) until the netserver in namespace `ns` answers `msock stat`.
pub fn wait_for_netserver(ns: &str, msock: &Path) -> Result<(), String> {
    for _ in 0..100 {
        let ok = netns(ns)
            .arg(msock)
            .arg("stat")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if ok.is_ok_and(|s| s.success()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("netserver did not come up".into())
}
