//! Binary encoding of control messages ([`Request`], [`Reply`], [`Upcall`]; paper §3.1).
//!
//! A message is a 10-byte header followed by a body:
//!
//! ```text
//! magic u16 = 0x4d53 | version u16 = VERSION | kind u16 | body length u32 | body
//! ```
//!
//! The kind names the variant (requests `0x01xx`, replies `0x02xx`, upcalls `0x03xx`). Integers
//! are little-endian; IPv4 addresses are their four octets in network order; a socket address
//! is the address then the port (`u16`); `bool` and `Option` tags are one byte, 0 or 1; enums
//! have explicit one-byte tags; strings (UTF-8) and byte vectors are a `u32` length then the
//! bytes. The encoding is canonical (one value, one byte string), so
//! `encode(decode(x)) == x` for every accepted `x` ([`fuzz_decode`] checks this).
//!
//! Contract: decoding is total — any input yields a value or a [`DecodeError`], never a panic —
//! and allocates no more than the input's own length (lengths are checked against the bytes
//! present before anything is allocated). Messages larger than [`MAX_MESSAGE`] are refused.
//! Encoding never fails; a value too large for one message (a >70 KiB string) still encodes,
//! and the transport refuses to send it (EMSGSIZE).
#![forbid(unsafe_code)]

use core::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::{
    Family, MAX_MESSAGE, MAX_OPTION, MAX_TRANSFER, Reply, Request, RingSpec, ShutdownHow, SockKind,
    Upcall, VERSION,
};
use crate::wire::EthernetAddress;

/// First two bytes of every message ("MS" read as a big-endian pair, stored little-endian).
pub const MAGIC: u16 = 0x4d53;
/// Header length in bytes.
pub const HEADER_LEN: usize = 10;

/// Largest errno value Linux uses (`MAX_ERRNO`).
const MAX_ERRNO: i32 = 4095;

mod kind {
    pub const REQ_HELLO: u16 = 0x0101;
    pub const REQ_SOCKET: u16 = 0x0102;
    pub const REQ_BIND: u16 = 0x0103;
    pub const REQ_CONNECT: u16 = 0x0104;
    pub const REQ_CLOSE: u16 = 0x0105;
    pub const REQ_RESOLVE: u16 = 0x0106;
    pub const REQ_STAT: u16 = 0x0107;
    pub const REQ_HAND_OVER: u16 = 0x0108;
    pub const REQ_LISTEN: u16 = 0x0109;
    pub const REQ_ACCEPT: u16 = 0x010a;
    pub const REQ_ROUTE_ADD: u16 = 0x010b;
    pub const REQ_ROUTE_DEL: u16 = 0x010c;
    pub const REQ_NEIGH_ADD: u16 = 0x010d;
    pub const REQ_NEIGH_DEL: u16 = 0x010e;
    pub const REQ_FLUSH: u16 = 0x010f;
    pub const REQ_SEND: u16 = 0x0110;
    pub const REQ_RECV: u16 = 0x0111;
    pub const REQ_SHUTDOWN: u16 = 0x0112;
    pub const REQ_CACHE: u16 = 0x0113;
    pub const REQ_SET_OPTION: u16 = 0x0114;
    pub const REQ_GET_OPTION: u16 = 0x0115;
    pub const REQ_NAMES: u16 = 0x0116;
    pub const REQ_RECALL: u16 = 0x0117;
    pub const REQ_FORK: u16 = 0x0118;
    pub const REQ_RELAY: u16 = 0x0119;

    pub const REP_HELLO: u16 = 0x0201;
    pub const REP_SOCKET: u16 = 0x0202;
    pub const REP_BOUND: u16 = 0x0203;
    pub const REP_OK: u16 = 0x0204;
    pub const REP_RESOLVE: u16 = 0x0205;
    pub const REP_STAT: u16 = 0x0206;
    pub const REP_ERROR: u16 = 0x0207;
    pub const REP_ACCEPTED: u16 = 0x0208;
    pub const REP_SENT: u16 = 0x0209;
    pub const REP_RECEIVED: u16 = 0x020a;
    pub const REP_CACHED: u16 = 0x020b;
    pub const REP_OPTION: u16 = 0x020c;
    pub const REP_NAMES: u16 = 0x020d;
    pub const REP_FORKED: u16 = 0x020e;
    pub const REP_ACCEPTED_DEFERRED: u16 = 0x020f;

    pub const UP_DATAGRAM: u16 = 0x0301;
    pub const UP_RESOLVED: u16 = 0x0302;
    pub const UP_ICMP_ERROR: u16 = 0x0303;
    pub const UP_TCP_ICMP_ERROR: u16 = 0x0304;
    pub const UP_ACCEPTABLE: u16 = 0x0305;
    pub const UP_TCP_READY: u16 = 0x0306;
    pub const UP_RECALL: u16 = 0x0307;
    pub const UP_SOLE_HOLDER: u16 = 0x0308;
}

/// Why a byte string is not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The first two bytes are not [`MAGIC`].
    BadMagic(u16),
    /// The header's protocol version is not ours.
    Version(u16),
    /// The kind is not one this decoder knows (or belongs to another message class).
    UnknownKind(u16),
    /// Shorter than the header, the header's body length, or a field inside the body.
    Truncated,
    /// Longer than the header's body length, or bytes left after the last field.
    TrailingBytes,
    /// A field with an impossible value (tag, errno, ring version, UTF-8, length).
    BadValue(&'static str),
}

impl DecodeError {
    /// The errno a netserver answers a malformed request with.
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::BadValue(_) => libc::EINVAL,
            DecodeError::UnknownKind(_) => libc::EOPNOTSUPP,
            _ => libc::EPROTO,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadMagic(m) => write!(f, "bad magic {m:#06x}"),
            DecodeError::Version(v) => write!(f, "protocol version {v}, expected {VERSION}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k:#06x}"),
            DecodeError::Truncated => f.write_str("truncated message"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes after message"),
            DecodeError::BadValue(what) => write!(f, "bad value: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for std::io::Error {
    fn from(e: DecodeError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn ip(&mut self, v: Ipv4Addr) {
        self.out.extend_from_slice(&v.octets());
    }
    fn sockaddr(&mut self, v: SocketAddrV4) {
        self.ip(*v.ip());
        self.u16(v.port());
    }
    fn mac(&mut self, v: EthernetAddress) {
        self.out.extend_from_slice(&v.0);
    }
    fn bytes(&mut self, v: &[u8]) {
        // Saturates for > 4 GiB (impossible for a message); decoding then rejects it.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.out.extend_from_slice(v);
    }
    fn option<T>(&mut self, v: Option<T>, mut some: impl FnMut(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                some(self, x);
            }
        }
    }
}

/// Writes the header and the body `body` produces, replacing `out`'s contents.
fn frame(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Writer<'_>)) {
    out.clear();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    body(&mut Writer { out });
    let body_len = u32::try_from(out.len() - HEADER_LEN).unwrap_or(u32::MAX);
    out[6..10].copy_from_slice(&body_len.to_le_bytes());
}

/// Encodes a request into `out` (replacing its contents).
pub fn encode_request(msg: &Request, out: &mut Vec<u8>) {
    match *msg {
        Request::Hello { version, pid } => frame(out, kind::REQ_HELLO, |w| {
            w.u16(version);
            w.u32(pid);
        }),
        Request::Socket { family, kind } => frame(out, kind::REQ_SOCKET, |w| {
            match family {
                Family::Inet => w.u8(0),
                Family::Inet6 { v6only } => {
                    w.u8(1);
                    w.bool(v6only);
                }
            }
            w.u8(match kind {
                SockKind::Datagram => 0,
                SockKind::Stream => 1,
            });
        }),
        Request::Bind {
            id,
            local,
            reuse_addr,
            reuse_port,
        } => frame(out, kind::REQ_BIND, |w| {
            w.u64(id);
            w.sockaddr(local);
            w.bool(reuse_addr);
            w.bool(reuse_port);
        }),
        Request::Connect { id, remote } => frame(out, kind::REQ_CONNECT, |w| {
            w.u64(id);
            w.option(remote, Writer::sockaddr);
        }),
        Request::Close { id } => frame(out, kind::REQ_CLOSE, |w| w.u64(id)),
        Request::Resolve { addr } => frame(out, kind::REQ_RESOLVE, |w| w.ip(addr)),
        Request::Stat { json } => frame(out, kind::REQ_STAT, |w| w.bool(json)),
        Request::HandOver { id, len } => frame(out, kind::REQ_HAND_OVER, |w| {
            w.u64(id);
            w.u64(len);
        }),
        Request::Listen { id, backlog } => frame(out, kind::REQ_LISTEN, |w| {
            w.u64(id);
            w.u32(backlog);
        }),
        Request::Accept { id } => frame(out, kind::REQ_ACCEPT, |w| w.u64(id)),
        Request::RouteAdd {
            dest,
            prefix_len,
            gateway,
        } => frame(out, kind::REQ_ROUTE_ADD, |w| {
            w.ip(dest);
            w.u8(prefix_len);
            w.option(gateway, Writer::ip);
        }),
        Request::RouteDel { dest, prefix_len } => frame(out, kind::REQ_ROUTE_DEL, |w| {
            w.ip(dest);
            w.u8(prefix_len);
        }),
        Request::NeighAdd { ip, mac } => frame(out, kind::REQ_NEIGH_ADD, |w| {
            w.ip(ip);
            w.mac(mac);
        }),
        Request::NeighDel { ip } => frame(out, kind::REQ_NEIGH_DEL, |w| w.ip(ip)),
        Request::Flush { id, len, rx_cursor } => frame(out, kind::REQ_FLUSH, |w| {
            w.u64(id);
            w.u64(len);
            w.u32(rx_cursor);
        }),
        Request::Send { id, ref data } => frame(out, kind::REQ_SEND, |w| {
            w.u64(id);
            w.bytes(data);
        }),
        Request::Recv { id, max, peek } => frame(out, kind::REQ_RECV, |w| {
            w.u64(id);
            w.u32(max);
            w.bool(peek);
        }),
        Request::Shutdown { id, how } => frame(out, kind::REQ_SHUTDOWN, |w| {
            w.u64(id);
            w.u8(match how {
                ShutdownHow::Read => 0,
                ShutdownHow::Write => 1,
                ShutdownHow::Both => 2,
            });
        }),
        Request::Cache { id } => frame(out, kind::REQ_CACHE, |w| w.u64(id)),
        Request::SetOption {
            id,
            level,
            name,
            ref value,
        } => frame(out, kind::REQ_SET_OPTION, |w| {
            w.u64(id);
            w.i32(level);
            w.i32(name);
            w.bytes(value);
        }),
        Request::GetOption { id, level, name } => frame(out, kind::REQ_GET_OPTION, |w| {
            w.u64(id);
            w.i32(level);
            w.i32(name);
        }),
        Request::Names { id } => frame(out, kind::REQ_NAMES, |w| w.u64(id)),
        Request::Recall { id } => frame(out, kind::REQ_RECALL, |w| w.u64(id)),
        Request::Fork { ref ids } => frame(out, kind::REQ_FORK, |w| {
            w.u32(ids.len() as u32);
            for &id in ids {
                w.u64(id);
            }
        }),
        Request::Relay { id } => frame(out, kind::REQ_RELAY, |w| w.u64(id)),
    }
}

/// Encodes a reply into `out` (replacing its contents).
pub fn encode_reply(msg: &Reply, out: &mut Vec<u8>) {
    match msg {
        Reply::Hello {
            client_id,
            region_len,
        } => frame(out, kind::REP_HELLO, |w| {
            w.u32(*client_id);
            w.u64(*region_len);
        }),
        Reply::Socket { id } => frame(out, kind::REP_SOCKET, |w| w.u64(*id)),
        Reply::Bound { local, ring } => frame(out, kind::REP_BOUND, |w| {
            w.sockaddr(*local);
            w.u8(ring.version);
            w.u32(ring.block_size);
            w.u32(ring.block_count);
            w.u32(ring.frame_size);
            w.u32(ring.tx_frames);
        }),
        Reply::Accepted {
            id,
            remote,
            ring,
            len,
        } => frame(out, kind::REP_ACCEPTED, |w| {
            w.u64(*id);
            w.sockaddr(*remote);
            w.u8(ring.version);
            w.u32(ring.block_size);
            w.u32(ring.block_count);
            w.u32(ring.frame_size);
            w.u32(ring.tx_frames);
            w.u64(*len);
        }),
        Reply::Ok => frame(out, kind::REP_OK, |_| {}),
        Reply::Resolve { mac } => frame(out, kind::REP_RESOLVE, |w| w.option(*mac, Writer::mac)),
        Reply::Stat { text } => frame(out, kind::REP_STAT, |w| w.bytes(text.as_bytes())),
        Reply::Error { errno } => frame(out, kind::REP_ERROR, |w| w.i32(*errno)),
        Reply::Sent { n } => frame(out, kind::REP_SENT, |w| w.u32(*n)),
        Reply::Option { value } => frame(out, kind::REP_OPTION, |w| w.bytes(value)),
        Reply::Names { local, remote } => frame(out, kind::REP_NAMES, |w| {
            w.sockaddr(*local);
            w.option(*remote, Writer::sockaddr);
        }),
        Reply::Received { data, fin } => frame(out, kind::REP_RECEIVED, |w| {
            w.bytes(data);
            w.bool(*fin);
        }),
        Reply::Forked => frame(out, kind::REP_FORKED, |_| {}),
        Reply::AcceptedDeferred { id, remote } => frame(out, kind::REP_ACCEPTED_DEFERRED, |w| {
            w.u64(*id);
            w.sockaddr(*remote);
        }),
        Reply::Cached { ring, len } => frame(out, kind::REP_CACHED, |w| {
            w.u8(ring.version);
            w.u32(ring.block_size);
            w.u32(ring.block_count);
            w.u32(ring.frame_size);
            w.u32(ring.tx_frames);
            w.u64(*len);
        }),
    }
}

/// Encodes an upcall into `out` (replacing its contents).
pub fn encode_upcall(msg: &Upcall, out: &mut Vec<u8>) {
    match msg {
        Upcall::Datagram {
            id,
            src,
            dst,
            payload,
        } => frame(out, kind::UP_DATAGRAM, |w| {
            w.u64(*id);
            w.sockaddr(*src);
            w.sockaddr(*dst);
            w.bytes(payload);
        }),
        Upcall::Resolved { addr, mac } => frame(out, kind::UP_RESOLVED, |w| {
            w.ip(*addr);
            w.option(*mac, Writer::mac);
        }),
        Upcall::Acceptable { id, seq } => frame(out, kind::UP_ACCEPTABLE, |w| {
            w.u64(*id);
            w.u32(*seq);
        }),
        Upcall::TcpReady { id, events } => frame(out, kind::UP_TCP_READY, |w| {
            w.u64(*id);
            w.u8(*events);
        }),
        Upcall::Recall { id } => frame(out, kind::UP_RECALL, |w| w.u64(*id)),
        Upcall::SoleHolder { id } => frame(out, kind::UP_SOLE_HOLDER, |w| w.u64(*id)),
        Upcall::IcmpError { id, remote, errno } => frame(out, kind::UP_ICMP_ERROR, |w| {
            w.u64(*id);
            w.sockaddr(*remote);
            w.i32(*errno);
        }),
        Upcall::TcpIcmpError {
            id,
            local,
            remote,
            errno,
            next_hop_mtu,
            quoted_seq,
        } => frame(out, kind::UP_TCP_ICMP_ERROR, |w| {
            w.u64(*id);
            w.sockaddr(*local);
            w.sockaddr(*remote);
            w.i32(*errno);
            w.u16(*next_hop_mtu);
            w.u32(*quoted_seq);
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

struct Reader<'a> {
    rest: &'a [u8],
}

type Result<T> = core::result::Result<T, DecodeError>;

impl<'a> Reader<'a> {
    /// A ring geometry (TPACKET version 2 or 3).
    fn ring(&mut self) -> Result<RingSpec> {
        let version = self.u8()?;
        if version != 2 && version != 3 {
            return Err(DecodeError::BadValue("ring version"));
        }
        Ok(RingSpec {
            version,
            block_size: self.u32()?,
            block_count: self.u32()?,
            frame_size: self.u32()?,
            tx_frames: self.u32()?,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Result<i32> {
        self.array().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn errno(&mut self) -> Result<i32> {
        let v = i32::from_le_bytes(self.array()?);
        if (1..=MAX_ERRNO).contains(&v) {
            Ok(v)
        } else {
            Err(DecodeError::BadValue("errno out of range"))
        }
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue("bool tag")),
        }
    }
    fn ip(&mut self) -> Result<Ipv4Addr> {
        self.array::<4>().map(Ipv4Addr::from)
    }
    fn sockaddr(&mut self) -> Result<SocketAddrV4> {
        let ip = self.ip()?;
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }
    fn mac(&mut self) -> Result<EthernetAddress> {
        self.array::<6>().map(EthernetAddress)
    }
    /// A length-prefixed byte string, borrowed: nothing is allocated before the bytes are known
    /// to be present.
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > MAX_MESSAGE {
            return Err(DecodeError::BadValue("length above MAX_MESSAGE"));
        }
        self.take(len)
    }
    fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        core::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadValue("string is not UTF-8"))
    }
    fn option<T>(&mut self, some: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => some(self).map(Some),
            _ => Err(DecodeError::BadValue("option tag")),
        }
    }
    fn finish(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Checks the header; returns the kind and a reader over exactly the body.
fn open(data: &[u8]) -> Result<(u16, Reader<'_>)> {
    let mut r = Reader { rest: data };
    let magic = r.u16()?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = r.u16()?;
    let body_len = r.u32()? as usize;
    if body_len > MAX_MESSAGE - HEADER_LEN {
        return Err(DecodeError::BadValue("body length above MAX_MESSAGE"));
    }
    let body = r.take(body_len)?;
    r.finish()?;
    Ok((kind, Reader { rest: body }))
}

/// Runs `body` over the message body and requires it to consume all of it.
fn whole<'a, T>(mut r: Reader<'a>, body: impl FnOnce(&mut Reader<'a>) -> Result<T>) -> Result<T> {
    let v = body(&mut r)?;
    r.finish()?;
    Ok(v)
}

pub fn decode_request(data: &[u8]) -> Result<Request> {
    let (k, r) = open(data)?;
    whole(r, |r| match k {
        kind::REQ_HELLO => Ok(Request::Hello {
            version: r.u16()?,
            pid: r.u32()?,
        }),
        kind::REQ_SOCKET => {
            let family = match r.u8()? {
                0 => Family::Inet,
                1 => Family::Inet6 { v6only: r.bool()? },
                _ => return Err(DecodeError::BadValue("family tag")),
            };
            let kind = match r.u8()? {
                0 => SockKind::Datagram,
                1 => SockKind::Stream,
                _ => return Err(DecodeError::BadValue("socket kind tag")),
            };
            Ok(Request::Socket { family, kind })
        }
        kind::REQ_BIND => Ok(Request::Bind {
            id: r.u64()?,
            local: r.sockaddr()?,
            reuse_addr: r.bool()?,
            reuse_port: r.bool()?,
        }),
        kind::REQ_CONNECT => Ok(Request::Connect {
            id: r.u64()?,
            remote: r.option(Reader::sockaddr)?,
        }),
        kind::REQ_CLOSE => Ok(Request::Close { id: r.u64()? }),
        kind::REQ_RESOLVE => Ok(Request::Resolve { addr: r.ip()? }),
        kind::REQ_STAT => Ok(Request::Stat { json: r.bool()? }),
        kind::REQ_HAND_OVER => Ok(Request::HandOver {
            id: r.u64()?,
            len: r.u64()?,
        }),
        kind::REQ_LISTEN => Ok(Request::Listen {
            id: r.u64()?,
            backlog: r.u32()?,
        }),
        kind::REQ_ACCEPT => Ok(Request::Accept { id: r.u64()? }),
        kind::REQ_ROUTE_ADD => Ok(Request::RouteAdd {
            dest: r.ip()?,
            prefix_len: r.u8()?,
            gateway: r.option(Reader::ip)?,
        }),
        kind::REQ_ROUTE_DEL => Ok(Request::RouteDel {
            dest: r.ip()?,
            prefix_len: r.u8()?,
        }),
        kind::REQ_NEIGH_ADD => Ok(Request::NeighAdd {
            ip: r.ip()?,
            mac: r.mac()?,
        }),
        kind::REQ_NEIGH_DEL => Ok(Request::NeighDel { ip: r.ip()? }),
        kind::REQ_FLUSH => Ok(Request::Flush {
            id: r.u64()?,
            len: r.u64()?,
            rx_cursor: r.u32()?,
        }),
        kind::REQ_SEND => {
            let id = r.u64()?;
            let data = r.bytes()?;
            if data.len() > MAX_TRANSFER {
                return Err(DecodeError::BadValue("send larger than MAX_TRANSFER"));
            }
            Ok(Request::Send {
                id,
                data: data.to_vec(),
            })
        }
        kind::REQ_RECV => Ok(Request::Recv {
            id: r.u64()?,
            max: r.u32()?,
            peek: r.bool()?,
        }),
        kind::REQ_SHUTDOWN => Ok(Request::Shutdown {
            id: r.u64()?,
            how: match r.u8()? {
                0 => ShutdownHow::Read,
                1 => ShutdownHow::Write,
                2 => ShutdownHow::Both,
                _ => return Err(DecodeError::BadValue("shutdown how")),
            },
        }),
        kind::REQ_CACHE => Ok(Request::Cache { id: r.u64()? }),
        kind::REQ_SET_OPTION => {
            let id = r.u64()?;
            let level = r.i32()?;
            let name = r.i32()?;
            let value = r.bytes()?;
            if value.len() > MAX_OPTION {
                return Err(DecodeError::BadValue("option value larger than MAX_OPTION"));
            }
            Ok(Request::SetOption {
                id,
                level,
                name,
                value: value.to_vec(),
            })
        }
        kind::REQ_GET_OPTION => Ok(Request::GetOption {
            id: r.u64()?,
            level: r.i32()?,
            name: r.i32()?,
        }),
        kind::REQ_NAMES => Ok(Request::Names { id: r.u64()? }),
        kind::REQ_RECALL => Ok(Request::Recall { id: r.u64()? }),
        kind::REQ_FORK => {
            let count = r.u32()? as usize;
            if count > crate::control::MAX_FORK_ENDPOINTS {
                return Err(DecodeError::BadValue("more than MAX_FORK_ENDPOINTS ids"));
            }
            let ids = (0..count).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            Ok(Request::Fork { ids })
        }
        kind::REQ_RELAY => Ok(Request::Relay { id: r.u64()? }),
        other => Err(DecodeError::UnknownKind(other)),
    })
}

pub fn decode_reply(data: &[u8]) -> Result<Reply> {
    let (k, r) = open(data)?;
    whole(r, |r| match k {
        kind::REP_HELLO => Ok(Reply::Hello {
            client_id: r.u32()?,
            region_len: r.u64()?,
        }),
        kind::REP_SOCKET => Ok(Reply::Socket { id: r.u64()? }),
        kind::REP_BOUND => {
            let local = r.sockaddr()?;
            let ring = r.ring()?;
            Ok(Reply::Bound { local, ring })
        }
        kind::REP_ACCEPTED => Ok(Reply::Accepted {
            id: r.u64()?,
            remote: r.sockaddr()?,
            ring: r.ring()?,
            len: r.u64()?,
        }),
        kind::REP_OK => Ok(Reply::Ok),
        kind::REP_RESOLVE => Ok(Reply::Resolve {
            mac: r.option(Reader::mac)?,
        }),
        kind::REP_STAT => Ok(Reply::Stat { text: r.string()? }),
        kind::REP_ERROR => Ok(Reply::Error { errno: r.errno()? }),
        kind::REP_SENT => Ok(Reply::Sent { n: r.u32()? }),
        kind::REP_OPTION => Ok(Reply::Option {
            value: r.bytes()?.to_vec(),
        }),
        kind::REP_NAMES => Ok(Reply::Names {
            local: r.sockaddr()?,
            remote: r.option(Reader::sockaddr)?,
        }),
        kind::REP_RECEIVED => Ok(Reply::Received {
            data: r.bytes()?.to_vec(),
            fin: r.bool()?,
        }),
        kind::REP_FORKED => Ok(Reply::Forked),
        kind::REP_ACCEPTED_DEFERRED => Ok(Reply::AcceptedDeferred {
            id: r.u64()?,
            remote: r.sockaddr()?,
        }),
        kind::REP_CACHED => Ok(Reply::Cached {
            ring: r.ring()?,
            len: r.u64()?,
        }),
        other => Err(DecodeError::UnknownKind(other)),
    })
}

pub fn decode_upcall(data: &[u8]) -> Result<Upcall> {
    let (k, r) = open(data)?;
    whole(r, |r| match k {
        kind::UP_DATAGRAM => {
            let id = r.u64()?;
            let src = r.sockaddr()?;
            let dst = r.sockaddr()?;
            Ok(Upcall::Datagram {
                id,
                src,
                dst,
                payload: r.bytes()?.to_vec(),
            })
        }
        kind::UP_RESOLVED => Ok(Upcall::Resolved {
            addr: r.ip()?,
            mac: r.option(Reader::mac)?,
        }),
        kind::UP_ACCEPTABLE => Ok(Upcall::Acceptable {
            id: r.u64()?,
            seq: r.u32()?,
        }),
        kind::UP_TCP_READY => Ok(Upcall::TcpReady {
            id: r.u64()?,
            events: r.u8()?,
        }),
        kind::UP_RECALL => Ok(Upcall::Recall { id: r.u64()? }),
        kind::UP_SOLE_HOLDER => Ok(Upcall::SoleHolder { id: r.u64()? }),
        kind::UP_ICMP_ERROR => Ok(Upcall::IcmpError {
            id: r.u64()?,
            remote: r.sockaddr()?,
            errno: r.errno()?,
        }),
        kind::UP_TCP_ICMP_ERROR => Ok(Upcall::TcpIcmpError {
            id: r.u64()?,
            local: r.sockaddr()?,
            remote: r.sockaddr()?,
            errno: r.errno()?,
            next_hop_mtu: r.u16()?,
            quoted_seq: r.u32()?,
        }),
        other => Err(DecodeError::UnknownKind(other)),
    })
}

/// Fuzz entry point: runs every decoder over `data`; whatever one accepts must re-encode to
/// exactly `data` and decode again to the same value. Panics only on a violation of that
/// contract (a codec bug), never because of the input.
pub fn fuzz_decode(data: &[u8]) {
    let mut buf = Vec::new();
    if let Ok(m) = decode_request(data) {
        encode_request(&m, &mut buf);
        assert_eq!(buf, data, "request re-encodes differently: {m:?}");
        assert_eq!(decode_request(&buf).as_ref(), Ok(&m));
    }
    if let Ok(m) = decode_reply(data) {
        encode_reply(&m, &mut buf);
        assert_eq!(buf, data, "reply re-encodes differently: {m:?}");
        assert_eq!(decode_reply(&buf).as_ref(), Ok(&m));
    }
    if let Ok(m) = decode_upcall(data) {
        encode_upcall(&m, &mut buf);
        assert_eq!(buf, data, "upcall re-encodes differently: {m:?}");
        assert_eq!(decode_upcall(&buf).as_ref(), Ok(&m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().expect("test address")
    }

    const RING: RingSpec = RingSpec {
        version: 3,
        block_size: 1 << 17,
        block_count: 8,
        frame_size: 2048,
        tx_frames: 0,
    };

    pub(crate) fn requests() -> Vec<Request> {
        vec![
            Request::Hello {
                version: VERSION,
                pid: 4242,
            },
            Request::Socket {
                family: Family::Inet,
                kind: SockKind::Datagram,
            },
            Request::Socket {
                family: Family::Inet6 { v6only: false },
                kind: SockKind::Stream,
            },
            Request::Socket {
                family: Family::Inet6 { v6only: true },
                kind: SockKind::Datagram,
            },
            Request::Bind {
                id: u64::MAX,
                local: sa("198.18.0.2:53"),
                reuse_addr: true,
                reuse_port: false,
            },
            Request::Bind {
                id: 1,
                local: sa("0.0.0.0:0"),
                reuse_addr: false,
                reuse_port: true,
            },
            Request::Connect {
                id: 7,
                remote: Some(sa("198.18.0.1:9999")),
            },
            Request::Connect {
                id: 7,
                remote: None,
            },
            Request::Close {
                id: 0x0102_0304_0506_0708,
            },
            Request::Resolve {
                addr: Ipv4Addr::new(198, 18, 0, 1),
            },
            Request::Stat { json: true },
            Request::Stat { json: false },
            Request::HandOver { id: 9, len: 4096 },
            Request::Listen {
                id: 9,
                backlog: 128,
            },
            Request::Accept { id: 9 },
            Request::RouteAdd {
                dest: Ipv4Addr::new(198, 18, 0, 128),
                prefix_len: 25,
                gateway: Some(Ipv4Addr::new(198, 18, 0, 1)),
            },
            Request::RouteAdd {
                dest: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: None,
            },
            // Out-of-range prefixes decode (the netserver answers EINVAL, not EPROTO).
            Request::RouteDel {
                dest: Ipv4Addr::new(198, 18, 0, 200),
                prefix_len: 33,
            },
            Request::NeighAdd {
                ip: Ipv4Addr::new(198, 18, 0, 1),
                mac: EthernetAddress([2, 0, 0, 0, 0, 0x77]),
            },
            Request::NeighDel {
                ip: Ipv4Addr::new(198, 18, 0, 1),
            },
            Request::Flush {
                id: 11,
                len: 8192,
                rx_cursor: 17,
            },
            Request::Send {
                id: 11,
                data: b"flushed bytes".to_vec(),
            },
            Request::Recv {
                id: 11,
                max: 65536,
                peek: true,
            },
            Request::Shutdown {
                id: 11,
                how: ShutdownHow::Write,
            },
            Request::Cache { id: 11 },
            Request::SetOption {
                id: 11,
                level: libc::IPPROTO_TCP,
                name: libc::TCP_NODELAY,
                value: 1i32.to_ne_bytes().to_vec(),
            },
            Request::GetOption {
                id: 11,
                level: libc::SOL_SOCKET,
                name: libc::SO_RCVBUF,
            },
            Request::Names { id: 11 },
            Request::Recall { id: 12 },
            Request::Fork { ids: vec![] },
            Request::Relay { id: 77 },
            Request::Fork {
                ids: vec![11, 12, u64::MAX],
            },
        ]
    }

    pub(crate) fn replies() -> Vec<Reply> {
        vec![
            Reply::Hello {
                client_id: 3,
                region_len: 36864,
            },
            Reply::Socket { id: 99 },
            Reply::Bound {
                local: sa("198.18.0.2:40000"),
                ring: RING,
            },
            Reply::Bound {
                local: sa("198.18.0.2:1"),
                ring: RingSpec {
                    version: 2,
                    tx_frames: 256,
                    ..RING
                },
            },
            Reply::Accepted {
                id: 12,
                remote: sa("198.18.0.1:5001"),
                ring: RING,
                len: 70_000,
            },
            Reply::Ok,
            Reply::Resolve {
                mac: Some(EthernetAddress([2, 0, 0, 0, 0, 1])),
            },
            Reply::Resolve { mac: None },
            Reply::Stat {
                text: String::new(),
            },
            Reply::Stat {
                text: "endpoints 3\nüñí\n".to_string(),
            },
            Reply::Error {
                errno: libc::EADDRINUSE,
            },
            Reply::Error { errno: 4095 },
            Reply::Sent { n: 65536 },
            Reply::Received {
                data: b"flushed".to_vec(),
                fin: false,
            },
            Reply::Received {
                data: Vec::new(),
                fin: true,
            },
            Reply::Cached {
                ring: RING,
                len: 9000,
            },
            Reply::Option {
                value: vec![0; 280],
            },
            Reply::Names {
                local: sa("198.18.0.2:40000"),
                remote: Some(sa("198.18.0.1:80")),
            },
            Reply::Names {
                local: sa("0.0.0.0:0"),
                remote: None,
            },
            Reply::Forked,
            Reply::AcceptedDeferred {
                id: 13,
                remote: sa("198.18.0.1:5002"),
            },
        ]
    }

    pub(crate) fn upcalls() -> Vec<Upcall> {
        vec![
            Upcall::Datagram {
                id: 5,
                src: sa("198.18.0.1:7"),
                dst: sa("198.18.0.2:8"),
                payload: vec![],
            },
            Upcall::Datagram {
                id: 5,
                src: sa("198.18.0.1:7"),
                dst: sa("198.18.0.2:8"),
                payload: (0..65507u32).map(|i| (i * 7) as u8).collect(),
            },
            Upcall::Resolved {
                addr: Ipv4Addr::new(198, 18, 0, 1),
                mac: Some(EthernetAddress([2, 0, 0, 0, 0, 1])),
            },
            Upcall::Resolved {
                addr: Ipv4Addr::new(198, 18, 0, 77),
                mac: None,
            },
            Upcall::IcmpError {
                id: 5,
                remote: sa("198.18.0.1:9"),
                errno: libc::ECONNREFUSED,
            },
            Upcall::TcpIcmpError {
                id: 6,
                local: sa("198.18.0.2:40000"),
                remote: sa("198.18.0.1:5001"),
                errno: libc::EMSGSIZE,
                next_hop_mtu: 1280,
                quoted_seq: 0xdead_beef,
            },
            Upcall::Acceptable { id: 7, seq: 3 },
            Upcall::TcpReady {
                id: 8,
                events: crate::control::TcpReady::READABLE | crate::control::TcpReady::READ_HUP,
            },
            Upcall::Recall { id: 9 },
            Upcall::SoleHolder { id: 10 },
        ]
    }

    /// Every encoded variant of every class.
    fn all_encoded() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for m in requests() {
            let mut b = Vec::new();
            encode_request(&m, &mut b);
            out.push(b);
        }
        for m in replies() {
            let mut b = Vec::new();
            encode_reply(&m, &mut b);
            out.push(b);
        }
        for m in upcalls() {
            let mut b = Vec::new();
            encode_upcall(&m, &mut b);
            out.push(b);
        }
        out
    }

    #[test]
    fn every_variant_round_trips() {
        let mut buf = vec![0xaa; 3]; // encoders replace, not append
        for m in requests() {
            encode_request(&m, &mut buf);
            assert_eq!(decode_request(&buf), Ok(m.clone()), "{m:?}");
            assert!(decode_reply(&buf).is_err() && decode_upcall(&buf).is_err());
            assert!(buf.len() <= MAX_MESSAGE);
            fuzz_decode(&buf);
        }
        for m in replies() {
            encode_reply(&m, &mut buf);
            assert_eq!(decode_reply(&buf), Ok(m.clone()), "{m:?}");
            assert!(decode_request(&buf).is_err() && decode_upcall(&buf).is_err());
            fuzz_decode(&buf);
        }
        for m in upcalls() {
            encode_upcall(&m, &mut buf);
            assert_eq!(decode_upcall(&buf), Ok(m.clone()), "{m:?}");
            assert!(decode_request(&buf).is_err() && decode_reply(&buf).is_err());
            assert!(buf.len() <= MAX_MESSAGE);
            fuzz_decode(&buf);
        }
    }

    #[test]
    fn byte_layout_is_as_documented() {
        let mut b = Vec::new();
        encode_request(
            &Request::Bind {
                id: 0x0102,
                local: sa("198.18.0.2:53"),
                reuse_addr: true,
                reuse_port: false,
            },
            &mut b,
        );
        #[rustfmt::skip]
        let expected = [
            0x53, 0x4d, 0x07, 0x00, 0x03, 0x01, 16, 0, 0, 0,
            0x02, 0x01, 0, 0, 0, 0, 0, 0,
            198, 18, 0, 2, 53, 0,
            1, 0,
        ];
        assert_eq!(b, expected);
        encode_reply(&Reply::Resolve { mac: None }, &mut b);
        assert_eq!(b, [0x53, 0x4d, 7, 0, 0x05, 0x02, 1, 0, 0, 0, 0]);
        encode_request(
            &Request::RouteAdd {
                dest: Ipv4Addr::new(198, 18, 0, 128),
                prefix_len: 25,
                gateway: Some(Ipv4Addr::new(198, 18, 0, 1)),
            },
            &mut b,
        );
        #[rustfmt::skip]
        let expected = [
            0x53, 0x4d, 7, 0, 0x0b, 0x01, 10, 0, 0, 0,
            198, 18, 0, 128, 25,
            1, 198, 18, 0, 1,
        ];
        assert_eq!(b, expected);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for full in all_encoded() {
            for len in 0..full.len() {
                let cut = &full[..len];
                assert!(decode_request(cut).is_err(), "{len}");
                assert!(decode_reply(cut).is_err(), "{len}");
                assert!(decode_upcall(cut).is_err(), "{len}");
                fuzz_decode(cut);
            }
            // Short of the header's promise: truncated. Beyond it: trailing bytes.
            let mut cut = full.clone();
            cut.pop();
            let err = decode_request(&cut)
                .err()
                .or(decode_reply(&cut).err())
                .or(decode_upcall(&cut).err());
            assert!(matches!(err, Some(DecodeError::Truncated)), "{err:?}");
        }
    }

    #[test]
    fn specific_errors() {
        let mut b = Vec::new();
        encode_reply(
            &Reply::Error {
                errno: libc::EINVAL,
            },
            &mut b,
        );
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = b.clone();
            f(&mut m);
            decode_reply(&m)
        };
        assert_eq!(with(&|m| m[0] = 0), Err(DecodeError::BadMagic(0x4d00)));
        assert_eq!(with(&|m| m[2] = 9), Err(DecodeError::Version(9)));
        assert_eq!(
            with(&|m| m[4] = 0x77),
            Err(DecodeError::UnknownKind(0x0277))
        );
        assert_eq!(with(&|m| m.push(0)), Err(DecodeError::TrailingBytes));
        assert_eq!(
            decode_request(&b),
            Err(DecodeError::UnknownKind(kind::REP_ERROR))
        );
        for errno in [0, -1, 4096, i32::MIN, i32::MAX] {
            assert_eq!(
                with(&|m| m[10..14].copy_from_slice(&errno.to_le_bytes())),
                Err(DecodeError::BadValue("errno out of range"))
            );
        }
        // Body length larger than the bytes present, and absurdly large.
        assert_eq!(with(&|m| m[6] = 5), Err(DecodeError::Truncated));
        assert_eq!(with(&|m| m[6] = 3), Err(DecodeError::TrailingBytes));
        assert!(matches!(
            with(&|m| m[6..10].copy_from_slice(&u32::MAX.to_le_bytes())),
            Err(DecodeError::BadValue(_))
        ));
        // A field running past the declared body: header length exact, body short.
        let short = [0x53, 0x4d, 7, 0, 0x07, 0x02, 2, 0, 0, 0, 1, 0];
        assert_eq!(decode_reply(&short), Err(DecodeError::Truncated));

        // Bad tags.
        let mut s = Vec::new();
        encode_request(
            &Request::Socket {
                family: Family::Inet,
                kind: SockKind::Datagram,
            },
            &mut s,
        );
        s[10] = 2;
        assert_eq!(decode_request(&s), Err(DecodeError::BadValue("family tag")));
        s[10] = 0;
        s[11] = 9;
        assert_eq!(
            decode_request(&s),
            Err(DecodeError::BadValue("socket kind tag"))
        );
        encode_request(&Request::Stat { json: true }, &mut s);
        s[10] = 2;
        assert_eq!(decode_request(&s), Err(DecodeError::BadValue("bool tag")));
        // A route request with a bad gateway tag, or cut inside the gateway.
        encode_request(
            &Request::RouteAdd {
                dest: Ipv4Addr::new(198, 18, 0, 0),
                prefix_len: 24,
                gateway: None,
            },
            &mut s,
        );
        s[15] = 2;
        assert_eq!(decode_request(&s), Err(DecodeError::BadValue("option tag")));
        s[15] = 1;
        assert_eq!(decode_request(&s), Err(DecodeError::Truncated));
        encode_upcall(
            &Upcall::Resolved {
                addr: Ipv4Addr::LOCALHOST,
                mac: None,
            },
            &mut s,
        );
        s[14] = 7;
        assert_eq!(decode_upcall(&s), Err(DecodeError::BadValue("option tag")));
        encode_reply(
            &Reply::Bound {
                local: sa("1.2.3.4:5"),
                ring: RING,
            },
            &mut s,
        );
        s[16] = 4;
        assert_eq!(decode_reply(&s), Err(DecodeError::BadValue("ring version")));
        encode_reply(&Reply::Stat { text: "ab".into() }, &mut s);
        s[14] = 0xff;
        assert_eq!(
            decode_reply(&s),
            Err(DecodeError::BadValue("string is not UTF-8"))
        );
        // A string length beyond the body.
        encode_reply(&Reply::Stat { text: "ab".into() }, &mut s);
        s[10] = 3;
        assert_eq!(decode_reply(&s), Err(DecodeError::Truncated));
        // A payload length that claims gigabytes allocates nothing and fails.
        encode_upcall(
            &Upcall::Datagram {
                id: 1,
                src: sa("1.1.1.1:1"),
                dst: sa("2.2.2.2:2"),
                payload: vec![1],
            },
            &mut s,
        );
        let at = HEADER_LEN + 8 + 6 + 6;
        s[at..at + 4].copy_from_slice(&0x4000_0000u32.to_le_bytes());
        assert!(matches!(decode_upcall(&s), Err(DecodeError::BadValue(_))));

        assert_eq!(DecodeError::BadValue("x").errno(), libc::EINVAL);
        assert_eq!(DecodeError::Truncated.errno(), libc::EPROTO);
        assert_eq!(DecodeError::Version(2).errno(), libc::EPROTO);
    }

    #[test]
    fn oversize_messages_are_refused() {
        let big = Upcall::Datagram {
            id: 1,
            src: sa("1.1.1.1:1"),
            dst: sa("2.2.2.2:2"),
            payload: vec![0; MAX_MESSAGE],
        };
        let mut b = Vec::new();
        encode_upcall(&big, &mut b);
        assert!(b.len() > MAX_MESSAGE);
        assert!(matches!(decode_upcall(&b), Err(DecodeError::BadValue(_))));
    }

    /// Deterministic xorshift64.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// ~100k mutated messages (byte flips, length-field edits, cuts, splices, insertions):
    /// no panic, and whatever decodes round-trips (checked inside `fuzz_decode`).
    #[test]
    fn mutations_never_panic() {
        // Small messages only, so 100k cases stay fast; the big datagram is covered above.
        let seeds: Vec<Vec<u8>> = all_encoded()
            .into_iter()
            .filter(|m| m.len() < 256)
            .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0usize;
        for _ in 0..100_000 {
            let mut m = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(7) {
                    0 if !m.is_empty() => {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                    1 if !m.is_empty() => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    2 => m.truncate(rng.below(m.len() + 1)),
                    3 => {
                        let i = rng.below(m.len() + 1);
                        m.insert(i, rng.next() as u8);
                    }
                    4 if m.len() >= HEADER_LEN => {
                        // Make the header's body length agree with the (mutated) body.
                        let body = (m.len() - HEADER_LEN) as u32;
                        m[6..10].copy_from_slice(&body.to_le_bytes());
                    }
                    5 => {
                        let other = &seeds[rng.below(seeds.len())];
                        let cut = rng.below(other.len() + 1);
                        m.extend_from_slice(&other[cut..]);
                    }
                    _ if m.len() >= 6 => {
                        // Swap in another valid kind.
                        let other = &seeds[rng.below(seeds.len())];
                        m[4..6].copy_from_slice(&other[4..6]);
                    }
                    _ => {}
                }
            }
            if decode_request(&m).is_ok() || decode_reply(&m).is_ok() || decode_upcall(&m).is_ok() {
                accepted += 1;
            }
            fuzz_decode(&m);
        }
        // The mutator reaches the decoders' success paths too, not only the header checks.
        assert!(accepted > 1_000, "accepted {accepted}");
    }
}
