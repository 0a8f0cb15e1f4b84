//! RFC 7323 timestamps: TSecr echoes TS.Recent, TS.Recent follows only segments at the left
//! window edge, PAWS drops old duplicates (and ACKs them), RTT from TSecr.

use super::*;
use crate::stack::tcp::connection::{TcpDropReason, Verdict};

/// The engine's TSval at `now` (ts_offset 0, clock origin T0, 1 ms units).
fn our_ts(now: Instant) -> u32 {
    ((now - T0).as_micros() / 1000) as u32
}

fn ts_of(s: &Sent) -> (u32, u32) {
    s.repr
        .options
        .timestamps()
        .expect("timestamps on every segment")
}

#[test]
fn tsecr_echoes_the_peers_tsval() {
    let (mut fx, _, ack) = open_full(TcpConfig::default(), PeerOpts::TS);
    assert_eq!(ts_of(&ack), (our_ts(fx.now), PEER_TS0));
    fx.advance(Duration::from_millis(3));
    fx.send(&with_ts(seg(0, 0, b"abc"), PEER_TS0 + 7, our_ts(fx.now)));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert_eq!(ts_of(&out[0]), (our_ts(fx.now), PEER_TS0 + 7));
}

#[test]
fn paws_drops_an_old_timestamp_and_acks() {
    let mut fx = open(TcpConfig::default(), PeerOpts::TS);
    fx.send(&with_ts(seg(0, 0, b"new"), PEER_TS0 + 10, 0));
    let _ = fx.out();
    // An old duplicate from a previous wrap: in window, but TSval older than TS.Recent.
    let old = with_ts(seg(3, 0, b"old"), PEER_TS0 - 1000, 0);
    assert_eq!(fx.send(&old), Verdict::Dropped(TcpDropReason::PawsRejected));
    assert_eq!(fx.conn.recv_queue_len(), 3, "its data is not taken");
    let out = fx.out();
    assert_eq!(out.len(), 1, "PAWS failures are ACKed: {out:#?}");
    assert!(is_ack_of(&out[0], 3));
    assert_eq!(ts_of(&out[0]).1, PEER_TS0 + 10, "TS.Recent unchanged");
    assert_eq!(fx.conn.stats().dropped(TcpDropReason::PawsRejected), 1);
    // The same bytes with a current timestamp are accepted.
    let fresh = with_ts(seg(3, 0, b"old"), PEER_TS0 + 11, 0);
    assert_eq!(fx.send(&fresh), Verdict::Accepted);
    assert_eq!(fx.conn.recv_queue_len(), 6);
}

#[test]
fn paws_does_not_apply_to_rst() {
    let mut fx = open(TcpConfig::default(), PeerOpts::TS);
    let rst = with_ts(
        TcpRepr {
            seq_number: rcv(0),
            control: TcpControl::RST,
            ..SEND_TEMPL
        },
        1,
        0,
    );
    assert_eq!(fx.send(&rst), Verdict::Accepted);
    assert_eq!(fx.state(), State::Closed);
}

#[test]
fn ts_recent_follows_only_in_order_segments() {
    let mut fx = open(TcpConfig::default(), PeerOpts::TS);
    // Out of order with a newer TSval: TS.Recent stays (RFC 7323 §4.3 (2)).
    fx.send(&with_ts(seg(100, 0, &[2; 10]), PEER_TS0 + 50, 0));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 0));
    assert_eq!(
        ts_of(&out[0]).1,
        PEER_TS0,
        "not updated by an out-of-order segment"
    );
    // The in-order segment (older TSval than the out-of-order one, newer than TS.Recent).
    fx.send(&with_ts(seg(0, 0, &[1; 100]), PEER_TS0 + 20, 0));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 110), "hole filled");
    assert_eq!(ts_of(&out[0]).1, PEER_TS0 + 20);
}

#[test]
fn rtt_is_measured_from_tsecr_even_for_retransmissions() {
    let mut fx = open(nodelay(), PeerOpts::TS);
    queue(&mut fx, 0, 100);
    let first = fx.out();
    assert_eq!(spans(&first), vec![(0, 100)]);
    let at = fx.conn.poll_at().expect("RTO");
    let again = out_at(&mut fx, at);
    assert_eq!(spans(&again), vec![(0, 100)]);
    let rxt_ts = ts_of(&again[0]).0;
    // The peer answers the retransmission 50 ms later and echoes its TSval: with timestamps
    // the sample is unambiguous (RFC 7323 §4.1), RTT = 50 ms.
    fx.advance(Duration::from_millis(50));
    fx.send(&with_ts(seg(0, 100, &[]), PEER_TS0 + 300, rxt_ts));
    let info = fx.conn.info(fx.now);
    // SRTT = 7/8·10 + 1/8·50 = 15 ms.
    assert!(
        (14_000..=16_000).contains(&info.rtt_us),
        "SRTT {} µs: no sample was taken from TSecr",
        info.rtt_us
    );
}

#[test]
fn rtt_sample_with_timestamps_is_now_minus_tsecr() {
    // The peer echoes the TSval of the segment it acknowledges 30 ms later.
    let mut fx = open(nodelay(), PeerOpts::TS);
    queue(&mut fx, 0, 100);
    let out = fx.out();
    let ts = ts_of(&out[0]).0;
    fx.advance(Duration::from_millis(30));
    fx.send(&with_ts(seg(0, 100, &[]), PEER_TS0 + 30, ts));
    let info = fx.conn.info(fx.now);
    // SRTT = 7/8·10 + 1/8·30 = 12.5 ms.
    assert!((12_000..=13_000).contains(&info.rtt_us), "{}", info.rtt_us);
}
