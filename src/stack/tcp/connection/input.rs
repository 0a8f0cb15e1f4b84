//! Segment arrival (RFC 9293 §3.10.7), with RFC 5961 hardening, RFC 7323 PAWS and the ACK
//! processing that drives RTT, congestion control and loss recovery (RFC 5681, 6582, 6675).
#![forbid(unsafe_code)]

use super::{
    ConnError, MAX_REORDERING, MIN_REORDERING, OOW_ANSWER_INTERVAL, State, TcpConnection,
    TcpDropReason, Verdict,
};
use crate::stack::tcp::rtt::RttEstimator;
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{TcpControl, TcpRepr, TcpSeqNumber};

impl TcpConnection {
    /// Processes one segment of this connection's 4-tuple. Replies (ACKs, challenge ACKs, RST)
    /// are queued for the next `dispatch`.
    pub fn process(&mut self, now: Instant, seg: &TcpRepr<'_>) -> Verdict {
        if seg.src_port != self.remote.port() || seg.dst_port != self.local.port() {
            return self.count_drop(TcpDropReason::WrongPorts);
        }
        self.stats.segs_in += 1;
        self.wake = true;
        match self.state {
            State::Closed => {
                // RFC 9293 §3.10.7.1: a closed connection answers with RST (unless RST).
                if !seg.control.rst {
                    self.queue_reset_reply(seg);
                }
                self.count_drop(TcpDropReason::NoConnection)
            }
            State::Listen => self.count_drop(TcpDropReason::BadState),
            State::SynSent => self.process_syn_sent(now, seg),
            _ => self.process_synchronized(now, seg),
        }
    }

    /// RFC 9293 §3.10.7.3.
    fn process_syn_sent(&mut self, now: Instant, seg: &TcpRepr<'_>) -> Verdict {
        let mut ack_ok = false;
        if let Some(ack) = seg.ack_number {
            // "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset (unless the RST bit is
            // set, if so drop the segment and return)".
            if ack <= self.iss || ack > self.snd_max {
                if !seg.control.rst {
                    self.queue_reset_reply(seg);
                }
                return self.count_drop(TcpDropReason::BadAck);
            }
            ack_ok = true;
        }
        if seg.control.rst {
            // "If the ACK was acceptable, then signal to the user 'error: connection reset',
            // drop the segment, enter CLOSED state"; an RST without ACK is dropped.
            if ack_ok {
                self.error = Some(ConnError::Refused);
                self.enter_closed(now);
                return Verdict::Accepted;
            }
            return self.count_drop(TcpDropReason::NoAck);
        }
        if !seg.control.syn {
            return self.count_drop(TcpDropReason::NoAck);
        }
        self.take_syn_options(seg, true);
        self.irs = seg.seq_number;
        self.rcv_nxt = seg.seq_number + 1;
        self.rcv_adv = self.rcv_nxt;
        self.snd_wnd = usize::from(seg.window_len);
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = seg.seq_number;
        self.last_recv_at = now;
        if ack_ok {
            // "If SND.UNA > ISS (our SYN has been ACKed), change the connection state to
            // ESTABLISHED, form an ACK segment and send it".
            let ack = seg.ack_number.unwrap_or(self.snd_una);
            self.snd_una = ack;
            self.snd_wl2 = ack;
            if self.retries == 0 {
                self.rtt.on_sample(now - self.ts_origin);
            } else {
                // RFC 6298 (5.7): the SYN was retransmitted, start data with RTO = 3 s.
                self.rtt = RttEstimator::new(
                    Duration::from_secs(3).max(self.config.rto_min),
                    self.config.rto_min,
                    self.config.rto_max,
                );
            }
            self.retries = 0;
            self.rto_at = None;
            self.state = State::Established;
            self.ack_now = true;
            self.on_established(now);
        } else {
            // Simultaneous open: "enter SYN-RECEIVED, form a SYN,ACK segment and send it".
            self.state = State::SynReceived;
            self.snd_nxt = self.iss;
            self.ack_now = true;
        }
        Verdict::Accepted
    }

    fn on_established(&mut self, now: Instant) {
        self.last_ack_recv_at = now;
        if self.config.keepalive {
            self.keepalive_at = Some(now + self.config.keepalive_idle);
        }
    }

    /// Whether a segment of `seg_len` starting at `seq` is acceptable (RFC 9293 §3.10.7.4).
    pub(super) fn acceptable(&self, seq: TcpSeqNumber, seg_len: usize) -> bool {
        let wnd = self
            .announced_window()
            .max(if self.recv_buf.window() > 0 { 1 } else { 0 });
        let rcv_nxt = self.rcv_nxt;
        let in_window = |s: TcpSeqNumber| s >= rcv_nxt && s < rcv_nxt + wnd;
        match (seg_len, wnd) {
            (0, 0) => seq == rcv_nxt,
            // The right edge too (Linux's `tcp_sequence`: `!after(seq, rcv_nxt + wnd)`): a peer
            // whose probe filled the window, and was dropped for want of buffer, sends its
            // ACKs from there. Refusing them loses every ACK and window update it sends while
            // this side, blocked sending, cannot read: both ends stall.
            (0, _) => seq >= rcv_nxt && seq <= rcv_nxt + wnd,
            (_, 0) => false,
            (len, _) => in_window(seq) || in_window(seq + (len - 1)),
        }
    }

    fn challenge_ack(&mut self, now: Instant) {
        let second = now.as_micros() / 1_000_000;
        if second != self.challenge_second {
            self.challenge_second = second;
            self.challenge_budget = super::CHALLENGE_ACKS_PER_SECOND;
        }
        if self.challenge_budget > 0 {
            self.challenge_budget -= 1;
            self.stats.challenge_acks += 1;
            self.ack_now = true;
        }
    }

    /// Linux `tcp_oow_rate_limited`: whether the answer to an out-of-window or PAWS-failed
    /// segment is suppressed. Segments with data (not SYN) are always answered (they are not
    /// part of an ACK loop); others at most once per [`OOW_ANSWER_INTERVAL`] per connection.
    fn oow_rate_limited(&mut self, now: Instant, seg: &TcpRepr<'_>) -> bool {
        let data = !seg.payload.is_empty() || seg.control.fin;
        if data && !seg.control.syn {
            return false;
        }
        if self
            .last_oow_ack_at
            .is_some_and(|t| now - t < OOW_ANSWER_INTERVAL)
        {
            return true;
        }
        self.last_oow_ack_at = Some(now);
        false
    }

    /// Linux `tcp_disordered_ack`: a PAWS failure to let through — a pure ACK at RCV.NXT that
    /// duplicates SND.UNA, would not update the window, and whose TSval is within one RTO of
    /// TS.Recent (an ACK overtaken by a later one, not an old duplicate).
    fn disordered_ack(&self, seg: &TcpRepr<'_>, tsval: u32) -> bool {
        let Some(ack) = seg.ack_number else {
            return false;
        };
        let pure = seg.payload.is_empty() && !seg.control.syn && !seg.control.fin;
        let window = usize::from(seg.window_len) << self.snd_wscale;
        let seq = seg.seq_number;
        // Linux tcp_may_update_window.
        let may_update_window = ack > self.snd_una
            || seq > self.snd_wl1
            || (seq == self.snd_wl1 && (window > self.snd_wnd || window == 0));
        let replay_ms = u32::try_from(self.rtt.rto().as_micros() / 1000).unwrap_or(u32::MAX);
        pure && seq == self.rcv_nxt
            && ack == self.snd_una
            && !may_update_window
            && self.ts_recent.wrapping_sub(tsval) <= replay_ms
    }

    fn process_synchronized(&mut self, now: Instant, seg: &TcpRepr<'_>) -> Verdict {
        let payload_len = seg.payload.len();
        let seg_len = payload_len + usize::from(seg.control.syn) + usize::from(seg.control.fin);

        // RFC 7323 §5.3 PAWS: a timestamp older than TS.Recent marks an old duplicate.
        let seg_ts = if self.ts_ok {
            seg.options.timestamps()
        } else {
            None
        };
        if let Some((tsval, _)) = seg_ts
            && !seg.control.rst
            && (tsval.wrapping_sub(self.ts_recent) as i32) < 0
            && !self.disordered_ack(seg, tsval)
        {
            // Linux tcp_validate_incoming: a duplicate ACK answers, rate limited for segments
            // without data (tcp_oow_rate_limited) so two ends cannot ACK each other forever.
            if !self.oow_rate_limited(now, seg) {
                self.ack_now = true;
            }
            return self.count_drop(TcpDropReason::PawsRejected);
        }

        // Simultaneous open (RFC 9293 Figure 8): in SYN-RECEIVED the peer's SYN,ACK repeats
        // its SYN; it completes the handshake when it acknowledges ours, otherwise (a plain
        // retransmitted SYN) our SYN,ACK was lost and goes again.
        if self.state == State::SynReceived
            && seg.control.syn
            && !seg.control.rst
            && seg.seq_number + 1 == self.rcv_nxt
        {
            match seg.ack_number {
                Some(ack) if ack > self.snd_una && ack <= self.snd_max => {
                    let rest = TcpRepr {
                        seq_number: seg.seq_number + 1,
                        control: TcpControl {
                            syn: false,
                            ..seg.control
                        },
                        ..*seg
                    };
                    return self.process_synchronized(now, &rest);
                }
                _ => {
                    self.snd_nxt = self.iss;
                    return self.count_drop(TcpDropReason::SynInWindow);
                }
            }
        }

        // First: sequence number check.
        if !self.acceptable(seg.seq_number, seg_len) {
            if seg.control.rst {
                return self.count_drop(TcpDropReason::RstOutOfWindow);
            }
            if self.state == State::TimeWait && seg.control.fin {
                // A retransmitted FIN: re-ACK and restart the 2·MSL timer.
                self.time_wait_at = Some(now + self.config.time_wait);
            }
            // Pure ACKs out of window are answered at most twice a second (Linux
            // tcp_invalid_ratelimit) so two confused ends cannot ACK each other forever.
            if !self.oow_rate_limited(now, seg) {
                self.ack_now = true;
            }
            return self.count_drop(TcpDropReason::OutOfWindow);
        }

        // Second: RST (RFC 5961 §3.2: exact match resets, in-window gets a challenge ACK).
        if seg.control.rst {
            if seg.seq_number != self.rcv_nxt {
                self.challenge_ack(now);
                return self.count_drop(TcpDropReason::ChallengeAck);
            }
            match self.state {
                State::SynReceived => {
                    // Passive open: back to LISTEN, which for a connection object is gone.
                    self.error = Some(ConnError::Refused);
                }
                State::Established | State::FinWait1 | State::FinWait2 | State::CloseWait => {
                    self.error = Some(ConnError::Reset);
                }
                // CLOSING, LAST-ACK, TIME-WAIT: just close (Linux tcp_rfc1337 = 0).
                _ => {}
            }
            self.enter_closed(now);
            return Verdict::Accepted;
        }

        // Fourth: SYN in a synchronized state → challenge ACK (RFC 5961 §4.2).
        if seg.control.syn {
            if self.state == State::SynReceived && seg.seq_number + 1 == self.rcv_nxt {
                // Retransmitted SYN: our SYN-ACK was lost, send it again.
                self.snd_nxt = self.iss;
                return self.count_drop(TcpDropReason::SynInWindow);
            }
            self.challenge_ack(now);
            return self.count_drop(TcpDropReason::SynInWindow);
        }

        // Fifth: ACK.
        let Some(ack) = seg.ack_number else {
            return self.count_drop(TcpDropReason::NoAck);
        };
        if self.state == State::SynReceived {
            // "If SND.UNA < SEG.ACK =< SND.NXT, then enter ESTABLISHED state"; else RST.
            if ack > self.snd_una && ack <= self.snd_max {
                self.snd_una = ack;
                self.snd_wl1 = seg.seq_number;
                self.snd_wl2 = ack;
                self.snd_wnd = usize::from(seg.window_len) << self.snd_wscale;
                self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
                if self.retries == 0 {
                    self.rtt.on_sample(now - self.ts_origin);
                }
                self.retries = 0;
                self.rto_at = None;
                self.state = if self.fin_queued {
                    State::FinWait1
                } else {
                    State::Established
                };
                self.on_established(now);
            } else {
                self.queue_reset_reply(seg);
                return self.count_drop(TcpDropReason::BadAck);
            }
        }
        // RFC 5961 §5.2: acceptable ACKs lie in [SND.UNA − MAX.SND.WND, SND.MAX].
        if ack > self.snd_max {
            self.ack_now = true;
            return self.count_drop(TcpDropReason::BadAck);
        }
        if ack < self.snd_una - self.max_snd_wnd.max(1) {
            self.challenge_ack(now);
            return self.count_drop(TcpDropReason::BadAck);
        }

        self.last_recv_at = now;
        self.keepalive_probes = 0;
        if self.config.keepalive {
            self.keepalive_at = Some(now + self.config.keepalive_idle);
        }
        // RFC 7323 §4.3: TS.Recent follows the segment that covers the left window edge (and
        // never moves back: a disordered ACK let through PAWS carries an older TSval).
        if let Some((tsval, _)) = seg_ts
            && seg.seq_number <= self.rcv_nxt
            && (tsval.wrapping_sub(self.ts_recent) as i32) >= 0
        {
            self.ts_recent = tsval;
        }

        self.process_ack(now, seg, ack);
        if self.state == State::Closed {
            return Verdict::Accepted;
        }

        // Sixth: URG.
        if let Some(ptr) = seg.urgent_pointer
            && ptr > 0
            && matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            )
        {
            let urg = seg.seq_number + (usize::from(ptr) - 1);
            let newer = self.rcv_urg.is_none_or(|old| urg > old);
            if urg >= self.rcv_nxt && newer {
                self.rcv_urg = Some(urg);
                self.oob_byte = None;
            }
        }

        // Seventh: segment text.
        if payload_len > 0 {
            if self.user_closed && matches!(self.state, State::FinWait1 | State::FinWait2) {
                // Linux: data for an orphaned socket that can no longer be read → RST.
                self.rst_pending = true;
                self.error = Some(ConnError::Reset);
                self.enter_closed(now);
                return Verdict::Accepted;
            }
            if matches!(
                self.state,
                State::Established | State::FinWait1 | State::FinWait2
            ) {
                self.receive_data(now, seg);
            }
        }

        // Eighth: FIN.
        if seg.control.fin {
            let fin = seg.seq_number + payload_len;
            if fin == self.rcv_nxt {
                self.receive_fin(now);
            } else if fin > self.rcv_nxt {
                self.fin_seq = Some(fin);
                self.ack_now = true;
            }
        } else if let Some(fin) = self.fin_seq
            && fin == self.rcv_nxt
        {
            self.fin_seq = None;
            self.receive_fin(now);
        }
        Verdict::Accepted
    }

    /// RFC 9293 "fifth, check the ACK field" in ESTABLISHED and the closing states.
    fn process_ack(&mut self, now: Instant, seg: &TcpRepr<'_>, ack: TcpSeqNumber) {
        let window = usize::from(seg.window_len) << self.snd_wscale;
        let mss = self.effective_mss();
        let prior_una = self.snd_una;
        // Highest SACKed sequence before this ACK (Linux prior_fack).
        let prior_fack = self.scoreboard.highest_sacked().unwrap_or(self.snd_una);
        // Reordering evidence from the cumulative ACK: its lowest byte that was neither SACKed
        // nor ever retransmitted (Linux `reord` in tcp_clean_rtx_queue).
        let reord = self.snd_una.max(self.rexmit_high);
        let reord_unsacked = !self.scoreboard.is_sacked(reord);
        let tsecr = match seg.options.timestamps() {
            Some((_, tsecr)) if self.ts_ok && tsecr != 0 => Some(tsecr),
            _ => None,
        };
        if self.sack_ok
            && let Some(blocks) = seg.options.sack_blocks()
        {
            // The blocks are judged against the cumulative ACK they travel with (RFC 2883).
            let una = if ack > self.snd_una && ack <= self.snd_max {
                ack
            } else {
                self.snd_una
            };
            let blocks = blocks.as_slice();
            let up = self.scoreboard.on_sack(una, self.snd_max, blocks);
            if up.dsack
                && let Some(&first) = blocks.first()
            {
                self.stats.dsack_dups += 1;
                self.on_dsack(first, mss);
            }
            // A never-retransmitted byte SACKed below the highest SACKed one arrived late.
            if let Some(low) = up.lowest_new
                && low < prior_fack
                && low >= self.rexmit_high
            {
                self.check_reordering(low, prior_fack, mss);
            }
        }

        if ack > self.snd_una {
            let acked_seq = (ack - self.snd_una) as usize;
            // Bytes of the queue acknowledged (the FIN takes one sequence number).
            let data_start = self.data_start();
            let fin_acked = self.fin_queued && ack > self.fin_seq_out();
            let data_acked = ((ack - data_start).max(0) as usize)
                .min(self.send_buf.len())
                .min(acked_seq);
            let was_fin_sent = self.fin_queued && self.snd_max > self.fin_seq_out();
            self.send_buf.consume(data_acked);
            self.stats.bytes_acked += data_acked as u64;
            self.snd_una = ack;
            if self.snd_nxt < ack {
                self.snd_nxt = ack;
            }
            if let Some(up) = self.snd_up
                && ack >= up
            {
                self.snd_up = None;
            }
            self.scoreboard.on_cumulative_ack(ack);
            self.last_ack_recv_at = now;
            // A hole that was never retransmitted was filled below SACKed data: reordering.
            if reord < ack && reord < prior_fack && reord_unsacked {
                self.check_reordering(reord, prior_fack, mss);
            }
            let retransmitted_acked = prior_una < self.rexmit_high;
            if self.rexmit_high < ack {
                self.rexmit_high = ack;
            }
            // RTT (Karn: only samples whose segment was not retransmitted). Sequence-based
            // timing has microsecond resolution; the echoed timestamp (1 ms ticks) is used only
            // where that is impossible, for ACKs of retransmitted data (RFC 7323 §4, as Linux
            // tcp_ack_update_rtt).
            if let Some((seq, sent)) = self.rtt_sample
                && ack >= seq
            {
                self.rtt.on_sample(now - sent);
                self.rtt_sample = None;
            } else if retransmitted_acked && let Some(tsecr) = tsecr {
                let ms = self.ts_now(now).wrapping_sub(tsecr);
                if ms < 60_000 {
                    self.rtt
                        .on_sample(Duration::from_millis(u64::from(ms.max(1))));
                }
            }
            // Eifel detection (RFC 3522, Linux tcp_try_undo_recovery/_partial): the ACK echoes
            // a TSval from before the first retransmission, so the original arrived and the
            // window reduction was unnecessary.
            if self.in_recovery && self.undo_marker.is_some() && self.may_undo(tsecr) {
                self.undo_reduction(now, prior_fack, mss);
            }
            self.retries = 0;
            self.first_retransmit_at = None;
            self.rtt.reset_backoff();
            self.persist_backoff = 0;

            if self.in_recovery {
                if ack >= self.recovery_point {
                    // Full acknowledgement: leave recovery (RFC 6582 step 3 / RFC 6675).
                    self.in_recovery = false;
                    self.dupacks = 0;
                    self.cc.on_recovery_exit(now);
                } else {
                    // Partial acknowledgement: retransmit the next hole.
                    if !self.sack_ok {
                        let deflated = self.cc.cwnd().saturating_sub(data_acked) + mss;
                        self.cc.set_cwnd(deflated.max(mss));
                    }
                    self.high_rxt = self.high_rxt.max(ack);
                    self.retransmit_next = true;
                }
            } else {
                self.dupacks = 0;
                let cwnd_limited = self.is_cwnd_limited();
                self.cc
                    .on_ack(now, data_acked, self.rtt.srtt(), cwnd_limited);
            }
            // Restart or stop the retransmission timer (RFC 6298 (5.2), (5.3)).
            self.rto_at = if self.snd_una < self.snd_max {
                Some(now + self.rtt.rto())
            } else {
                None
            };

            if fin_acked && was_fin_sent {
                match self.state {
                    State::FinWait1 => {
                        self.state = State::FinWait2;
                        if self.user_closed {
                            self.fin_wait2_at = Some(now + self.config.fin_timeout);
                        }
                    }
                    State::Closing => self.enter_time_wait(now),
                    State::LastAck => {
                        self.enter_closed(now);
                        return;
                    }
                    _ => {}
                }
            }
        } else if ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.control.fin
            && window == self.snd_wnd
            && self.snd_una < self.snd_max
        {
            // Duplicate ACK (RFC 5681 §2).
            self.dupacks += 1;
            if self.in_recovery && !self.sack_ok {
                // NewReno: inflate by one segment per further duplicate.
                let cwnd = self.cc.cwnd() + mss;
                self.cc.set_cwnd(cwnd);
            }
        }

        // D-SACKs showed every retransmission of the episode unnecessary (RFC 3708, Linux
        // tcp_try_undo_dsack), also after recovery ended.
        if self.undo_marker.is_some() && self.undo_retrans == Some(0) {
            self.undo_reduction(now, prior_fack, mss);
        }
        if let Some(marker) = self.undo_marker
            && self.snd_una - marker > (1 << 30)
        {
            self.undo_marker = None; // too old to compare safely
        }

        // Enter loss recovery on DupThresh duplicates or when SACK shows the first hole lost;
        // DupThresh is the reordering degree observed (at least 3).
        let dupthresh = self.dupthresh();
        self.scoreboard.set_dupthresh(dupthresh);
        if !self.in_recovery
            && self.snd_una < self.snd_max
            && (self.dupacks as usize >= dupthresh
                || (self.sack_ok && self.scoreboard.is_lost(self.snd_una, mss)))
        {
            self.enter_recovery(now);
        }

        // Window update (RFC 9293: SND.WL1 < SEG.SEQ or (= and SND.WL2 =< SEG.ACK)).
        if self.snd_wl1 < seg.seq_number || (self.snd_wl1 == seg.seq_number && self.snd_wl2 <= ack)
        {
            self.snd_wnd = window;
            self.snd_wl1 = seg.seq_number;
            self.snd_wl2 = ack;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            if window > 0 {
                self.persist_at = None;
            }
        }
    }

    /// DupThresh in segments: the reordering degree, but never so high that the data in flight
    /// could not show a loss (RFC 5827 spirit: at most one below the segments outstanding),
    /// and at least 3.
    pub(super) fn dupthresh(&self) -> usize {
        let mss = self.effective_mss().max(1);
        let flight = (self.snd_max - self.snd_una).max(0) as usize / mss;
        (self.reordering as usize)
            .min(flight.saturating_sub(1))
            .max(MIN_REORDERING as usize)
    }

    /// Linux `tcp_check_sack_reordering`: the byte `low` was delivered after data up to
    /// `fack` (the highest SACKed sequence, or a higher one now) without having been
    /// retransmitted; raise the reordering degree to that distance in segments.
    fn check_reordering(&mut self, low: TcpSeqNumber, fack: TcpSeqNumber, mss: usize) {
        let fack = self
            .scoreboard
            .highest_sacked()
            .map_or(fack, |h| h.max(fack));
        if fack <= low || mss == 0 {
            return;
        }
        let metric = (fack - low) as usize;
        if metric > self.reordering as usize * mss {
            let segments = metric.div_ceil(mss).min(MAX_REORDERING as usize);
            self.reordering = segments as u32;
        }
    }

    /// Linux `tcp_may_undo`: every retransmission of the episode was D-SACKed, or the ACK's
    /// TSecr predates the first retransmission (`tcp_packet_delayed`).
    fn may_undo(&self, tsecr: Option<u32>) -> bool {
        let delayed = match (self.retrans_stamp, tsecr) {
            (Some(stamp), Some(ecr)) => (ecr.wrapping_sub(stamp) as i32) < 0,
            _ => false,
        };
        self.undo_retrans == Some(0) || delayed
    }

    /// Linux `tcp_undo_cwnd_reduction`: the loss episode was spurious — restore cwnd and
    /// ssthresh, leave recovery, and count the distance the hole was reordered by.
    fn undo_reduction(&mut self, now: Instant, prior_fack: TcpSeqNumber, mss: usize) {
        let Some(marker) = self.undo_marker.take() else {
            return;
        };
        self.cc.undo(now, self.undo_cwnd, self.undo_ssthresh);
        self.undo_retrans = None;
        self.retrans_stamp = None;
        if self.in_recovery {
            self.in_recovery = false;
            self.dupacks = 0;
            self.retransmit_next = false;
        }
        self.check_reordering(marker, prior_fack, mss);
        self.stats.spurious_recoveries += 1;
    }

    /// A D-SACK for `block`: if it reports a duplicate of data retransmitted in the current
    /// episode, that retransmission was unnecessary (Linux `undo_retrans` accounting).
    fn on_dsack(&mut self, block: (TcpSeqNumber, TcpSeqNumber), mss: usize) {
        let (start, end) = block;
        if let (Some(marker), Some(left)) = (self.undo_marker, self.undo_retrans)
            && start >= marker
            && end <= self.rexmit_high
            && end > start
        {
            let segments = ((end - start) as usize).div_ceil(mss.max(1)).max(1);
            self.undo_retrans = Some(left.saturating_sub(segments as u32));
        }
    }

    /// Linux `tcp_is_cwnd_limited`: sending was limited by cwnd in the current window, or (in
    /// slow start) cwnd is below twice the most outstanding in it — judged per window, not
    /// per ACK, so a batch of ACKs processed before the next transmission all count.
    fn is_cwnd_limited(&self) -> bool {
        self.cwnd_limited || (self.cc.in_slow_start() && self.cc.cwnd() < 2 * self.max_flight)
    }

    fn enter_recovery(&mut self, now: Instant) {
        let flight = (self.snd_max - self.snd_una).max(0) as usize;
        // Linux tcp_init_undo: remember the window to restore if the episode proves spurious.
        self.undo_marker = Some(self.snd_una);
        self.undo_cwnd = self.cc.cwnd();
        self.undo_ssthresh = self.cc.ssthresh();
        self.undo_retrans = None;
        self.retrans_stamp = None;
        self.in_recovery = true;
        self.recovery_point = self.snd_max;
        self.cc.on_congestion_event(now, flight);
        if !self.sack_ok {
            // RFC 6582 step 2: cwnd = ssthresh + 3·SMSS.
            let cwnd = self.cc.ssthresh() + 3 * self.effective_mss();
            self.cc.set_cwnd(cwnd);
        }
        self.high_rxt = self.snd_una;
        self.retransmit_next = true;
        self.rtt_sample = None;
        self.stats.fast_retransmits += 1;
    }

    fn receive_data(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let mut payload = seg.payload;
        let mut seq = seg.seq_number;
        // Trim what we already have.
        let behind = self.rcv_nxt - seq;
        if behind > 0 {
            let cut = (behind as usize).min(payload.len());
            payload = &payload[cut..];
            seq += cut;
            if payload.is_empty() {
                // A full duplicate: ACK at once (it may be a lost-ACK retransmission).
                self.ack_now = true;
                return;
            }
        }
        let offset = (seq - self.rcv_nxt) as usize;
        self.last_data_recv_at = now;
        self.stats.data_segs_in += 1;
        if self.read_shut {
            // Discarded, but acknowledged (Linux keeps the connection going).
            let advance = if offset == 0 { payload.len() } else { 0 };
            self.rcv_nxt += advance;
            self.rcv_adv = self.rcv_adv.max(self.rcv_nxt);
            self.ack_now = true;
            return;
        }
        let had_ooo = self.recv_buf.has_out_of_order();
        let dropped_before = self.recv_buf.ooo_dropped;
        let advance = self.recv_buf.write_at(offset, payload);
        if self.recv_buf.ooo_dropped != dropped_before {
            self.stats.drops[TcpDropReason::OutOfOrderFull as usize] += 1;
        }
        if advance > 0 {
            self.rcv_nxt += advance;
            self.stats.bytes_received += advance as u64;
            if self.rcv_adv < self.rcv_nxt {
                self.rcv_adv = self.rcv_nxt;
            }
            self.note_urgent_arrival();
        }
        if offset > 0 || had_ooo {
            // Out of order, or filling a hole: ACK at once (RFC 5681 §4.2) with SACK blocks.
            self.ack_now = true;
            return;
        }
        // Delayed ACK: quick-ACK at start, then every second full-sized segment.
        self.unacked_segments += 1;
        if self.quickack > 0 {
            self.quickack -= 1;
            self.ack_now = true;
        } else if self.unacked_segments >= 2
            || advance >= 2 * self.our_mss.min(self.effective_mss())
        {
            self.ack_now = true;
        } else if self.delack_at.is_none() {
            let ato = self
                .rtt
                .srtt()
                .map_or(self.config.delayed_ack_min, |s| Duration(s.0 / 2))
                .max(self.config.delayed_ack_min)
                .min(self.config.delayed_ack_max);
            self.delack_at = Some(now + ato);
        }
    }

    /// Pulls the urgent byte out of the stream once it has arrived in order.
    fn note_urgent_arrival(&mut self) {
        if let Some(mark) = self.rcv_urg
            && mark < self.rcv_nxt
            && self.oob_byte.is_none()
            && !self.config.oob_inline
        {
            let read_seq = self.read_seq();
            let at = (mark - read_seq).max(0) as usize;
            let mut byte = [0u8; 1];
            if self.recv_buf.peek(at, &mut byte) == 1 {
                self.oob_byte = Some(byte[0]);
            }
        }
    }

    fn receive_fin(&mut self, now: Instant) {
        if self.fin_received {
            // Retransmitted FIN: just ACK (TIME_WAIT restarts its timer).
            self.ack_now = true;
            if self.state == State::TimeWait {
                self.time_wait_at = Some(now + self.config.time_wait);
            }
            return;
        }
        self.rcv_nxt += 1;
        self.rcv_adv = self.rcv_adv.max(self.rcv_nxt);
        self.fin_received = true;
        self.ack_now = true;
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                // Our FIN acked too? Then TIME-WAIT, else CLOSING.
                if self.snd_una > self.fin_seq_out() {
                    self.enter_time_wait(now);
                } else {
                    self.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(now),
            State::TimeWait => self.time_wait_at = Some(now + self.config.time_wait),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.rto_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.fin_wait2_at = None;
        self.delack_at = None;
        self.time_wait_at = Some(now + self.config.time_wait);
    }

    /// Queues an RST answering `seg` (RFC 9293 reset generation).
    fn queue_reset_reply(&mut self, seg: &TcpRepr<'_>) {
        if let Some(ack) = seg.ack_number {
            self.pending_reset = Some((ack, None));
        } else {
            let len =
                seg.payload.len() + usize::from(seg.control.syn) + usize::from(seg.control.fin);
            self.pending_reset = Some((TcpSeqNumber(0), Some(seg.seq_number + len)));
        }
        self.wake = true;
    }
}
