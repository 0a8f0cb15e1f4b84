//! The send side: Nagle (RFC 9293 §3.7.4) and TCP_NODELAY, TCP_CORK (Linux, 200 ms ceiling),
//! urgent data (RFC 9293 §3.8.5 / RFC 6093, SO_OOBINLINE), pacing (SO_MAX_PACING_RATE), and
//! path-MTU discovery from ICMP fragmentation-needed (RFC 1191).

use super::*;
use crate::stack::tcp::connection::RecvError;

// ----- Nagle ------------------------------------------------------------------------------

#[test]
fn nagle_holds_a_small_write_while_data_is_unacknowledged() {
    let mut fx = plain();
    queue(&mut fx, 0, 100);
    assert_eq!(spans(&fx.out()), vec![(0, 100)], "nothing in flight: goes");
    queue(&mut fx, 100, 100);
    assert!(fx.out().is_empty(), "held: 100 bytes unacknowledged");
    fx.advance(Duration::from_millis(10));
    fx.send(&seg(0, 100, &[]));
    let out = fx.out();
    assert_eq!(spans(&out), vec![(100, 100)], "sent when the ACK arrives");
    assert_eq!(out[0].payload, pattern(100, 100));
}

#[test]
fn nagle_does_not_hold_full_segments() {
    let mut fx = plain();
    queue(&mut fx, 0, 100);
    let _ = fx.out();
    queue(&mut fx, 100, MSS + 50);
    assert_eq!(
        spans(&fx.out()),
        vec![(100, MSS)],
        "the full segment goes, the tail waits"
    );
}

#[test]
fn nodelay_sends_small_writes_at_once() {
    let mut fx = plain();
    fx.conn.set_nodelay(true);
    queue(&mut fx, 0, 100);
    assert_eq!(spans(&fx.out()), vec![(0, 100)]);
    queue(&mut fx, 100, 100);
    assert_eq!(
        spans(&fx.out()),
        vec![(100, 100)],
        "TCP_NODELAY: no waiting"
    );
}

// ----- cork -------------------------------------------------------------------------------

#[test]
fn cork_holds_partial_segments_until_full_or_uncorked() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.conn.set_cork(true, fx.now);
    queue(&mut fx, 0, 100);
    assert!(fx.out().is_empty(), "corked");
    queue(&mut fx, 100, MSS);
    assert_eq!(spans(&fx.out()), vec![(0, MSS)], "a full segment goes");
    fx.conn.set_cork(false, fx.now);
    assert_eq!(
        spans(&fx.out()),
        vec![(MSS, 100)],
        "uncork flushes the tail"
    );
}

#[test]
fn cork_is_released_after_200ms() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.conn.set_cork(true, fx.now);
    let t = fx.now;
    queue(&mut fx, 0, 100);
    assert!(fx.out().is_empty());
    assert_eq!(fx.conn.poll_at(), Some(t + Duration::from_millis(200)));
    assert!(out_at(&mut fx, t + Duration::from_millis(199)).is_empty());
    assert_eq!(
        spans(&out_at(&mut fx, t + Duration::from_millis(200))),
        vec![(0, 100)]
    );
}

#[test]
fn cork_holds_after_an_idle_period_too() {
    // The 200 ms ceiling counts from when the data was corked, not from the last send.
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.advance(Duration::from_secs(5));
    fx.conn.set_cork(true, fx.now);
    let t = fx.now;
    queue(&mut fx, 0, 100);
    assert!(fx.out().is_empty(), "corked data must not leave at once");
    assert_eq!(fx.conn.poll_at(), Some(t + Duration::from_millis(200)));
}

// ----- urgent -----------------------------------------------------------------------------

#[test]
fn send_urgent_sets_urg_and_the_pointer() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, 10);
    let _ = fx.out();
    assert_eq!(fx.conn.send_urgent(b"abc"), Ok(3));
    let out = fx.out();
    assert_eq!(spans(&out), vec![(10, 3)]);
    // Linux/BSD: the pointer points just past the urgent byte.
    assert_eq!(out[0].repr.urgent_pointer, Some(3));
    // Ordinary data afterwards carries no URG once the pointer is acknowledged.
    fx.send(&seg(0, 13, &[]));
    queue(&mut fx, 13, 5);
    let out = fx.out();
    assert_eq!(spans(&out), vec![(13, 5)]);
    assert_eq!(out[0].repr.urgent_pointer, None);
}

fn urgent_segment(off: usize, payload: &[u8], ptr: u16) -> TcpRepr<'_> {
    TcpRepr {
        urgent_pointer: Some(ptr),
        ..seg(off, 0, payload)
    }
}

#[test]
fn urgent_byte_out_of_band_and_read_stops_at_the_mark() {
    let mut fx = plain();
    // "hello!xyz", urgent pointer 6: '!' (offset 5) is the urgent byte.
    fx.send(&urgent_segment(0, b"hello!xyz", 6));
    assert!(fx.conn.readiness().priority, "POLLPRI");
    assert_eq!(fx.conn.recv_urgent(false), Ok(b'!'));
    let mut buf = [0u8; 32];
    assert_eq!(fx.conn.recv(&mut buf), Ok(5), "a read stops at the mark");
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(fx.conn.recv(&mut buf), Ok(3), "the urgent byte is skipped");
    assert_eq!(&buf[..3], b"xyz");
    assert_eq!(
        fx.conn.recv_urgent(false),
        Err(RecvError::InvalidOob),
        "already read"
    );
}

#[test]
fn siocatmark_is_true_when_a_read_stopped_at_the_mark() {
    // Linux: SIOCATMARK = urgent data pending and copied_seq == urg_seq; programs loop
    // `while (!atmark) read()` to discard up to the mark.
    let mut fx = plain();
    fx.send(&urgent_segment(0, b"hello!xyz", 6));
    assert!(!fx.conn.at_urgent_mark(), "5 bytes before the mark");
    let mut buf = [0u8; 32];
    assert_eq!(fx.conn.recv(&mut buf), Ok(5));
    assert!(fx.conn.at_urgent_mark(), "the read stopped at the mark");
    assert_eq!(fx.conn.recv(&mut buf), Ok(3));
    assert!(!fx.conn.at_urgent_mark(), "past the mark");
}

#[test]
fn urgent_byte_stays_in_the_stream_with_oob_inline() {
    let mut fx = plain();
    fx.conn.set_oob_inline(true);
    fx.send(&urgent_segment(0, b"hello!xyz", 6));
    assert_eq!(fx.conn.recv_urgent(false), Err(RecvError::InvalidOob));
    let mut stream = vec![];
    let mut buf = [0u8; 32];
    let n = fx.conn.recv(&mut buf).expect("data");
    assert_eq!(&buf[..n], b"hello", "stops at the mark");
    stream.extend_from_slice(&buf[..n]);
    while let Ok(n) = fx.conn.recv(&mut buf) {
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..n]);
    }
    assert_eq!(stream, b"hello!xyz");
}

// ----- pacing -----------------------------------------------------------------------------

#[test]
fn max_pacing_rate_spaces_departures() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    let rate = 1_000_000u64; // bytes/s
    fx.conn.set_max_pacing_rate(Some(rate));
    assert_eq!(
        fx.conn.pacing_rate(),
        Some(rate),
        "the cap is below the computed rate"
    );
    queue(&mut fx, 0, 3 * MSS);
    let mut departures = vec![];
    let mut sent = vec![];
    for _ in 0..10 {
        let mut got = vec![];
        fx.conn.dispatch(fx.now, &mut |o| {
            got.push((o.departure, o.payload_len()));
            Ok(())
        });
        for (dep, len) in got {
            if len > 0 {
                departures.push(dep);
                sent.push(len);
            }
        }
        if sent.len() == 3 {
            break;
        }
        let next = fx.conn.poll_at().expect("the next departure");
        assert!(next > fx.now, "poll_at names a future departure");
        fx.now = next;
    }
    assert_eq!(sent, vec![MSS; 3]);
    // Spaced len/rate apart (len counted with or without headers: 1460–1540 µs).
    for w in departures.windows(2) {
        let gap = (w[1] - w[0]).as_micros();
        assert!((1460..=1540).contains(&gap), "gap {gap} µs");
    }
}

// ----- path MTU ---------------------------------------------------------------------------

#[test]
fn frag_needed_lowers_the_mss_and_resends_in_flight_data() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, 2 * MSS);
    assert_eq!(spans(&fx.out()), vec![(0, MSS), (MSS, MSS)]);
    fx.advance(Duration::from_millis(1));
    fx.conn.on_icmp_frag_needed(fx.now, 1280, snd(0));
    let out = fx.out();
    let sent = spans(&out);
    assert!(!sent.is_empty(), "the in-flight data is resent");
    assert_eq!(sent[0].0, 0, "from SND.UNA");
    assert!(sent.iter().all(|&(_, len)| len <= 1240), "{sent:?}");
    let covered: usize = sent.iter().map(|&(_, l)| l).sum();
    assert_eq!(
        covered,
        2 * MSS,
        "everything in flight, in smaller segments"
    );
    // New data also fits the new path MTU.
    queue(&mut fx, 2 * MSS, 3000);
    assert!(spans(&fx.out()).iter().all(|&(_, len)| len <= 1240));
    assert_eq!(fx.conn.info(fx.now).pmtu, 1280);
}

#[test]
fn frag_needed_for_a_larger_mtu_changes_nothing() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    queue(&mut fx, 0, MSS);
    let _ = fx.out();
    fx.conn.on_icmp_frag_needed(fx.now, 9000, snd(0));
    assert!(
        fx.out().is_empty(),
        "no retransmission for a useless report"
    );
}
