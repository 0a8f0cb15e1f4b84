//! Export and import of a whole connection (paper §3.1): configuration, state, sequence
//! spaces, negotiated options, congestion/RTT/SACK state, timers as deadlines and every
//! buffered byte. The import validates what it reads: the image comes from another process.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{ConnError, ConnectionStats, State, TcpConfig, TcpConnection, TcpDropReason};
use crate::stack::tcp::congestion::{CongestionAlgorithm, CongestionControl};
use crate::stack::tcp::image::{ImageError, ImageReader, ImageWriter};
use crate::stack::tcp::recv_buffer::ReceiveBuffer;
use crate::stack::tcp::rtt::RttEstimator;
use crate::stack::tcp::scoreboard::Scoreboard;
use crate::stack::tcp::send_buffer::SendBuffer;
use crate::stack::{Duration, Instant};

const CONFIG: u8 = 0xC0;
const TCB: u8 = 0xC1;
const TIMERS: u8 = 0xC2;
const TAIL: u8 = 0xCF;

fn write_addr(w: &mut ImageWriter, a: SocketAddrV4) {
    w.u32(u32::from(*a.ip()));
    w.u16(a.port());
}

fn read_addr(r: &mut ImageReader<'_>) -> Result<SocketAddrV4, ImageError> {
    let ip = Ipv4Addr::from(r.read_u32()?);
    Ok(SocketAddrV4::new(ip, r.read_u16()?))
}

fn write_config(w: &mut ImageWriter, c: &TcpConfig) {
    w.section(CONFIG);
    w.u16(c.mss);
    w.usize(c.recv_buffer);
    w.usize(c.send_buffer);
    for b in [
        c.window_scaling,
        c.sack,
        c.timestamps,
        c.nodelay,
        c.cork,
        c.oob_inline,
        c.keepalive,
        c.pacing,
    ] {
        w.bool(b);
    }
    w.u8(match c.congestion {
        CongestionAlgorithm::Reno => 0,
        CongestionAlgorithm::Cubic => 1,
    });
    for d in [
        c.rto_initial,
        c.rto_min,
        c.rto_max,
        c.delayed_ack_min,
        c.delayed_ack_max,
        c.time_wait,
        c.fin_timeout,
        c.keepalive_idle,
        c.keepalive_interval,
    ] {
        w.duration(d);
    }
    w.u32(c.keepalive_count);
    w.u32(c.syn_retries);
    w.u32(c.synack_retries);
    w.u32(c.retries2);
    w.opt_duration(c.user_timeout);
    w.opt_duration(c.linger);
    w.bool(c.max_pacing_rate.is_some());
    w.u64(c.max_pacing_rate.unwrap_or(0));
}

fn read_config(r: &mut ImageReader<'_>) -> Result<TcpConfig, ImageError> {
    r.read_section(CONFIG)?;
    let mss = r.read_u16()?;
    let recv_buffer = r.read_usize()?;
    let send_buffer = r.read_usize()?;
    let mut flags = [false; 8];
    for f in &mut flags {
        *f = r.read_bool()?;
    }
    let congestion = match r.read_u8()? {
        0 => CongestionAlgorithm::Reno,
        1 => CongestionAlgorithm::Cubic,
        _ => return Err(ImageError::Invalid("congestion algorithm")),
    };
    let mut d = [Duration::ZERO; 9];
    for slot in &mut d {
        *slot = r.read_duration()?;
    }
    let config = TcpConfig {
        mss,
        recv_buffer,
        send_buffer,
        window_scaling: flags[0],
        sack: flags[1],
        timestamps: flags[2],
        nodelay: flags[3],
        cork: flags[4],
        oob_inline: flags[5],
        keepalive: flags[6],
        pacing: flags[7],
        congestion,
        rto_initial: d[0],
        rto_min: d[1],
        rto_max: d[2],
        delayed_ack_min: d[3],
        delayed_ack_max: d[4],
        time_wait: d[5],
        fin_timeout: d[6],
        keepalive_idle: d[7],
        keepalive_interval: d[8],
        keepalive_count: r.read_u32()?,
        syn_retries: r.read_u32()?,
        synack_retries: r.read_u32()?,
        retries2: r.read_u32()?,
        user_timeout: r.read_opt_duration()?,
        linger: r.read_opt_duration()?,
        max_pacing_rate: {
            let some = r.read_bool()?;
            let v = r.read_u64()?;
            some.then_some(v)
        },
    };
    if config.mss < 88 || config.rto_min > config.rto_max || config.recv_buffer == 0 {
        return Err(ImageError::Invalid("connection configuration"));
    }
    Ok(config)
}

impl TcpConnection {
    /// The whole connection as a versioned image; `now` is this process's clock.
    pub fn export(&self, now: Instant) -> Vec<u8> {
        let mut w = ImageWriter::new(now);
        write_config(&mut w, &self.config);
        w.section(TCB);
        w.u8(self.state.code());
        write_addr(&mut w, self.local);
        write_addr(&mut w, self.remote);
        for s in [
            self.iss,
            self.snd_una,
            self.snd_nxt,
            self.snd_max,
            self.snd_wl1,
            self.snd_wl2,
        ] {
            w.seq(s);
        }
        w.usize(self.snd_wnd);
        w.usize(self.max_snd_wnd);
        w.bool(self.fin_queued);
        w.bool(self.snd_up.is_some());
        w.seq(self.snd_up.unwrap_or_default());
        for s in [self.irs, self.rcv_nxt, self.rcv_adv] {
            w.seq(s);
        }
        w.bool(self.fin_seq.is_some());
        w.seq(self.fin_seq.unwrap_or_default());
        for b in [self.fin_received, self.read_shut, self.user_closed] {
            w.bool(b);
        }
        w.bool(self.rcv_urg.is_some());
        w.seq(self.rcv_urg.unwrap_or_default());
        w.bool(self.oob_byte.is_some());
        w.u8(self.oob_byte.unwrap_or(0));
        w.usize(self.our_mss);
        w.usize(self.peer_mss);
        w.u64(self.pmtu_mss as u64);
        w.u8(self.snd_wscale);
        w.u8(self.rcv_wscale);
        for b in [self.ws_ok, self.sack_ok, self.ts_ok] {
            w.bool(b);
        }
        w.u32(self.ts_recent);
        w.u32(self.ts_offset);
        w.instant(self.ts_origin);
        self.cc.export(&mut w);
        self.rtt.export(&mut w);
        self.scoreboard.export(&mut w);
        w.bool(self.in_recovery);
        w.seq(self.recovery_point);
        w.seq(self.high_rxt);
        w.u32(self.dupacks);
        w.bool(self.retransmit_next);
        w.bool(self.rtt_sample.is_some());
        let (sample_seq, sample_at) = self.rtt_sample.unwrap_or_default();
        w.seq(sample_seq);
        w.instant(sample_at);
        w.u32(self.reordering);
        w.seq(self.rexmit_high);
        w.bool(self.undo_marker.is_some());
        w.seq(self.undo_marker.unwrap_or_default());
        w.usize(self.undo_cwnd);
        w.u64(if self.undo_ssthresh == usize::MAX {
            u64::MAX
        } else {
            self.undo_ssthresh as u64
        });
        w.bool(self.undo_retrans.is_some());
        w.u32(self.undo_retrans.unwrap_or(0));
        w.bool(self.retrans_stamp.is_some());
        w.u32(self.retrans_stamp.unwrap_or(0));
        w.usize(self.max_flight);
        w.bool(self.cwnd_limited);
        w.seq(self.cwnd_usage_seq);
        w.section(TIMERS);
        for t in [
            self.rto_at,
            self.delack_at,
            self.persist_at,
            self.keepalive_at,
            self.time_wait_at,
            self.fin_wait2_at,
            self.cork_at,
            self.first_retransmit_at,
            self.idle_since,
        ] {
            w.opt_instant(t);
        }
        w.bool(self.cork_expired);
        w.instant(self.next_departure);
        w.u32(self.retries);
        w.u32(self.persist_backoff);
        w.bool(self.persist_force);
        w.opt_instant(self.last_oow_ack_at);
        w.u32(self.keepalive_probes);
        for b in [self.ack_now, self.rst_pending] {
            w.bool(b);
        }
        w.bool(self.pending_reset.is_some());
        let (rst_seq, rst_ack) = self.pending_reset.unwrap_or_default();
        w.seq(rst_seq);
        w.bool(rst_ack.is_some());
        w.seq(rst_ack.unwrap_or_default());
        w.u32(self.quickack);
        w.u32(self.unacked_segments);
        w.u8(self.error.map_or(0, ConnError::code));
        w.u8(self.soft_error.map_or(0, ConnError::code));
        for t in [
            self.last_recv_at,
            self.last_send_at,
            self.last_data_recv_at,
            self.last_ack_recv_at,
        ] {
            w.instant(t);
        }
        let s = &self.stats;
        for v in [
            s.segs_in,
            s.segs_out,
            s.data_segs_in,
            s.data_segs_out,
            s.bytes_sent,
            s.bytes_retrans,
            s.bytes_acked,
            s.bytes_received,
            s.retransmits,
            s.fast_retransmits,
            s.timeouts,
            s.dsack_dups,
            s.challenge_acks,
            s.spurious_recoveries,
        ] {
            w.u64(v);
        }
        for d in s.drops {
            w.u64(d);
        }
        self.send_buf.export(&mut w);
        self.recv_buf.export(&mut w);
        w.section(TAIL);
        w.finish()
    }

    /// Restores a connection exported by [`TcpConnection::export`] (possibly in another
    /// process); `now` is this process's clock.
    pub fn import(image: &[u8], now: Instant) -> Result<TcpConnection, ImageError> {
        let mut r = ImageReader::new(image, now)?;
        let config = read_config(&mut r)?;
        r.read_section(TCB)?;
        let state = State::from_code(r.read_u8()?).ok_or(ImageError::Invalid("state"))?;
        let local = read_addr(&mut r)?;
        let remote = read_addr(&mut r)?;
        let mut seqs = [Default::default(); 6];
        for s in &mut seqs {
            *s = r.read_seq()?;
        }
        let [iss, snd_una, snd_nxt, snd_max, snd_wl1, snd_wl2] = seqs;
        let snd_wnd = r.read_usize()?;
        let max_snd_wnd = r.read_usize()?;
        let fin_queued = r.read_bool()?;
        let snd_up = {
            let some = r.read_bool()?;
            let v = r.read_seq()?;
            some.then_some(v)
        };
        let irs = r.read_seq()?;
        let rcv_nxt = r.read_seq()?;
        let rcv_adv = r.read_seq()?;
        let fin_seq = {
            let some = r.read_bool()?;
            let v = r.read_seq()?;
            some.then_some(v)
        };
        let fin_received = r.read_bool()?;
        let read_shut = r.read_bool()?;
        let user_closed = r.read_bool()?;
        let rcv_urg = {
            let some = r.read_bool()?;
            let v = r.read_seq()?;
            some.then_some(v)
        };
        let oob_byte = {
            let some = r.read_bool()?;
            let v = r.read_u8()?;
            some.then_some(v)
        };
        let our_mss = r.read_usize()?;
        let peer_mss = r.read_usize()?;
        let pmtu_mss = usize::try_from(r.read_u64()?).unwrap_or(usize::MAX);
        let snd_wscale = r.read_u8()?;
        let rcv_wscale = r.read_u8()?;
        let ws_ok = r.read_bool()?;
        let sack_ok = r.read_bool()?;
        let ts_ok = r.read_bool()?;
        let ts_recent = r.read_u32()?;
        let ts_offset = r.read_u32()?;
        let ts_origin = r.read_instant()?;
        let cc = CongestionControl::import(&mut r)?;
        let rtt = RttEstimator::import(&mut r)?;
        let scoreboard = Scoreboard::import(&mut r)?;
        let in_recovery = r.read_bool()?;
        let recovery_point = r.read_seq()?;
        let high_rxt = r.read_seq()?;
        let dupacks = r.read_u32()?;
        let retransmit_next = r.read_bool()?;
        let rtt_sample = {
            let some = r.read_bool()?;
            let seq = r.read_seq()?;
            let at = r.read_instant()?;
            some.then_some((seq, at))
        };
        let reordering = r.read_u32()?;
        let rexmit_high = r.read_seq()?;
        let undo_marker = {
            let some = r.read_bool()?;
            let v = r.read_seq()?;
            some.then_some(v)
        };
        let undo_cwnd = r.read_usize()?;
        let undo_ssthresh = match r.read_u64()? {
            u64::MAX => usize::MAX,
            v => usize::try_from(v).map_err(|_| ImageError::Invalid("undo ssthresh"))?,
        };
        let undo_retrans = {
            let some = r.read_bool()?;
            let v = r.read_u32()?;
            some.then_some(v)
        };
        let retrans_stamp = {
            let some = r.read_bool()?;
            let v = r.read_u32()?;
            some.then_some(v)
        };
        let max_flight = r.read_usize()?;
        let cwnd_limited = r.read_bool()?;
        let cwnd_usage_seq = r.read_seq()?;
        if !(super::MIN_REORDERING..=super::MAX_REORDERING).contains(&reordering) {
            return Err(ImageError::Invalid("reordering degree"));
        }
        r.read_section(TIMERS)?;
        let mut timers = [None; 9];
        for t in &mut timers {
            *t = r.read_opt_instant()?;
        }
        let cork_expired = r.read_bool()?;
        let next_departure = r.read_instant()?;
        let retries = r.read_u32()?;
        let persist_backoff = r.read_u32()?;
        let persist_force = r.read_bool()?;
        let last_oow_ack_at = r.read_opt_instant()?;
        let keepalive_probes = r.read_u32()?;
        let ack_now = r.read_bool()?;
        let rst_pending = r.read_bool()?;
        let pending_reset = {
            let some = r.read_bool()?;
            let seq = r.read_seq()?;
            let has_ack = r.read_bool()?;
            let ack = r.read_seq()?;
            some.then_some((seq, has_ack.then_some(ack)))
        };
        let quickack = r.read_u32()?;
        let unacked_segments = r.read_u32()?;
        let error = match r.read_u8()? {
            0 => None,
            c => Some(ConnError::from_code(c).ok_or(ImageError::Invalid("error code"))?),
        };
        let soft_error = match r.read_u8()? {
            0 => None,
            c => Some(ConnError::from_code(c).ok_or(ImageError::Invalid("error code"))?),
        };
        let mut times = [Instant::ZERO; 4];
        for t in &mut times {
            *t = r.read_instant()?;
        }
        let mut counters = [0u64; 14];
        for c in &mut counters {
            *c = r.read_u64()?;
        }
        let mut drops = [0u64; TcpDropReason::COUNT];
        for d in &mut drops {
            *d = r.read_u64()?;
        }
        let send_buf = SendBuffer::import(&mut r)?;
        let recv_buf = ReceiveBuffer::import(&mut r)?;
        r.read_section(TAIL)?;
        r.finish()?;

        // Cross-field invariants a well-formed connection satisfies.
        let valid = snd_una <= snd_nxt
            && snd_nxt <= snd_max
            && (snd_max - snd_una) as i64 <= send_buf.len() as i64 + 2
            && rcv_nxt <= rcv_adv + 1usize
            && snd_wscale <= 14
            && rcv_wscale <= 14
            && our_mss >= 88
            && peer_mss >= 88
            && pmtu_mss >= 88
            && snd_wnd <= (65_535 << 14)
            && max_snd_wnd <= (65_535 << 14)
            && (!matches!(state, State::SynSent | State::SynReceived)
                || (snd_una == iss && snd_max - iss <= 1));
        if !valid {
            return Err(ImageError::Invalid("sequence space"));
        }
        Ok(TcpConnection {
            config,
            state,
            local,
            remote,
            iss,
            snd_una,
            snd_nxt,
            snd_max,
            snd_wnd,
            snd_wl1,
            snd_wl2,
            max_snd_wnd,
            send_buf,
            fin_queued,
            snd_up,
            irs,
            rcv_nxt,
            rcv_adv,
            recv_buf,
            fin_seq,
            fin_received,
            read_shut,
            user_closed,
            rcv_urg,
            oob_byte,
            our_mss,
            peer_mss,
            pmtu_mss,
            snd_wscale,
            rcv_wscale,
            ws_ok,
            sack_ok,
            ts_ok,
            ts_recent,
            ts_offset,
            ts_origin,
            cc,
            rtt,
            scoreboard,
            in_recovery,
            recovery_point,
            high_rxt,
            dupacks,
            retransmit_next,
            rtt_sample,
            reordering,
            rexmit_high,
            undo_marker,
            undo_cwnd,
            undo_ssthresh,
            undo_retrans,
            retrans_stamp,
            max_flight,
            cwnd_limited,
            cwnd_usage_seq,
            rto_at: timers[0],
            delack_at: timers[1],
            persist_at: timers[2],
            keepalive_at: timers[3],
            time_wait_at: timers[4],
            fin_wait2_at: timers[5],
            cork_at: timers[6],
            first_retransmit_at: timers[7],
            idle_since: timers[8],
            cork_expired,
            paced_hold: false,
            next_departure,
            retries,
            persist_backoff,
            persist_force,
            last_oow_ack_at,
            keepalive_probes,
            ack_now,
            rst_pending,
            pending_reset,
            wake: true,
            quickack,
            unacked_segments,
            challenge_budget: super::CHALLENGE_ACKS_PER_SECOND,
            challenge_second: 0,
            error,
            soft_error,
            last_recv_at: times[0],
            last_send_at: times[1],
            last_data_recv_at: times[2],
            last_ack_recv_at: times[3],
            stats: ConnectionStats {
                segs_in: counters[0],
                segs_out: counters[1],
                data_segs_in: counters[2],
                data_segs_out: counters[3],
                bytes_sent: counters[4],
                bytes_retrans: counters[5],
                bytes_acked: counters[6],
                bytes_received: counters[7],
                retransmits: counters[8],
                fast_retransmits: counters[9],
                timeouts: counters[10],
                dsack_dups: counters[11],
                challenge_acks: counters[12],
                spurious_recoveries: counters[13],
                drops,
            },
        })
    }
}
