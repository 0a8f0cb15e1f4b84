//! The control transport: SOCK_SEQPACKET Unix sockets carrying one encoded message per packet,
//! with descriptors passed by SCM_RIGHTS (paper §3.1; `docs/notes/design.md`).
//!
//! - [`ControlAddress`]: `@name` is an abstract name (per network namespace, nothing on disk),
//!   anything else a filesystem path; [`ControlAddress::from_env`] reads `MSOCK_CONTROL`.
//! - [`ControlListener`]: the netserver's listening socket; [`ControlListener::accept`] returns
//!   the connection and the peer's kernel credentials (SO_PEERCRED).
//! - [`Connection`]: one end of a control or upcall socket. [`Connection::send`] and
//!   [`Connection::recv`] move raw messages with descriptors; [`Connection::call`],
//!   [`Connection::send_reply`], [`Connection::send_upcall`], [`Connection::recv_request`] and
//!   [`Connection::recv_upcall`] add the codec.
//!
//! Contract: every socket is close-on-exec; received descriptors are close-on-exec
//! (MSG_CMSG_CLOEXEC). A received message longer than [`MAX_MESSAGE`] or carrying more than
//! [`MAX_FDS`] descriptors is an error (EMSGSIZE) and every descriptor that came with it is
//! closed, so a peer cannot make us leak descriptors. Sends use MSG_NOSIGNAL (a vanished peer is
//! EPIPE, never SIGPIPE in the host program). Connecting to an abstract name with no listener
//! fails at once with ECONNREFUSED. A zero-length read is end of file (the peer closed); the
//! typed helpers report it as [`io::ErrorKind::UnexpectedEof`], undecodable messages as
//! [`io::ErrorKind::InvalidData`].
//!
//! The two system calls that need `unsafe` (recvmsg turning received numbers into owned
//! descriptors, and accept4) live in the sibling `fdpass`, the only file of `control` allowed
//! `unsafe`.

use core::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, bind, connect,
    getsockopt, listen, sendmsg, socket, socketpair, sockopt,
};

use super::codec::{self, decode_reply, decode_request, decode_upcall};
use super::fdpass as sys;
use super::{ADDRESS_ENV, DEFAULT_ADDRESS, MAX_MESSAGE, Reply, Request, Upcall};

/// Largest number of descriptors accepted with one message.
pub const MAX_FDS: usize = sys::MAX_FDS;

/// Where the netserver listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddress {
    /// An abstract socket name (without the leading NUL).
    Abstract(Vec<u8>),
    Path(PathBuf),
}

impl ControlAddress {
    /// `@name` → abstract, otherwise a path; `None` for "" and "@".
    pub fn parse(s: &str) -> Option<ControlAddress> {
        match s.strip_prefix('@') {
            Some("") => None,
            Some(name) => Some(ControlAddress::Abstract(name.as_bytes().to_vec())),
            None if s.is_empty() => None,
            None => Some(ControlAddress::Path(PathBuf::from(s))),
        }
    }

    /// `MSOCK_CONTROL` if set to a valid address, else [`DEFAULT_ADDRESS`].
    pub fn from_env() -> ControlAddress {
        std::env::var(ADDRESS_ENV)
            .ok()
            .and_then(|s| ControlAddress::parse(&s))
            .unwrap_or_else(Self::default_address)
    }

    /// [`DEFAULT_ADDRESS`] (`@msock/control`).
    pub fn default_address() -> ControlAddress {
        let name = DEFAULT_ADDRESS.strip_prefix('@').unwrap_or(DEFAULT_ADDRESS);
        ControlAddress::Abstract(name.as_bytes().to_vec())
    }

    fn sockaddr(&self) -> io::Result<UnixAddr> {
        match self {
            ControlAddress::Abstract(name) => UnixAddr::new_abstract(name),
            ControlAddress::Path(path) => UnixAddr::new(path.as_path()),
        }
        .map_err(io::Error::from)
    }
}

impl fmt::Display for ControlAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlAddress::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            ControlAddress::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The kernel's word on who is at the other end (SO_PEERCRED, taken at connect time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

fn seqpacket(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    socket(AddressFamily::Unix, SockType::SeqPacket, flags, None).map_err(io::Error::from)
}

fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let mut flags = OFlag::from_bits_retain(flags);
    flags.set(OFlag::O_NONBLOCK, on);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// The netserver's listening socket.
#[derive(Debug)]
pub struct ControlListener {
    fd: OwnedFd,
    nonblocking: bool,
    /// A filesystem socket to unlink on drop.
    path: Option<PathBuf>,
}

impl ControlListener {
    /// Binds and listens, non-blocking (for an event loop): `accept` then returns
    /// [`io::ErrorKind::WouldBlock`] when no client is waiting, and accepted connections are
    /// non-blocking too.
    pub fn bind(addr: &ControlAddress) -> io::Result<ControlListener> {
        Self::bind_with(addr, true)
    }

    /// Binds and listens; `nonblocking` applies to the listener and to accepted connections.
    /// A filesystem path occupied by a stale socket (nobody accepting) is replaced; a live one
    /// is [`io::ErrorKind::AddrInUse`], as is an abstract name already bound.
    pub fn bind_with(addr: &ControlAddress, nonblocking: bool) -> io::Result<ControlListener> {
        let fd = seqpacket(nonblocking)?;
        let sa = addr.sockaddr()?;
        match (bind(fd.as_raw_fd(), &sa), addr) {
            (Ok(()), _) => {}
            (Err(nix::errno::Errno::EADDRINUSE), ControlAddress::Path(path)) => {
                match Connection::connect(addr) {
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        std::fs::remove_file(path)?;
                        bind(fd.as_raw_fd(), &sa).map_err(io::Error::from)?;
                    }
                    _ => return Err(io::Error::from(io::ErrorKind::AddrInUse)),
                }
            }
            (Err(e), _) => return Err(e.into()),
        }
        let path = match addr {
            ControlAddress::Path(p) => Some(p.clone()),
            ControlAddress::Abstract(_) => None,
        };
        let listener = ControlListener {
            fd,
            nonblocking,
            path,
        };
        listen(&listener.fd, Backlog::new(128).map_err(io::Error::from)?)
            .map_err(io::Error::from)?;
        Ok(listener)
    }

    /// Accepts one client with its credentials.
    pub fn accept(&self) -> io::Result<(Connection, PeerCred)> {
        let mut flags = libc::SOCK_CLOEXEC;
        if self.nonblocking {
            flags |= libc::SOCK_NONBLOCK;
        }
        let fd = sys::accept4(self.fd.as_fd(), flags)?;
        let conn = Connection { fd };
        let cred = conn.peer_cred()?;
        Ok((conn, cred))
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AsFd for ControlListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for ControlListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One end of a control or upcall socket.
#[derive(Debug)]
pub struct Connection {
    fd: OwnedFd,
}

impl Connection {
    /// Connects (blocking socket) to the netserver at `addr`.
    pub fn connect(addr: &ControlAddress) -> io::Result<Connection> {
        let fd = seqpacket(false)?;
        let sa = addr.sockaddr()?;
        loop {
            match connect(fd.as_raw_fd(), &sa) {
                Ok(()) => return Ok(Connection { fd }),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A connected pair (blocking, close-on-exec), e.g. the upcall channel.
    pub fn pair() -> io::Result<(Connection, Connection)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        Ok((Connection { fd: a }, Connection { fd: b }))
    }

    /// Adopts a connected SOCK_SEQPACKET socket (e.g. an upcall end received by SCM_RIGHTS).
    pub fn from_owned_fd(fd: OwnedFd) -> Connection {
        Connection { fd }
    }

    /// The socket itself (e.g. to move it to another descriptor number).
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }

    /// Same as [`Connection::from_owned_fd`].
    pub fn from_fd(fd: OwnedFd) -> Connection {
        Connection { fd }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking(self.fd.as_fd(), on)
    }

    /// The peer's credentials as the kernel recorded them.
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        let c = getsockopt(&self.fd, sockopt::PeerCredentials).map_err(io::Error::from)?;
        Ok(PeerCred {
            pid: u32::try_from(c.pid()).unwrap_or(0),
            uid: c.uid(),
            gid: c.gid(),
        })
    }

    /// Sends one message with `fds` attached (at most [`MAX_FDS`]); EINTR is retried.
    /// Messages above [`MAX_MESSAGE`] are refused (EMSGSIZE) before reaching the kernel.
    pub fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        let iov = [IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short seqpacket send",
                    ));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message into `buf` (resized to the message: `buf.len()` equals the returned
    /// length) with its descriptors. `Ok((0, _))` is end of file. A message that did not fit
    /// [`MAX_MESSAGE`] bytes or [`MAX_FDS`] descriptors is EMSGSIZE, with its descriptors closed.
    pub fn recv(&self, buf: &mut Vec<u8>) -> io::Result<(usize, Vec<OwnedFd>)> {
        // One byte more than the largest message, so an oversize message is seen as truncated.
        buf.clear();
        buf.reserve(MAX_MESSAGE + 1);
        let got = sys::recv_with_fds_into(self.fd.as_fd(), buf.spare_capacity_mut(), 0)?;
        sys::set_received_len(buf, got.len);
        if got.flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || got.len > MAX_MESSAGE {
            drop(got.fds);
            buf.clear();
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        Ok((got.len, got.fds))
    }

    /// Receives one message, retrying EINTR; end of file is [`io::ErrorKind::UnexpectedEof`].
    fn recv_message(&self, buf: &mut Vec<u8>) -> io::Result<Vec<OwnedFd>> {
        loop {
            match self.recv(buf) {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "control peer closed",
                    ));
                }
                Ok((_, fds)) => return Ok(fds),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// One request/reply exchange: sends `request` with `fds`, waits for the reply.
    pub fn call(
        &self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(Reply, Vec<OwnedFd>)> {
        let mut buf = Vec::new();
        codec::encode_request(request, &mut buf);
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        self.send(&buf, &raw)?;
        let got = self.recv_message(&mut buf)?;
        Ok((decode_reply(&buf)?, got))
    }

    pub fn send_request(&self, request: &Request, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut buf = Vec::new();
        codec::encode_request(request, &mut buf);
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        self.send(&buf, &raw)
    }

    pub fn send_reply(&self, reply: &Reply, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut buf = Vec::new();
        codec::encode_reply(reply, &mut buf);
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        self.send(&buf, &raw)
    }

    /// Sends an upcall (upcalls carry no descriptors).
    pub fn send_upcall(&self, upcall: &Upcall) -> io::Result<()> {
        let mut buf = Vec::new();
        codec::encode_upcall(upcall, &mut buf);
        self.send(&buf, &[])
    }

    /// Receives and decodes one request (blocking or not, as the socket is).
    pub fn recv_request(&self) -> io::Result<(Request, Vec<OwnedFd>)> {
        let mut buf = Vec::new();
        let fds = self.recv_message(&mut buf)?;
        Ok((decode_request(&buf)?, fds))
    }

    /// Receives and decodes one upcall; descriptors sent with an upcall are closed.
    pub fn recv_upcall(&self) -> io::Result<Upcall> {
        let mut buf = Vec::new();
        let _fds = self.recv_message(&mut buf)?;
        Ok(decode_upcall(&buf)?)
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Connection {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

impl From<OwnedFd> for Connection {
    fn from(fd: OwnedFd) -> Connection {
        Connection { fd }
    }
}

impl From<Connection> for OwnedFd {
    fn from(c: Connection) -> OwnedFd {
        c.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Family, RingSpec, SockKind, VERSION};
    use crate::wire::EthernetAddress;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// A unique abstract address per test.
    fn test_address(tag: &str) -> ControlAddress {
        ControlAddress::Abstract(format!("msock-test/{}/{tag}", std::process::id()).into_bytes())
    }

    /// Descriptors of this process that refer to the same open object as `fd` (counting `fd`
    /// itself). Robust against other tests opening descriptors concurrently.
    fn copies_of(fd: &OwnedFd) -> usize {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| std::fs::read_link(e.path()).ok().as_ref() == Some(&target))
            .count()
    }

    fn is_cloexec(fd: &OwnedFd) -> bool {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(
            ControlAddress::parse("@x/y"),
            Some(ControlAddress::Abstract(b"x/y".to_vec()))
        );
        assert_eq!(
            ControlAddress::parse("/run/msock.sock"),
            Some(ControlAddress::Path("/run/msock.sock".into()))
        );
        assert_eq!(ControlAddress::parse("@"), None);
        assert_eq!(ControlAddress::parse(""), None);
        assert_eq!(
            ControlAddress::default_address().to_string(),
            DEFAULT_ADDRESS
        );
        assert_eq!(
            ControlAddress::parse("/tmp/a").unwrap().to_string(),
            "/tmp/a"
        );
    }

    #[test]
    fn abstract_name_without_listener_is_refused_at_once() {
        let start = std::time::Instant::now();
        let err = Connection::connect(&test_address("nobody")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        let err =
            Connection::connect(&ControlAddress::Path("/nonexistent/msock".into())).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn abstract_name_is_exclusive() {
        let addr = test_address("exclusive");
        let _first = ControlListener::bind(&addr).unwrap();
        let err = ControlListener::bind(&addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn nonblocking_listener_and_connections() {
        let addr = test_address("nonblocking");
        let listener = ControlListener::bind(&addr).unwrap();
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let client = Connection::connect(&addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        client.send(b"x", &[]).unwrap();
        assert_eq!(server.recv(&mut buf).unwrap().0, 1);
        assert_eq!(buf, b"x");
        drop(client);
        assert_eq!(server.recv(&mut buf).unwrap().0, 0, "end of file");
        assert_eq!(
            server.recv_request().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn path_listener_replaces_stale_socket_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("msock-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control");
        let addr = ControlAddress::Path(path.clone());
        {
            let _live = ControlListener::bind(&addr).unwrap();
            assert_eq!(
                ControlListener::bind(&addr).unwrap_err().kind(),
                io::ErrorKind::AddrInUse
            );
            let _c = Connection::connect(&addr).unwrap();
        }
        assert!(!path.exists(), "unlinked on drop");
        // A stale socket file (its listener gone without unlinking) is replaced.
        let fd = seqpacket(false).unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path()).unwrap()).unwrap();
        drop(fd);
        assert!(path.exists());
        let listener = ControlListener::bind_with(&addr, false).unwrap();
        let c = Connection::connect(&addr).unwrap();
        let (s, cred) = listener.accept().unwrap();
        assert_eq!(cred.pid, std::process::id());
        c.send(b"ok", &[]).unwrap();
        let mut buf = Vec::new();
        assert_eq!(s.recv(&mut buf).unwrap().0, 2);
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A netserver thread and a client exchange every request and reply kind; the Hello passes
    /// a pipe's write end and the reply a read end plus an upcall socket, which all work across.
    #[test]
    fn client_and_server_exchange_every_message_with_fds() {
        let addr = test_address("exchange");
        let listener = ControlListener::bind_with(&addr, false).unwrap();
        let requests = vec![
            Request::Hello {
                version: VERSION,
                pid: std::process::id(),
            },
            Request::Socket {
                family: Family::Inet6 { v6only: false },
                kind: SockKind::Datagram,
            },
            Request::Bind {
                id: 1,
                local: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 0),
                reuse_addr: true,
                reuse_port: false,
            },
            Request::Connect {
                id: 1,
                remote: Some(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7)),
            },
            Request::Resolve {
                addr: Ipv4Addr::new(198, 18, 0, 1),
            },
            Request::Stat { json: true },
            Request::Close { id: 1 },
            Request::Close { id: 2 },
        ];
        let replies = vec![
            Reply::Hello {
                client_id: 1,
                region_len: 4096,
            },
            Reply::Socket { id: 1 },
            Reply::Bound {
                local: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000),
                ring: RingSpec {
                    version: 2,
                    block_size: 4096,
                    block_count: 4,
                    frame_size: 2048,
                    tx_frames: 0,
                },
            },
            Reply::Ok,
            Reply::Resolve {
                mac: Some(EthernetAddress([2, 0, 0, 0, 0, 1])),
            },
            Reply::Stat { text: "{}".into() },
            Reply::Ok,
            Reply::Error { errno: libc::EBADF },
        ];
        let upcalls = vec![
            Upcall::Datagram {
                id: 1,
                src: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7),
                dst: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000),
                payload: vec![0x5a; 8000],
            },
            Upcall::Resolved {
                addr: Ipv4Addr::new(198, 18, 0, 1),
                mac: None,
            },
            Upcall::IcmpError {
                id: 1,
                remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7),
                errno: libc::ECONNREFUSED,
            },
        ];
        let (expect_requests, serve_replies, serve_upcalls) =
            (requests.clone(), replies.clone(), upcalls.clone());
        let server = std::thread::spawn(move || {
            let (conn, cred) = listener.accept().unwrap();
            assert_eq!(
                cred,
                PeerCred {
                    pid: std::process::id(),
                    uid: nix::unistd::getuid().as_raw(),
                    gid: nix::unistd::getgid().as_raw()
                }
            );
            for (expected, reply) in expect_requests.iter().zip(&serve_replies) {
                let (request, fds) = conn.recv_request().unwrap();
                assert_eq!(&request, expected);
                if let Request::Hello { .. } = request {
                    // The client's pipe write end works here.
                    assert_eq!(fds.len(), 1);
                    nix::unistd::write(&fds[0], b"from server").unwrap();
                    let (ours, theirs) = Connection::pair().unwrap();
                    let (r, w) = nix::unistd::pipe().unwrap();
                    conn.send_reply(reply, &[r.as_fd(), theirs.as_fd()])
                        .unwrap();
                    nix::unistd::write(&w, b"via reply").unwrap();
                    for u in &serve_upcalls {
                        ours.send_upcall(u).unwrap();
                    }
                } else {
                    assert!(fds.is_empty());
                    conn.send_reply(reply, &[]).unwrap();
                }
            }
            // The client closes: end of file.
            assert_eq!(
                conn.recv_request().unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof
            );
        });
        let client = Connection::connect(&addr).unwrap();
        let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
        let mut upcall = None;
        for (request, expected) in requests.iter().zip(&replies) {
            let fds = if matches!(request, Request::Hello { .. }) {
                vec![pipe_w.as_fd()]
            } else {
                vec![]
            };
            let (reply, got) = client.call(request, &fds).unwrap();
            assert_eq!(&reply, expected);
            if let Request::Hello { .. } = request {
                let mut buf = [0u8; 32];
                let n = nix::unistd::read(pipe_r.as_raw_fd(), &mut buf).unwrap();
                assert_eq!(&buf[..n], b"from server");
                assert_eq!(got.len(), 2);
                assert!(got.iter().all(is_cloexec));
                let n = nix::unistd::read(got[0].as_raw_fd(), &mut buf).unwrap();
                assert_eq!(&buf[..n], b"via reply");
                let mut got = got.into_iter();
                let _ = got.next();
                upcall = got.next().map(Connection::from_owned_fd);
            } else {
                assert!(got.is_empty());
            }
        }
        let upcall = upcall.expect("upcall socket");
        for expected in &upcalls {
            assert_eq!(&upcall.recv_upcall().unwrap(), expected);
        }
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn oversize_and_fd_abuse_are_rejected_without_leaks() {
        let (a, b) = Connection::pair().unwrap();
        // Raise the send buffer so an oversize message can be sent at all.
        nix::sys::socket::setsockopt(&a, sockopt::SndBuf, &(1 << 20)).unwrap();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        // Both ends name the same pipe object in /proc/self/fd.
        let before = copies_of(&pr);
        assert_eq!(before, 2);
        let mut buf = Vec::new();

        // Too long: refused by our send, and when forced past it, by recv.
        assert_eq!(
            a.send(&vec![0; MAX_MESSAGE + 1], &[])
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EMSGSIZE)
        );
        let big = vec![7u8; MAX_MESSAGE + 100];
        let rights = [pr.as_raw_fd(), pw.as_raw_fd()];
        let raw_send = |bytes: &[u8], fds: &[RawFd]| {
            let iov = [IoSlice::new(bytes)];
            let cm = [ControlMessage::ScmRights(fds)];
            sendmsg::<()>(a.as_raw_fd(), &iov, &cm, MsgFlags::MSG_NOSIGNAL, None).unwrap();
        };
        raw_send(&big, &rights);
        let err = b.recv(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        assert!(buf.is_empty());
        assert_eq!(copies_of(&pr), before, "fds of a truncated message closed");

        // Too many descriptors: our send refuses; forced past it, recv closes what arrived.
        let many: Vec<RawFd> = std::iter::repeat_n(pr.as_raw_fd(), MAX_FDS + 3).collect();
        assert_eq!(
            a.send(b"x", &many).unwrap_err().raw_os_error(),
            Some(libc::EMSGSIZE)
        );
        raw_send(b"hello", &many);
        let err = b.recv(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!(
            copies_of(&pr),
            before,
            "fds of a control-truncated message closed"
        );

        // Exactly MAX_MESSAGE bytes and MAX_FDS descriptors is fine.
        let full: Vec<RawFd> = std::iter::repeat_n(pw.as_raw_fd(), MAX_FDS).collect();
        a.send(&vec![1; MAX_MESSAGE], &full).unwrap();
        let (n, fds) = b.recv(&mut buf).unwrap();
        assert_eq!(
            (n, fds.len(), buf.len()),
            (MAX_MESSAGE, MAX_FDS, MAX_MESSAGE)
        );
        assert_eq!(copies_of(&pr), before + MAX_FDS);
        drop(fds);
        assert_eq!(copies_of(&pr), before);

        // A truncated/garbage message through the typed helpers: InvalidData, fds closed.
        a.send(b"\x53\x4d\x01\x00", &rights).unwrap();
        assert_eq!(
            b.recv_request().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        a.send(b"garbage", &rights).unwrap();
        assert_eq!(
            b.recv_upcall().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(copies_of(&pr), before);

        // The connection still works afterwards.
        a.send_upcall(&Upcall::Resolved {
            addr: Ipv4Addr::LOCALHOST,
            mac: None,
        })
        .unwrap();
        assert_eq!(
            b.recv_upcall().unwrap(),
            Upcall::Resolved {
                addr: Ipv4Addr::LOCALHOST,
                mac: None
            }
        );
    }

    #[test]
    fn peer_gone_is_an_error_not_a_signal() {
        let (a, b) = Connection::pair().unwrap();
        drop(b);
        let err = a.send(b"x", &[]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        let err = a.call(&Request::Stat { json: false }, &[]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn raw_fd_conversions() {
        let (a, b) = Connection::pair().unwrap();
        let raw = a.into_raw_fd();
        // Round trip through OwnedFd (the fd is owned again immediately).
        let owned: OwnedFd = Connection::pair().map(|(x, _)| x.into()).unwrap();
        let c = Connection::from(owned);
        assert!(c.as_raw_fd() >= 0);
        let _ = nix::unistd::close(raw);
        assert_eq!(b.recv(&mut Vec::new()).unwrap().0, 0);
    }
}
