/* Helpers of the C programs of tests/preload_process.rs (header-only; each program is one .c
 * file compiled by the test with `cc -Iinclude -Itests/c`). What the cdemo programs need as
 * well (`prog`, make_addr, write_all, read_full, try_listen, parse_u64, msock.h) comes from
 * cdemo/common.h; this header adds only what the tests need:
 *
 * - die(): every failure prints a message naming the program (to err_fd) and exits with
 *   status 1;
 * - the byte pattern: byte i of a stream is (i * 31 + 7) % 251, so any offset of any stream
 *   can be checked without storing it (the Python peers compute the same);
 * - plain sockets: try_connect/connect_or_die and listen_any create them without
 *   SOCK_CLOEXEC, timeouts or TCP_NODELAY, as the simplest unmodified program would (fork and
 *   exec inherit them);
 * - write_fill() and reap_ok(). */
#ifndef MSOCK_TEST_HELPERS_H
#define MSOCK_TEST_HELPERS_H

#include "../../cdemo/common.h"

#include <stdarg.h>
#include <sys/wait.h>

/* Where die() writes (a program that moves stderr keeps a copy of the original here). */
static int err_fd = STDERR_FILENO;

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	dprintf(err_fd, "%s[%d]: %s (errno %d: %s)\n", prog, (int)getpid(), msg, errno,
		strerror(errno));
	_exit(1);
}

static inline unsigned char pattern_byte(uint64_t i)
{
	return (unsigned char)((i * 31 + 7) % 251);
}

static inline void pattern_fill(unsigned char *buf, uint64_t offset, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = pattern_byte(offset + i);
}

/* Index of the first byte of `buf` that is not the pattern at `offset`, or -1. */
static inline long pattern_mismatch(const unsigned char *buf, uint64_t offset, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (buf[i] != pattern_byte(offset + i))
			return (long)i;
	return -1;
}

/* A decimal unsigned integer; dies on anything else. */
static inline uint64_t parse_num(const char *s)
{
	uint64_t v;
	if (parse_u64(s, 0, UINT64_MAX, &v) != 0) {
		errno = 0;
		die("not a number: '%s'", s ? s : "");
	}
	return v;
}

/* A connected TCP socket, or -1 with errno. */
static inline int try_connect(const char *host, uint16_t port)
{
	struct sockaddr_in sa = make_addr(host, port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static inline int connect_or_die(const char *host, uint16_t port)
{
	int fd = try_connect(host, port);
	if (fd < 0)
		die("connect %s:%u", host, (unsigned)port);
	return fd;
}

/* A listener on 0.0.0.0:port (SO_REUSEADDR, inherited across exec). */
static inline int listen_any(uint16_t port)
{
	int fd = try_listen("0.0.0.0", port, 16, 0);
	if (fd < 0)
		die("listen on port %u", (unsigned)port);
	return fd;
}

/* Writes `n` bytes of the byte `c`. */
static inline void write_fill(int fd, char c, size_t n, const char *what)
{
	char buf[8192];
	memset(buf, c, sizeof buf);
	while (n > 0) {
		size_t k = n < sizeof buf ? n : sizeof buf;
		if (write_all(fd, buf, k) != 0)
			die("write %s", what);
		n -= k;
	}
}

/* Waits for child `pid`; dies unless it exited with status 0. */
static inline void reap_ok(pid_t pid, const char *what)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			die("waitpid %s", what);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		errno = 0;
		die("%s: child %d ended with status 0x%x", what, (int)pid, st);
	}
}

#endif
