//! The engine's side of the crash record ([`crate::stack::tcp::crash_record`]): a snapshot of
//! what the netserver needs to finish a connection whose process was killed, and the rebuild
//! from such a snapshot.
//!
//! The rebuild is deliberately conservative (the record may lag the process by one engine step,
//! and the congestion and RTT state are not in it): SND.NXT goes back to SND.UNA and what was
//! in flight is resent (go-back-N, as after a retransmission timeout), congestion restarts from
//! the initial window and the RTO from its initial value. The client publishes before and
//! after each output run, so the recorded SND.MAX covers what left (a segment sent between
//! publications only makes its ACK look early: it is answered and accepted once the byte is
//! resent). Timestamps continue from the recorded TSval plus the time elapsed since
//! publication, so the peer's PAWS check never sees our clock go back. The receive queue is not
//! recorded: a record with unread data means a reset (Linux `tcp_close`), which the caller does
//! without rebuilding.
#![forbid(unsafe_code)]

use super::{MIN_SND_MSS, State, TcpConfig, TcpConnection};
use crate::stack::tcp::congestion::INITIAL_WINDOW_SEGMENTS;
use crate::stack::tcp::crash_record::{CrashRecord, CrashRecordError};
use crate::stack::tcp::recv_buffer::ReceiveBuffer;
use crate::stack::tcp::send_buffer::{MAX_CAPACITY, SendBuffer, SharedRingStorage};
use crate::stack::{Duration, Instant};

/// Longest TIME_WAIT or FIN_WAIT_2 timeout a record may ask for (a scribbled record must not
/// keep a port reserved for long).
const MAX_CLOSE_TIMER: Duration = Duration::from_secs(120);
/// Longest gap between publication and rebuild taken into account for the timestamp clock.
const MAX_ELAPSED: Duration = Duration::from_secs(3600);

fn saturating_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_micros() / 1000).unwrap_or(u32::MAX)
}

impl TcpConnection {
    /// Moves the send ring into `storage` (see [`SendBuffer::attach_shared`]); the storage is
    /// handed back if it cannot hold what is queued.
    pub fn attach_send_ring(
        &mut self,
        storage: Box<dyn SharedRingStorage>,
    ) -> Result<(), Box<dyn SharedRingStorage>> {
        self.send_buf.attach_shared(storage)
    }

    /// Whether the send ring is in shared storage (it leaves it when a push needs more room
    /// than the storage has).
    pub fn send_ring_shared(&self) -> bool {
        self.send_buf.shared_layout().is_some()
    }

    /// The crash record of the connection now (`stamp_us` 0: the caller stamps it). Cheap: a
    /// few dozen field reads, no allocation.
    pub fn crash_record(&self, now: Instant) -> CrashRecord {
        let (ring_shared, send_head, ring_size) = match self.send_buf.shared_layout() {
            Some((head, ring)) => (true, head, ring),
            None => (false, 0, 0),
        };
        let unread = self.recv_buf.len() + usize::from(self.recv_buf.has_out_of_order());
        CrashRecord {
            state: self.state,
            local: self.local,
            remote: self.remote,
            iss: self.iss,
            irs: self.irs,
            snd_una: self.snd_una,
            snd_nxt: self.snd_nxt,
            snd_max: self.snd_max,
            snd_wl1: self.snd_wl1,
            snd_wl2: self.snd_wl2,
            snd_wnd: saturating_u32(self.snd_wnd),
            rcv_nxt: self.rcv_nxt,
            rcv_wnd: saturating_u32(self.announced_window()),
            // Before the handshake settles them the shifts are only our offer.
            snd_wscale: if self.ws_ok { self.snd_wscale } else { 0 },
            rcv_wscale: if self.ws_ok { self.rcv_wscale } else { 0 },
            ws_ok: self.ws_ok,
            snd_mss: u16::try_from(self.snd_mss()).unwrap_or(u16::MAX),
            our_mss: u16::try_from(self.our_mss).unwrap_or(u16::MAX),
            sack_ok: self.sack_ok,
            ts_ok: self.ts_ok,
            ts_recent: self.ts_recent,
            ts_val: self.ts_now(now),
            fin_queued: self.fin_queued,
            fin_received: self.fin_received,
            unread: saturating_u32(unread),
            ring_shared,
            send_head: saturating_u32(send_head),
            send_len: saturating_u32(self.send_buf.len()),
            ring_size: saturating_u32(ring_size),
            send_capacity: saturating_u32(self.send_buf.capacity().max(1)),
            recv_capacity: saturating_u32(self.recv_buf.capacity().max(1)),
            time_wait_ms: millis(self.config.time_wait),
            fin_timeout_ms: millis(self.config.fin_timeout),
            linger_zero: self.config.linger == Some(Duration::ZERO),
            nodelay: self.config.nodelay,
            stamp_us: 0,
        }
    }

    /// Rebuilds a connection from a crash record (untrusted: written by another process) and
    /// the queued bytes in order (`queue`, exactly `record.send_len` bytes). `config` supplies
    /// what the record does not carry (congestion algorithm, RTO bounds, …); `since_publish`
    /// is how long ago the record was published. The connection is not closed yet: the caller
    /// calls [`TcpConnection::close`] (queued data, then FIN) once it holds it.
    ///
    /// Only synchronized states rebuild (a connection still opening, or already closed, has
    /// nothing to deliver); any contradiction in the record is an error, never a panic.
    pub fn from_crash_record(
        record: &CrashRecord,
        queue: &[u8],
        config: TcpConfig,
        now: Instant,
        since_publish: Duration,
    ) -> Result<TcpConnection, CrashRecordError> {
        let invalid = CrashRecordError::Invalid;
        let r = record;
        if !r.state.is_synchronized() {
            return Err(invalid("state not synchronized"));
        }
        if queue.len() != r.send_len as usize || queue.len() > MAX_CAPACITY {
            return Err(invalid("queued bytes"));
        }
        if r.snd_mss < MIN_SND_MSS as u16 || r.our_mss < MIN_SND_MSS as u16 {
            return Err(invalid("mss"));
        }
        if r.snd_wscale > 14 || r.rcv_wscale > 14 || (!r.ws_ok && r.snd_wscale + r.rcv_wscale > 0) {
            return Err(invalid("window scale"));
        }
        // The SYN is acknowledged in every synchronized state: byte 0 of the queue is SND.UNA.
        if r.snd_una == r.iss {
            return Err(invalid("SYN not acknowledged"));
        }
        let ordered = r.snd_una <= r.snd_nxt && r.snd_nxt <= r.snd_max;
        // In flight at most the queue and the FIN.
        let flight = r.snd_max - r.snd_una;
        if !ordered || flight < 0 || flight as usize > queue.len() + usize::from(r.fin_queued) {
            return Err(invalid("send sequence space"));
        }
        // What each state implies about our FIN and the peer's.
        let (fin_ours, fin_theirs, fin_acked) = match r.state {
            State::Established => (false, false, false),
            State::CloseWait => (false, true, false),
            State::FinWait1 => (true, false, false),
            State::Closing | State::LastAck => (true, true, false),
            State::FinWait2 => (true, false, true),
            State::TimeWait => (true, true, true),
            _ => return Err(invalid("state not synchronized")),
        };
        if r.fin_queued != fin_ours || r.fin_received != fin_theirs {
            return Err(invalid("FIN flags contradict the state"));
        }
        if fin_acked && (!queue.is_empty() || r.snd_una != r.snd_max) {
            return Err(invalid("data after an acknowledged FIN"));
        }
        if r.snd_wnd as usize > 65_535 << 14 || r.rcv_wnd as usize > 65_535 << 14 {
            return Err(invalid("window"));
        }
        let recv_buffer = (r.recv_capacity as usize).clamp(1, MAX_CAPACITY);
        let send_buffer = (r.send_capacity as usize)
            .max(queue.len())
            .clamp(1, MAX_CAPACITY);
        let close_timer = |ms: u32| Duration::from_millis(u64::from(ms)).min(MAX_CLOSE_TIMER);
        let config = TcpConfig {
            mss: r.our_mss,
            recv_buffer,
            send_buffer,
            nodelay: r.nodelay,
            cork: false,
            time_wait: close_timer(r.time_wait_ms),
            fin_timeout: close_timer(r.fin_timeout_ms),
            linger: if r.linger_zero {
                Some(Duration::ZERO)
            } else {
                config.linger.filter(|l| *l != Duration::ZERO)
            },
            window_scaling: r.ws_ok,
            sack: r.sack_ok,
            timestamps: r.ts_ok,
            ..config
        };
        let elapsed_ms = millis(since_publish.min(MAX_ELAPSED));
        let initial = super::InitialSequence {
            iss: r.iss,
            // TSvals continue past every one the process can have sent.
            ts_offset: r.ts_val.wrapping_add(elapsed_ms).wrapping_add(1),
        };
        let mut conn = TcpConnection::base(config, r.local, r.remote, initial, now, r.state);
        let mut send_buf = SendBuffer::new(send_buffer);
        if send_buf.push(queue) != queue.len() {
            return Err(invalid("queued bytes"));
        }
        conn.send_buf = send_buf;
        conn.recv_buf = ReceiveBuffer::new(recv_buffer);
        conn.snd_una = r.snd_una;
        conn.snd_nxt = r.snd_una;
        conn.snd_max = r.snd_max;
        conn.snd_wnd = r.snd_wnd as usize;
        conn.max_snd_wnd = conn.snd_wnd;
        conn.snd_wl1 = r.snd_wl1;
        conn.snd_wl2 = r.snd_wl2;
        conn.fin_queued = r.fin_queued;
        conn.irs = r.irs;
        conn.rcv_nxt = r.rcv_nxt;
        conn.rcv_adv = r.rcv_nxt + r.rcv_wnd as usize;
        conn.fin_received = r.fin_received;
        conn.our_mss = usize::from(r.our_mss);
        conn.peer_mss = usize::from(r.snd_mss);
        conn.pmtu_mss = usize::MAX;
        conn.ws_ok = r.ws_ok;
        conn.snd_wscale = r.snd_wscale;
        conn.rcv_wscale = r.rcv_wscale;
        conn.sack_ok = r.sack_ok;
        conn.ts_ok = r.ts_ok;
        conn.ts_recent = r.ts_recent;
        conn.recovery_point = r.snd_una;
        conn.high_rxt = r.snd_una;
        conn.rexmit_high = r.snd_una;
        conn.cwnd_usage_seq = r.snd_una;
        let mss = conn.snd_mss();
        conn.cc.set_mss(mss);
        conn.cc.set_cwnd(INITIAL_WINDOW_SEGMENTS * mss);
        conn.quickack = 0;
        if conn.snd_max > conn.snd_una {
            conn.rto_at = Some(now + conn.rtt.rto());
        }
        if r.state == State::TimeWait {
            conn.time_wait_at = Some(now + conn.config.time_wait);
        }
        conn.wake = true;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::super::tests::drain;
    use super::super::{InitialSequence, RecvError, TcpConfig, TcpConnection};
    use super::*;
    use crate::stack::tcp::crash_record::{BLOCK_LEN, CrashRecord};
    use crate::wire::tcp::{TcpRepr, TcpSeqNumber};

    /// Shared memory stand-in: a fixed buffer the test can read back like a crash reader.
    #[derive(Debug)]
    struct Ring(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>, Vec<u8>);
    impl SharedRingStorage for Ring {
        fn bytes(&self) -> &[u8] {
            &self.1
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.1
        }
    }
    impl Drop for Ring {
        fn drop(&mut self) {
            *self.0.lock() = self.1.clone();
        }
    }

    fn a() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000)
    }

    fn b() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001)
    }

    /// One round both ways; segments from `x` are dropped when `drop_x`. Returns whether
    /// anything moved.
    fn round(x: &mut TcpConnection, y: &mut TcpConnection, now: Instant, drop_x: bool) -> bool {
        let xs = drain(x, now);
        let ys = drain(y, now);
        if !drop_x {
            for s in &xs {
                y.process(now, &s.repr());
            }
        }
        for s in &ys {
            x.process(now, &s.repr());
        }
        !(xs.is_empty() && ys.is_empty())
    }

    fn pair(config: TcpConfig, peer: TcpConfig) -> (TcpConnection, TcpConnection, Instant) {
        let mut now = Instant::from_secs(5);
        let mut client = TcpConnection::connect(
            config,
            a(),
            b(),
            InitialSequence {
                iss: TcpSeqNumber(u32::MAX - 100),
                ts_offset: 1000,
            },
            now,
        );
        let syn = drain(&mut client, now);
        let mut server = TcpConnection::accept(
            peer,
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
        while round(&mut client, &mut server, now, false) {
            now += Duration::from_micros(100);
        }
        assert_eq!(client.state(), State::Established);
        (client, server, now)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Attaches a shared ring; the returned cell receives its bytes when the connection dies.
    fn share(conn: &mut TcpConnection, size: usize) -> std::sync::Arc<parking_lot::Mutex<Vec<u8>>> {
        let cell = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        conn.attach_send_ring(Box::new(Ring(cell.clone(), vec![0; size])))
            .unwrap();
        cell
    }

    fn queue_of(record: &CrashRecord, ring: &[u8]) -> Vec<u8> {
        let [x, y] = record.queue_ranges();
        [&ring[x], &ring[y]].concat()
    }

    /// Runs the crash scenario: `written` bytes sent by A while B holds a small window and its
    /// ACKs are lost for a while, A optionally shut its write side or got B's FIN first; A is
    /// "killed", rebuilt from its record and closed; B then reads everything and sees EOF.
    fn crash_and_deliver(written: usize, a_shut: bool, b_fin: bool, ring: usize) {
        let peer = TcpConfig {
            recv_buffer: 8 * 1024,
            ..TcpConfig::default()
        };
        let (mut x, mut y, mut now) = pair(TcpConfig::default(), peer);
        let cell = share(&mut x, ring);
        if b_fin {
            y.shutdown_write(now);
            for _ in 0..4 {
                now += Duration::from_micros(100);
                round(&mut x, &mut y, now, false);
            }
            assert_eq!(x.state(), State::CloseWait);
        }
        let data = pattern(written);
        let mut off = 0;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        // Part of the data reaches B (which reads a little), the rest is queued or in flight
        // with its segments lost: at the crash some is unacknowledged, some unsent.
        for step in 0..200 {
            now += Duration::from_millis(1);
            while off < data.len() {
                match x.send(&data[off..]) {
                    Ok(n) => off += n,
                    Err(_) => break,
                }
            }
            if off == data.len()
                && a_shut
                && matches!(x.state(), State::Established | State::CloseWait)
            {
                x.shutdown_write(now);
            }
            round(&mut x, &mut y, now, step % 3 == 2);
            if step % 10 == 0
                && let Ok(n) = y.recv(&mut buf[..1000])
            {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert!(x.send_queue_len() > 0, "something must be left to deliver");
        let (record, _) = crash_clone(&x, now);
        drop(x);
        let ring_bytes = cell.lock().clone();
        let queue = queue_of(&record, &ring_bytes);
        now += Duration::from_millis(50);
        let mut z = TcpConnection::from_crash_record(
            &record,
            &queue,
            TcpConfig::default(),
            now,
            Duration::from_millis(50),
        )
        .unwrap();
        z.close(now);
        let mut eof = false;
        for _ in 0..20_000 {
            now += Duration::from_millis(1);
            round(&mut z, &mut y, now, false);
            match y.recv(&mut buf) {
                Ok(0) => eof = true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(RecvError::WouldBlock) => {}
                Err(e) => panic!("peer error {e:?}"),
            }
            if eof && !b_fin {
                y.close(now);
            }
            if eof && matches!(z.state(), State::TimeWait | State::Closed) {
                break;
            }
        }
        assert!(eof, "peer saw the end of the stream");
        assert_eq!(got.len(), off);
        assert!(
            got == data[..off],
            "every byte written is delivered, in order"
        );
        assert!(matches!(z.state(), State::TimeWait | State::Closed));
        assert_eq!(
            y.stats().dropped(super::super::TcpDropReason::PawsRejected),
            0
        );
    }

    fn crash_clone(x: &TcpConnection, now: Instant) -> (CrashRecord, Vec<u8>) {
        let mut page = vec![0u8; BLOCK_LEN];
        let record = x.crash_record(now);
        record.publish(&mut page).unwrap();
        let read = CrashRecord::read(&page).unwrap_or_else(|e| panic!("{e:?}: {record:?}"));
        (read.0, page)
    }

    #[test]
    fn rebuilt_connection_delivers_the_queue_then_fin() {
        crash_and_deliver(100_000, false, false, 256 * 1024);
        crash_and_deliver(30_000, true, false, 256 * 1024);
        crash_and_deliver(50_000, false, true, 256 * 1024);
        crash_and_deliver(50_000, true, true, 256 * 1024);
        // More than the ring holds: the queue has wrapped in it at the crash.
        crash_and_deliver(600_000, false, false, 256 * 1024);
    }

    #[test]
    fn record_round_trips_in_every_synchronized_state() {
        let (mut x, mut y, mut now) = pair(TcpConfig::default(), TcpConfig::default());
        let _cell = share(&mut x, 256 * 1024);
        let _cell_y = share(&mut y, 256 * 1024);
        x.send(b"hello").unwrap();
        y.send(b"world").unwrap();
        let mut seen = Vec::new();
        // Established → FIN_WAIT_1 → FIN_WAIT_2 → TIME_WAIT, and CLOSE_WAIT → LAST_ACK on
        // the other side, each one rebuilt from its record and compared.
        let mut check = |c: &TcpConnection, now: Instant| {
            let (r, _) = crash_clone(c, now);
            let queue: Vec<u8> = {
                let (q, _) = (c.send_buf.slices(0, c.send_buf.len()), ());
                [q[0], q[1]].concat()
            };
            let z = TcpConnection::from_crash_record(
                &r,
                &queue,
                TcpConfig::default(),
                now,
                Duration::ZERO,
            );
            match c.state() {
                State::SynSent | State::SynReceived | State::Closed | State::Listen => {
                    assert!(z.is_err());
                }
                s => {
                    let z = z.unwrap_or_else(|e| panic!("{s}: {e:?}"));
                    assert_eq!(z.state(), s);
                    assert_eq!(z.snd_una, c.snd_una);
                    assert_eq!(z.rcv_nxt, c.rcv_nxt);
                    assert_eq!(z.send_queue_len(), c.send_queue_len());
                    assert_eq!(z.snd_mss(), c.snd_mss());
                    assert!(z.ts_now(now) > c.ts_now(now));
                    let r2 = z.crash_record(now);
                    assert_eq!(
                        (
                            r2.snd_una,
                            r2.rcv_nxt,
                            r2.snd_wscale,
                            r2.rcv_wscale,
                            r2.sack_ok
                        ),
                        (r.snd_una, r.rcv_nxt, r.snd_wscale, r.rcv_wscale, r.sack_ok)
                    );
                }
            }
            seen.push(c.state());
        };
        check(&x, now);
        x.shutdown_write(now);
        check(&x, now);
        for _ in 0..3 {
            now += Duration::from_micros(100);
            round(&mut x, &mut y, now, false);
            check(&x, now);
            check(&y, now);
        }
        // Both read what they got (a close with unread data would be a reset).
        let mut sink = [0u8; 64];
        assert_eq!(y.recv(&mut sink), Ok(5));
        assert_eq!(x.recv(&mut sink), Ok(5));
        y.close(now);
        for _ in 0..3 {
            now += Duration::from_micros(100);
            round(&mut x, &mut y, now, false);
            check(&x, now);
            check(&y, now);
        }
        for s in [
            State::Established,
            State::FinWait1,
            State::FinWait2,
            State::CloseWait,
            State::LastAck,
            State::TimeWait,
        ] {
            assert!(seen.contains(&s), "state {s} not covered: {seen:?}");
        }
    }

    #[test]
    fn contradictory_records_are_refused() {
        let (mut x, _y, now) = pair(TcpConfig::default(), TcpConfig::default());
        let _cell = share(&mut x, 4096);
        x.send(&[5u8; 1000]).unwrap();
        let (good, _) = crash_clone(&x, now);
        let q = vec![5u8; 1000];
        let rebuild = |r: &CrashRecord, q: &[u8]| {
            TcpConnection::from_crash_record(r, q, TcpConfig::default(), now, Duration::ZERO)
        };
        assert!(rebuild(&good, &q).is_ok());
        assert!(rebuild(&good, &q[..999]).is_err(), "queue length");
        type Mutation = Box<dyn Fn(&mut CrashRecord)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("state", Box::new(|r| r.state = State::SynSent)),
            ("fin", Box::new(|r| r.fin_queued = true)),
            ("fin received", Box::new(|r| r.fin_received = true)),
            ("snd_nxt", Box::new(|r| r.snd_nxt = r.snd_una - 1usize)),
            ("snd_max", Box::new(|r| r.snd_max = r.snd_una + 5000usize)),
            ("syn", Box::new(|r| r.snd_una = r.iss)),
            ("mss", Box::new(|r| r.snd_mss = 10)),
            ("wscale", Box::new(|r| r.snd_wscale = 15)),
            ("window", Box::new(|r| r.rcv_wnd = u32::MAX)),
            (
                "fin-wait-2 with data",
                Box::new(|r| {
                    r.state = State::FinWait2;
                    r.fin_queued = true;
                }),
            ),
        ];
        for (what, mutate) in cases {
            let mut r = good;
            mutate(&mut r);
            assert!(rebuild(&r, &q).is_err(), "{what} accepted");
        }
        // Random scribbles on the block: decode or rebuild may fail, neither may panic.
        let mut page = vec![0u8; BLOCK_LEN];
        good.publish(&mut page).unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut p = page.clone();
            for _ in 0..3 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                p[(rng % BLOCK_LEN as u64) as usize] = (rng >> 40) as u8;
            }
            if let Ok((r, _)) = CrashRecord::read(&p) {
                let q = vec![1u8; r.send_len as usize];
                if let Ok(mut z) = rebuild(&r, &q) {
                    z.close(now);
                    let _ = drain(&mut z, now);
                    let _ = drain(&mut z, now + Duration::from_secs(2));
                }
            }
        }
    }

    #[test]
    fn segments_of_the_rebuilt_connection_carry_later_timestamps() {
        let (mut x, mut y, mut now) = pair(TcpConfig::default(), TcpConfig::default());
        let _cell = share(&mut x, 64 * 1024);
        x.send(&[1u8; 3000]).unwrap();
        now += Duration::from_millis(10);
        let sent = drain(&mut x, now);
        let last_ts = sent
            .iter()
            .filter_map(|s| s.repr.options.timestamps())
            .map(|(v, _)| v)
            .max()
            .unwrap();
        // The record was published 30 ms before the last segment left.
        let (record, _) = crash_clone(&x, now - Duration::from_millis(30));
        let q = [[1u8; 3000].as_slice()].concat();
        let mut z = TcpConnection::from_crash_record(
            &record,
            &q,
            TcpConfig::default(),
            Instant::from_secs(900),
            Duration::from_millis(31),
        )
        .unwrap();
        z.close(Instant::from_secs(900));
        let out = drain(&mut z, Instant::from_secs(900));
        let first = out[0].repr.options.timestamps().unwrap().0;
        assert!(
            first.wrapping_sub(last_ts) as i32 > 0,
            "{first} after {last_ts}"
        );
        for s in &out {
            assert!(y.process(now, &TcpRepr { ..s.repr() }) == super::super::Verdict::Accepted);
        }
        let _ = &mut y;
    }
}
