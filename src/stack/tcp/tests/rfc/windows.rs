//! Windows: silly-window avoidance on both sides (RFC 9293 §3.8.6.2), zero-window probing
//! (persist timer, RFC 9293 §3.8.6.1), out-of-order data (RFC 5681 §4.2 immediate ACKs, RFC
//! 2018 SACK block order, bounded reassembly memory).

use super::*;
use crate::stack::tcp::connection::{TcpDropReason, Verdict};
use crate::stack::tcp::recv_buffer::MAX_OOO_RANGES;

fn window_update(window: u16) -> TcpRepr<'static> {
    TcpRepr {
        window_len: window,
        ..seg(0, 0, &[])
    }
}

fn sack_of(s: &Sent) -> Vec<(usize, usize)> {
    s.repr
        .options
        .sack_blocks()
        .map(|b| {
            b.as_slice()
                .iter()
                .map(|&(l, r)| ((l - rcv(0)) as usize, (r - rcv(0)) as usize))
                .collect()
        })
        .unwrap_or_default()
}

// ----- receiver SWS -----------------------------------------------------------------------

#[test]
fn receiver_does_not_announce_small_window_increases() {
    let config = TcpConfig {
        recv_buffer: 8192,
        ..TcpConfig::default()
    };
    let (mut fx, _, ack) = open_full(config, PeerOpts::PLAIN);
    assert_eq!(ack.window(), 8192);
    // Fill the buffer.
    let mut off = 0;
    while off < 8192 {
        let len = MSS.min(8192 - off);
        assert_eq!(fx.send(&seg(off, 0, &pattern(off, len))), Verdict::Accepted);
        off += len;
    }
    let out = fx.out();
    assert_eq!(out.last().expect("ACKs").window(), 0, "buffer full");
    // The application reads 100 bytes: a 100-byte window is not worth announcing.
    let mut buf = vec![0u8; 100];
    assert_eq!(fx.conn.recv(&mut buf), Ok(100));
    assert!(fx.out().is_empty(), "no window update for 100 bytes");
    // A duplicate segment makes the engine ACK: still window 0.
    fx.send(&seg(8092, 0, &pattern(8092, 100)));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], 8192));
    assert_eq!(out[0].window(), 0, "SWS: 100 < min(buffer/2, MSS)");
    // 2100 free ≥ one MSS: now the window opens.
    let mut buf = vec![0u8; 2000];
    assert_eq!(fx.conn.recv(&mut buf), Ok(2000));
    let _ = fx.out();
    fx.send(&seg(8092, 0, &pattern(8092, 100)));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window(), 2100);
}

#[test]
fn reading_a_full_buffer_sends_a_window_update() {
    let config = TcpConfig {
        recv_buffer: 8192,
        ..TcpConfig::default()
    };
    let mut fx = open(config, PeerOpts::PLAIN);
    let mut off = 0;
    while off < 8192 {
        let len = MSS.min(8192 - off);
        fx.send(&seg(off, 0, &pattern(off, len)));
        off += len;
    }
    let _ = fx.out();
    let mut buf = vec![0u8; 8192];
    assert_eq!(fx.conn.recv(&mut buf), Ok(8192));
    assert_eq!(buf, pattern(0, 8192));
    let out = fx.out();
    assert_eq!(
        out.len(),
        1,
        "window update after the reader drained the buffer"
    );
    assert!(is_ack_of(&out[0], 8192));
    assert_eq!(out[0].window(), 8192);
}

#[test]
fn reading_sends_no_window_update_when_the_window_cannot_grow() {
    // Without window scaling the field caps the window at 65535: with a 256 KiB buffer a read
    // frees nothing that could be announced, so no update goes (Linux tcp_cleanup_rbuf).
    let mut fx = plain();
    fx.send(&seg(0, 0, &pattern(0, 100)));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window(), 65_535);
    let mut buf = [0u8; 100];
    assert_eq!(fx.conn.recv(&mut buf), Ok(100));
    let out = fx.out();
    assert!(out.is_empty(), "pointless window update: {out:#?}");
}

// ----- sender SWS -------------------------------------------------------------------------

#[test]
fn sender_does_not_send_tiny_segments_into_a_small_window() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    // The peer shrinks its offer to 1000 bytes (max window seen: 65535).
    fx.send(&window_update(1000));
    queue(&mut fx, 0, 5000);
    assert!(fx.out().is_empty(), "1000 < max window / 2: wait");
    // The override (persist) timer sends what fits.
    let at = fx.conn.poll_at().expect("override timer armed");
    assert!(at > fx.now);
    assert!(out_at(&mut fx, at - Duration::from_micros(1)).is_empty());
    let out = out_at(&mut fx, at);
    assert_eq!(
        spans(&out),
        vec![(0, 1000)],
        "override timeout sends the window"
    );
}

#[test]
fn sender_sends_all_it_has_when_it_fits_a_small_window() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.send(&window_update(1000));
    queue(&mut fx, 0, 500);
    assert_eq!(
        spans(&fx.out()),
        vec![(0, 500)],
        "all it has, fits, Nagle off"
    );
}

// ----- zero window ------------------------------------------------------------------------

#[test]
fn zero_window_probes_back_off_and_data_resumes_when_it_opens() {
    let mut fx = open(nodelay(), PeerOpts::PLAIN);
    fx.send(&window_update(0));
    queue(&mut fx, 0, 1000);
    assert!(fx.out().is_empty(), "zero window: nothing goes");
    let mut at = fx.now;
    let mut intervals = vec![];
    for _ in 0..3 {
        let next = fx.conn.poll_at().expect("persist timer");
        intervals.push(next - at);
        at = next;
        let out = out_at(&mut fx, at);
        assert_eq!(out.len(), 1, "one probe: {out:#?}");
        assert!(out[0].payload.is_empty());
        assert_eq!(out[0].seq(), snd(0) - 1, "probe SEQ = SND.UNA − 1 (Linux)");
        assert_eq!(out[0].ack(), Some(rcv(0)));
        // The peer answers with the window still closed.
        fx.send(&window_update(0));
        assert!(fx.out().is_empty());
    }
    assert_eq!(
        intervals,
        vec![
            Duration::from_millis(200),
            Duration::from_millis(400),
            Duration::from_millis(800)
        ],
        "probe interval backs off"
    );
    assert!(fx.conn.info(fx.now).probes >= 3);
    // The window reopens: the data goes at once.
    fx.send(&window_update(65_535));
    let out = fx.out();
    assert_eq!(spans(&out), vec![(0, 1000)]);
    assert_eq!(out[0].payload, pattern(0, 1000));
}

// ----- out of order -----------------------------------------------------------------------

#[test]
fn out_of_order_is_acked_at_once_with_sack_blocks_most_recent_first() {
    let mut fx = open(TcpConfig::default(), PeerOpts::SACK);
    let b = leave_quickack(&mut fx, 0);
    // An in-order segment now waits for the delayed ACK...
    fx.send(&seg(b, 0, &[1; 10]));
    assert!(fx.out().is_empty(), "delayed ACK after quick-ACK");
    let b = b + 10;
    // ...but out-of-order data is ACKed at once.
    fx.send(&seg(b + 1000, 0, &[2; 100]));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], b));
    assert_eq!(sack_of(&out[0]), vec![(b + 1000, b + 1100)]);

    fx.send(&seg(b + 2000, 0, &[3; 100]));
    let out = fx.out();
    assert_eq!(
        sack_of(&out[0]),
        vec![(b + 2000, b + 2100), (b + 1000, b + 1100)],
        "the block with the latest segment first"
    );
    fx.send(&seg(b + 1100, 0, &[4; 100]));
    let out = fx.out();
    assert_eq!(
        sack_of(&out[0]),
        vec![(b + 1000, b + 1200), (b + 2000, b + 2100)]
    );
    // Filling the first hole: immediate cumulative ACK, remaining block reported.
    fx.send(&seg(b, 0, &[5; 1000]));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], b + 1200));
    assert_eq!(sack_of(&out[0]), vec![(b + 2000, b + 2100)]);
    // Last hole: cumulative ACK, no SACK.
    fx.send(&seg(b + 1200, 0, &[6; 800]));
    let out = fx.out();
    assert_eq!(out.len(), 1);
    assert!(is_ack_of(&out[0], b + 2100));
    assert!(sack_of(&out[0]).is_empty());
}

#[test]
fn out_of_order_data_is_delivered_in_order_after_the_hole_fills() {
    let mut fx = plain();
    fx.send(&seg(5, 0, b"world"));
    fx.send(&seg(0, 0, b"hello"));
    let mut buf = [0u8; 32];
    assert_eq!(fx.conn.recv(&mut buf), Ok(10));
    assert_eq!(&buf[..10], b"helloworld");
}

#[test]
fn out_of_order_memory_is_bounded_and_excess_counted() {
    let mut fx = open(TcpConfig::default(), PeerOpts::SACK);
    let extra = 8;
    for i in 0..MAX_OOO_RANGES + extra {
        let v = fx.send(&seg(2 + 2 * i, 0, &pattern(2 + 2 * i, 1)));
        assert!(
            matches!(
                v,
                Verdict::Accepted | Verdict::Dropped(TcpDropReason::OutOfOrderFull)
            ),
            "{v:?}"
        );
        let out = fx.out();
        assert_eq!(out.len(), 1, "every one is ACKed");
        assert!(is_ack_of(&out[0], 0));
    }
    assert_eq!(
        fx.conn.stats().dropped(TcpDropReason::OutOfOrderFull),
        extra as u64
    );
    // Filling everything still yields the exact stream.
    let n = 2 * (MAX_OOO_RANGES + extra) + 2;
    let all = pattern(0, n);
    fx.send(&seg(0, 0, &all));
    let mut buf = vec![0u8; 2 * n];
    assert_eq!(fx.conn.recv(&mut buf), Ok(n));
    assert_eq!(&buf[..n], &all[..]);
}

#[test]
fn data_beyond_the_receive_buffer_is_not_accepted() {
    let config = TcpConfig {
        recv_buffer: 4096,
        ..TcpConfig::default()
    };
    let mut fx = open(config, PeerOpts::PLAIN);
    let v = fx.send(&seg(5000, 0, &[1; 100]));
    assert_eq!(v, Verdict::Dropped(TcpDropReason::OutOfWindow));
    let out = fx.out();
    assert!(is_ack_of(&out[0], 0));
    assert_eq!(out[0].window(), 4096);
}
