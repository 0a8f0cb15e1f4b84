//! Packet channel benchmark (`cargo bench --bench channel`, needs root).
//!
//! In a private network namespace (the process unshares its own, so nothing touches the host)
//! with a veth pair:
//! - transmit throughput, TX ring vs batched `sendmmsg`, for 64 B and 1500 B frames (frames/s
//!   handed to the kernel, flushing every 64 frames; the frames use an experimental EtherType
//!   the peer's kernel ignores);
//! - receive wake-up latency, TPACKET_V2 vs TPACKET_V3: one UDP frame ping-ponged between two
//!   channels across the pair, each side sleeping in `poll` on its wake fd; round-trip median
//!   and p99 in µs.
//!
//! The figures decide `packet::DEFAULT_TX_FRAMES` and the ring version per channel kind.

#[path = "support/mod.rs"]
mod support;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use msock::channel::{BpfProgram, Channel, PacketChannel, RingConfig, RingVersion, bpf};
use msock::testnet::VethPair;
use msock::wire::EthernetAddress;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn tx_config(ring: bool) -> RingConfig {
    let base = RingConfig {
        tx_frames: 0,
        ..RingConfig::endpoint(RingVersion::V2)
    };
    if ring { base.with_tx_ring() } else { base }
}

/// Frames per second handed to the kernel by one sender.
fn throughput(ifname: &str, ring: bool, len: usize, frames: usize) -> io::Result<f64> {
    let mut ch = PacketChannel::open(ifname, &tx_config(ring), &BpfProgram::reject_all(), false)?;
    let start = Instant::now();
    for i in 0..frames {
        loop {
            let sent = ch.send_with(len, &mut |f: &mut [u8]| {
                f[..6].copy_from_slice(&MAC_A);
                f[6..12].copy_from_slice(&MAC_B);
                f[12..14].copy_from_slice(&[0x88, 0xb5]);
                f[14..22].copy_from_slice(&(i as u64).to_be_bytes());
            });
            match sent {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
        if i % 64 == 63 {
            match ch.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    while let Err(e) = ch.flush() {
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
        std::thread::yield_now();
    }
    let secs = start.elapsed().as_secs_f64();
    let sent = ch.stats().frames_out;
    if sent != frames as u64 {
        return Err(io::Error::other(format!("sent {sent} of {frames} frames")));
    }
    Ok(frames as f64 / secs)
}

fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_port: u16,
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 18];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    let ip_len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    f[34..36].copy_from_slice(&5000u16.to_be_bytes());
    f[36..38].copy_from_slice(&dst_port.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    f
}

fn wait_readable(ch: &PacketChannel, ms: u16) -> bool {
    let mut fds = [PollFd::new(ch.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(1))
}

/// Round-trip times (µs), sorted, of `iters` ping-pongs between channels on `a` and `b`.
fn ping_pong(a: &str, b: &str, version: RingVersion, iters: usize) -> io::Result<Vec<f64>> {
    let config = RingConfig {
        retire_timeout_ms: 1,
        ..RingConfig::endpoint(version)
    };
    let mut ping = PacketChannel::open(a, &config, &bpf::endpoint_udp(IP_A, 7000), false)?;
    let mut pong = PacketChannel::open(b, &config, &bpf::endpoint_udp(IP_B, 9000), false)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo_stop = stop.clone();
    let echo = std::thread::spawn(move || -> io::Result<()> {
        let reply = udp_frame(MAC_A, MAC_B, IP_B, IP_A, 7000);
        while !echo_stop.load(Ordering::Relaxed) {
            if !wait_readable(&pong, 100) {
                continue;
            }
            let mut n = 0;
            pong.recv_batch(64, &mut |_| n += 1)?;
            for _ in 0..n {
                pong.send(&reply)?;
            }
            pong.flush()?;
        }
        Ok(())
    });
    let request = udp_frame(MAC_B, MAC_A, IP_A, IP_B, 9000);
    let mut rtts = Vec::with_capacity(iters);
    let warmup = (iters / 20).max(5);
    for i in 0..iters + warmup {
        let t0 = Instant::now();
        ping.send(&request)?;
        ping.flush()?;
        let mut got = 0;
        while got == 0 {
            if !wait_readable(&ping, 1000) {
                stop.store(true, Ordering::Relaxed);
                return Err(io::Error::other("ping-pong: no reply within 1 s"));
            }
            got = ping.recv_batch(1, &mut |_| {})?;
        }
        if i >= warmup {
            rtts.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| io::Error::other("echo thread panicked"))??;
    rtts.sort_by(f64::total_cmp);
    Ok(rtts)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        println!("channel bench skipped: needs root (network namespace, AF_PACKET)");
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let veth = VethPair::create("mcb", EthernetAddress(MAC_A), EthernetAddress(MAC_B))?;
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };

    let mut rows: Vec<(String, String)> = Vec::new();
    println!("| channel | figure |\n|---|---|");
    for len in [64usize, 1500] {
        let frames = if len == 64 { 400_000 } else { 200_000 } / scale;
        for ring in [true, false] {
            let runs = (0..3)
                .map(|_| throughput(&veth.b, ring, len, frames))
                .collect::<io::Result<Vec<f64>>>()?;
            let fps = median_of(runs);
            let name = format!("tx {} {len} B", if ring { "TX ring" } else { "sendmmsg" });
            let value = format!(
                "{:.0} kframes/s ({:.2} Gbit/s)",
                fps / 1e3,
                fps * len as f64 * 8.0 / 1e9
            );
            println!("| {name} | {value} |");
            rows.push((name, value));
        }
    }
    for (version, iters) in [
        (RingVersion::V2, 5000 / scale),
        (RingVersion::V3, 300 / scale),
    ] {
        let rtts = ping_pong(&veth.a, &veth.b, version, iters)?;
        let name = format!("rx wake-up {version:?} round trip (n={})", rtts.len());
        let value = format!(
            "median {:.1} µs, p99 {:.1} µs",
            percentile(&rtts, 0.5),
            percentile(&rtts, 0.99)
        );
        println!("| {name} | {value} |");
        rows.push((name, value));
    }
    drop(veth);
    let table = support::Table {
        header: vec!["channel operation".into(), "figure".into()],
        rows: rows.into_iter().map(|(n, v)| vec![n, v]).collect(),
    };
    support::write_section(
        "channel",
        "AF_PACKET packet channel over a veth pair in a private namespace: send throughput with a \
         TPACKET TX ring vs batched sendmmsg (median of 3 runs; the faster is the default), and \
         the receive wake-up round trip of a TPACKET_V2 (per-frame wake-up) vs a TPACKET_V3 \
         (block retire, 1 ms timeout) ring.",
        &table,
        "cargo bench --bench channel",
    )?;
    Ok(())
}
