//! Issue 5's "unmodified programs" must-show: stock Debian programs on `N-a` under
//! `msock run`, each moving real bytes that the test checks (SHA-256 or exact content), with
//! kernel peers in `N-b`; and the same clients under msock against kernel servers in `N-b`.
//!
//! Every scenario is a function of [`Mode`] with two tests: `<name>_kernel` runs the `N-a` side
//! on `N-a`'s own kernel stack (at `KERNEL_ADDR`), proving the harness and the programs' setup
//! right; `<name>_msock` runs it under `msock run` (at `MSOCK_ADDR`, which only the netserver
//! answers for) and also requires proof from the netserver (`msock stat --json`: a `LISTEN`
//! endpoint and no kernel listener, completed handshakes, new clients) or from the kernel peer
//! (it saw `MSOCK_ADDR` as the source), so a silent fall-back to the kernel fails.
//! `MSOCK_PROGRAMS_KERNEL=1` runs the `_msock` tests in kernel mode too.
//!
//! Programs and their Debian packages (installed by `.ci/run`): nc (netcat-openbsd), socat,
//! python3, curl, inetd (openbsd-inetd), tcpserver (ucspi-tcp), nginx (nginx-light), wrk,
//! redis-server and redis-benchmark (redis-server, redis-tools), iperf3. A missing program
//! skips its test outside CI and fails it under CI. Needs root.

mod common;

use std::time::Duration;

use common::programs::*;
use common::streams::sha256;
use common::*;

const TRANSFER: usize = 5 << 20;
const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(90);

fn file_sha(h: &Host, name: &str) -> String {
    sha256(&h.dir.path().join(name))
}

fn random(h: &Host, name: &str, bytes: usize) -> String {
    let path = h.dir.path().join(name);
    random_bytes(&path, bytes);
    h.path(name)
}

/// Asserts files `a` and `b` of the scratch directory are identical and non-empty.
fn same(h: &Host, a: &str, b: &str, what: &str) {
    let len = |n: &str| std::fs::metadata(h.dir.path().join(n)).map_or(0, |m| m.len());
    assert!(len(a) > 0, "{what}: {a} is empty");
    assert_eq!(
        (len(a), file_sha(h, a)),
        (len(b), file_sha(h, b)),
        "{what}: {b} differs from {a}"
    );
}

// ---------------------------------------------------------------------------------------------
// nc (netcat-openbsd). The receiving side uses -d (never reads stdin: an early EOF there
// would make openbsd nc stop); the sending side uses -N (shutdown after EOF on stdin).

fn nc_server(mode: Mode) {
    let Some(h) = Host::new("pnc", mode, &[("nc", "netcat-openbsd")]) else {
        return;
    };
    let addr = h.addr_a();
    let up = random(&h, "up.bin", TRANSFER);
    let down = random(&h, "down.bin", TRANSFER);

    let mut server = h.spawn_a(
        "nc-listen-recv",
        &format!("nc -d -l {addr} 7000 > {}", h.path("up.out")),
    );
    h.await_listener(&mut server, 7000);
    h.exec_b_ok(&format!("exec nc -N {addr} 7000 < {up}"), SHORT);
    h.finish(&mut server, SHORT);
    same(&h, "up.bin", "up.out", "kernel nc -> nc -l");

    let mut server = h.spawn_a("nc-listen-send", &format!("nc -N -l {addr} 7001 < {down}"));
    h.await_listener(&mut server, 7001);
    h.exec_b_ok(
        &format!("exec nc -d {addr} 7001 > {}", h.path("down.out")),
        SHORT,
    );
    h.finish(&mut server, SHORT);
    same(&h, "down.bin", "down.out", "nc -l -> kernel nc");
}

fn nc_client(mode: Mode) {
    let Some(h) = Host::new("pncc", mode, &[("nc", "netcat-openbsd")]) else {
        return;
    };
    let peer = peer();
    let up = random(&h, "up.bin", TRANSFER);
    let down = random(&h, "down.bin", TRANSFER);
    let clients = h.clients_accepted();
    let seen = format!("Connection received on {} ", h.addr_a());

    let mut listener = h.spawn_b(
        "kernel-nc-recv",
        &format!("exec nc -nv -d -l {peer} 7010 > {}", h.path("up.out")),
    );
    await_kernel_listener(&h.net, &mut listener, 7010);
    let out = h.exec_a(&format!("nc -N {peer} 7010 < {up}"), SHORT);
    assert!(out.status.success(), "nc sender: {}", stderr_of(&out));
    h.finish(&mut listener, SHORT);
    same(&h, "up.bin", "up.out", "nc -> kernel nc -l");
    assert!(listener.log().contains(&seen), "{}", listener.log());

    let mut listener = h.spawn_b(
        "kernel-nc-send",
        &format!("exec nc -nv -N -l {peer} 7011 < {down}"),
    );
    await_kernel_listener(&h.net, &mut listener, 7011);
    let out = h.exec_a(
        &format!("nc -d {peer} 7011 > {}", h.path("down.out")),
        SHORT,
    );
    assert!(out.status.success(), "nc receiver: {}", stderr_of(&out));
    h.finish(&mut listener, SHORT);
    same(&h, "down.bin", "down.out", "kernel nc -l -> nc");
    assert!(listener.log().contains(&seen), "{}", listener.log());
    h.assert_clients_grew(clients, "nc clients");
}

#[test]
fn nc_server_kernel() {
    nc_server(Mode::Kernel);
}

#[test]
fn nc_server_msock() {
    nc_server(Mode::msock_unless_env());
}

#[test]
fn nc_client_kernel() {
    nc_client(Mode::Kernel);
}

#[test]
fn nc_client_msock() {
    nc_client(Mode::msock_unless_env());
}

// ---------------------------------------------------------------------------------------------
// socat

fn socat_server(mode: Mode) {
    let Some(h) = Host::new("psoc", mode, &[("socat", "socat")]) else {
        return;
    };
    let addr = h.addr_a();
    let up = random(&h, "up.bin", TRANSFER);
    let down = random(&h, "down.bin", TRANSFER);

    let mut server = h.spawn_a(
        "socat-listen-recv",
        &format!(
            "socat -u TCP4-LISTEN:7020,bind={addr},reuseaddr CREATE:{}",
            h.path("up.out")
        ),
    );
    h.await_listener(&mut server, 7020);
    h.exec_b_ok(&format!("exec socat -u FILE:{up} TCP4:{addr}:7020"), SHORT);
    h.finish(&mut server, SHORT);
    same(&h, "up.bin", "up.out", "kernel socat -> socat listener");

    let mut server = h.spawn_a(
        "socat-listen-send",
        &format!("socat -u FILE:{down} TCP4-LISTEN:7021,bind={addr},reuseaddr"),
    );
    h.await_listener(&mut server, 7021);
    h.exec_b_ok(
        &format!(
            "exec socat -u TCP4:{addr}:7021 CREATE:{}",
            h.path("down.out")
        ),
        SHORT,
    );
    h.finish(&mut server, SHORT);
    same(&h, "down.bin", "down.out", "socat listener -> kernel socat");
}

fn socat_client(mode: Mode) {
    let Some(h) = Host::new("psocc", mode, &[("socat", "socat")]) else {
        return;
    };
    let peer = peer();
    let up = random(&h, "up.bin", TRANSFER);
    let down = random(&h, "down.bin", TRANSFER);
    let clients = h.clients_accepted();
    let seen = format!("accepting connection from AF=2 {}:", h.addr_a());

    let mut listener = h.spawn_b(
        "kernel-socat-recv",
        &format!(
            "exec socat -d -d -u TCP4-LISTEN:7030,bind={peer},reuseaddr CREATE:{}",
            h.path("up.out")
        ),
    );
    await_kernel_listener(&h.net, &mut listener, 7030);
    let out = h.exec_a(&format!("socat -u FILE:{up} TCP4:{peer}:7030"), SHORT);
    assert!(out.status.success(), "socat sender: {}", stderr_of(&out));
    h.finish(&mut listener, SHORT);
    same(&h, "up.bin", "up.out", "socat -> kernel socat listener");
    assert!(listener.log().contains(&seen), "{}", listener.log());

    let mut listener = h.spawn_b(
        "kernel-socat-send",
        &format!("exec socat -d -d -u FILE:{down} TCP4-LISTEN:7031,bind={peer},reuseaddr"),
    );
    await_kernel_listener(&h.net, &mut listener, 7031);
    let out = h.exec_a(
        &format!("socat -u TCP4:{peer}:7031 CREATE:{}", h.path("down.out")),
        SHORT,
    );
    assert!(out.status.success(), "socat receiver: {}", stderr_of(&out));
    h.finish(&mut listener, SHORT);
    same(&h, "down.bin", "down.out", "kernel socat listener -> socat");
    assert!(listener.log().contains(&seen), "{}", listener.log());
    h.assert_clients_grew(clients, "socat clients");
}

#[test]
fn socat_server_kernel() {
    socat_server(Mode::Kernel);
}

#[test]
fn socat_server_msock() {
    socat_server(Mode::msock_unless_env());
}

#[test]
fn socat_client_kernel() {
    socat_client(Mode::Kernel);
}

#[test]
fn socat_client_msock() {
    socat_client(Mode::msock_unless_env());
}

// ---------------------------------------------------------------------------------------------
// python3 -m http.server and curl

const HTTP_TOOLS: &[(&str, &str)] = &[("python3", "python3"), ("curl", "curl")];

/// A `www` directory with a 2 MiB random `file.bin`.
fn www(h: &Host) -> String {
    std::fs::create_dir(h.dir.path().join("www")).expect("mkdir www");
    random(h, "www/file.bin", 2 << 20);
    h.path("www")
}

fn curl(url: &str, out: &str) -> String {
    format!("curl -sS --fail --max-time 20 -o {out} {url}")
}

fn http_server(mode: Mode) {
    let Some(h) = Host::new("phttp", mode, HTTP_TOOLS) else {
        return;
    };
    let addr = h.addr_a();
    let www = www(&h);
    let mut server = h.spawn_a(
        "http.server",
        &format!("python3 -m http.server --bind {addr} --directory {www} 7040"),
    );
    h.await_listener(&mut server, 7040);
    for i in 0..2 {
        let out = h.path(&format!("got{i}.bin"));
        h.exec_b_ok(
            &format!(
                "exec {}",
                curl(&format!("http://{addr}:7040/file.bin"), &out)
            ),
            SHORT,
        );
        same(
            &h,
            "www/file.bin",
            &format!("got{i}.bin"),
            "http.server -> curl",
        );
    }
    h.assert_listener_completed(7040, 2);
    assert!(server.is_running(), "http.server exited:\n{}", server.log());
}

fn curl_client(mode: Mode) {
    let Some(h) = Host::new("pcurl", mode, HTTP_TOOLS) else {
        return;
    };
    let peer = peer();
    let www = www(&h);
    let clients = h.clients_accepted();
    let mut server = h.spawn_b(
        "kernel-http.server",
        &format!("exec python3 -m http.server --bind {peer} --directory {www} 7041"),
    );
    await_kernel_listener(&h.net, &mut server, 7041);
    let out = h.exec_a(
        &curl(&format!("http://{peer}:7041/file.bin"), &h.path("got.bin")),
        SHORT,
    );
    assert!(out.status.success(), "curl: {}", stderr_of(&out));
    same(&h, "www/file.bin", "got.bin", "kernel http.server -> curl");
    let seen = format!("{} - - [", h.addr_a());
    assert!(
        wait_until(Duration::from_secs(5), || server.log().contains(&seen)),
        "http.server did not log a request from {}: {}",
        h.addr_a(),
        server.log()
    );
    h.assert_clients_grew(clients, "curl");
}

#[test]
fn http_server_kernel() {
    http_server(Mode::Kernel);
}

#[test]
fn http_server_msock() {
    http_server(Mode::msock_unless_env());
}

#[test]
fn curl_client_kernel() {
    curl_client(Mode::Kernel);
}

#[test]
fn curl_client_msock() {
    curl_client(Mode::msock_unless_env());
}

// ---------------------------------------------------------------------------------------------
// Fork-per-connection servers: openbsd-inetd (`nowait` service exec'ing /bin/cat on the
// accepted socket) and tcpserver (ucspi-tcp, the same), 200 sequential then 50 concurrent
// kernel clients, each checking its echoed bytes.

const SEQUENTIAL: u32 = 200;
const CONCURRENT: u32 = 50;

fn echo_clients(h: &Host, port: u16) {
    let script = h.write("echo_clients.py", ECHO_CLIENTS);
    let out = h.exec_b_ok(
        &format!(
            "exec python3 {script} {} {port} {SEQUENTIAL} {CONCURRENT} 10000",
            h.addr_a()
        ),
        LONG,
    );
    let text = stdout_of(&out);
    assert!(
        text.contains(&format!("sequential ok {SEQUENTIAL}"))
            && text.contains(&format!("concurrent ok {CONCURRENT}")),
        "echo clients: {text}"
    );
    h.assert_listener_completed(port, u64::from(SEQUENTIAL + CONCURRENT));
}

fn inetd(mode: Mode) {
    let Some(h) = Host::new(
        "pinetd",
        mode,
        &[("inetd", "openbsd-inetd"), ("python3", "python3")],
    ) else {
        return;
    };
    // openbsd-inetd: `address:service` binds one address, a numeric service is a port, tcp4
    // avoids the extra IPv6 socket `tcp` would add.
    // A second service is a shell pipeline: `sha256sum` (a grandchild of inetd) writes its
    // answer through glibc's stdio, which only a relayed socket carries (`client::relay`).
    let digest = h.write("digest.sh", "#!/bin/sh\nhead -c 20000 | sha256sum\n");
    std::fs::set_permissions(&digest, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod digest.sh");
    let conf = h.write(
        "inetd.conf",
        &format!(
            "{a}:7050 stream tcp4 nowait root /bin/cat cat\n\
             {a}:7051 stream tcp4 nowait root {digest} digest.sh\n",
            a = h.addr_a()
        ),
    );
    // -i: stay in the foreground; -R: the default limit of 256 forks a minute would refuse
    // clients; -q: listen backlog for the concurrent burst.
    let inetd = find_tool("inetd").expect("inetd");
    let mut server = h.spawn_a(
        "inetd",
        &format!("{} -i -R 100000 -q 128 {conf}", inetd.display()),
    );
    h.await_listener(&mut server, 7050);
    echo_clients(&h, 7050);
    h.await_listener(&mut server, 7051);
    let script = h.write("digest_clients.py", DIGEST_CLIENTS);
    let out = h.exec_b_ok(
        &format!("exec python3 {script} {} 7051 20 20000", h.addr_a()),
        LONG,
    );
    assert!(
        stdout_of(&out).contains("digest ok 20"),
        "digest clients: {}",
        stdout_of(&out)
    );
    assert!(server.is_running(), "inetd exited:\n{}", server.log());
}

fn tcpserver(mode: Mode) {
    let Some(h) = Host::new(
        "ptcps",
        mode,
        &[("tcpserver", "ucspi-tcp"), ("python3", "python3")],
    ) else {
        return;
    };
    // -H -R -l0: no DNS or ident look-ups (the ident one would connect back to port 113);
    // -c: the default of 40 simultaneous children is below the concurrent burst.
    let mut server = h.spawn_a(
        "tcpserver",
        &format!("tcpserver -HRl0 -c 100 -b 100 {} 7060 /bin/cat", h.addr_a()),
    );
    h.await_listener(&mut server, 7060);
    echo_clients(&h, 7060);
    assert!(server.is_running(), "tcpserver exited:\n{}", server.log());
}

#[test]
fn inetd_kernel() {
    inetd(Mode::Kernel);
}

#[test]
fn inetd_msock() {
    inetd(Mode::msock_unless_env());
}

#[test]
fn tcpserver_kernel() {
    tcpserver(Mode::Kernel);
}

#[test]
fn tcpserver_msock() {
    tcpserver(Mode::msock_unless_env());
}

// ---------------------------------------------------------------------------------------------
// nginx (epoll, accept4, sendfile) and wrk

const NGINX_TOOLS: &[(&str, &str)] = &[("nginx", "nginx-light"), ("wrk", "wrk"), ("curl", "curl")];

/// Writes an nginx prefix in the scratch directory: `www/index.html` (4 KiB), `www/big.bin`
/// (1 MiB random), and `nginx.conf` listening on `listen` with `workers` worker processes.
/// Returns the command line that runs it in the foreground.
fn nginx_setup(h: &Host, listen: &str, workers: u32, access_log: bool) -> String {
    for d in ["www", "tmp"] {
        std::fs::create_dir(h.dir.path().join(d)).expect("mkdir");
    }
    h.write("www/index.html", &"<p>msock</p>\n".repeat(315));
    random(h, "www/big.bin", 1 << 20);
    let dir = h.path("");
    let access = if access_log {
        format!("access_log {dir}/access.log peer buffer=64k flush=100ms;")
    } else {
        "access_log off;".to_string()
    };
    // `user root`: the workers keep the master's credentials (nginx would switch them to
    // nobody, an extra variable these tests do not need).
    let conf = h.write(
        "nginx.conf",
        &format!(
            "daemon off;
master_process on;
worker_processes {workers};
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 1024; use epoll; }}
http {{
    log_format peer '$remote_addr $status';
    {access}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    types {{ text/html html; application/octet-stream bin; }}
    server {{ listen {listen}; root {dir}/www; }}
}}
"
        ),
    );
    format!("nginx -p {dir} -c {conf} -e {dir}/error.log")
}

/// Runs wrk (on `N-a` under this mode if `on_a`, else on `N-b`'s kernel) for `seconds`
/// against `url` and asserts requests with zero socket errors and zero non-2xx answers.
fn wrk(h: &Host, url: &str, seconds: u32, connections: u32, on_a: bool) -> u64 {
    let command = format!("wrk -t2 -c{connections} -d{seconds}s {url}");
    let limit = Duration::from_secs(u64::from(seconds) + 30);
    let out = if on_a {
        h.exec_a(&command, limit)
    } else {
        h.exec_b(&format!("exec {command}"), limit)
    };
    let text = stdout_of(&out);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        stderr_of(&out)
    );
    let result = parse_wrk(&text).unwrap_or_else(|| panic!("no wrk report: {text}"));
    eprintln!("wrk {url}: {result:?}");
    assert!(result.requests > 0, "{text}");
    assert_eq!(result.socket_errors, 0, "wrk socket errors: {text}");
    assert_eq!(result.non_2xx, 0, "wrk non-2xx answers: {text}");
    result.requests
}

fn nginx_errors(h: &Host) -> Vec<String> {
    std::fs::read_to_string(h.dir.path().join("error.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["[alert]", "[crit]", "[emerg]", "[error]"]
                .iter()
                .any(|s| l.contains(s))
        })
        .map(str::to_string)
        .collect()
}

fn nginx(mode: Mode, workers: u32, seconds: u32) {
    let Some(h) = Host::new("pngx", mode, NGINX_TOOLS) else {
        return;
    };
    let addr = h.addr_a();
    // One worker listens on the address, two on the wildcard.
    let listen = if workers == 1 {
        format!("{addr}:7070")
    } else {
        "7070".to_string()
    };
    let command = nginx_setup(&h, &listen, workers, false);
    let mut server = h.spawn_a("nginx", &command);
    h.await_listener(&mut server, 7070);
    h.exec_b_ok(
        &format!(
            "exec {}",
            curl(&format!("http://{addr}:7070/big.bin"), &h.path("got.bin"))
        ),
        SHORT,
    );
    same(&h, "www/big.bin", "got.bin", "nginx sendfile -> curl");
    wrk(
        &h,
        &format!("http://{addr}:7070/index.html"),
        seconds,
        32,
        false,
    );
    h.assert_listener_completed(7070, 33);
    assert!(server.is_running(), "nginx exited:\n{}", server.log());
    assert_eq!(nginx_errors(&h), Vec::<String>::new(), "nginx error.log");
}

fn wrk_client(mode: Mode) {
    let Some(h) = Host::new("pwrk", mode, NGINX_TOOLS) else {
        return;
    };
    let peer = peer();
    let clients = h.clients_accepted();
    let command = nginx_setup(&h, &format!("{peer}:7080"), 1, true);
    let mut server = h.spawn_b("kernel-nginx", &format!("exec {command}"));
    await_kernel_listener(&h.net, &mut server, 7080);
    let requests = wrk(&h, &format!("http://{peer}:7080/index.html"), 5, 16, true);
    server.stop();
    let log = std::fs::read_to_string(h.dir.path().join("access.log")).expect("access.log");
    let want = format!("{} 200", h.addr_a());
    let lines = log.lines().count() as u64;
    assert!(
        lines >= requests,
        "{lines} logged requests, wrk made {requests}"
    );
    if let Some(bad) = log.lines().find(|l| *l != want) {
        panic!("nginx logged {bad:?}, want every request as {want:?}");
    }
    assert_eq!(nginx_errors(&h), Vec::<String>::new(), "nginx error.log");
    h.assert_clients_grew(clients, "wrk");
}

#[test]
fn nginx_kernel() {
    nginx(Mode::Kernel, 1, 10);
}

#[test]
fn nginx_msock() {
    nginx(Mode::msock_unless_env(), 1, 10);
}

#[test]
fn nginx_two_workers_kernel() {
    nginx(Mode::Kernel, 2, 5);
}

#[test]
fn nginx_two_workers_msock() {
    nginx(Mode::msock_unless_env(), 2, 5);
}

#[test]
fn wrk_client_kernel() {
    wrk_client(Mode::Kernel);
}

#[test]
fn wrk_client_msock() {
    wrk_client(Mode::msock_unless_env());
}

// ---------------------------------------------------------------------------------------------
// redis-server and redis-benchmark

const REDIS_TOOLS: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("redis-cli", "redis-tools"),
];
const REQUESTS: u64 = 100_000;

/// A redis config: no persistence, `bind`, `port`, protected mode off, verbose log to
/// `redis.log` (it names every accepted client).
fn redis_conf(h: &Host, bind: &str, port: u16) -> String {
    let dir = h.path("");
    h.write(
        "redis.conf",
        &format!(
            "port {port}\nbind {bind}\nprotected-mode no\nsave \"\"\nappendonly no\n\
             daemonize no\ndir {dir}\nlogfile {dir}/redis.log\nloglevel verbose\n"
        ),
    )
}

/// Runs redis-benchmark (on `N-a` under this mode if `on_a`, else on `N-b`) with `tests` and
/// asserts every one reported a rate and nothing reported an error.
fn redis_benchmark(h: &Host, host: &str, port: u16, tests: &[&str], on_a: bool) {
    let list = tests.join(",").to_lowercase();
    let command = format!("redis-benchmark -h {host} -p {port} -n {REQUESTS} -q --csv -t {list}");
    let out = if on_a {
        h.exec_a(&command, LONG)
    } else {
        h.exec_b(&format!("exec {command}"), LONG)
    };
    let (text, err) = (stdout_of(&out), stderr_of(&out));
    assert!(out.status.success(), "redis-benchmark failed: {text}{err}");
    assert!(
        !err.to_lowercase().contains("error") && !text.to_lowercase().contains("error"),
        "redis-benchmark reported errors: {text}{err}"
    );
    let rates = parse_redis_csv(&text, tests).unwrap_or_else(|e| panic!("{e}: {text}"));
    eprintln!("redis-benchmark {tests:?}: {rates:?} requests/s");
}

/// `total_commands_processed` of the redis at `host:port`, asked from `N-b`.
fn redis_commands(h: &Host, host: &str, port: u16) -> u64 {
    let out = h.exec_b_ok(
        &format!("exec redis-cli -h {host} -p {port} INFO stats"),
        SHORT,
    );
    let text = stdout_of(&out);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("total_commands_processed:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no total_commands_processed: {text}"))
}

fn redis_server(mode: Mode) {
    let Some(h) = Host::new("predis", mode, REDIS_TOOLS) else {
        return;
    };
    let addr = h.addr_a().to_string();
    let conf = redis_conf(&h, &addr, 7090);
    let mut server = h.spawn_a("redis-server", &format!("redis-server {conf}"));
    h.await_listener(&mut server, 7090);
    let tests = ["SET", "GET", "LPUSH", "LPOP"];
    redis_benchmark(&h, &addr, 7090, &tests, false);
    let commands = redis_commands(&h, &addr, 7090);
    assert!(
        commands >= REQUESTS * tests.len() as u64,
        "redis processed only {commands} commands"
    );
    // 64 KiB of exact content through SET and GET.
    random(&h, "blob.bin", 32 << 10);
    let raw = std::fs::read(h.dir.path().join("blob.bin")).expect("blob");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let blob = h.write("blob.hex", &hex);
    let set = h.exec_b_ok(
        &format!("exec redis-cli -h {addr} -p 7090 -x SET blob < {blob}"),
        SHORT,
    );
    assert_eq!(stdout_of(&set).trim(), "OK");
    let get = h.exec_b_ok(
        &format!("exec redis-cli -h {addr} -p 7090 --raw GET blob"),
        SHORT,
    );
    assert!(
        stdout_of(&get).trim_end() == hex,
        "GET blob differs from SET"
    );
    h.assert_listener_completed(7090, 50);
    assert!(
        server.is_running(),
        "redis-server exited:\n{}",
        server.log()
    );
}

fn redis_client(mode: Mode) {
    let Some(h) = Host::new("predc", mode, REDIS_TOOLS) else {
        return;
    };
    let peer = peer();
    let clients = h.clients_accepted();
    let conf = redis_conf(&h, &peer, 7091);
    let mut server = h.spawn_b("kernel-redis", &format!("exec redis-server {conf}"));
    await_kernel_listener(&h.net, &mut server, 7091);
    let tests = ["SET", "GET"];
    redis_benchmark(&h, &peer, 7091, &tests, true);
    let commands = redis_commands(&h, &peer, 7091);
    assert!(
        commands >= REQUESTS * tests.len() as u64,
        "redis processed only {commands} commands"
    );
    // Every benchmark connection came from N-a's address (redis-cli above from N-b's).
    let log = std::fs::read_to_string(h.dir.path().join("redis.log")).expect("redis.log");
    let from_a = format!(" Accepted {}:", h.addr_a());
    let from_b = format!(" Accepted {peer}:");
    let accepted: Vec<&str> = log.lines().filter(|l| l.contains(" Accepted ")).collect();
    let ours = accepted.iter().filter(|l| l.contains(&from_a)).count();
    assert!(ours >= 50, "{ours} connections from {}: {log}", h.addr_a());
    if let Some(other) = accepted
        .iter()
        .find(|l| !l.contains(&from_a) && !l.contains(&from_b))
    {
        panic!("unexpected client: {other}");
    }
    h.assert_clients_grew(clients, "redis-benchmark");
}

#[test]
fn redis_server_kernel() {
    redis_server(Mode::Kernel);
}

#[test]
fn redis_server_msock() {
    redis_server(Mode::msock_unless_env());
}

#[test]
fn redis_client_kernel() {
    redis_client(Mode::Kernel);
}

#[test]
fn redis_client_msock() {
    redis_client(Mode::msock_unless_env());
}

// ---------------------------------------------------------------------------------------------
// iperf3, both directions (-R), JSON reports

const IPERF_TOOLS: &[(&str, &str)] = &[("iperf3", "iperf3"), ("python3", "python3")];

/// Checks an iperf3 JSON report; returns (sent, received, remote_host).
fn iperf_report(h: &Host, name: &str) -> (u64, u64, String) {
    let script = h.write("iperf_report.py", IPERF_REPORT);
    let out = exec_timeout(
        {
            let mut c = std::process::Command::new("python3");
            c.arg(&script).arg(h.path(name));
            c
        },
        SHORT,
    );
    let text = stdout_of(&out);
    assert!(
        out.status.success(),
        "{name}: {}{}",
        stderr_of(&out),
        std::fs::read_to_string(h.dir.path().join(name)).unwrap_or_default()
    );
    let fields: Vec<&str> = text.split_whitespace().collect();
    let number = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{name}: bad report line {text:?}"))
    };
    let remote = fields.get(2).map_or_else(String::new, |s| s.to_string());
    (number(0), number(1), remote)
}

/// One iperf3 test: server on `N-a` (under this mode) if `server_on_a`, else on `N-b`;
/// the client on the other side; `reverse` adds -R (server sends).
fn iperf_once(h: &Host, server_on_a: bool, reverse: bool, seconds: u32, port: u16) {
    let (server_addr, client_addr) = if server_on_a {
        (h.addr_a().to_string(), peer())
    } else {
        (peer(), h.addr_a().to_string())
    };
    let tag = format!("{port}{}", if reverse { "r" } else { "" });
    let (s_json, c_json) = (format!("s{tag}.json"), format!("c{tag}.json"));
    let server_cmd = format!(
        "iperf3 -s -1 -J -B {server_addr} -p {port} > {}",
        h.path(&s_json)
    );
    let client_cmd = format!(
        "iperf3 -c {server_addr} -p {port} -t {seconds} -J{} > {}",
        if reverse { " -R" } else { "" },
        h.path(&c_json)
    );
    let limit = Duration::from_secs(u64::from(seconds) + 30);
    let mut server = if server_on_a {
        let mut s = h.spawn_a("iperf3-server", &server_cmd);
        h.await_listener(&mut s, port);
        s
    } else {
        let mut s = h.spawn_b("kernel-iperf3-server", &format!("exec {server_cmd}"));
        await_kernel_listener(&h.net, &mut s, port);
        s
    };
    if server_on_a {
        h.exec_b_ok(&format!("exec {client_cmd}"), limit);
    } else {
        let out = h.exec_a(&client_cmd, limit);
        assert!(
            out.status.success(),
            "iperf3 client: {}{}",
            stderr_of(&out),
            std::fs::read_to_string(h.dir.path().join(&c_json)).unwrap_or_default()
        );
    }
    h.finish(&mut server, SHORT);
    let (c_sent, c_received, c_remote) = iperf_report(h, &c_json);
    let (s_sent, s_received, s_remote) = iperf_report(h, &s_json);
    eprintln!(
        "iperf3 port {port} reverse={reverse}: client sent {c_sent} received {c_received}, \
         server sent {s_sent} received {s_received}"
    );
    for (what, n) in [("client sent", c_sent), ("client received", c_received)] {
        assert!(n >= 1 << 20, "iperf3 {what} only {n} bytes");
    }
    assert_eq!(c_remote, server_addr, "client's peer");
    assert_eq!(s_remote, client_addr, "server's peer");
}

fn iperf3_server(mode: Mode) {
    let Some(h) = Host::new("piperf", mode, IPERF_TOOLS) else {
        return;
    };
    iperf_once(&h, true, false, 3, 7100);
    iperf_once(&h, true, true, 3, 7101);
}

fn iperf3_client(mode: Mode) {
    let Some(h) = Host::new("piperfc", mode, IPERF_TOOLS) else {
        return;
    };
    let clients = h.clients_accepted();
    iperf_once(&h, false, false, 2, 7110);
    iperf_once(&h, false, true, 2, 7111);
    h.assert_clients_grew(clients, "iperf3 client");
}

#[test]
fn iperf3_server_kernel() {
    iperf3_server(Mode::Kernel);
}

#[test]
fn iperf3_server_msock() {
    iperf3_server(Mode::msock_unless_env());
}

#[test]
fn iperf3_client_kernel() {
    iperf3_client(Mode::Kernel);
}

#[test]
fn iperf3_client_msock() {
    iperf3_client(Mode::msock_unless_env());
}

// ---------------------------------------------------------------------------------------------
// The harness's own parsers.

#[test]
fn parses_wrk_reports() {
    let clean = "Running 3s test @ http://198.18.0.3:7080/index.html
  2 threads and 32 connections
  207324 requests in 3.02s, 50.42MB read
Requests/sec:  68642.97
";
    assert_eq!(
        parse_wrk(clean),
        Some(WrkResult {
            requests: 207324,
            socket_errors: 0,
            non_2xx: 0
        })
    );
    let bad = "  10 requests in 1.00s, 1.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
";
    assert_eq!(
        parse_wrk(bad),
        Some(WrkResult {
            requests: 10,
            socket_errors: 5,
            non_2xx: 4
        })
    );
    assert_eq!(
        parse_wrk("unable to connect to 198.18.0.2:7070 Connection refused"),
        None
    );
}

#[test]
fn parses_redis_benchmark_csv() {
    let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"72516.32\",\"0.459\"\n\"GET\",\"77339.52\",\"0.427\"\n";
    assert_eq!(
        parse_redis_csv(csv, &["SET", "GET"]),
        Ok(vec![72516.32, 77339.52])
    );
    assert!(parse_redis_csv(csv, &["LPUSH"]).is_err());
    assert!(parse_redis_csv("\"SET\",\"0.00\"\n", &["SET"]).is_err());
    assert!(parse_redis_csv("\"SET\",\"x\"\n", &["SET"]).is_err());
}

#[test]
fn reads_msock_stat_json() {
    let stat = r#"{"addr":"198.18.0.2","endpoints":[{"id":1,"proto":"tcp","local":"198.18.0.2:7050","remote":null,"state":"LISTEN","pid":9,"requests":3},{"id":2,"proto":"tcp","local":"198.18.0.2:17050","remote":"198.18.0.1:5","state":"CACHED","pid":9,"requests":1}],"tcp_held":[],"tcp_listeners":[{"port":7050,"syns":251,"completed":250,"half_open":0}],"control":{"clients_accepted":4,"requests":80}}"#;
    assert!(msock_listening(stat, 7050));
    assert!(!msock_listening(stat, 17050));
    assert!(!msock_listening(stat, 705));
    assert_eq!(listener_completed(stat, 7050), Some(250));
    assert_eq!(listener_completed(stat, 7051), None);
    assert_eq!(json_u64(stat, "\"control\":{", "clients_accepted"), Some(4));
}
