/* process: fork, exec, dup and exit semantics of msock TCP sockets (tests/preload_process.rs),
 * run unmodified under `msock run`. One mode per scenario; each prints `MODE ok ...` on stdout
 * (unless stdout is the socket) and exits 0, or prints why on stderr and exits 1.
 *
 *   write ADDR PORT N     connect; write 'P'*N; fork: the child writes 'C'*N and exits; the
 *                         parent waits for it (and 200 ms for the SoleHolder upcall), writes
 *                         "P2"*N and closes
 *   read ADDR PORT M      connect; fork; the parent writes "F" (the peer then sends M pattern
 *                         bytes and closes); the child reads the first M/2 and exits; the parent
 *                         waits for it and reads the rest to end of file; both check the pattern
 *   inetd PORT PROGRAM    listen; accept (inetd `nowait`): the child dup2s the connection
 *                         onto 0 and 1 and execs PROGRAM (a path, no arguments)
 *   execfd ADDR PORT N    connect; write "hdr\n"; fork: the child moves the socket to fd 57
 *                         and execs python3, which writes N pattern bytes to fd 57 (its number
 *                         given in argv); the parent waits, writes "tail\n" and closes
 *   dup2 ADDR PORT        connect; dup2 onto 1 and write(1), onto 2 (closing the original)
 *                         and write(2), onto 0: read(0) gets the peer's line, echoed to fd 2
 *   dup2stdio ADDR PORT   the same through stdio: printf, fprintf(stderr), fgets(stdin),
 *                         dprintf(2)
 *   exitq ADDR PORT N     connect; write N pattern bytes; exit(0) at once (the atexit hand-over
 *                         must deliver every byte and the FIN)
 *   recall PORT           SO_CONCURRENT_SERVER listener; accept; fork: the child reads (caching
 *                         the connection), tells the parent through a pipe, echoes to end of
 *                         file; the parent then peeks (recall-on-access) and closes its copy */
#include "helpers.h"

#include <fcntl.h>

#include "msock.h"

static int mode_write(const char *host, uint16_t port, size_t n)
{
	int s = connect_or_die(host, port);
	write_fill(s, 'P', n, "P block");
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		write_fill(s, 'C', n, "C block (child)");
		if (close(s) != 0)
			die("close (child)");
		exit(0);
	}
	reap_ok(pid, "writer child");
	/* The child's close made the netserver send us SoleHolder; give the receive thread time
	 * to take it, so P2 goes out from the connection cached here again. */
	usleep(200000);
	char *p2 = malloc(2 * n);
	if (p2 == NULL)
		die("malloc");
	for (size_t i = 0; i < n; i++) {
		p2[2 * i] = 'P';
		p2[2 * i + 1] = '2';
	}
	if (write_all(s, p2, 2 * n) != 0)
		die("write P2 block");
	free(p2);
	if (close(s) != 0)
		die("close (parent)");
	printf("write ok %zu\n", n);
	return 0;
}

/* Reads exactly `n` bytes at stream offset `off` and checks them; dies otherwise. With
 * n == SIZE_MAX reads to end of file and returns the count. */
static size_t read_checked(int s, uint64_t off, size_t n, const char *who)
{
	unsigned char buf[16384];
	size_t got = 0;
	while (got < n) {
		size_t want = n - got < sizeof buf ? n - got : sizeof buf;
		ssize_t k = read(s, buf, want);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			die("%s: read after %zu bytes", who, got);
		}
		if (k == 0) {
			if (n == SIZE_MAX)
				break;
			errno = 0;
			die("%s: end of file after %zu of %zu bytes", who, got, n);
		}
		long bad = pattern_mismatch(buf, off + got, (size_t)k);
		if (bad >= 0) {
			errno = 0;
			die("%s: byte %llu differs from the pattern", who,
			    (unsigned long long)(off + got + (size_t)bad));
		}
		got += (size_t)k;
	}
	return got;
}

static int mode_read(const char *host, uint16_t port, size_t m)
{
	int s = connect_or_die(host, port);
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		size_t got = read_checked(s, 0, m / 2, "child");
		printf("child read %zu\n", got);
		exit(0);
	}
	if (write_all(s, "F", 1) != 0)
		die("write F");
	reap_ok(pid, "reader child");
	size_t rest = read_checked(s, m / 2, SIZE_MAX, "parent");
	if (rest != m - m / 2) {
		errno = 0;
		die("parent read %zu bytes after the child's %zu, want %zu", rest, m / 2, m - m / 2);
	}
	if (close(s) != 0)
		die("close");
	printf("parent read %zu\nread ok %zu\n", rest, m / 2 + rest);
	return 0;
}

/* Accepts one connection and serves it with `argv` exec'd on descriptors 0 and 1. */
static pid_t inetd_one(int lfd, char *const argv[])
{
	int c = accept(lfd, NULL, NULL);
	if (c < 0)
		die("accept");
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(lfd);
		if (dup2(c, 0) != 0 || dup2(c, 1) != 1)
			die("dup2 onto 0/1");
		close(c);
		execv(argv[0], argv);
		die("execv %s", argv[0]);
	}
	if (close(c) != 0)
		die("close (parent)");
	return pid;
}

static int mode_inetd(uint16_t port, char *program)
{
	int lfd = listen_any(port);
	printf("listening\n");
	fflush(stdout);
	char *argv[] = { program, NULL };
	pid_t pid = inetd_one(lfd, argv);
	reap_ok(pid, program);
	close(lfd);
	printf("inetd ok\n");
	return 0;
}

static const char EXECFD_PY[] =
	"import os, sys\n"
	"fd, n = int(sys.argv[1]), int(sys.argv[2])\n"
	"base = bytes((i * 31 + 7) % 251 for i in range(251))\n"
	"data = (base * (n // 251 + 1))[:n]\n"
	"view = memoryview(data)\n"
	"while view:\n"
	"    view = view[os.write(fd, view):]\n"
	"os.close(fd)\n"
	"print('python wrote', n, 'to fd', fd, flush=True)\n";

static int mode_execfd(const char *host, uint16_t port, const char *n)
{
	int s = connect_or_die(host, port);
	if (write_all(s, "hdr\n", 4) != 0)
		die("write hdr");
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		if (dup2(s, 57) != 57)
			die("dup2 onto 57");
		close(s);
		execlp("python3", "python3", "-c", EXECFD_PY, "57", n, (char *)NULL);
		die("exec python3");
	}
	reap_ok(pid, "python3");
	if (write_all(s, "tail\n", 5) != 0)
		die("write tail");
	if (close(s) != 0)
		die("close");
	printf("execfd ok\n");
	return 0;
}

/* Reads one line from descriptor 0 with read(2) (stdio == 0) or fgets (stdio == 1). */
static void read_line(char *line, size_t size, int stdio)
{
	if (stdio) {
		/* A read that never returns must not hang the test. */
		alarm(10);
		if (fgets(line, (int)size, stdin) == NULL)
			die("fgets(stdin)");
		alarm(0);
		return;
	}
	size_t got = 0;
	while (got < size - 1) {
		ssize_t k = read(0, line + got, 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			die("read(0) after %zu bytes", got);
		got++;
		if (line[got - 1] == '\n')
			break;
	}
	line[got] = '\0';
}

static int mode_dup2(const char *host, uint16_t port, int stdio)
{
	/* Keep the test's stderr for our own failures. */
	err_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 20);
	if (err_fd < 0)
		die("dup stderr");
	int s = connect_or_die(host, port);
	if (dup2(s, 1) != 1)
		die("dup2 onto 1");
	/* On a standard descriptor the connection keeps its names and type (msock relays it). */
	struct sockaddr_in peer;
	socklen_t plen = sizeof peer;
	int type = 0;
	socklen_t tlen = sizeof type;
	if (getpeername(1, (struct sockaddr *)&peer, &plen) != 0 || peer.sin_family != AF_INET ||
	    ntohs(peer.sin_port) != port)
		die("getpeername(1) after dup2");
	if (getsockopt(1, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type != SOCK_STREAM)
		die("SO_TYPE of 1 after dup2");
	if (stdio) {
		printf("stdout-printf %d\n", 1);
		if (fflush(stdout) != 0)
			die("fflush stdout");
	} else if (write(1, "stdout-write\n", 13) != 13) {
		die("write(1)");
	}
	if (dup2(s, 2) != 2)
		die("dup2 onto 2");
	if (close(s) != 0)
		die("close the original");
	if (stdio) {
		fprintf(stderr, "stderr-fprintf %d\n", 2);
	} else if (write(2, "stderr-write\n", 13) != 13) {
		die("write(2)");
	}
	if (dup2(1, 0) != 0)
		die("dup2 onto 0");
	if (write(1, "want-input\n", 11) != 11)
		die("write want-input");
	char line[128];
	read_line(line, sizeof line, stdio);
	if (stdio) {
		if (dprintf(2, "got:%s", line) < 0)
			die("dprintf(2)");
	} else if (write(2, "got:", 4) != 4 || write(2, line, strlen(line)) != (ssize_t)strlen(line)) {
		die("write(2) got");
	}
	/* Every descriptor of the connection closed: the peer sees end of file. */
	if (close(0) != 0 || close(1) != 0 || close(2) != 0)
		die("close 0/1/2");
	dprintf(err_fd, "dup2 ok\n");
	return 0;
}

static int mode_exitq(const char *host, uint16_t port, size_t n)
{
	int s = connect_or_die(host, port);
	unsigned char buf[65536];
	size_t sent = 0;
	while (sent < n) {
		size_t k = n - sent < sizeof buf ? n - sent : sizeof buf;
		pattern_fill(buf, sent, k);
		if (write_all(s, buf, k) != 0)
			die("write after %zu bytes", sent);
		sent += k;
	}
	printf("exitq wrote %zu\n", sent);
	exit(0);
}

static int mode_recall(uint16_t port)
{
	int lfd = listen_any(port);
	int one = 1;
	if (setsockopt(lfd, SOL_MSOCK, SO_CONCURRENT_SERVER, &one, sizeof one) != 0)
		die("SO_CONCURRENT_SERVER");
	printf("listening\n");
	fflush(stdout);
	int c = accept(lfd, NULL, NULL);
	if (c < 0)
		die("accept");
	int pipefd[2];
	if (pipe(pipefd) != 0)
		die("pipe");
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(lfd);
		close(pipefd[0]);
		char buf[65536];
		ssize_t k = read(c, buf, sizeof buf);
		if (k <= 0)
			die("child's first read");
		if (write(pipefd[1], "r", 1) != 1)
			die("pipe write");
		close(pipefd[1]);
		for (;;) {
			if (write_all(c, buf, (size_t)k) != 0)
				die("child's echo");
			k = read(c, buf, sizeof buf);
			if (k < 0 && errno == EINTR) {
				k = 0;
				continue;
			}
			if (k < 0)
				die("child's read");
			if (k == 0)
				break;
		}
		if (close(c) != 0)
			die("child's close");
		exit(0);
	}
	close(pipefd[1]);
	char r;
	if (read(pipefd[0], &r, 1) != 1)
		die("pipe read");
	char byte;
	ssize_t k = recv(c, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
	if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
		die("parent's peek");
	if (close(c) != 0)
		die("parent's close");
	reap_ok(pid, "echo child");
	close(lfd);
	printf("recall ok\n");
	return 0;
}

int main(int argc, char **argv)
{
	prog = "process";
	if (argc >= 2)
		prog = argv[1];
	if (argc == 5 && strcmp(argv[1], "write") == 0)
		return mode_write(argv[2], (uint16_t)parse_num(argv[3]), (size_t)parse_num(argv[4]));
	if (argc == 5 && strcmp(argv[1], "read") == 0)
		return mode_read(argv[2], (uint16_t)parse_num(argv[3]), (size_t)parse_num(argv[4]));
	if (argc == 4 && strcmp(argv[1], "inetd") == 0)
		return mode_inetd((uint16_t)parse_num(argv[2]), argv[3]);
	if (argc == 5 && strcmp(argv[1], "execfd") == 0) {
		parse_num(argv[4]);
		return mode_execfd(argv[2], (uint16_t)parse_num(argv[3]), argv[4]);
	}
	if (argc == 4 && strcmp(argv[1], "dup2") == 0)
		return mode_dup2(argv[2], (uint16_t)parse_num(argv[3]), 0);
	if (argc == 4 && strcmp(argv[1], "dup2stdio") == 0)
		return mode_dup2(argv[2], (uint16_t)parse_num(argv[3]), 1);
	if (argc == 5 && strcmp(argv[1], "exitq") == 0)
		return mode_exitq(argv[2], (uint16_t)parse_num(argv[3]), (size_t)parse_num(argv[4]));
	if (argc == 3 && strcmp(argv[1], "recall") == 0)
		return mode_recall((uint16_t)parse_num(argv[2]));
	fprintf(stderr, "usage: process write|read|inetd|execfd|dup2|dup2stdio|exitq|recall ARGS\n");
	return 2;
}
