//! `setsockopt`/`getsockopt` on a TCP connection with Linux's semantics (`sock_setsockopt`,
//! `do_tcp_setsockopt`, `sk_getsockopt`, `do_tcp_getsockopt`): one mapping from (level, name,
//! bytes) to the engine, used wherever the connection lives — in the process when cached, in
//! the netserver when flushed (the control protocol carries the raw option).
//!
//! Contract: values are the C representations in native byte order. An integer option shorter
//! than an `int` is EINVAL; an option this engine does not have is ENOPROTOOPT (the port-table
//! options SO_REUSEADDR/SO_REUSEPORT belong to the endpoint, not the connection, and the caller
//! handles them); a value out of Linux's range is EINVAL; an unknown congestion control is
//! ENOENT. `get` returns the whole value; the caller truncates it to the user's `optlen` as
//! Linux does. Buffer sizes are stored doubled and floored as Linux stores `sk_rcvbuf` /
//! `sk_sndbuf`, so `getsockopt` reads back what Linux would.
#![forbid(unsafe_code)]

use super::congestion::CongestionAlgorithm;
use super::connection::{ConnError, TcpConnection};
use crate::stack::{Duration, Instant};

/// Host limits the options are checked against (`net.core.rmem_max` / `wmem_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockoptLimits {
    pub rmem_max: usize,
    pub wmem_max: usize,
}

impl Default for SockoptLimits {
    /// Linux's defaults.
    fn default() -> SockoptLimits {
        SockoptLimits {
            rmem_max: 212_992,
            wmem_max: 212_992,
        }
    }
}

/// `SOCK_MIN_RCVBUF` / `SOCK_MIN_SNDBUF` (2048 plus an sk_buff's overhead, x86-64).
const MIN_RCVBUF: usize = 2304;
const MIN_SNDBUF: usize = 2 * MIN_RCVBUF;
/// `MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`, `MAX_TCP_KEEPCNT`.
const MAX_KEEPIDLE: i32 = 32767;
const MAX_KEEPINTVL: i32 = 32767;
const MAX_KEEPCNT: i32 = 127;
/// `TCP_CA_NAME_MAX`.
const CA_NAME_MAX: usize = 16;

fn int(value: &[u8]) -> Result<i32, i32> {
    let bytes: [u8; 4] = value
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(libc::EINVAL)?;
    Ok(i32::from_ne_bytes(bytes))
}

fn int_bytes(v: i32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// `setsockopt(level, name, value)` on `conn`.
pub fn set(
    conn: &mut TcpConnection,
    level: i32,
    name: i32,
    value: &[u8],
    limits: SockoptLimits,
    now: Instant,
) -> Result<(), i32> {
    let config = conn.config().clone();
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => conn.set_keepalive(int(value)? != 0),
        (libc::SOL_SOCKET, libc::SO_OOBINLINE) => conn.set_oob_inline(int(value)? != 0),
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
            let v = int(value)?.max(0) as usize;
            conn.set_recv_buffer((v.min(limits.rmem_max) * 2).max(MIN_RCVBUF));
        }
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
            let v = int(value)?.max(0) as usize;
            conn.set_send_buffer((v.min(limits.wmem_max) * 2).max(MIN_SNDBUF));
        }
        (libc::SOL_SOCKET, libc::SO_LINGER) => {
            if value.len() < 8 {
                return Err(libc::EINVAL);
            }
            let on = int(&value[..4])? != 0;
            let secs = int(&value[4..8])?.max(0) as u64;
            conn.set_linger(on.then(|| Duration::from_secs(secs)));
        }
        (libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE) => {
            let rate = match value.len() {
                n if n >= 8 => u64::from_ne_bytes(value[..8].try_into().map_err(|_| libc::EINVAL)?),
                n if n >= 4 => u64::from(int(value)? as u32),
                _ => return Err(libc::EINVAL),
            };
            let unlimited = rate == u64::MAX || rate == u64::from(u32::MAX);
            conn.set_max_pacing_rate((!unlimited).then_some(rate));
        }
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => conn.set_nodelay(int(value)? != 0),
        (libc::IPPROTO_TCP, libc::TCP_CORK) => conn.set_cork(int(value)? != 0, now),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => {
            let v = int(value)?;
            if !(1..=MAX_KEEPIDLE).contains(&v) {
                return Err(libc::EINVAL);
            }
            conn.set_keepalive_params(
                Duration::from_secs(v as u64),
                config.keepalive_interval,
                config.keepalive_count,
            );
        }
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => {
            let v = int(value)?;
            if !(1..=MAX_KEEPINTVL).contains(&v) {
                return Err(libc::EINVAL);
            }
            conn.set_keepalive_params(
                config.keepalive_idle,
                Duration::from_secs(v as u64),
                config.keepalive_count,
            );
        }
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => {
            let v = int(value)?;
            if !(1..=MAX_KEEPCNT).contains(&v) {
                return Err(libc::EINVAL);
            }
            conn.set_keepalive_params(config.keepalive_idle, config.keepalive_interval, v as u32);
        }
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => {
            let v = int(value)?;
            if v < 0 {
                return Err(libc::EINVAL);
            }
            conn.set_user_timeout((v > 0).then(|| Duration::from_millis(v as u64)));
        }
        (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
            let raw = &value[..value.len().min(CA_NAME_MAX)];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = core::str::from_utf8(&raw[..end]).map_err(|_| libc::ENOENT)?;
            let algorithm = CongestionAlgorithm::from_name(name).ok_or(libc::ENOENT)?;
            conn.set_congestion(algorithm, now);
        }
        (libc::SOL_SOCKET, _) | (libc::IPPROTO_TCP, _) | (libc::IPPROTO_IP, _) => {
            return Err(libc::ENOPROTOOPT);
        }
        _ => return Err(libc::EOPNOTSUPP),
    }
    Ok(())
}

/// `getsockopt(level, name)` on `conn`: the whole value (SO_ERROR clears the pending error).
pub fn get(conn: &mut TcpConnection, level: i32, name: i32, now: Instant) -> Result<Vec<u8>, i32> {
    let config = conn.config().clone();
    let flag = |on: bool| int_bytes(i32::from(on));
    let secs = |d: Duration| int_bytes(d.as_secs().min(i32::MAX as u64) as i32);
    Ok(match (level, name) {
        (libc::SOL_SOCKET, libc::SO_TYPE) => int_bytes(libc::SOCK_STREAM),
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => int_bytes(libc::AF_INET),
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => int_bytes(libc::IPPROTO_TCP),
        (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => int_bytes(0),
        (libc::SOL_SOCKET, libc::SO_ERROR) => {
            int_bytes(conn.take_error().map_or(0, ConnError::errno))
        }
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => flag(config.keepalive),
        (libc::SOL_SOCKET, libc::SO_OOBINLINE) => flag(config.oob_inline),
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
            int_bytes(config.recv_buffer.min(i32::MAX as usize) as i32)
        }
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
            int_bytes(config.send_buffer.min(i32::MAX as usize) as i32)
        }
        (libc::SOL_SOCKET, libc::SO_LINGER) => {
            let mut v = int_bytes(i32::from(config.linger.is_some()));
            v.extend(secs(config.linger.unwrap_or(Duration::ZERO)));
            v
        }
        (libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE) => config
            .max_pacing_rate
            .unwrap_or(u64::MAX)
            .to_ne_bytes()
            .to_vec(),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => flag(config.nodelay),
        (libc::IPPROTO_TCP, libc::TCP_CORK) => flag(config.cork),
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => int_bytes(conn.snd_mss() as i32),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => secs(config.keepalive_idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => secs(config.keepalive_interval),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => int_bytes(config.keepalive_count as i32),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => int_bytes(
            config
                .user_timeout
                .map_or(0, |d| d.as_millis().min(i32::MAX as u64) as i32),
        ),
        (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => {
            let mut name = config.congestion.name().as_bytes().to_vec();
            name.resize(CA_NAME_MAX, 0);
            name
        }
        (libc::IPPROTO_TCP, libc::TCP_INFO) => conn.info(now).linux_bytes().to_vec(),
        (libc::SOL_SOCKET, _) | (libc::IPPROTO_TCP, _) | (libc::IPPROTO_IP, _) => {
            return Err(libc::ENOPROTOOPT);
        }
        _ => return Err(libc::EOPNOTSUPP),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::tcp::connection::{InitialSequence, TcpConfig};
    use crate::wire::tcp::TcpSeqNumber;
    use std::net::SocketAddrV4;

    fn conn() -> TcpConnection {
        TcpConnection::connect(
            TcpConfig::default(),
            "198.18.0.2:40000".parse::<SocketAddrV4>().unwrap(),
            "198.18.0.1:80".parse::<SocketAddrV4>().unwrap(),
            InitialSequence {
                iss: TcpSeqNumber(1000),
                ts_offset: 0,
            },
            Instant::from_secs(1),
        )
    }

    fn set_int(c: &mut TcpConnection, level: i32, name: i32, v: i32) -> Result<(), i32> {
        set(
            c,
            level,
            name,
            &v.to_ne_bytes(),
            SockoptLimits::default(),
            Instant::from_secs(1),
        )
    }

    fn get_int(c: &mut TcpConnection, level: i32, name: i32) -> i32 {
        let v = get(c, level, name, Instant::from_secs(1)).unwrap();
        i32::from_ne_bytes(v[..4].try_into().unwrap())
    }

    #[test]
    fn flags_round_trip() {
        let mut c = conn();
        for (level, name) in [
            (libc::IPPROTO_TCP, libc::TCP_NODELAY),
            (libc::IPPROTO_TCP, libc::TCP_CORK),
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            (libc::SOL_SOCKET, libc::SO_OOBINLINE),
        ] {
            assert_eq!(get_int(&mut c, level, name), 0);
            set_int(&mut c, level, name, 7).unwrap();
            assert_eq!(get_int(&mut c, level, name), 1, "{level} {name}");
            set_int(&mut c, level, name, 0).unwrap();
            assert_eq!(get_int(&mut c, level, name), 0);
        }
    }

    #[test]
    fn buffers_are_doubled_capped_and_floored_as_linux_stores_them() {
        let mut c = conn();
        set_int(&mut c, libc::SOL_SOCKET, libc::SO_RCVBUF, 65536).unwrap();
        assert_eq!(get_int(&mut c, libc::SOL_SOCKET, libc::SO_RCVBUF), 131072);
        set_int(&mut c, libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 30).unwrap();
        assert_eq!(get_int(&mut c, libc::SOL_SOCKET, libc::SO_RCVBUF), 425_984);
        set_int(&mut c, libc::SOL_SOCKET, libc::SO_SNDBUF, 1).unwrap();
        assert_eq!(get_int(&mut c, libc::SOL_SOCKET, libc::SO_SNDBUF), 4608);
        set_int(&mut c, libc::SOL_SOCKET, libc::SO_RCVBUF, -5).unwrap();
        assert_eq!(get_int(&mut c, libc::SOL_SOCKET, libc::SO_RCVBUF), 2304);
    }

    #[test]
    fn keepalive_parameters_have_linux_ranges() {
        let mut c = conn();
        set_int(&mut c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30).unwrap();
        set_int(&mut c, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5).unwrap();
        set_int(&mut c, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3).unwrap();
        assert_eq!(get_int(&mut c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
        assert_eq!(get_int(&mut c, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 5);
        assert_eq!(get_int(&mut c, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        for (name, bad) in [
            (libc::TCP_KEEPIDLE, 0),
            (libc::TCP_KEEPIDLE, 32768),
            (libc::TCP_KEEPINTVL, -1),
            (libc::TCP_KEEPCNT, 128),
        ] {
            assert_eq!(
                set_int(&mut c, libc::IPPROTO_TCP, name, bad),
                Err(libc::EINVAL)
            );
        }
        assert_eq!(get_int(&mut c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
    }

    #[test]
    fn short_values_and_unknown_options_are_refused() {
        let mut c = conn();
        let now = Instant::from_secs(1);
        let lim = SockoptLimits::default();
        assert_eq!(
            set(
                &mut c,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &[1, 0],
                lim,
                now
            ),
            Err(libc::EINVAL)
        );
        assert_eq!(
            set(
                &mut c,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &[1, 0, 0, 0],
                lim,
                now
            ),
            Err(libc::EINVAL)
        );
        assert_eq!(
            set(&mut c, libc::IPPROTO_TCP, 9999, &[0; 4], lim, now),
            Err(libc::ENOPROTOOPT)
        );
        assert_eq!(
            set(&mut c, 12345, 1, &[0; 4], lim, now),
            Err(libc::EOPNOTSUPP)
        );
        assert_eq!(
            get(&mut c, libc::IPPROTO_TCP, 9999, now),
            Err(libc::ENOPROTOOPT)
        );
        assert_eq!(
            set_int(&mut c, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, -1),
            Err(libc::EINVAL)
        );
    }

    #[test]
    fn linger_congestion_and_info() {
        let mut c = conn();
        let now = Instant::from_secs(1);
        let lim = SockoptLimits::default();
        let mut linger = 1i32.to_ne_bytes().to_vec();
        linger.extend(5i32.to_ne_bytes());
        set(&mut c, libc::SOL_SOCKET, libc::SO_LINGER, &linger, lim, now).unwrap();
        assert_eq!(
            get(&mut c, libc::SOL_SOCKET, libc::SO_LINGER, now),
            Ok(linger)
        );
        set(
            &mut c,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            b"reno\0junk",
            lim,
            now,
        )
        .unwrap();
        let name = get(&mut c, libc::IPPROTO_TCP, libc::TCP_CONGESTION, now).unwrap();
        assert_eq!(&name[..5], b"reno\0");
        assert_eq!(
            set(
                &mut c,
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                b"bbr9",
                lim,
                now
            ),
            Err(libc::ENOENT)
        );
        let info = get(&mut c, libc::IPPROTO_TCP, libc::TCP_INFO, now).unwrap();
        assert_eq!(info.len(), crate::stack::tcp::info::LINUX_TCP_INFO_LEN);
        assert_eq!(get_int(&mut c, libc::SOL_SOCKET, libc::SO_ERROR), 0);
        assert_eq!(
            get_int(&mut c, libc::SOL_SOCKET, libc::SO_TYPE),
            libc::SOCK_STREAM
        );
    }
}
