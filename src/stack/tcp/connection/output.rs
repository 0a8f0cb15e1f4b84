//! Timers and output: what `dispatch` sends and when (`poll_at`).
//!
//! Order within one dispatch: expired timers (TIME_WAIT, FIN_WAIT_2, retransmission, delayed
//! ACK, persist, keepalive, cork), then RSTs, the SYN or SYN-ACK, retransmissions chosen by loss
//! recovery (RFC 6675 NextSeg with SACK, RFC 6582 with NewReno), new data within
//! min(cwnd, peer window) subject to Nagle (RFC 9293 §3.7.4), TCP_CORK and sender-side SWS
//! avoidance (RFC 9293 §3.8.6.2.1), the FIN, probes, and last a pure ACK if one is owed.
#![forbid(unsafe_code)]

use super::{ConnError, EmitError, Outgoing, State, TcpConnection};
use crate::stack::tcp::scoreboard::Scoreboard;
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{SackBlocks, TcpControl, TcpOption, TcpOptions, TcpRepr, TcpSeqNumber};

/// What kind of segment `emit_segment` builds.
#[derive(Clone, Copy, Default)]
struct Shape {
    syn: bool,
    fin: bool,
    /// Include an ACK (every segment but the first SYN and some RSTs).
    ack: bool,
}

/// The SACKed range containing `seq`, if any.
fn sacked_range_at(sb: &Scoreboard, seq: TcpSeqNumber) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
    sb.ranges()
        .iter()
        .copied()
        .find(|&(s, e)| s <= seq && seq < e)
}

type Emit<'e> = dyn FnMut(Outgoing<'_>) -> Result<(), EmitError> + 'e;

impl TcpConnection {
    /// Expires timers, then sends everything that is due.
    pub fn dispatch(&mut self, now: Instant, emit: &mut Emit<'_>) {
        let mut probe = self.run_timers(now);
        match self.output(now, emit, &mut probe) {
            Ok(()) => self.wake = false,
            Err(EmitError) => self.wake = true,
        }
    }

    /// When `dispatch` next has work: `Some(t ≤ now)` if output is pending now.
    pub fn poll_at(&self) -> Option<Instant> {
        if self.wake || self.ack_now || self.rst_pending || self.pending_reset.is_some() {
            return Some(Instant::ZERO);
        }
        let unsent = self.unsent_len() > 0;
        [
            self.rto_at,
            self.delack_at,
            self.persist_at,
            self.keepalive_at,
            self.time_wait_at,
            self.fin_wait2_at,
            self.cork_at.filter(|_| unsent),
            Some(self.next_departure).filter(|_| unsent && self.pacing_active() && self.paced_hold),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs expired timers; returns whether a probe (zero-window or keepalive) is due.
    fn run_timers(&mut self, now: Instant) -> bool {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.time_wait_at) {
            self.enter_closed(now);
            return false;
        }
        if due(self.fin_wait2_at) && self.state == State::FinWait2 {
            self.enter_closed(now);
            return false;
        }
        if due(self.rto_at) {
            self.rto_at = None;
            self.on_retransmit_timeout(now);
            if self.state == State::Closed {
                return false;
            }
        }
        if due(self.delack_at) {
            self.delack_at = None;
            self.ack_now = true;
        }
        let mut probe = false;
        if due(self.persist_at) {
            // Linux zero-window probe: an old ACK (SEQ = SND.UNA − 1) the peer must answer
            // with its current window; the interval backs off like the RTO.
            probe = true;
            self.persist_force = self.snd_wnd > 0;
            self.persist_backoff = (self.persist_backoff + 1).min(16);
            self.persist_at = Some(now + self.persist_interval());
        }
        if due(self.keepalive_at) {
            if self.keepalive_probes >= self.config.keepalive_count {
                self.error = Some(ConnError::TimedOut);
                self.rst_pending = true;
                self.enter_closed(now);
                return false;
            }
            self.keepalive_probes += 1;
            probe = true;
            self.keepalive_at = Some(now + self.config.keepalive_interval);
        }
        if due(self.cork_at) {
            self.cork_at = None;
            self.cork_expired = true;
        }
        probe
    }

    fn persist_interval(&self) -> Duration {
        let base = self.rtt.base_rto();
        Duration(base.0.saturating_mul(1 << self.persist_backoff.min(16))).min(self.config.rto_max)
    }

    /// RFC 6298 (5.4)–(5.6) and the SYN retry limits.
    fn on_retransmit_timeout(&mut self, now: Instant) {
        match self.state {
            State::SynSent | State::SynReceived => {
                self.retries += 1;
                let limit = if self.state == State::SynSent {
                    self.config.syn_retries
                } else {
                    self.config.synack_retries
                };
                if self.retries > limit {
                    self.error = Some(ConnError::TimedOut);
                    self.enter_closed(now);
                    return;
                }
                self.rtt.on_timeout();
                self.snd_nxt = self.iss;
                self.stats.timeouts += 1;
            }
            _ if self.snd_una < self.snd_max => {
                self.retries += 1;
                let first = *self.first_retransmit_at.get_or_insert(now);
                let user_timed_out = self
                    .config
                    .user_timeout
                    .is_some_and(|t| now - first >= t && t > Duration::ZERO);
                if self.retries > self.config.retries2 || user_timed_out {
                    self.error = Some(ConnError::TimedOut);
                    self.enter_closed(now);
                    return;
                }
                let flight = (self.snd_max - self.snd_una) as usize;
                self.cc.on_rto(now, flight);
                self.rtt.on_timeout();
                // Go back: everything from SND.UNA is resent; RFC 2018 §8: forget SACKs.
                self.snd_nxt = self.snd_una;
                self.scoreboard.clear();
                self.in_recovery = false;
                self.retransmit_next = false;
                self.dupacks = 0;
                self.rtt_sample = None;
                self.high_rxt = self.snd_una;
                self.stats.timeouts += 1;
                // A timeout episode is not undone; reordering evidence is reset as Linux
                // tcp_enter_loss does.
                self.undo_marker = None;
                self.undo_retrans = None;
                self.retrans_stamp = None;
                self.reordering = self.reordering.min(super::MIN_REORDERING);
            }
            _ => {}
        }
        self.wake = true;
    }

    fn output(
        &mut self,
        now: Instant,
        emit: &mut Emit<'_>,
        probe: &mut bool,
    ) -> Result<(), EmitError> {
        if let Some((seq, ack)) = self.pending_reset {
            let shape = Shape {
                ack: ack.is_some(),
                ..Shape::default()
            };
            self.emit_control(now, emit, seq, shape, ack, true)?;
            self.pending_reset = None;
        }
        if self.rst_pending {
            let seq = self.snd_nxt.max(self.snd_una);
            let ack = Some(self.rcv_nxt);
            self.emit_control(
                now,
                emit,
                seq,
                Shape {
                    ack: true,
                    ..Shape::default()
                },
                ack,
                true,
            )?;
            self.rst_pending = false;
        }
        match self.state {
            State::Closed | State::Listen => {
                self.ack_now = false;
                return Ok(());
            }
            State::SynSent | State::SynReceived => {
                if self.snd_nxt == self.iss {
                    let shape = Shape {
                        syn: true,
                        ack: self.state == State::SynReceived,
                        ..Shape::default()
                    };
                    self.emit_segment(now, emit, self.iss, 0, shape)?;
                    self.snd_nxt = self.iss + 1;
                    self.snd_max = self.snd_max.max(self.snd_nxt);
                    if self.rto_at.is_none() {
                        self.rto_at = Some(now + self.rtt.rto());
                    }
                }
                if self.state == State::SynSent || !self.ack_now {
                    self.ack_now = false;
                    return Ok(());
                }
            }
            _ => {}
        }
        if self.state.is_synchronized()
            || self.state == State::SynReceived && self.snd_una != self.iss
        {
            self.send_data(now, emit)?;
        }
        if *probe {
            let seq = self.snd_una - 1;
            self.emit_control(
                now,
                emit,
                seq,
                Shape {
                    ack: true,
                    ..Shape::default()
                },
                Some(self.rcv_nxt),
                false,
            )?;
            *probe = false;
        }
        if self.ack_now && self.state != State::SynSent {
            // SND.MAX, not SND.NXT: after a timeout pulled SND.NXT back, an ACK numbered
            // below the peer's RCV.NXT would itself be unacceptable and answered (BSD).
            let seq = self.snd_max;
            self.emit_segment(
                now,
                emit,
                seq,
                0,
                Shape {
                    ack: true,
                    ..Shape::default()
                },
            )?;
        }
        Ok(())
    }

    /// Retransmissions and new data (and the FIN) as windows, Nagle, cork and pacing allow.
    fn send_data(&mut self, now: Instant, emit: &mut Emit<'_>) -> Result<(), EmitError> {
        self.paced_hold = false;
        // SACK blocks ride on data segments while we hold out-of-order data: leave room for
        // the largest block list so no segment exceeds the MSS (Linux tcp_current_mss).
        let sack_room = match (self.sack_ok && self.recv_buf.has_out_of_order(), self.ts_ok) {
            (false, _) => 0,
            (true, true) => 28,
            (true, false) => 36,
        };
        let mss = self.effective_mss() - sack_room;
        let data_start = self.data_start();
        let data_end = data_start + self.send_buf.len();
        let fin_allowed = self.fin_queued
            && matches!(
                self.state,
                State::FinWait1 | State::Closing | State::LastAck
            );
        // Idle restart (RFC 5681 §4.1): nothing in flight for longer than an RTO.
        if self.snd_una == self.snd_max
            && self.unsent_len() > 0
            && now - self.last_send_at > self.rtt.rto()
            && self.stats.data_segs_out > 0
        {
            self.cc.on_restart_after_idle(now, self.rtt.rto());
        }
        self.scoreboard.set_dupthresh(self.dupthresh());
        let mut sent_any = false;
        let result = self.send_loop(now, emit, mss, data_end, fin_allowed, &mut sent_any);
        self.cwnd_validate(mss, sent_any);
        result
    }

    /// Linux `tcp_cwnd_validate`: after a transmission round, latch whether cwnd limited it
    /// and track the most bytes outstanding, both per window of data (until SND.UNA passes
    /// the SND.MAX at which the window began).
    fn cwnd_validate(&mut self, mss: usize, sent_any: bool) {
        let flight = if self.in_recovery && self.sack_ok {
            self.scoreboard
                .pipe(self.snd_una, self.snd_max, self.high_rxt, mss)
        } else {
            (self.snd_nxt - self.snd_una).max(0) as usize
        };
        let limited = flight + mss > self.cc.cwnd();
        if !sent_any && !limited {
            return;
        }
        let outstanding = (self.snd_max - self.snd_una).max(0) as usize;
        if self.snd_una >= self.cwnd_usage_seq
            || limited
            || (!self.cwnd_limited && outstanding > self.max_flight)
        {
            self.cwnd_limited = limited;
            self.max_flight = outstanding;
            self.cwnd_usage_seq = self.snd_max;
        }
    }

    /// A retransmission of `[seq, seq + len)` left: counters (TCP_INFO total_retrans), the
    /// highest retransmitted sequence, and the undo bookkeeping of the episode.
    fn note_retransmission(&mut self, now: Instant, seq: TcpSeqNumber, len: usize) {
        self.stats.retransmits += 1;
        self.stats.bytes_retrans += len as u64;
        let end = seq + len;
        if end > self.rexmit_high {
            self.rexmit_high = end;
        }
        if self.undo_marker.is_some() {
            self.undo_retrans = Some(self.undo_retrans.map_or(1, |n| n.saturating_add(1)));
        }
        if self.retrans_stamp.is_none() {
            self.retrans_stamp = Some(self.ts_now(now));
        }
    }

    /// The body of [`Self::send_data`]: sets `sent_any` when a segment with data (or FIN)
    /// left.
    fn send_loop(
        &mut self,
        now: Instant,
        emit: &mut Emit<'_>,
        mss: usize,
        data_end: TcpSeqNumber,
        fin_allowed: bool,
        sent_any: &mut bool,
    ) -> Result<(), EmitError> {
        for _ in 0..100_000 {
            if self.pacing_active() && self.next_departure > now {
                self.paced_hold = true;
                break;
            }
            // 1. A retransmission chosen by loss recovery.
            if self.retransmit_next || (self.in_recovery && self.sack_ok) {
                let pipe = self
                    .scoreboard
                    .pipe(self.snd_una, self.snd_max, self.high_rxt, mss);
                let first = self.retransmit_next;
                if first || pipe < self.cc.cwnd() {
                    let hole = if self.sack_ok {
                        self.scoreboard
                            .next_seg(self.snd_una, self.snd_max, self.high_rxt, mss)
                    } else {
                        None
                    }
                    .or_else(|| first.then_some((self.snd_una, mss)));
                    if let Some((seq, len)) = hole {
                        let len = self.retransmit_len(seq, len, data_end);
                        let fin = fin_allowed && seq + len == data_end && self.snd_max > data_end;
                        if len > 0 || fin {
                            self.emit_segment(
                                now,
                                emit,
                                seq,
                                len,
                                Shape {
                                    ack: true,
                                    fin,
                                    ..Shape::default()
                                },
                            )?;
                            self.retransmit_next = false;
                            self.high_rxt = self.high_rxt.max(seq + len + usize::from(fin));
                            self.note_retransmission(now, seq, len);
                            *sent_any = true;
                            self.arm_rto(now);
                            continue;
                        }
                    }
                    self.retransmit_next = false;
                }
                if self.in_recovery && self.sack_ok && pipe >= self.cc.cwnd() {
                    break;
                }
            }

            // 2. Go-back retransmission or new data at SND.NXT.
            if self.snd_nxt < self.snd_max
                && let Some((_, end)) = sacked_range_at(&self.scoreboard, self.snd_nxt)
            {
                self.snd_nxt = end;
                continue;
            }
            let seq = self.snd_nxt;
            let unsent = (data_end - seq).max(0) as usize;
            if unsent == 0 && !(fin_allowed && seq == data_end) {
                break;
            }
            let flight = if self.in_recovery && self.sack_ok {
                self.scoreboard
                    .pipe(self.snd_una, self.snd_max, self.high_rxt, mss)
            } else {
                (seq - self.snd_una).max(0) as usize
            };
            let cwnd_room = self.cc.cwnd().saturating_sub(flight);
            let wnd_room = ((self.snd_una + self.snd_wnd) - seq).max(0) as usize;
            let room = cwnd_room.min(wnd_room);
            let len = unsent.min(mss).min(room);
            let retransmission = seq < self.snd_max;
            if unsent > 0 && len < unsent.min(mss) {
                // Limited by a window. Sender SWS avoidance: only send a partial segment when
                // it is at least half the largest window the peer offered.
                // The persist timer doubles as the RFC 1122 §4.2.3.4 override: when it fires
                // into a small open window, the partial segment goes.
                let window_limited = wnd_room <= cwnd_room;
                let sws_ok = len > 0
                    && window_limited
                    && (len >= self.max_snd_wnd / 2 || self.persist_force);
                if !sws_ok {
                    if flight == 0 && self.persist_at.is_none() && self.rto_at.is_none() {
                        self.persist_at = Some(now + self.persist_interval());
                    }
                    break;
                }
            }
            if unsent > 0 && len < mss && len == unsent && !retransmission {
                // A partial tail: Nagle holds it while data is unacknowledged, cork until full.
                let fin_with_it = fin_allowed;
                let nagle_holds =
                    !self.config.nodelay && self.snd_max > self.snd_una && !fin_with_it;
                let cork_holds = self.config.cork && !self.cork_expired && !fin_with_it;
                if cork_holds && self.cork_at.is_none() {
                    // Linux holds corked data at most 200 ms from when it was held.
                    self.cork_at = Some(now + super::CORK_LIMIT);
                }
                if nagle_holds || cork_holds {
                    break;
                }
            }
            let fin = fin_allowed && seq + len == data_end;
            if len == 0 && !fin {
                break;
            }
            self.emit_segment(
                now,
                emit,
                seq,
                len,
                Shape {
                    ack: true,
                    fin,
                    ..Shape::default()
                },
            )?;
            self.persist_force = false;
            *sent_any = true;
            if retransmission {
                self.note_retransmission(now, seq, len);
            } else if self.rtt_sample.is_none() && len > 0 {
                self.rtt_sample = Some((seq + len, now));
            }
            self.snd_nxt = seq + len + usize::from(fin);
            self.snd_max = self.snd_max.max(self.snd_nxt);
            if self.snd_nxt == data_end {
                self.cork_expired = false;
            }
            self.arm_rto(now);
            if fin {
                break;
            }
        }
        Ok(())
    }

    /// Retransmissions never cross into unsent data or a SACKed range.
    fn retransmit_len(&self, seq: TcpSeqNumber, len: usize, data_end: TcpSeqNumber) -> usize {
        let mut len = len.min((self.snd_max.min(data_end) - seq).max(0) as usize);
        if let Some(next_sacked) = self.scoreboard.highest_sacked()
            && next_sacked > seq
        {
            // Stop at the first SACKed byte above `seq`.
            let mut probe = seq;
            let stop = seq + len;
            while probe < stop {
                if let Some((start, _)) = sacked_range_at(&self.scoreboard, probe) {
                    len = (start - seq).max(0) as usize;
                    break;
                }
                probe += 1.max(len / 8);
            }
        }
        len
    }

    fn arm_rto(&mut self, now: Instant) {
        if self.rto_at.is_none() && self.snd_una < self.snd_max {
            self.rto_at = Some(now + self.rtt.rto());
        }
        self.persist_at = None;
    }

    /// Window to announce now (RFC 9293 §3.8.6.2.2 receiver SWS avoidance; never shrinks).
    fn window_to_announce(&self) -> usize {
        let free = self.recv_buf.window();
        let current = self.announced_window();
        if free <= current {
            return current;
        }
        let threshold = (self.recv_buf.capacity() / 2).min(self.our_mss);
        if free - current >= threshold {
            free
        } else {
            current
        }
    }

    fn emit_control(
        &mut self,
        now: Instant,
        emit: &mut Emit<'_>,
        seq: TcpSeqNumber,
        shape: Shape,
        ack: Option<TcpSeqNumber>,
        rst: bool,
    ) -> Result<(), EmitError> {
        let mut options = TcpOptions::default();
        if self.ts_ok && !rst {
            let _ = options.push_aligned(TcpOption::Timestamps {
                tsval: self.ts_now(now),
                tsecr: self.ts_recent,
            });
        }
        let window = if rst { 0 } else { self.scaled_window().0 };
        let repr = TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq_number: seq,
            ack_number: if shape.ack { ack } else { None },
            control: TcpControl {
                rst,
                ..TcpControl::NONE
            },
            window_len: window,
            urgent_pointer: None,
            options,
            payload: &[],
        };
        emit(Outgoing {
            repr,
            payload: [&[], &[]],
            departure: now,
        })?;
        self.stats.segs_out += 1;
        Ok(())
    }

    /// The window field and the right edge it announces.
    fn scaled_window(&self) -> (u16, TcpSeqNumber) {
        let shift = self.rcv_wscale;
        let wnd = self.window_to_announce();
        let mut field = (wnd >> shift).min(65_535);
        let mut edge = self.rcv_nxt + (field << shift);
        if edge < self.rcv_adv {
            let need = (self.rcv_adv - self.rcv_nxt) as usize;
            field = need.div_ceil(1 << shift).min(65_535);
            edge = self.rcv_nxt + (field << shift);
        }
        (field as u16, edge)
    }

    fn emit_segment(
        &mut self,
        now: Instant,
        emit: &mut Emit<'_>,
        seq: TcpSeqNumber,
        len: usize,
        shape: Shape,
    ) -> Result<(), EmitError> {
        let mut options = TcpOptions::default();
        let (window, edge) = if shape.syn {
            // RFC 7323 §2.2: the SYN's window is not scaled.
            let w = self.recv_buf.window().min(65_535);
            (w as u16, self.rcv_nxt + w)
        } else {
            self.scaled_window()
        };
        let tsval = self.ts_now(now);
        if shape.syn {
            let passive = self.state == State::SynReceived;
            let _ = options.push(TcpOption::MaxSegmentSize(self.our_mss.min(65_535) as u16));
            if self.config.sack && (!passive || self.sack_ok) {
                let _ = options.push(TcpOption::SackPermitted);
            }
            if self.config.timestamps && (!passive || self.ts_ok) {
                let tsecr = if passive { self.ts_recent } else { 0 };
                if !(self.config.sack && (!passive || self.sack_ok)) {
                    let _ = options.push(TcpOption::NoOperation);
                    let _ = options.push(TcpOption::NoOperation);
                }
                let _ = options.push(TcpOption::Timestamps { tsval, tsecr });
            }
            if self.config.window_scaling && (!passive || self.ws_ok) {
                let _ = options.push(TcpOption::NoOperation);
                let _ = options.push(TcpOption::WindowScale(self.rcv_wscale));
            }
        } else {
            if self.ts_ok {
                let _ = options.push_aligned(TcpOption::Timestamps {
                    tsval,
                    tsecr: self.ts_recent,
                });
            }
            if self.sack_ok && self.recv_buf.has_out_of_order() && shape.ack {
                let mut blocks = [(TcpSeqNumber(0), TcpSeqNumber(0)); 4];
                let max = if self.ts_ok { 3 } else { 4 };
                let n = self.recv_buf.sack_blocks(self.rcv_nxt, &mut blocks[..max]);
                if let Some(sack) = SackBlocks::new(&blocks[..n]) {
                    let _ = options.push_aligned(TcpOption::SackRange(sack));
                }
            }
        }
        let data_start = self.data_start();
        let offset = (seq - data_start).max(0) as usize;
        let payload = if len > 0 {
            self.send_buf.slices(offset, len)
        } else {
            [&[][..], &[][..]]
        };
        let sent_len = payload[0].len() + payload[1].len();
        let data_end = data_start + self.send_buf.len();
        let urgent_pointer = self
            .snd_up
            .filter(|&up| up > seq)
            .map(|up| ((up - seq) as usize).min(65_535) as u16);
        let departure = if self.pacing_active() {
            self.next_departure.max(now)
        } else {
            now
        };
        let repr = TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq_number: seq,
            ack_number: if shape.ack { Some(self.rcv_nxt) } else { None },
            control: TcpControl {
                syn: shape.syn,
                fin: shape.fin,
                psh: sent_len > 0 && seq + sent_len == data_end,
                ..TcpControl::NONE
            },
            window_len: window,
            urgent_pointer,
            options,
            payload: &[],
        };
        emit(Outgoing {
            repr,
            payload,
            departure,
        })?;
        // Sent.
        self.stats.segs_out += 1;
        if sent_len > 0 {
            self.stats.data_segs_out += 1;
            self.stats.bytes_sent += sent_len as u64;
            self.last_send_at = now;
        }
        if shape.ack {
            self.ack_now = false;
            self.delack_at = None;
            self.unacked_segments = 0;
            if edge > self.rcv_adv {
                self.rcv_adv = edge;
            }
        }
        if self.pacing_active() && sent_len > 0 {
            let rate = self.pacing_rate().unwrap_or(u64::MAX).max(1);
            let wire = (sent_len + 40) as u64;
            self.next_departure = departure + Duration(wire.saturating_mul(1_000_000) / rate);
        }
        Ok(())
    }
}
