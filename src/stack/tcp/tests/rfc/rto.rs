//! RFC 6298: retransmission timer, Karn's algorithm, backoff and the retry limits.

use super::*;
use crate::stack::tcp::connection::{ConnError, SendError};

fn within(got: Instant, want: Instant, slack: Duration) -> bool {
    got.max(want) - got.min(want) <= slack
}

#[test]
fn first_rto_for_the_syn_is_one_second_then_doubles() {
    let conn = TcpConnection::connect(TcpConfig::default(), LOCAL, REMOTE, initial(), T0);
    let mut fx = Fx { conn, now: T0 };
    assert_eq!(fx.out().len(), 1);
    assert_eq!(fx.conn.poll_at(), Some(T0 + Duration::from_secs(1)));
    assert!(out_at(&mut fx, T0 + Duration::from_micros(999_999)).is_empty());
    let out = out_at(&mut fx, T0 + Duration::from_secs(1));
    assert_eq!(out.len(), 1);
    assert!(out[0].flags().syn && out[0].seq() == LOCAL_ISS);
    // (5.5) back off: the next one waits 2 s.
    assert_eq!(fx.conn.poll_at(), Some(T0 + Duration::from_secs(3)));
}

#[test]
fn rto_is_clamped_to_200ms_after_a_small_sample() {
    // Handshake sample 10 ms: SRTT 10, RTTVAR 5 → 30 ms, raised to RTO.min = 200 ms.
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.advance(Duration::from_millis(1));
    queue(&mut fx, 0, 100);
    assert_eq!(spans(&fx.out()).len(), 1);
    assert_eq!(fx.conn.poll_at(), Some(fx.now + Duration::from_millis(200)));
}

#[test]
fn rto_follows_srtt_plus_four_rttvar() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, 100);
    let _ = fx.out();
    // ACK after 400 ms: RTTVAR = 3/4·5 + 1/4·|10 − 400| = 101.25 ms,
    // SRTT = 7/8·10 + 1/8·400 = 58.75 ms, RTO = 58.75 + 4·101.25 = 463.75 ms.
    fx.advance(Duration::from_millis(400));
    let _ = fx.send(&seg(0, 100, &[]));
    let _ = fx.out();
    queue(&mut fx, 100, 100);
    assert_eq!(spans(&fx.out()), vec![(100, 100)]);
    let want = fx.now + Duration::from_micros(463_750);
    let got = fx.conn.poll_at().expect("RTO armed");
    assert!(
        within(got, want, Duration::from_millis(2)),
        "RTO deadline {got} want {want}"
    );
    let info = fx.conn.info(fx.now);
    assert!((58_000..=59_500).contains(&info.rtt_us), "{}", info.rtt_us);
    assert!(
        (100_000..=102_500).contains(&info.rttvar_us),
        "{}",
        info.rttvar_us
    );
}

#[test]
fn repeated_timeouts_back_off_exponentially() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, 100);
    let _ = fx.out();
    let mut at = fx.now;
    for (i, wait) in [200u64, 400, 800, 1600, 3200].into_iter().enumerate() {
        at += Duration::from_millis(wait);
        assert_eq!(fx.conn.poll_at(), Some(at), "timeout {i}");
        assert!(out_at(&mut fx, at - Duration::from_micros(1)).is_empty());
        let out = out_at(&mut fx, at);
        assert_eq!(spans(&out), vec![(0, 100)], "retransmission {i}");
        assert_eq!(out[0].payload, pattern(0, 100));
    }
    assert_eq!(fx.conn.info(fx.now).backoff, 5);
}

#[test]
fn karn_no_rtt_sample_from_a_retransmitted_segment() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, 100);
    let _ = fx.out();
    let rto_at = fx.conn.poll_at().expect("armed");
    let out = out_at(&mut fx, rto_at);
    assert_eq!(spans(&out), vec![(0, 100)]);
    // The ACK arrives 1 ms after the retransmission (201 ms after the original): ambiguous.
    fx.advance(Duration::from_millis(1));
    let _ = fx.send(&seg(0, 100, &[]));
    let info = fx.conn.info(fx.now);
    assert_eq!(info.rtt_us, 10_000, "SRTT still the handshake sample");
    assert_eq!(info.rttvar_us, 5_000);
}

#[test]
fn retries2_exhausted_times_out_without_rst() {
    let config = TcpConfig {
        retries2: 3,
        ..nodelay()
    };
    let mut fx = open(config, PeerOpts::PLAIN);
    queue(&mut fx, 0, 100);
    let _ = fx.out();
    let mut retransmissions = 0;
    for _ in 0..10 {
        let Some(at) = fx.conn.poll_at() else { break };
        let out = out_at(&mut fx, at);
        assert!(
            out.iter().all(|s| !s.flags().rst),
            "Linux sends no RST: {out:#?}"
        );
        retransmissions += data_of(&out).len();
        if fx.state() == State::Closed {
            break;
        }
    }
    assert_eq!(retransmissions, 3);
    assert_eq!(fx.state(), State::Closed);
    // The pending error is reported by the next call (then cleared, as SO_ERROR).
    assert_eq!(fx.conn.send(b"x"), Err(SendError::TimedOut));
    assert_eq!(fx.conn.take_error(), Some(ConnError::TimedOut));
}

#[test]
fn user_timeout_bounds_retransmission_time() {
    let config = TcpConfig {
        user_timeout: Some(Duration::from_secs(1)),
        ..nodelay()
    };
    let mut fx = open(config, PeerOpts::PLAIN);
    let t = fx.now;
    queue(&mut fx, 0, 100);
    let _ = fx.out();
    while fx.state() != State::Closed {
        let at = fx.conn.poll_at().expect("timer");
        assert!(at - t <= Duration::from_secs(4), "gave up too late");
        let _ = out_at(&mut fx, at);
    }
    // Timeouts at 0.2, 0.6, 1.4 s: the first one at least 1 s after the first retransmission.
    assert!(fx.now - t >= Duration::from_secs(1));
    assert_eq!(fx.conn.take_error(), Some(ConnError::TimedOut));
}

#[test]
fn rto_falls_back_to_3s_after_a_retransmitted_syn() {
    // RFC 6298 (5.7), Linux tcp_init_metrics: the SYN was retransmitted, so no valid sample;
    // data transmission starts with RTO = 3 s.
    let conn = TcpConnection::connect(nodelay(), LOCAL, REMOTE, initial(), T0);
    let mut fx = Fx { conn, now: T0 };
    assert_eq!(fx.out().len(), 1);
    let again = out_at(&mut fx, T0 + Duration::from_secs(1));
    assert!(again.len() == 1 && again[0].flags().syn);
    fx.advance(Duration::from_millis(10));
    fx.send(&TcpRepr {
        seq_number: REMOTE_ISS,
        ack_number: Some(LOCAL_ISS + 1),
        control: TcpControl::SYN,
        options: syn_options(PeerOpts::PLAIN),
        ..SEND_TEMPL
    });
    let _ = fx.out();
    assert_eq!(fx.state(), State::Established);
    assert_eq!(
        fx.conn.info(fx.now).rtt_us,
        0,
        "Karn: no sample from a retransmitted SYN"
    );
    queue(&mut fx, 0, 100);
    assert_eq!(spans(&fx.out()), vec![(0, 100)]);
    assert_eq!(fx.conn.poll_at(), Some(fx.now + Duration::from_secs(3)));
}

#[test]
fn syn_retries_exhausted_times_out_in_syn_sent() {
    let config = TcpConfig {
        syn_retries: 2,
        ..TcpConfig::default()
    };
    let conn = TcpConnection::connect(config, LOCAL, REMOTE, initial(), T0);
    let mut fx = Fx { conn, now: T0 };
    assert_eq!(fx.out().len(), 1);
    let mut syns = vec![];
    while let Some(at) = fx.conn.poll_at() {
        let out = out_at(&mut fx, at);
        if fx.state() == State::Closed {
            assert!(out.is_empty());
            break;
        }
        assert!(out.len() == 1 && out[0].flags().syn);
        syns.push(at - T0);
    }
    assert_eq!(
        syns,
        vec![Duration::from_secs(1), Duration::from_secs(3)],
        "two retries at 1 s and 1 + 2 s"
    );
    assert_eq!(
        fx.now - T0,
        Duration::from_secs(7),
        "gives up after 4 s more"
    );
    assert_eq!(fx.conn.take_error(), Some(ConnError::TimedOut));
}
