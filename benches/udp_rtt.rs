//! UDP 64-byte request/response latency: msock vs the kernel stack, same run, same veth link.
//!
//! Topology: `msock testnet` namespaces; a kernel UDP echo server in `N-b` (198.18.0.1); the same
//! client program in `N-a`, once under libmsock (198.18.0.2, netserver, endpoint channel with a
//! TPACKET_V2 ring, then again with TPACKET_V3) and once on the kernel stack (198.18.0.3). The
//! binary re-executes itself for the server and client roles. Needs root; writes the `udp_rtt`
//! section of BENCHMARKS.md.

#[path = "support/mod.rs"]
mod support;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 9009;
const PAYLOAD: usize = 64;
const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--echo-server") => return echo_server(&args[2]),
        Some("--client") => return client(&args[2], &args[3]),
        _ => {}
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("udp_rtt: needs root (network namespaces); skipped");
        return;
    }
    if let Err(e) = run() {
        eprintln!("udp_rtt: {e}");
        std::process::exit(1);
    }
}

/// Kernel UDP echo: every datagram goes back to its sender.
fn echo_server(bind: &str) {
    let sock = UdpSocket::bind(bind).expect("bind echo server");
    let mut buf = [0u8; 65536];
    loop {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// Prints one RTT sample per line (nanoseconds) after warm-up.
fn client(bind: &str, server: &str) {
    let sock = UdpSocket::bind(bind).expect("bind client");
    sock.connect(server).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let payload = [0x5au8; PAYLOAD];
    let mut buf = [0u8; 2048];
    let mut samples = Vec::with_capacity(SAMPLES);
    let mut lost = 0usize;
    for i in 0..WARMUP + SAMPLES {
        let start = Instant::now();
        sock.send(&payload).expect("send");
        match sock.recv(&mut buf) {
            Ok(n) if n == PAYLOAD => {
                if i >= WARMUP {
                    samples.push(start.elapsed().as_nanos() as u64);
                }
            }
            _ => lost += 1,
        }
    }
    let mut out = String::new();
    for s in samples {
        out.push_str(&s.to_string());
        out.push('\n');
    }
    out.push_str(&format!("lost {lost}\n"));
    print!("{out}");
}

struct Guard {
    name: String,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = msock::testnet::down(&self.name);
    }
}

fn artifacts() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("release");
    (dir.join("msock"), dir.join("libmsock.so"))
}

fn start_netserver(guard: &mut Guard, msock: &PathBuf, ring: &str) -> Result<(), String> {
    let a = format!("{}-a", guard.name);
    let child = support::netns(&a)
        .arg(msock)
        .args([
            "netserver",
            "--iface",
            &format!("{}-a0", guard.name),
            "--addr",
            "198.18.0.2/24",
        ])
        .env("MSOCK_RX_RING", ring)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("netserver: {e}"))?;
    guard.children.push(child);
    support::wait_for_netserver(&a, msock)
}

fn stop_netserver(guard: &mut Guard) {
    if let Some(mut c) = guard.children.pop() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Runs the client role in `N-a`, returns sorted samples (ns) and the loss count.
fn measure(
    guard: &Guard,
    bind: &str,
    preload: Option<&PathBuf>,
) -> Result<(Vec<f64>, usize), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = support::netns(&format!("{}-a", guard.name));
    cmd.arg(&me)
        .args(["--client", bind, &format!("198.18.0.1:{PORT}")]);
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let out = cmd.output().map_err(|e| format!("client: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut samples = Vec::new();
    let mut lost = 0;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("lost ") {
            lost = n.parse().unwrap_or(0);
        } else if let Ok(ns) = line.parse::<f64>() {
            samples.push(ns);
        }
    }
    if samples.is_empty() {
        return Err("client produced no samples".into());
    }
    Ok((samples, lost))
}

fn run() -> Result<(), String> {
    let (msock, lib) = artifacts();
    if !msock.is_file() || !lib.is_file() {
        return Err(format!(
            "build first (make build): {} / {}",
            msock.display(),
            lib.display()
        ));
    }
    let name = format!("rtt{}", std::process::id() % 100000);
    msock::testnet::up(&name).map_err(|e| format!("testnet: {e}"))?;
    let mut guard = Guard {
        name: name.clone(),
        children: Vec::new(),
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let server = support::netns(&format!("{name}-b"))
        .arg(&me)
        .args(["--echo-server", &format!("198.18.0.1:{PORT}")])
        .spawn()
        .map_err(|e| format!("echo server: {e}"))?;
    guard.children.push(server);
    std::thread::sleep(Duration::from_millis(200));

    let mut rows = Vec::new();
    let kernel = measure(&guard, "198.18.0.3:0", None)?;
    let kernel_median = support::median(&kernel.0);
    let kernel_p99 = support::percentile(&kernel.0, 99.0);
    let mut results = Vec::new();
    for ring in ["v2", "v3"] {
        start_netserver(&mut guard, &msock, ring)?;
        let r = measure(&guard, "0.0.0.0:0", Some(&lib));
        stop_netserver(&mut guard);
        results.push((ring, r?));
    }
    rows.push(vec![
        "kernel stack (198.18.0.3)".to_string(),
        format!("{:.1}", kernel_median / 1e3),
        format!("{:.1}", kernel_p99 / 1e3),
        "1.00".to_string(),
        kernel.1.to_string(),
    ]);
    for (ring, (samples, lost)) in &results {
        let median = support::median(samples);
        let p99 = support::percentile(samples, 99.0);
        println!(
            "msock ({ring} ring): median {:.1} µs p99 {:.1} µs",
            median / 1e3,
            p99 / 1e3
        );
        rows.push(vec![
            format!("msock, TPACKET_{} endpoint ring", ring.to_uppercase()),
            format!("{:.1}", median / 1e3),
            format!("{:.1}", p99 / 1e3),
            format!("{:.2}", median / kernel_median),
            lost.to_string(),
        ]);
    }
    println!(
        "kernel: median {:.1} µs p99 {:.1} µs",
        kernel_median / 1e3,
        kernel_p99 / 1e3
    );
    let table = support::Table {
        header: vec![
            "stack".into(),
            "median RTT (µs)".into(),
            "p99 RTT (µs)".into(),
            "median ratio vs kernel".into(),
            "lost".into(),
        ],
        rows,
    };
    support::write_section(
        "udp_rtt",
        &format!(
            "UDP {PAYLOAD} B request/response round trip over a veth link to a kernel echo server, \
             {SAMPLES} samples after {WARMUP} warm-up, same run for every row."
        ),
        &table,
        "make build && cargo bench --bench udp_rtt",
    )
    .map_err(|e| format!("BENCHMARKS.md: {e}"))?;
    drop(guard);
    Ok(())
}
