//! Basic engine tests: two engines joined by a lossless queue.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::wire::tcp::TcpControl;

pub(crate) struct Captured {
    pub repr: TcpRepr<'static>,
    pub payload: Vec<u8>,
}

impl Captured {
    pub fn repr(&self) -> TcpRepr<'_> {
        TcpRepr {
            payload: &self.payload,
            ..self.repr
        }
    }
}

pub(crate) fn drain(conn: &mut TcpConnection, now: Instant) -> Vec<Captured> {
    let mut out = Vec::new();
    conn.dispatch(now, &mut |seg| {
        out.push(Captured {
            repr: TcpRepr {
                payload: &[],
                ..seg.repr
            },
            payload: [seg.payload[0], seg.payload[1]].concat(),
        });
        Ok(())
    });
    out
}

fn a() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000)
}

fn b() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001)
}

/// Moves segments both ways until quiet, advancing time 100 µs per round.
fn exchange(x: &mut TcpConnection, y: &mut TcpConnection, now: &mut Instant) {
    for _ in 0..10_000 {
        *now += Duration::from_micros(100);
        let xs = drain(x, *now);
        let ys = drain(y, *now);
        if xs.is_empty() && ys.is_empty() {
            return;
        }
        for s in &xs {
            y.process(*now, &s.repr());
        }
        for s in &ys {
            x.process(*now, &s.repr());
        }
    }
    panic!("no quiescence");
}

fn pair(config: TcpConfig) -> (TcpConnection, TcpConnection, Instant) {
    let mut now = Instant::from_secs(1);
    let mut client = TcpConnection::connect(
        config.clone(),
        a(),
        b(),
        InitialSequence {
            iss: TcpSeqNumber(u32::MAX - 10),
            ts_offset: 5,
        },
        now,
    );
    let syn = drain(&mut client, now);
    assert_eq!(syn.len(), 1);
    assert!(syn[0].repr.control.syn && syn[0].repr.ack_number.is_none());
    let mut server = TcpConnection::accept(
        config,
        b(),
        a(),
        &syn[0].repr(),
        InitialSequence {
            iss: TcpSeqNumber(77),
            ts_offset: 9,
        },
        now,
    )
    .unwrap();
    exchange(&mut client, &mut server, &mut now);
    assert_eq!(client.state(), State::Established);
    assert_eq!(server.state(), State::Established);
    (client, server, now)
}

#[test]
fn handshake_negotiates_options() {
    let (client, server, now) = pair(TcpConfig::default());
    let info = client.info(now);
    assert_eq!(
        info.options,
        TCPI_OPT_SACK | TCPI_OPT_TIMESTAMPS | TCPI_OPT_WSCALE
    );
    assert_eq!(info.snd_mss, 1448);
    assert_eq!(server.info(now).rcv_wscale, 7);
    let plain = TcpConfig {
        window_scaling: false,
        sack: false,
        timestamps: false,
        ..TcpConfig::default()
    };
    let (c, _s, now) = pair(plain);
    assert_eq!(c.info(now).options, 0);
    assert_eq!(c.info(now).snd_mss, 1460);
}

#[test]
fn data_both_ways_and_graceful_close() {
    let (mut c, mut s, mut now) = pair(TcpConfig::default());
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < data.len() {
        if sent < data.len() {
            sent += c.send(&data[sent..]).unwrap_or(0);
        }
        exchange(&mut c, &mut s, &mut now);
        while let Ok(n) = s.recv(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(got, data);
    s.send(b"reply").unwrap();
    exchange(&mut c, &mut s, &mut now);
    assert_eq!(c.recv(&mut buf).unwrap(), 5);
    c.close(now);
    exchange(&mut c, &mut s, &mut now);
    assert_eq!(c.state(), State::FinWait2);
    assert_eq!(s.state(), State::CloseWait);
    assert_eq!(s.recv(&mut buf), Ok(0));
    s.close(now);
    exchange(&mut c, &mut s, &mut now);
    assert_eq!(c.state(), State::TimeWait);
    assert_eq!(s.state(), State::Closed);
    now += Duration::from_secs(61);
    drain(&mut c, now);
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn export_import_mid_transfer_continues() {
    let (mut c, s, mut now) = pair(TcpConfig::default());
    let data = vec![0xabu8; 100_000];
    c.send(&data).unwrap();
    // Let part of it go out, then migrate both ends with segments in flight.
    let in_flight = drain(&mut c, now);
    assert!(!in_flight.is_empty());
    let image_c = c.export(now);
    let image_s = s.export(now);
    let later = now + Duration::from_millis(3);
    let mut c2 = TcpConnection::import(&image_c, later).unwrap();
    let mut s2 = TcpConnection::import(&image_s, later).unwrap();
    // Instants are stored relative to the exporter's clock: re-exporting after the move
    // gives the same bytes.
    assert_eq!(c2.export(later), image_c);
    now = later;
    for seg in &in_flight {
        s2.process(now, &seg.repr());
    }
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    for _ in 0..100 {
        exchange(&mut c2, &mut s2, &mut now);
        while let Ok(n) = s2.recv(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == data.len() {
            break;
        }
    }
    assert_eq!(got, data.len());
}

#[test]
fn rst_to_syn_refuses_and_reset_for_answers() {
    let now = Instant::from_secs(1);
    let mut c = TcpConnection::connect(
        TcpConfig::default(),
        a(),
        b(),
        InitialSequence {
            iss: TcpSeqNumber(1000),
            ts_offset: 0,
        },
        now,
    );
    let syn = drain(&mut c, now);
    let rst = reset_for(&syn[0].repr()).unwrap();
    assert_eq!(rst.ack_number, Some(TcpSeqNumber(1001)));
    assert_eq!(rst.control, TcpControl::RST);
    c.process(now, &rst);
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.take_error(), Some(ConnError::Refused));
    assert!(reset_for(&rst).is_none());
}

/// A lossy, reordering link: each segment is dropped with probability `loss`/1000 and
/// delayed 1–`jitter` ms (so segments overtake each other).
fn lossy_transfer(seed: u64, loss: u64, jitter: u64, config: TcpConfig, bytes: usize) {
    let (mut c, mut s, mut now) = pair(config);
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let back: Vec<u8> = (0..bytes).map(|i| (i % 241) as u8).collect();
    let (mut sent_c, mut sent_s) = (0, 0);
    let (mut got_s, mut got_c) = (Vec::new(), Vec::new());
    // In flight: (arrival, to_server, segment)
    let mut wire: Vec<(Instant, bool, Captured)> = Vec::new();
    let mut buf = vec![0u8; 32768];
    let deadline = now + Duration::from_secs(600);
    while (got_s.len() < bytes || got_c.len() < bytes) && now < deadline {
        if sent_c < bytes {
            sent_c += c.send(&data[sent_c..]).unwrap_or(0);
        }
        if sent_s < bytes {
            sent_s += s.send(&back[sent_s..]).unwrap_or(0);
        }
        for (to_server, conn) in [(true, &mut c), (false, &mut s)] {
            for seg in drain(conn, now) {
                if next() % 1000 < loss {
                    continue;
                }
                let delay = Duration::from_micros(1000 + next() % (jitter * 1000).max(1));
                wire.push((now + delay, to_server, seg));
            }
        }
        while let Ok(n) = s.recv(&mut buf) {
            if n == 0 {
                break;
            }
            got_s.extend_from_slice(&buf[..n]);
        }
        while let Ok(n) = c.recv(&mut buf) {
            if n == 0 {
                break;
            }
            got_c.extend_from_slice(&buf[..n]);
        }
        // Advance to the next event.
        let next_arrival = wire.iter().map(|w| w.0).min();
        let next_timer = [c.poll_at(), s.poll_at()].into_iter().flatten().min();
        let step = [next_arrival, next_timer]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_millis(1));
        now = step.max(now);
        let (due, rest): (Vec<_>, Vec<_>) = wire.into_iter().partition(|w| w.0 <= now);
        wire = rest;
        for (_, to_server, seg) in due {
            if to_server {
                s.process(now, &seg.repr());
            } else {
                c.process(now, &seg.repr());
            }
        }
    }
    assert_eq!(
        got_s.len(),
        bytes,
        "seed {seed}: client→server incomplete at {now}"
    );
    assert_eq!(got_c.len(), bytes, "seed {seed}: server→client incomplete");
    assert!(
        got_s == data && got_c == back,
        "seed {seed}: corrupted stream"
    );
}

#[test]
fn lossy_reordering_link_delivers_both_ways() {
    for seed in 1..6 {
        lossy_transfer(seed, 20, 3, TcpConfig::default(), 300_000);
    }
}

#[test]
fn lossy_link_without_sack_or_timestamps() {
    let plain = TcpConfig {
        sack: false,
        timestamps: false,
        ..TcpConfig::default()
    };
    for seed in 1..4 {
        lossy_transfer(seed, 20, 3, plain.clone(), 200_000);
    }
    let reno = TcpConfig {
        congestion: CongestionAlgorithm::Reno,
        ..TcpConfig::default()
    };
    lossy_transfer(9, 50, 2, reno, 200_000);
}
