/* Helpers shared by the cdemo programs (header-only: every program is one .c file).
 *
 * The programs are plain socket programs: built without libmsock, they run on the kernel
 * stack, and under `msock run` (LD_PRELOAD=libmsock.so) the same binary runs over msock.
 * They include "msock.h" for msock's extensions (SOL_MSOCK, SO_CONCURRENT_SERVER) and find
 * msock's C interface at run time with dlsym, so nothing links against libmsock.
 *
 * Output convention: one machine-readable result line on stdout (`key=value` fields),
 * servers print `ready port=P ...` once listening; diagnostics go to stderr. Exit status 0
 * on success, 1 on a runtime failure, 2 on a usage error.
 *
 * The test programs of tests/c build on this header too (tests/c/helpers.h): a change here
 * must keep them compiling (tests/preload_process.rs compiles them). */
#ifndef CDEMO_COMMON_H
#define CDEMO_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "msock.h"

/* Program name for messages (set from argv[0] by each main). */
static const char *prog = "cdemo";

/* Parses a decimal unsigned integer in [min, max]; 0 on success, -1 otherwise. */
static inline int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	if (s == NULL || *s == '\0' || *s == '-' || *s == '+')
		return -1;
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		return -1;
	*out = (uint64_t)v;
	return 0;
}

/* Like parse_u64, exiting with status 2 and a message naming option `opt` on bad input. */
static inline uint64_t arg_u64(char opt, const char *s, uint64_t min, uint64_t max)
{
	uint64_t v;
	if (parse_u64(s, min, max, &v) != 0) {
		fprintf(stderr, "%s: -%c: expected an integer in %llu..%llu, got '%s'\n", prog, opt,
			(unsigned long long)min, (unsigned long long)max, s ? s : "");
		exit(2);
	}
	return v;
}

/* An IPv4 socket address from dotted-quad `host` and `port`; exits with status 2 if `host`
 * is not an IPv4 address. */
static inline struct sockaddr_in make_addr(const char *host, uint16_t port)
{
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons(port);
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "%s: '%s' is not an IPv4 address\n", prog, host);
		exit(2);
	}
	return sa;
}

/* Monotonic time in nanoseconds (CLOCK_MONOTONIC is system-wide: comparable across the
 * processes of one machine). */
static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Writes all `len` bytes (restarting on EINTR and short writes); 0, or -1 with errno. */
static inline int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
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

/* Reads until `len` bytes or end of file; the count read (less than `len` only at end of
 * file), or -1 with errno. */
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

/* Closes `fd`, reporting a failure (a close error on a socket can mean lost data). */
static inline int close_checked(int fd, const char *what)
{
	if (close(fd) != 0) {
		fprintf(stderr, "%s: close %s: %s\n", prog, what, strerror(errno));
		return -1;
	}
	return 0;
}

/* Sets the receive and send timeouts of `fd` (0 seconds: none). Connect, read and write
 * then fail with EAGAIN/EINPROGRESS instead of hanging when a peer stops answering. */
static inline int set_timeouts(int fd, unsigned seconds)
{
	if (seconds == 0)
		return 0;
	struct timeval tv = { .tv_sec = (time_t)seconds, .tv_usec = 0 };
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
		fprintf(stderr, "%s: SO_RCVTIMEO/SO_SNDTIMEO: %s\n", prog, strerror(errno));
		return -1;
	}
	return 0;
}

/* TCP_NODELAY on: request/response traffic must not wait for Nagle. A stack without the
 * option is warned about once and used anyway: with one request in flight at a time, as in
 * these programs, Nagle never holds a segment back. */
static inline void set_nodelay(int fd)
{
	static int warned;
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 && !warned) {
		warned = 1;
		fprintf(stderr, "%s: warning: TCP_NODELAY: %s; continuing without it\n", prog,
			strerror(errno));
	}
}

/* A TCP socket listening on host:port with SO_REUSEADDR, created with `type_flags` (e.g.
 * SOCK_CLOEXEC) added to SOCK_STREAM; the fd, or -1 with errno after a message naming the step
 * that failed. Exits with status 2 if `host` is not an IPv4 address. */
static inline int try_listen(const char *host, uint16_t port, int backlog, int type_flags)
{
	struct sockaddr_in sa = make_addr(host, port);
	int fd = socket(AF_INET, SOCK_STREAM | type_flags, 0);
	if (fd < 0) {
		fprintf(stderr, "%s: socket: %s\n", prog, strerror(errno));
		return -1;
	}
	const char *step = NULL;
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
		step = "SO_REUSEADDR";
	else if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		step = "bind";
	else if (listen(fd, backlog) != 0)
		step = "listen";
	if (step != NULL) {
		int e = errno;
		fprintf(stderr, "%s: %s %s:%u: %s\n", prog, step, host, (unsigned)port, strerror(e));
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* A listening TCP socket on host:port with SO_REUSEADDR, close-on-exec; exits with status 1
 * on failure. */
static inline int listen_on(const char *host, uint16_t port, int backlog)
{
	int fd = try_listen(host, port, backlog, SOCK_CLOEXEC);
	if (fd < 0)
		exit(1);
	return fd;
}

/* The local port of a bound socket (0 if getsockname fails, reported). */
static inline uint16_t local_port(int fd)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof sa;
	if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
		fprintf(stderr, "%s: getsockname: %s\n", prog, strerror(errno));
		return 0;
	}
	return ntohs(sa.sin_port);
}

/* Connects a new TCP socket to `sa` with timeouts and TCP_NODELAY; the fd, or -1 after a
 * message. */
static inline int connect_to(const struct sockaddr_in *sa, unsigned timeout_s)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "%s: socket: %s\n", prog, strerror(errno));
		return -1;
	}
	if (set_timeouts(fd, timeout_s) != 0) {
		close(fd);
		return -1;
	}
	set_nodelay(fd);
	while (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
		if (errno == EINTR)
			continue;
		char host[INET_ADDRSTRLEN] = "?";
		inet_ntop(AF_INET, &sa->sin_addr, host, sizeof host);
		fprintf(stderr, "%s: connect %s:%u: %s\n", prog, host, (unsigned)ntohs(sa->sin_port),
			strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* libmsock's msock_is_msock_fd when this process runs under the preload, else NULL. Found
 * with dlsym so the programs need not link against libmsock. */
static inline int (*msock_probe(void))(int)
{
	int (*fn)(int) = NULL;
	void *sym = dlsym(RTLD_DEFAULT, "msock_is_msock_fd");
	/* POSIX guarantees object-to-function pointer conversion for dlsym results. */
	memcpy(&fn, &sym, sizeof fn);
	return fn;
}

/* "msock" if `fd` is served by msock in this process, else "kernel". */
static inline const char *stack_of(int fd)
{
	int (*is_msock)(int) = msock_probe();
	return (is_msock != NULL && is_msock(fd) == 1) ? "msock" : "kernel";
}

/* "yes" if libmsock is loaded into this process. */
static inline const char *preloaded(void)
{
	return msock_probe() != NULL ? "yes" : "no";
}

/* qsort comparator for uint64_t. */
static inline int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* The p-th percentile (0..100) of sorted `v[0..n)`, linearly interpolated between closest
 * ranks (the convention of benches/support). n must be > 0. */
static inline double percentile_sorted(const uint64_t *v, size_t n, double p)
{
	double rank = p / 100.0 * (double)(n - 1);
	size_t lo = (size_t)rank;
	size_t hi = lo + 1 < n ? lo + 1 : lo;
	return (double)v[lo] + ((double)v[hi] - (double)v[lo]) * (rank - (double)lo);
}

/* Streaming checksum of a byte stream: 64-bit FNV-1a over the stream's little-endian 64-bit
 * words (one multiply per 8 bytes, so it keeps up with a fast link), then over the final
 * 1..7 bytes one at a time. The result depends only on the bytes, not on how reads split
 * them. */
struct fnv64w {
	uint64_t hash;
	uint64_t total;
	unsigned char tail[8];
	unsigned tail_len;
};

#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME 0x100000001b3ull

static inline void fnv64w_init(struct fnv64w *f)
{
	f->hash = FNV64_OFFSET;
	f->total = 0;
	f->tail_len = 0;
}

static inline uint64_t le64(const unsigned char *p)
{
	uint64_t w = 0;
	for (unsigned i = 0; i < 8; i++)
		w |= (uint64_t)p[i] << (8 * i);
	return w;
}

static inline void fnv64w_update(struct fnv64w *f, const void *data, size_t len)
{
	const unsigned char *p = data;
	f->total += len;
	while (f->tail_len > 0 && len > 0) {
		f->tail[f->tail_len++] = *p++;
		len--;
		if (f->tail_len == 8) {
			f->hash = (f->hash ^ le64(f->tail)) * FNV64_PRIME;
			f->tail_len = 0;
		}
	}
	for (; len >= 8; p += 8, len -= 8)
		f->hash = (f->hash ^ le64(p)) * FNV64_PRIME;
	memcpy(f->tail, p, len);
	f->tail_len = (unsigned)len;
}

static inline uint64_t fnv64w_final(const struct fnv64w *f)
{
	uint64_t h = f->hash;
	for (unsigned i = 0; i < f->tail_len; i++)
		h = (h ^ f->tail[i]) * FNV64_PRIME;
	return h;
}

#endif /* CDEMO_COMMON_H */
