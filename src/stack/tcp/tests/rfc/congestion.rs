//! Congestion control: CUBIC by default (RFC 9438, β = 0.7), Reno selectable (RFC 5681,
//! β = 0.5), loss window of one segment after a timeout.

use super::recovery::ten_in_flight;
use super::*;
use crate::stack::tcp::congestion::CongestionAlgorithm;

fn three_dupacks(fx: &mut Fx) {
    for _ in 0..3 {
        fx.send(&seg(0, 0, &[]));
    }
    assert_eq!(spans(&fx.out()), vec![(0, MSS)], "fast retransmit");
}

#[test]
fn cubic_is_the_default_and_reduces_to_0_7() {
    assert_eq!(TcpConfig::default().congestion, CongestionAlgorithm::Cubic);
    let mut fx = ten_in_flight(TcpConfig::default(), PeerOpts::PLAIN);
    let before = fx.conn.info(fx.now);
    assert_eq!(before.snd_cwnd, 10);
    three_dupacks(&mut fx);
    // ssthresh = 0.7 · 14600 = 10220 bytes = 7 segments (Linux reports whole segments).
    assert_eq!(fx.conn.info(fx.now).snd_ssthresh, 7);
}

#[test]
fn reno_is_selectable_and_halves() {
    let mut fx = ten_in_flight(TcpConfig::default(), PeerOpts::PLAIN);
    fx.conn.set_congestion(CongestionAlgorithm::Reno, fx.now);
    assert_eq!(fx.conn.config().congestion, CongestionAlgorithm::Reno);
    three_dupacks(&mut fx);
    assert_eq!(fx.conn.info(fx.now).snd_ssthresh, 5, "0.5 · 10 segments");
}

#[test]
fn retransmission_timeout_collapses_cwnd_to_one_segment() {
    let mut fx = ten_in_flight(TcpConfig::default(), PeerOpts::PLAIN);
    let at = fx.conn.poll_at().expect("RTO armed");
    let out = out_at(&mut fx, at);
    assert_eq!(spans(&out), vec![(0, MSS)], "loss window: one segment");
    let info = fx.conn.info(fx.now);
    assert_eq!(info.snd_cwnd, 1);
    assert_eq!(info.snd_ssthresh, 7, "CUBIC β applied to the flight");
    // The ACK of that one segment allows two more (slow start).
    fx.advance(Duration::from_millis(10));
    fx.send(&seg(0, MSS, &[]));
    assert_eq!(spans(&fx.out()), vec![(MSS, MSS), (2 * MSS, MSS)]);
}

#[test]
fn slow_start_grows_cwnd_per_ack() {
    let mut fx = ten_in_flight(TcpConfig::default(), PeerOpts::PLAIN);
    queue(&mut fx, 10 * MSS, 40 * MSS);
    // Each ACK of two segments opens room for four (two acked + two of growth).
    fx.send(&seg(0, 2 * MSS, &[]));
    assert_eq!(spans(&fx.out()).len(), 4);
    assert_eq!(fx.conn.info(fx.now).snd_cwnd, 12);
}
