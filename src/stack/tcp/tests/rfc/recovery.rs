//! Fast retransmit (RFC 5681), NewReno (RFC 6582), SACK loss recovery (RFC 6675), D-SACK
//! (RFC 2883).

use super::*;
use crate::stack::tcp::congestion::CongestionAlgorithm;
use crate::stack::tcp::connection::Verdict;

/// ESTABLISHED with ten full segments in flight (the initial window).
pub fn ten_in_flight(config: TcpConfig, peer: PeerOpts) -> Fx {
    let mut fx = open(config, peer);
    queue(&mut fx, 0, 10 * MSS);
    let out = fx.out();
    let want: Vec<_> = (0..10).map(|i| (i * MSS, MSS)).collect();
    assert_eq!(spans(&out), want, "IW = 10 segments");
    fx.advance(Duration::from_millis(10));
    fx
}

/// The peer's duplicate ACK of SND.UNA = snd(0).
fn dupack() -> TcpRepr<'static> {
    seg(0, 0, &[])
}

#[test]
fn fast_retransmit_after_three_duplicate_acks() {
    let mut fx = ten_in_flight(TcpConfig::default(), PeerOpts::PLAIN);
    for i in 0..2 {
        assert_eq!(fx.send(&dupack()), Verdict::Accepted);
        assert!(
            spans(&fx.out()).is_empty(),
            "no retransmission after {} dupacks",
            i + 1
        );
    }
    assert_eq!(fx.send(&dupack()), Verdict::Accepted);
    let out = fx.out();
    assert_eq!(
        spans(&out),
        vec![(0, MSS)],
        "the first unacked segment resent"
    );
    assert_eq!(out[0].payload, pattern(0, MSS));
    assert_eq!(fx.conn.stats().fast_retransmits, 1);
    assert_eq!(fx.conn.info(fx.now).ca_state, 3, "TCP_CA_Recovery");
    // A retransmission timer is still what guards it, not an immediate RTO.
    assert!(fx.conn.poll_at().expect("rto") > fx.now);
}

#[test]
fn newreno_partial_ack_retransmits_next_hole_and_full_ack_exits() {
    let config = TcpConfig {
        congestion: CongestionAlgorithm::Reno,
        ..TcpConfig::default()
    };
    let mut fx = ten_in_flight(config, PeerOpts::PLAIN);
    for _ in 0..3 {
        fx.send(&dupack());
    }
    assert_eq!(spans(&fx.out()), vec![(0, MSS)]);
    // Partial ACK: segments 0..4 arrived, 4 is the next hole.
    assert_eq!(fx.send(&seg(0, 4 * MSS, &[])), Verdict::Accepted);
    let out = fx.out();
    assert_eq!(spans(&out), vec![(4 * MSS, MSS)], "next hole at once");
    let info = fx.conn.info(fx.now);
    assert_eq!(info.ca_state, 3, "still in recovery after a partial ACK");
    // Full ACK (everything up to the recovery point): leave recovery with cwnd = ssthresh.
    assert_eq!(fx.send(&seg(0, 10 * MSS, &[])), Verdict::Accepted);
    let info = fx.conn.info(fx.now);
    assert_eq!(info.ca_state, 0, "recovery over");
    assert_eq!(info.snd_ssthresh, 5, "Reno: flight 10 segments · 0.5");
    assert_eq!(info.snd_cwnd, info.snd_ssthresh, "cwnd = ssthresh on exit");
}

#[test]
fn sack_recovery_retransmits_exactly_the_reported_holes() {
    let mut fx = ten_in_flight(TcpConfig::default(), PeerOpts::SACK);
    // Segments 0 and 4 lost; 1..4 and 5..10 SACKed.
    let ack = with_sack(dupack(), &[(5 * MSS, 10 * MSS), (MSS, 4 * MSS)]);
    assert_eq!(fx.send(&ack), Verdict::Accepted);
    let out = fx.out();
    assert_eq!(
        spans(&out),
        vec![(0, MSS), (4 * MSS, MSS)],
        "exactly the two holes, in order"
    );
    assert_eq!(out[0].payload, pattern(0, MSS));
    assert_eq!(out[1].payload, pattern(4 * MSS, MSS));
    // Nothing more to resend until new information arrives.
    assert!(spans(&fx.out()).is_empty());
    assert_eq!(fx.conn.info(fx.now).sacked, 8);
}

#[test]
fn sack_pipe_limits_what_recovery_sends() {
    let config = TcpConfig {
        congestion: CongestionAlgorithm::Reno,
        ..TcpConfig::default()
    };
    let mut fx = open(config, PeerOpts::SACK);
    queue(&mut fx, 0, 30 * MSS);
    assert_eq!(spans(&fx.out()).len(), 10, "IW");
    fx.advance(Duration::from_millis(10));
    // Segment 0 lost, 1..10 SACKed: pipe 0, cwnd = ssthresh = 5 segments after the loss.
    let ack = with_sack(dupack(), &[(MSS, 10 * MSS)]);
    assert_eq!(fx.send(&ack), Verdict::Accepted);
    let out = fx.out();
    let sent = spans(&out);
    assert_eq!(sent[0], (0, MSS), "the hole first: {sent:?}");
    let want: Vec<_> = std::iter::once((0, MSS))
        .chain((10..14).map(|i| (i * MSS, MSS)))
        .collect();
    assert_eq!(sent, want, "pipe may grow to cwnd = 5 segments, no more");
    // Another duplicate ACK without new SACK information frees nothing.
    fx.send(&with_sack(dupack(), &[(MSS, 10 * MSS)]));
    assert!(spans(&fx.out()).is_empty(), "pipe = cwnd");
    // A SACK for segment 10 takes one segment out of the pipe: exactly one more goes.
    fx.send(&with_sack(dupack(), &[(MSS, 11 * MSS)]));
    assert_eq!(spans(&fx.out()), vec![(14 * MSS, MSS)]);
}

#[test]
fn dsack_is_accepted_and_counted() {
    let mut fx = open(nodelay(), PeerOpts::SACK);
    queue(&mut fx, 0, 2 * MSS);
    assert_eq!(spans(&fx.out()).len(), 2);
    assert_eq!(fx.send(&seg(0, 2 * MSS, &[])), Verdict::Accepted);
    // The peer reports a duplicate of segment 0 (block below the cumulative ACK).
    let dsack = with_sack(seg(0, 2 * MSS, &[]), &[(0, MSS)]);
    assert_eq!(fx.send(&dsack), Verdict::Accepted);
    assert_eq!(fx.conn.stats().dsack_dups, 1);
    assert_eq!(fx.conn.info(fx.now).dsack_dups, 1);
    assert!(fx.out().is_empty(), "no retransmission, no reply");
    assert_eq!(fx.conn.info(fx.now).ca_state, 0);
    // D-SACK inside a SACKed block above the ACK (RFC 2883 §4.1.2 form) is counted too.
    queue(&mut fx, 2 * MSS, 3 * MSS);
    assert_eq!(spans(&fx.out()).len(), 3);
    let first = with_sack(seg(0, 2 * MSS, &[]), &[(3 * MSS, 5 * MSS)]);
    fx.send(&first);
    let dup = with_sack(
        seg(0, 2 * MSS, &[]),
        &[(4 * MSS, 5 * MSS), (3 * MSS, 5 * MSS)],
    );
    fx.send(&dup);
    assert_eq!(fx.conn.stats().dsack_dups, 2);
}
