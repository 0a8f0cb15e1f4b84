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
pub(crate) fn exchange(x: &mut TcpConnection, y: &mut TcpConnection, now: &mut Instant) {
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

pub(crate) fn pair(config: TcpConfig) -> (TcpConnection, TcpConnection, Instant) {
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

/// One data segment from `from`, delivered to `to`.
fn deliver(from: &mut TcpConnection, to: &mut TcpConnection, now: Instant) -> Vec<Captured> {
    let segs = drain(from, now);
    for s in &segs {
        to.process(now, &s.repr());
    }
    segs
}

#[test]
fn urgent_byte_is_read_out_of_band_and_reads_stop_at_the_mark() {
    let (mut c, mut s, mut now) = pair(TcpConfig::default());
    c.send(b"abc").unwrap();
    c.send_urgent(b"!").unwrap();
    c.send(b"def").unwrap();
    c.set_nodelay(true);
    let segs = drain(&mut c, now);
    assert!(
        segs[0].repr.urgent_pointer.is_some(),
        "URG set on the segment before the pointer"
    );
    for seg in &segs {
        s.process(now, &seg.repr());
    }
    exchange(&mut c, &mut s, &mut now);
    assert!(s.readiness().priority);
    let mut buf = [0u8; 16];
    assert_eq!(s.recv(&mut buf), Ok(3));
    assert_eq!(&buf[..3], b"abc", "read stops at the urgent mark");
    assert_eq!(s.recv_urgent(false), Ok(b'!'));
    assert_eq!(s.recv(&mut buf), Ok(3));
    assert_eq!(&buf[..3], b"def", "the urgent byte is not in the stream");
    assert_eq!(s.recv_urgent(false), Err(RecvError::InvalidOob));
}

#[test]
fn keepalive_probes_after_idle_and_times_out_unanswered() {
    let config = TcpConfig {
        keepalive: true,
        keepalive_idle: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(2),
        keepalive_count: 3,
        ..TcpConfig::default()
    };
    let (mut c, _s, now) = pair(config);
    assert!(drain(&mut c, now + Duration::from_secs(9)).is_empty());
    let mut t = now + Duration::from_secs(10);
    let probe = drain(&mut c, t);
    assert_eq!(probe.len(), 1);
    assert!(probe[0].payload.is_empty());
    let una_minus_1 = probe[0].repr.seq_number;
    for _ in 0..3 {
        t += Duration::from_secs(2);
        let p = drain(&mut c, t);
        if c.state() == State::Closed {
            assert!(
                p.iter().any(|s| s.repr.control.rst),
                "Linux sends RST when keepalive gives up"
            );
            break;
        }
        assert_eq!(
            p[0].repr.seq_number, una_minus_1,
            "probe carries SND.UNA − 1"
        );
    }
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.take_error(), Some(ConnError::TimedOut));
}

#[test]
fn icmp_frag_needed_lowers_the_mss_and_resends_in_flight_data() {
    let (mut c, _s, now) = pair(TcpConfig::default());
    c.send(&[7u8; 3000]).unwrap();
    let first = drain(&mut c, now);
    assert_eq!(first[0].payload.len(), 1448);
    c.on_icmp_frag_needed(now, 1280, first[0].repr.seq_number);
    let again = drain(&mut c, now);
    assert_eq!(
        again[0].repr.seq_number, first[0].repr.seq_number,
        "in-flight data resent"
    );
    assert!(
        again.iter().all(|s| s.payload.len() <= 1240 - 12),
        "segments fit MTU 1280"
    );
}

#[test]
fn max_pacing_rate_spaces_departures() {
    let config = TcpConfig {
        max_pacing_rate: Some(1_000_000),
        nodelay: true,
        ..TcpConfig::default()
    };
    let (mut c, _s, now) = pair(config);
    c.send(&[0u8; 4000]).unwrap();
    let mut departures = Vec::new();
    let mut t = now;
    for _ in 0..50 {
        let mut got = Vec::new();
        c.dispatch(t, &mut |seg| {
            if seg.payload_len() > 0 {
                got.push(seg.departure);
            }
            Ok(())
        });
        departures.extend(got);
        match c.poll_at() {
            Some(at) if at > t => t = at,
            _ => break,
        }
        if departures.len() >= 3 {
            break;
        }
    }
    assert!(departures.len() >= 3, "{departures:?}");
    let gap = departures[1] - departures[0];
    // (1448 + 12 + 40) bytes at 1 MB/s ≈ 1.5 ms.
    assert!(
        gap >= Duration::from_micros(1400) && gap <= Duration::from_micros(1600),
        "gap {gap}"
    );
}

#[test]
fn paws_drops_an_old_timestamp_and_acks() {
    let (mut c, mut s, now) = pair(TcpConfig::default());
    c.send(b"x").unwrap();
    let segs = drain(&mut c, now);
    let mut old = segs[0].repr();
    let (tsval, tsecr) = old.options.timestamps().unwrap();
    let mut options = crate::wire::tcp::TcpOptions::default();
    options
        .push_aligned(crate::wire::tcp::TcpOption::Timestamps {
            tsval: tsval.wrapping_sub(1000),
            tsecr,
        })
        .unwrap();
    old.options = options;
    assert_eq!(s.process(now, &segs[0].repr()), Verdict::Accepted);
    assert_eq!(
        s.process(now, &old),
        Verdict::Dropped(TcpDropReason::PawsRejected)
    );
    assert_eq!(s.stats().dropped(TcpDropReason::PawsRejected), 1);
}

#[test]
fn delayed_ack_after_quickack_phase_waits_for_the_timer_or_a_second_segment() {
    let (mut c, mut s, mut now) = pair(TcpConfig {
        nodelay: true,
        ..TcpConfig::default()
    });
    let mut buf = vec![0u8; 65536];
    // Use up the quick-ACK budget.
    for _ in 0..20 {
        c.send(&[0u8; 1448]).unwrap();
        exchange(&mut c, &mut s, &mut now);
        let _ = s.recv(&mut buf);
    }
    c.send(&[0u8; 1448]).unwrap();
    deliver(&mut c, &mut s, now);
    assert!(
        drain(&mut s, now).is_empty(),
        "one full segment: the ACK is delayed"
    );
    let at = s.poll_at().expect("delayed-ACK timer");
    assert!(at - now >= Duration::from_millis(40) && at - now <= Duration::from_millis(200));
    c.send(&[0u8; 1448]).unwrap();
    deliver(&mut c, &mut s, now);
    assert_eq!(
        drain(&mut s, now).len(),
        1,
        "a second full segment is ACKed at once"
    );
}

#[test]
fn nagle_holds_a_small_second_write_until_acked_and_nodelay_does_not() {
    let (mut c, mut s, now) = pair(TcpConfig::default());
    c.send(b"a").unwrap();
    assert_eq!(
        deliver(&mut c, &mut s, now).len(),
        1,
        "first small write goes at once"
    );
    c.send(b"b").unwrap();
    assert!(
        drain(&mut c.clone(), now).is_empty(),
        "Nagle holds the second while the first is unacked"
    );
    let mut nodelay = c.clone();
    nodelay.set_nodelay(true);
    assert_eq!(
        drain(&mut nodelay, now)[0].payload,
        b"b",
        "TCP_NODELAY sends it"
    );
    // The ACK for "a" (quick-ACK phase: at once) releases "b".
    let later = now + Duration::from_millis(1);
    let acks = deliver(&mut s, &mut c, later);
    assert!(!acks.is_empty());
    let out = drain(&mut c, later);
    assert_eq!(out[0].payload, b"b", "the ACK releases the held byte");
}

#[test]
fn cork_holds_partial_segments_until_full_or_200_ms() {
    let (mut c, mut s, now) = pair(TcpConfig::default());
    c.set_cork(true, now);
    c.send(&[1u8; 100]).unwrap();
    assert!(drain(&mut c, now).is_empty(), "corked partial segment held");
    c.send(&[2u8; 3000]).unwrap();
    let full = deliver(&mut c, &mut s, now);
    assert_eq!(full.len(), 2);
    assert!(
        full.iter().all(|s| s.payload.len() == 1448),
        "only full segments leave while corked"
    );
    deliver(&mut s, &mut c, now);
    assert!(
        drain(&mut c, now + Duration::from_millis(150)).is_empty(),
        "still corked"
    );
    let rest = drain(&mut c, now + Duration::from_millis(201));
    assert_eq!(rest.len(), 1);
    assert_eq!(
        rest[0].payload.len(),
        3100 - 2896,
        "the 200 ms cork limit sends the rest"
    );
}

#[test]
fn small_window_persist_forces_the_rest_then_probes_with_backoff() {
    let config = TcpConfig {
        recv_buffer: 4096,
        ..TcpConfig::default()
    };
    let (mut c, mut s, mut now) = pair(config);
    c.send(&[1u8; 20_000]).unwrap();
    exchange(&mut c, &mut s, &mut now);
    // 2896 B arrived; 1200 B of window remain, less than half the largest window: the sender
    // avoids silly windows and arms the persist timer instead.
    assert_eq!(s.recv_queue_len(), 2896);
    let t1 = c.poll_at().expect("persist armed");
    let forced = deliver(&mut c, &mut s, t1);
    // (The window reads 1280: 1200 rounded up to the 128-byte scale unit, never shrunk.)
    assert!(
        forced
            .iter()
            .any(|f| (1200..1448).contains(&f.payload.len())),
        "RFC 1122 override sends the partial segment"
    );
    assert_eq!(s.recv_queue_len(), 4096);
    deliver(&mut s, &mut c, t1);
    // Now the window is zero: probes without data, at growing intervals.
    let t2 = c.poll_at().expect("persist re-armed");
    let probe = deliver(&mut c, &mut s, t2);
    assert!(
        probe.iter().all(|p| p.payload.is_empty()),
        "zero-window probe carries no data"
    );
    deliver(&mut s, &mut c, t2);
    let t3 = c.poll_at().expect("persist re-armed");
    assert!(t3 - t2 > t2 - t1, "probe interval backs off");
    // Resumption after the window reopens is covered by the simulator's tiny-buffer
    // transfers (tests/transfers.rs).
}

#[test]
fn settings_from_an_untrusted_image_are_brought_within_limits() {
    let now = Instant::from_secs(1);
    let hostile = TcpConfig {
        rto_initial: Duration::ZERO,
        rto_min: Duration::ZERO,
        rto_max: Duration::ZERO,
        retries2: u32::MAX,
        syn_retries: u32::MAX,
        time_wait: Duration::from_secs(10 * 365 * 86_400),
        fin_timeout: Duration::from_secs(86_400),
        keepalive_count: 0,
        recv_buffer: 1 << 30,
        send_buffer: 1 << 30,
        ..TcpConfig::default()
    };
    let mut c = TcpConnection::connect(
        hostile,
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80),
        InitialSequence {
            iss: TcpSeqNumber(1),
            ts_offset: 0,
        },
        now,
    );
    let limits = ConfigLimits::default();
    c.apply_limits(&limits, now);
    let k = c.config();
    assert_eq!(k.rto_min, limits.rto_min);
    assert!(k.rto_max >= k.rto_min && k.rto_initial >= k.rto_min);
    assert_eq!(k.retries2, 15);
    assert_eq!(k.syn_retries, 15);
    assert_eq!(k.time_wait, limits.time_wait);
    assert_eq!(k.fin_timeout, limits.fin_timeout);
    assert_eq!(k.keepalive_count, 1);
    assert_eq!(k.recv_buffer, limits.max_buffer);
    // The SYN's retransmission is not due at once: the RTO is at least the limit's floor.
    let mut sent = 0;
    c.dispatch(now, &mut |_| {
        sent += 1;
        Ok(())
    });
    assert_eq!(sent, 1);
    assert!(c.poll_at().is_some_and(|t| t >= now + limits.rto_min));
    // Settings inside the limits are left alone.
    let mut d = TcpConnection::connect(
        TcpConfig::default(),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40001),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80),
        InitialSequence {
            iss: TcpSeqNumber(1),
            ts_offset: 0,
        },
        now,
    );
    d.apply_limits(&limits, now);
    assert_eq!(d.config(), &TcpConfig::default());
}

#[test]
fn a_pure_ack_at_the_right_edge_of_the_window_is_acceptable() {
    let (_client, server, _now) = pair(TcpConfig::default());
    let wnd = server.announced_window();
    assert!(wnd > 0);
    let edge = server.rcv_nxt + wnd;
    // A peer that filled the window with a segment this side dropped sends its ACKs from the
    // right edge: they must be processed (their ACK and window fields), as Linux does.
    assert!(server.acceptable(edge, 0));
    assert!(server.acceptable(server.rcv_nxt, 0));
    assert!(!server.acceptable(edge + 1, 0));
    assert!(!server.acceptable(server.rcv_nxt - 1, 0));
    // Data starting at the edge is still beyond the window.
    assert!(!server.acceptable(edge, 1));
}
