//! Regression tests for engine defects found by kernel interop testing (issue 3): slow start
//! under batched ACKs, reordering resilience, PAWS and disordered ACKs, the out-of-order range
//! bound, ICMP validation (RFC 5927) and microsecond RTT samples.

use super::rfc::{
    MSS, PEER_TS0, PeerOpts, is_ack_of, open, plain, queue, seg, snd, spans, with_sack, with_ts,
};
use crate::stack::Duration;
use crate::stack::tcp::connection::{ConnError, State, TcpConfig, TcpDropReason, Verdict};
use crate::stack::tcp::sim::{Limits, LinkConfig, SimConfig, SimReport, Simulation};
use crate::wire::tcp::TcpRepr;

const LIMITS: Limits = Limits {
    time: Duration::from_secs(400),
    events: 2_000_000,
};

/// `bytes` from A to B only over `link` (both ways); byte-exact and terminated.
fn one_way(seed: u64, link: LinkConfig, bytes: u64, f: impl Fn(&mut SimConfig)) -> SimReport {
    let mut cfg = SimConfig::new(seed).with_link(link);
    cfg.apps[0].bytes = bytes;
    cfg.apps[1].bytes = 0;
    f(&mut cfg);
    let r = Simulation::new(cfg)
        .run(LIMITS)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.bytes_read, [0, bytes], "{r}");
    assert_eq!(r.eof, [true, true], "{r}");
    assert_eq!(
        r.final_states,
        [Some(State::Closed), Some(State::Closed)],
        "{r}"
    );
    r
}

/// Payload per segment with timestamps on.
const TS_MSS: usize = MSS - 12;

fn tsval_of(s: &super::fixtures::Sent) -> u32 {
    s.repr.options.timestamps().expect("timestamps").0
}

fn big_buffers(c: &mut SimConfig) {
    for t in &mut c.tcp {
        t.recv_buffer = 4 << 20;
        t.send_buffer = 4 << 20;
    }
}

// ----- 1. slow start under batched ACKs -------------------------------------------------

/// The peer ACKs every segment, and the engine processes the ACKs in batches of 16 before it
/// transmits (as a driver that drains a ring does): slow start still doubles cwnd per RTT.
#[test]
fn slow_start_doubles_per_rtt_with_batched_acks() {
    let config = TcpConfig {
        send_buffer: 4 << 20,
        ..TcpConfig::default()
    };
    let peer = PeerOpts {
        wscale: Some(7),
        ..PeerOpts::SACK
    };
    let mut fx = open(config, peer);
    queue(&mut fx, 0, 1_000_000);
    let mut in_round = spans(&fx.out()).len();
    assert_eq!(in_round, 10, "IW");
    let mut acked = 0;
    for round in 0..4 {
        fx.advance(Duration::from_millis(10));
        let cwnd_before = fx.conn.info(fx.now).snd_cwnd as usize;
        let mut next_round = 0;
        let mut k = 0;
        while k < in_round {
            for _ in 0..16.min(in_round - k) {
                k += 1;
                assert_eq!(fx.send(&seg(0, (acked + k) * MSS, &[])), Verdict::Accepted);
            }
            next_round += spans(&fx.out()).len();
        }
        acked += in_round;
        let cwnd = fx.conn.info(fx.now).snd_cwnd as usize;
        assert_eq!(cwnd, 2 * cwnd_before, "round {round}: cwnd doubles");
        assert_eq!(
            next_round,
            2 * in_round,
            "round {round}: twice the segments leave"
        );
        in_round = next_round;
    }
    assert_eq!(in_round, 160);
}

// ----- 2. reordering resilience ----------------------------------------------------------

/// 10 MB over a 5 ms RTT link with 5 % netem-style reordering and no loss: no collapse of
/// cwnd, goodput close to the clean link.
#[test]
fn reordering_5_percent_keeps_cwnd_and_goodput() {
    let clean = LinkConfig::clean(Duration::from_micros(2500));
    let reorder = LinkConfig {
        reorder: 0.05,
        ..clean.clone()
    };
    let c = one_way(1, clean, 10_000_000, |_| {});
    let r = one_way(1, reorder, 10_000_000, |_| {});
    assert!(r.links[0].reordered > 300, "{r}");
    assert!(
        r.goodput_bps(1) * 10 >= c.goodput_bps(1) * 8,
        "goodput {} with reordering vs {} clean",
        r.goodput_bps(1),
        c.goodput_bps(1)
    );
    assert!(r.mean_cwnd(0) >= 100, "mean cwnd {}: {r}", r.mean_cwnd(0));
}

/// 2 % loss with 5 % reordering: recovery still works, every byte arrives.
#[test]
fn loss_and_reordering_10mb_arrive_byte_exact() {
    let link = LinkConfig {
        loss: 0.02,
        reorder: 0.05,
        ..LinkConfig::clean(Duration::from_micros(2500))
    };
    let r = one_way(3, link, 10_000_000, |_| {});
    assert!(r.links[0].lost > 100 && r.links[0].reordered > 100, "{r}");
    assert!(r.fast_retransmits[0] > 0, "{r}");
}

/// A fast retransmit whose original then arrives (the ACK echoes a TSval from before the
/// retransmission): Eifel undo restores cwnd and ssthresh and raises the reordering degree.
#[test]
fn eifel_undoes_a_spurious_fast_retransmit() {
    let mut fx = open(TcpConfig::default(), PeerOpts::ALL);
    queue(&mut fx, 0, 10 * TS_MSS);
    let out = fx.out();
    assert_eq!(spans(&out).len(), 10);
    let ts_orig = tsval_of(&out[0]);
    fx.advance(Duration::from_millis(10));
    let sack = with_sack(seg(0, 0, &[]), &[(TS_MSS, 4 * TS_MSS)]);
    fx.send(&with_ts(sack, PEER_TS0 + 1, ts_orig));
    assert_eq!(spans(&fx.out()), vec![(0, TS_MSS)], "fast retransmit");
    assert_eq!(fx.conn.info(fx.now).snd_cwnd, 7, "CUBIC reduction");
    fx.advance(Duration::from_millis(10));
    fx.send(&with_ts(seg(0, 10 * TS_MSS, &[]), PEER_TS0 + 2, ts_orig));
    let info = fx.conn.info(fx.now);
    assert_eq!(info.ca_state, 0);
    assert!(info.snd_cwnd >= 10, "cwnd restored: {}", info.snd_cwnd);
    assert!(info.snd_ssthresh > 1000, "ssthresh restored");
    assert!(info.reordering > 3, "reordering degree {}", info.reordering);
    assert_eq!(fx.conn.stats().spurious_recoveries, 1);
}

/// Without timestamps, a D-SACK for the only retransmission undoes the reduction (RFC 3708).
#[test]
fn dsack_undoes_a_spurious_fast_retransmit() {
    let mut fx = open(TcpConfig::default(), PeerOpts::SACK);
    queue(&mut fx, 0, 10 * MSS);
    assert_eq!(spans(&fx.out()).len(), 10);
    fx.advance(Duration::from_millis(10));
    fx.send(&with_sack(seg(0, 0, &[]), &[(MSS, 4 * MSS)]));
    assert_eq!(spans(&fx.out()), vec![(0, MSS)]);
    fx.advance(Duration::from_millis(10));
    // The original filled the hole; the retransmission is reported as a duplicate.
    fx.send(&seg(0, 10 * MSS, &[]));
    assert_eq!(
        fx.conn.info(fx.now).snd_cwnd,
        7,
        "not undone without evidence"
    );
    fx.send(&with_sack(seg(0, 10 * MSS, &[]), &[(0, MSS)]));
    let info = fx.conn.info(fx.now);
    assert!(info.snd_cwnd >= 10, "cwnd restored: {}", info.snd_cwnd);
    assert_eq!(fx.conn.stats().spurious_recoveries, 1);
    assert_eq!(fx.conn.stats().dsack_dups, 1);
}

/// A real loss is not undone: the retransmission fills the hole (the ACK echoes its TSval).
#[test]
fn a_real_loss_is_not_undone() {
    let mut fx = open(TcpConfig::default(), PeerOpts::ALL);
    queue(&mut fx, 0, 10 * TS_MSS);
    let out = fx.out();
    let ts_orig = tsval_of(&out[0]);
    fx.advance(Duration::from_millis(10));
    let sack = with_sack(seg(0, 0, &[]), &[(TS_MSS, 4 * TS_MSS)]);
    fx.send(&with_ts(sack, PEER_TS0 + 1, ts_orig));
    let rexmit = fx.out();
    let ts_rexmit = tsval_of(&rexmit[0]);
    fx.advance(Duration::from_millis(10));
    fx.send(&with_ts(seg(0, 10 * TS_MSS, &[]), PEER_TS0 + 2, ts_rexmit));
    assert_eq!(fx.conn.stats().spurious_recoveries, 0);
    assert_eq!(fx.conn.info(fx.now).snd_cwnd, 7);
}

// ----- 3. PAWS ---------------------------------------------------------------------------

/// Linux tcp_disordered_ack: a duplicate ACK overtaken by a newer one (older TSval, same ACK
/// and window) is not a PAWS failure; an old ACK that would update the window (here: close
/// it) still is.
#[test]
fn paws_lets_a_disordered_duplicate_ack_through() {
    let mut fx = open(TcpConfig::default(), PeerOpts::TS);
    queue(&mut fx, 0, 4 * TS_MSS);
    let _ = fx.out();
    fx.advance(Duration::from_millis(5));
    let ack = seg(0, TS_MSS, &[]);
    assert_eq!(fx.send(&with_ts(ack, PEER_TS0 + 20, 0)), Verdict::Accepted);
    let _ = fx.out();
    assert_eq!(fx.send(&with_ts(ack, PEER_TS0 + 19, 0)), Verdict::Accepted);
    assert_eq!(fx.conn.stats().dropped(TcpDropReason::PawsRejected), 0);
    assert!(fx.out().is_empty(), "a duplicate ACK is not answered");
    let moved = TcpRepr {
        window_len: 0,
        ..ack
    };
    assert_eq!(
        fx.send(&with_ts(moved, PEER_TS0 + 18, 0)),
        Verdict::Dropped(TcpDropReason::PawsRejected)
    );
}

/// Answers to PAWS-failed segments without data are rate limited (500 ms per connection, Linux
/// tcp_oow_rate_limited); segments with data are answered every time.
#[test]
fn paws_answers_are_rate_limited() {
    let mut fx = open(TcpConfig::default(), PeerOpts::TS);
    fx.send(&with_ts(seg(0, 0, b"new"), PEER_TS0 + 100, 0));
    let _ = fx.out();
    let old_ack = with_ts(seg(3, 0, &[]), PEER_TS0 + 1, 0);
    let mut answers = 0;
    for _ in 0..10 {
        let v = fx.send(&TcpRepr {
            window_len: 100,
            ..old_ack
        });
        assert_eq!(v, Verdict::Dropped(TcpDropReason::PawsRejected));
        answers += fx.out().len();
        fx.advance(Duration::from_millis(10));
    }
    assert_eq!(answers, 1, "one answer per 500 ms");
    fx.advance(Duration::from_millis(500));
    fx.send(&TcpRepr {
        window_len: 100,
        ..old_ack
    });
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 3));
    for _ in 0..2 {
        let data = with_ts(seg(3, 0, b"old"), PEER_TS0 + 1, 0);
        assert_eq!(
            fx.send(&data),
            Verdict::Dropped(TcpDropReason::PawsRejected)
        );
        assert_eq!(fx.out().len(), 1, "data is always answered");
    }
    assert_eq!(fx.conn.stats().dropped(TcpDropReason::PawsRejected), 13);
}

// ----- 4. out-of-order range bound -------------------------------------------------------

/// A 4 MiB window over a 10 ms RTT link with 5 % reordering: the receiver never runs out of
/// out-of-order ranges (with the old bound of 32: 2329 drops and 6.6 Mbit/s instead of
/// ~1 Gbit/s).
#[test]
fn out_of_order_ranges_survive_reordering_at_4_mib() {
    let link = LinkConfig {
        reorder: 0.05,
        ..LinkConfig::clean(Duration::from_millis(5))
    };
    let r = one_way(2, link, 20_000_000, big_buffers);
    assert!(r.mean_cwnd(0) > 500, "the window really opened: {r}");
    assert_eq!(
        r.drop_reasons[1][TcpDropReason::OutOfOrderFull as usize],
        0,
        "{r}"
    );
}

// ----- 5. ICMP ---------------------------------------------------------------------------

/// RFC 5927 §4.1: ICMP errors quoting a sequence outside [SND.UNA, SND.NXT) are ignored and
/// counted; a valid fragmentation-needed resends in the smaller size, counted as
/// retransmissions in TCP_INFO.
#[test]
fn icmp_quoting_a_sequence_outside_the_flight_is_ignored() {
    let mut fx = plain();
    queue(&mut fx, 0, 4 * MSS);
    assert_eq!(spans(&fx.out()).len(), 4);
    fx.conn.on_icmp_frag_needed(fx.now, 1280, snd(4 * MSS));
    fx.conn.on_icmp_frag_needed(fx.now, 1280, snd(0) - 1);
    assert_eq!(fx.conn.snd_mss(), MSS, "MSS unchanged");
    assert!(spans(&fx.out()).is_empty(), "nothing resent");
    assert!(
        !fx.conn
            .on_icmp_error(fx.now, ConnError::HostUnreachable, snd(10 * MSS))
    );
    assert_eq!(fx.conn.take_error(), None);
    assert_eq!(fx.conn.stats().dropped(TcpDropReason::IcmpOutOfWindow), 3);

    fx.conn.on_icmp_frag_needed(fx.now, 1280, snd(MSS));
    assert_eq!(fx.conn.snd_mss(), 1240);
    let resent = spans(&fx.out());
    assert_eq!(resent.first(), Some(&(0, 1240)));
    let info = fx.conn.info(fx.now);
    assert_eq!(info.total_retrans as usize, resent.len());
    assert_eq!(
        info.retrans as usize,
        resent.len(),
        "retransmitted, unacknowledged"
    );
    assert!(
        fx.conn
            .on_icmp_error(fx.now, ConnError::HostUnreachable, snd(0))
    );
    assert_eq!(fx.conn.take_error(), Some(ConnError::HostUnreachable));
}

// ----- RTT -------------------------------------------------------------------------------

/// On a 50 µs path with timestamps and several ACKs per round trip, SRTT follows the real RTT
/// (sequence-timed samples in µs), not the 1 ms floor of timestamp echoes.
#[test]
fn srtt_has_microsecond_resolution_with_timestamps() {
    let mut fx = open(TcpConfig::default(), PeerOpts::TS);
    let mut acked = 0;
    for round in 0..64u32 {
        queue(&mut fx, acked, 8 * TS_MSS);
        let out = fx.out();
        assert_eq!(spans(&out).len(), 8);
        fx.advance(Duration::from_micros(50));
        for pair in 0..4 {
            let ecr = tsval_of(&out[2 * pair + 1]);
            let ack = seg(0, acked + (2 * pair + 2) * TS_MSS, &[]);
            fx.send(&with_ts(ack, PEER_TS0 + round, ecr));
        }
        acked += 8 * TS_MSS;
        let _ = fx.out();
    }
    let info = fx.conn.info(fx.now);
    assert!(info.rtt_us < 200, "srtt {} µs", info.rtt_us);
    assert!(info.min_rtt_us <= 60, "min_rtt {} µs", info.min_rtt_us);
}
