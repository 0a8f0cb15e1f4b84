//! `msock tcp connect ADDR:PORT` / `msock tcp listen PORT`: netcat over the msock TCP engine.
//! The engine runs in this process over the AF_PACKET channel the netserver hands out for the
//! held port (`client::tcp_session`): stdin goes to the connection, the connection to stdout;
//! stdin EOF half-closes. Once nothing is left for this process (both directions done, only
//! the closing handshake or TIME_WAIT remains) the connection is handed to the netserver,
//! which finishes it as the kernel does for an exited process, and `msock tcp` exits.
//! Exit status 0 after an orderly close, 1 with the error otherwise.
//!
//! `--flush` moves the established connection into the netserver (paper §3.1): this process
//! keeps the socket and moves its bytes with send/recv requests, and closing it leaves the
//! netserver to finish the connection. `--migrate-every MS` alternates: cached here for MS
//! milliseconds, flushed for MS, cached again, … — the state moves whole each time.

use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::client::tcp_session::{TcpSession, apply_icmp};
use crate::stack::tcp::congestion::CongestionAlgorithm;
use crate::stack::tcp::connection::{
    DEFAULT_SYN_BACKLOG, InitialSequence, State, TcpBacklog, TcpConfig, TcpConnection,
    TcpDropReason, TcpListener, reset_for,
};
use crate::stack::tcp::isn::IsnGenerator;
use crate::stack::{Duration, Instant};

const USAGE: &str = "usage: msock tcp connect ADDR:PORT | msock tcp listen PORT
  options: --nodelay  --congestion reno|cubic  --rcvbuf N  --sndbuf N
           --keepalive IDLE,INTVL,CNT (seconds)  --time-wait-ms N  --info
           --in-process (listen in this process, not at the netserver)
           --syn-backlog N (with --in-process: half-open connections kept, default 256)
           --flush (run the connection in the netserver, I/O through requests)
           --migrate-every MS (alternate cached / flushed every MS milliseconds)
           --stall-read (never read the connection: what arrives stays unread)
";

/// Frames read between two runs of the engine's output.
const RX_BATCH: usize = 32;

/// Resets sent per receive batch to segments of other peers (a flood cannot make us a
/// reflector of unbounded traffic).
const MAX_STRAY_RESETS: usize = 32;

struct Options {
    config: TcpConfig,
    info: bool,
    syn_backlog: usize,
    /// Listen with a backlog in this process instead of at the netserver (for comparison and
    /// for tests of the engine's own listener).
    in_process_listener: bool,
    /// Where the established connection runs: in this process, flushed into the netserver,
    /// or alternating.
    placement: Placement,
    /// Never read from the connection (tests: data left unread when the process dies).
    stall_read: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Cached,
    Flushed,
    Alternating(std::time::Duration),
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut config = TcpConfig::default();
    let mut info = false;
    let mut syn_backlog = DEFAULT_SYN_BACKLOG;
    let mut in_process_listener = false;
    let mut placement = Placement::Cached;
    let mut stall_read = false;
    let mut it = args.iter();
    let num = |v: Option<&String>, what: &str| -> Result<u64, String> {
        v.ok_or(format!("{what} needs a value"))?
            .parse::<u64>()
            .map_err(|_| format!("{what}: not a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--nodelay" => config.nodelay = true,
            "--info" => info = true,
            "--in-process" => in_process_listener = true,
            "--flush" => placement = Placement::Flushed,
            "--stall-read" => stall_read = true,
            "--migrate-every" => {
                let ms = num(it.next(), "--migrate-every")?.max(1);
                placement = Placement::Alternating(std::time::Duration::from_millis(ms));
            }
            "--congestion" => {
                let name = it.next().ok_or("--congestion needs a value")?;
                config.congestion = CongestionAlgorithm::from_name(name)
                    .ok_or(format!("--congestion: unknown algorithm '{name}'"))?;
            }
            "--syn-backlog" => syn_backlog = num(it.next(), "--syn-backlog")?.max(1) as usize,
            "--rcvbuf" => config.recv_buffer = num(it.next(), "--rcvbuf")? as usize,
            "--sndbuf" => config.send_buffer = num(it.next(), "--sndbuf")? as usize,
            "--time-wait-ms" => {
                config.time_wait = Duration::from_millis(num(it.next(), "--time-wait-ms")?)
            }
            "--keepalive" => {
                let v = it.next().ok_or("--keepalive needs IDLE,INTVL,CNT")?;
                let parts: Vec<u64> = v
                    .split(',')
                    .map(|p| p.parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "--keepalive: IDLE,INTVL,CNT in seconds".to_string())?;
                let [idle, intvl, cnt] = parts[..] else {
                    return Err("--keepalive: IDLE,INTVL,CNT in seconds".into());
                };
                config.keepalive = true;
                config.keepalive_idle = Duration::from_secs(idle);
                config.keepalive_interval = Duration::from_secs(intvl);
                config.keepalive_count = cnt.max(1) as u32;
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if config.recv_buffer == 0 || config.send_buffer == 0 {
        return Err("buffer sizes must be positive".into());
    }
    Ok(Options {
        config,
        info,
        syn_backlog,
        in_process_listener,
        placement,
        stall_read,
    })
}

fn secret() -> io::Result<[u8; 16]> {
    let mut key = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

pub fn command(args: &[String]) -> i32 {
    // `msock tcp MODE [options] TARGET [options]`: the one argument that is neither an
    // option nor an option's value is the target.
    let Some((mode, rest)) = args
        .split_first()
        .filter(|(m, _)| *m == "connect" || *m == "listen")
    else {
        eprint!("{USAGE}");
        return 2;
    };
    let mode = mode.as_str();
    let mut target = None;
    let mut option_args = Vec::new();
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        if arg.starts_with("--") {
            option_args.push(arg.clone());
            if !matches!(
                arg.as_str(),
                "--nodelay" | "--info" | "--in-process" | "--flush" | "--stall-read"
            ) && let Some(value) = it.next()
            {
                option_args.push(value.clone());
            }
        } else if target.is_none() {
            target = Some(arg.as_str());
        } else {
            eprintln!("msock tcp: unexpected argument '{arg}'\n{USAGE}");
            return 2;
        }
    }
    let Some(target) = target else {
        eprint!("{USAGE}");
        return 2;
    };
    let rest = &option_args[..];
    let options = match parse_options(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("msock tcp: {e}\n{USAGE}");
            return 2;
        }
    };
    match run(mode, target, options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("msock tcp: {e}");
            1
        }
    }
}

fn run(mode: &str, target: &str, options: Options) -> io::Result<()> {
    let isn = IsnGenerator::new(secret()?);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let (session, conn) = if mode == "connect" {
        let remote: SocketAddrV4 = target.parse().map_err(|_| bad("connect needs ADDR:PORT"))?;
        let mut session = TcpSession::open(0)?;
        session.resolve(*remote.ip())?;
        session.connected(remote)?;
        let now = session.now();
        let local = session.local();
        let initial = InitialSequence {
            iss: isn.initial_sequence(local, remote, now),
            ts_offset: isn.timestamp_offset(local, remote),
        };
        let conn = TcpConnection::connect(options.config.clone(), local, remote, initial, now);
        (session, conn)
    } else {
        let port: u16 = target
            .rsplit(':')
            .next()
            .unwrap_or(target)
            .parse()
            .map_err(|_| bad("listen needs a PORT"))?;
        let mut session = TcpSession::open(port)?;
        if !options.in_process_listener {
            // The netserver holds the listener (paper §3.1): handshakes, SYN cookies, the
            // accept queue; the established connection is handed over.
            session.listen(1)?;
            eprintln!("msock tcp: listening on {}", session.local());
            let mut conn = loop {
                session.upcalls(|_| {})?;
                if let Some(conn) = session.accept(session.now())? {
                    break conn;
                }
                wait(&session, None, None)?;
            };
            apply_options(&mut conn, &options.config, session.now());
            session.resolve(*conn.remote().ip())?;
            return serve(session, conn, &options);
        }
        eprintln!("msock tcp: listening on {}", session.local());
        let listener = TcpListener::new(options.config.clone(), session.local(), isn);
        // One connection is served: an accept queue of one, half-open ones bounded.
        let mut backlog = TcpBacklog::new(listener, options.syn_backlog, 1);
        let conn = loop {
            let now = session.now();
            // Nothing to apply ICMP errors to yet; drain them so they cannot keep waking us.
            session.upcalls(|_| {})?;
            let mut resets = Vec::new();
            session.receive(|src, seg| {
                if let Some(rst) = backlog.process(now, src, seg) {
                    resets.push((src, rst));
                }
            })?;
            for (dst, rst) in resets {
                session.send_segment(dst, &rst)?;
            }
            for pending in backlog.connections_mut() {
                session.transmit(pending, now)?;
            }
            backlog.reap();
            if let Some(conn) = backlog.accept() {
                if options.info {
                    let b = backlog.stats();
                    eprintln!(
                        "msock tcp: backlog syns={} cookies_sent={} cookies_accepted={} cookies_rejected={} half_open_evicted={} accept_queue_full={} completions_deferred={} handshakes_failed={} resets={} dropped={} half_open_now={} no_neighbor={}",
                        b.syns_accepted,
                        b.cookies_sent,
                        b.cookies_accepted,
                        b.cookies_rejected,
                        b.half_open_evicted,
                        b.accept_queue_full,
                        b.completions_deferred,
                        b.handshakes_failed,
                        b.resets,
                        b.dropped,
                        backlog.half_open_len(),
                        session.stats.no_neighbor,
                    );
                }
                break conn;
            }
            wait(
                &session,
                None,
                backlog.poll_at().map(|t| (t, session.now())),
            )?;
        };
        session.resolve(*conn.remote().ip())?;
        session.connected(conn.remote())?;
        (session, conn)
    };
    serve(session, conn, &options)
}

/// Socket options given on the command line, applied to a connection the netserver accepted
/// with its defaults (as `setsockopt` after `accept`).
fn apply_options(conn: &mut TcpConnection, config: &TcpConfig, now: Instant) {
    conn.set_nodelay(config.nodelay);
    conn.set_recv_buffer(config.recv_buffer);
    conn.set_send_buffer(config.send_buffer);
    conn.set_congestion(config.congestion, now);
    conn.set_keepalive(config.keepalive);
    conn.set_keepalive_params(
        config.keepalive_idle,
        config.keepalive_interval,
        config.keepalive_count,
    );
    conn.set_time_wait(config.time_wait);
}

/// Moves bytes between stdin/stdout and the connection until it ends (or is handed over).
fn serve(mut session: TcpSession, mut conn: TcpConnection, options: &Options) -> io::Result<()> {
    let stdin = io::stdin();
    let stdin_fd = stdin.as_fd();
    nix::fcntl::fcntl(
        stdin_fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut stdout = io::stdout().lock();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 256 * 1024];
    let remote = conn.remote();
    // None: not tried; Some(true): the netserver finishes the connection.
    let mut handed_over: Option<bool> = None;
    // Flushes and caches done (`--flush`, `--migrate-every`), and when the last one was.
    let mut migrations = (0u64, 0u64);
    let mut placed_at = std::time::Instant::now();
    let mut placement = options.placement;
    loop {
        // Input from the network, answered every RX_BATCH frames: ACKs leave while a burst is
        // still being read (no stretch ACKs covering a whole ring), and ACKs we receive open
        // the window for new data as early.
        loop {
            let now = session.now();
            // The listener is gone once the connection is accepted: anyone else gets a reset,
            // as from a closed port.
            let mut strays = Vec::new();
            let frames = session.receive_up_to(RX_BATCH, |src, seg| {
                if src == remote {
                    conn.process(now, seg);
                } else if strays.len() < MAX_STRAY_RESETS
                    && let Some(rst) = reset_for(seg)
                {
                    strays.push((src, rst));
                }
            })?;
            for (dst, rst) in strays {
                session.send_segment(dst, &rst)?;
            }
            if frames < RX_BATCH {
                break;
            }
            session.transmit(&mut conn, now)?;
        }
        let now = session.now();
        // The receive batch changed the connection: its crash record follows.
        session.publish_crash_record(&mut conn, now);
        // ICMP errors about our segments (path MTU, unreachable), forwarded by the netserver.
        session.upcalls(|report| {
            apply_icmp(&mut conn, now, &report);
        })?;
        // Output to stdout.
        loop {
            if options.stall_read {
                break;
            }
            match conn.recv(&mut buf) {
                Ok(0) => break,
                Ok(n) => stdout.write_all(&buf[..n])?,
                Err(_) => break,
            }
        }
        stdout.flush()?;
        // Input from stdin.
        let established = matches!(conn.state(), State::Established | State::CloseWait);
        if stdin_open && established {
            while conn.send_queue_free() > 0 {
                let want = conn.send_queue_free().min(buf.len());
                match nix::unistd::read(stdin_fd.as_raw_fd(), &mut buf[..want]) {
                    Ok(0) => {
                        stdin_open = false;
                        conn.shutdown_write(now);
                        break;
                    }
                    Ok(n) => {
                        let _ = conn.send(&buf[..n]);
                    }
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        session.transmit(&mut conn, now)?;
        if conn.state() == State::Closed {
            break;
        }
        // A recall from the netserver makes the connection flushed for good.
        if session.take_recall() {
            placement = Placement::Flushed;
        }
        let stay = match placement {
            Placement::Cached => None,
            Placement::Flushed => Some(None),
            Placement::Alternating(every) => (placed_at.elapsed() >= every).then_some(Some(every)),
        };
        if let Some(stay) = stay
            && matches!(
                conn.state(),
                State::Established | State::CloseWait | State::FinWait1 | State::FinWait2
            )
        {
            session.flush(&mut conn, now)?;
            migrations.0 += 1;
            let until = stay.map(|d| std::time::Instant::now() + d);
            match serve_flushed(&mut session, &mut stdin_open, until, &mut stdout, &mut buf)? {
                AfterFlush::Cached(back) => {
                    conn = *back;
                    migrations.1 += 1;
                    placed_at = std::time::Instant::now();
                    continue;
                }
                AfterFlush::Closed => {
                    if options.info {
                        eprintln!(
                            "msock tcp: flushes={} caches={} closed_flushed=1",
                            migrations.0, migrations.1
                        );
                    }
                    return Ok(());
                }
            }
        }
        if handed_over.is_none()
            && matches!(
                conn.state(),
                State::TimeWait | State::LastAck | State::Closing
            )
        {
            match session.hand_over(&conn, now) {
                Ok(()) => {
                    handed_over = Some(true);
                    break;
                }
                Err(e) => {
                    eprintln!("msock tcp: closing here, the netserver did not take over: {e}");
                    handed_over = Some(false);
                }
            }
        }
        let stdin_wanted = stdin_open && established && conn.send_queue_free() > 0;
        let deadline = conn.poll_at();
        wait(
            &session,
            stdin_wanted.then_some(stdin_fd),
            deadline.map(|t| (t, session.now())),
        )?;
    }
    if options.info {
        let i = conn.info(session.now());
        let stats = conn.stats();
        let drops: Vec<String> = TcpDropReason::all()
            .into_iter()
            .filter(|r| stats.dropped(*r) > 0)
            .map(|r| format!("{}:{}", r.name(), stats.dropped(r)))
            .collect();
        eprintln!(
            "msock tcp: rtt_us={} rttvar_us={} cwnd={} ssthresh={} retrans={} snd_wscale={} rcv_wscale={} sack={} ts={} pmtu={} snd_mss={} bytes_sent={} bytes_received={} segs_out={} segs_in={} icmp_errors={} timeouts={} fast_retransmits={} challenge_acks={} bad_checksums={} ring_drops={} handed_over={} state={} drops={} flushes={} caches={}",
            i.rtt_us,
            i.rttvar_us,
            i.snd_cwnd,
            i.snd_ssthresh,
            i.total_retrans,
            i.snd_wscale,
            i.rcv_wscale,
            u8::from(i.options & 2 != 0),
            u8::from(i.options & 1 != 0),
            i.pmtu,
            i.snd_mss,
            i.bytes_sent,
            i.bytes_received,
            i.segs_out,
            i.segs_in,
            session.stats.icmp_errors,
            stats.timeouts,
            stats.fast_retransmits,
            stats.challenge_acks,
            session.stats.bad_tcp_checksum,
            session.channel_stats().kernel_drops,
            u8::from(handed_over == Some(true)),
            conn.state(),
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(",")
            },
            migrations.0,
            migrations.1,
        );
    }
    if handed_over != Some(true) {
        // The connection ended here: release the endpoint explicitly (a process that just
        // dies leaves its connections to be reset by the netserver).
        let _ = session.close();
    }
    match conn.take_error() {
        Some(e) => Err(io::Error::from_raw_os_error(e.errno())),
        None => Ok(()),
    }
}

/// How a stretch of flushed service ended.
enum AfterFlush {
    /// The connection is cached here again.
    Cached(Box<TcpConnection>),
    /// Both directions are done and the socket is closed: the netserver finishes it.
    Closed,
}

/// Serves the flushed connection through the netserver's send/recv requests until `until`
/// (then caches it back) or until both directions are done (then closes it, leaving the
/// closing handshake to the netserver). Waits on the upcall socket (`TcpReady`) and stdin.
fn serve_flushed(
    session: &mut TcpSession,
    stdin_open: &mut bool,
    until: Option<std::time::Instant>,
    stdout: &mut impl Write,
    buf: &mut [u8],
) -> io::Result<AfterFlush> {
    use crate::control::{MAX_TRANSFER, ShutdownHow};
    let would_block = |e: &io::Error| e.raw_os_error() == Some(libc::EAGAIN);
    let stdin = io::stdin();
    let stdin_fd = stdin.as_fd();
    // Bytes read from stdin the netserver has not taken yet (its send buffer was full).
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_eof = !*stdin_open;
    let mut peer_done = false;
    let fail = |session: &mut TcpSession, e: io::Error| {
        let _ = session.close();
        Err(e)
    };
    loop {
        while !peer_done {
            // Past `until`, stop reading so the connection can be cached again (a fast
            // netserver would otherwise keep this loop busy for the whole transfer).
            if until.is_some_and(|u| std::time::Instant::now() >= u) {
                break;
            }
            match session.flushed_recv(MAX_TRANSFER, false) {
                Ok(Some(data)) => stdout.write_all(&data)?,
                Ok(None) => peer_done = true,
                Err(e) if would_block(&e) => break,
                Err(e) => return fail(session, e),
            }
        }
        stdout.flush()?;
        loop {
            // Past `until`, only what was already read is sent, so the cache can happen.
            let due = until.is_some_and(|u| std::time::Instant::now() >= u);
            if pending.is_empty() && !stdin_eof && !due {
                let want = buf.len().min(MAX_TRANSFER);
                match nix::unistd::read(stdin_fd.as_raw_fd(), &mut buf[..want]) {
                    Ok(0) => stdin_eof = true,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EAGAIN) => {}
                    Err(e) => return fail(session, e.into()),
                }
            }
            if pending.is_empty() {
                break;
            }
            match session.flushed_send(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return fail(session, e),
            }
        }
        if stdin_eof && *stdin_open && pending.is_empty() {
            session.flushed_shutdown(ShutdownHow::Write)?;
            *stdin_open = false;
        }
        if peer_done && !*stdin_open {
            // close(2): the netserver delivers what is queued, then FIN, TIME_WAIT.
            session.close()?;
            return Ok(AfterFlush::Closed);
        }
        let now = std::time::Instant::now();
        if until.is_some_and(|u| now >= u) && pending.is_empty() {
            return Ok(AfterFlush::Cached(Box::new(session.cache(session.now())?)));
        }
        let mut fds = vec![PollFd::new(session.upcall(), PollFlags::POLLIN)];
        if pending.is_empty() && !stdin_eof {
            fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
        }
        let ms = until.map_or(1000, |u| {
            u.saturating_duration_since(now).as_millis().clamp(1, 1000)
        });
        match poll(&mut fds, PollTimeout::from(ms as u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return fail(session, e.into()),
        }
        session.upcalls(|_| {})?;
    }
}

/// Sleeps until a frame arrives, stdin is readable (when asked) or the engine's deadline.
fn wait(
    session: &TcpSession,
    stdin: Option<BorrowedFd<'_>>,
    deadline: Option<(Instant, Instant)>,
) -> io::Result<()> {
    let mut fds = vec![PollFd::new(session.upcall(), PollFlags::POLLIN)];
    if let Some(fd) = session.wake() {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
    }
    if let Some(fd) = stdin {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
    }
    let timeout = match deadline {
        None => PollTimeout::from(1000u16),
        Some((at, now)) if at <= now => PollTimeout::ZERO,
        Some((at, now)) => {
            let ms = (at - now).as_micros().div_ceil(1000).min(1000) as u16;
            PollTimeout::from(ms)
        }
    };
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
