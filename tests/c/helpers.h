/* Helpers shared by the C programs of tests/preload_process.rs (header-only; each program is
 * one .c file compiled by the test with `cc -Iinclude -Itests/c`).
 *
 * The byte pattern: byte i of a stream is (i * 31 + 7) % 251, so any offset of any stream can
 * be checked without storing it (the Python peers compute the same). Every failure prints a
 * message naming the program and exits with status 1. */
#ifndef MSOCK_TEST_HELPERS_H
#define MSOCK_TEST_HELPERS_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *prog = "test";
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

static inline uint64_t parse_num(const char *s)
{
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0')
		die("not a number: '%s'", s);
	return (uint64_t)v;
}

static inline struct sockaddr_in addr_of(const char *host, uint16_t port)
{
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		die("'%s' is not an IPv4 address", host);
	return sa;
}

/* A connected TCP socket, or -1 with errno. */
static inline int try_connect(const char *host, uint16_t port)
{
	struct sockaddr_in sa = addr_of(host, port);
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

static inline int connect_to(const char *host, uint16_t port)
{
	int fd = try_connect(host, port);
	if (fd < 0)
		die("connect %s:%u", host, (unsigned)port);
	return fd;
}

/* A listener on 0.0.0.0:port (SO_REUSEADDR). */
static inline int listen_any(uint16_t port)
{
	struct sockaddr_in sa = addr_of("0.0.0.0", port);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
		die("SO_REUSEADDR");
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		die("bind port %u", (unsigned)port);
	if (listen(fd, 16) != 0)
		die("listen");
	return fd;
}

/* Writes all of buf (restarting on EINTR and short writes); 0, or -1 with errno. */
static inline int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads until len bytes or end of file: the count (short only at end of file), or -1. */
static inline ssize_t read_full(int fd, void *buf, size_t len)
{
	char *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
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
