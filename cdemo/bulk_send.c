/* bulk_send: one-flow TCP bulk throughput, sender or sink.
 *
 * Sender (default): connect, send the stream, shutdown(SHUT_WR), wait for the peer's end of
 * file (the sink closes once it has read everything), so the time covers delivery, not just
 * queueing. The stream is a fixed pseudo-random pattern of 65521 bytes (a prime, so chunk
 * boundaries never line up with it) repeated; the sender hashes it after the timed part.
 * Sink (-l): listen, accept, read until end of file hashing every byte, close; -n repeats.
 * Both print one line per stream:
 *     bulk bytes=.. seconds=.. gbit_s=.. fnv=0x.. stack=msock|kernel
 * fnv is FNV-1a 64 over the stream's little-endian 64-bit words (common.h), so equal values
 * at both ends mean the bytes arrived intact and in order.
 *
 * usage: bulk_send [-a ADDR] -p PORT [-m MIB | -B BYTES] [-c CHUNK] [-T SECONDS]
 *        bulk_send -l [-a ADDR] [-p PORT] [-n STREAMS] [-T SECONDS]
 *   -a ADDR     server address (sender; default 127.0.0.1) or listen address (sink;
 *               default 0.0.0.0)
 *   -p PORT     port (sink default 0: any, printed as `ready port=P`)
 *   -m MIB      mebibytes to send (default 256)
 *   -B BYTES    exact byte count to send instead
 *   -c CHUNK    bytes per send call (default 262144)
 *   -n STREAMS  sink: accept STREAMS connections one after another, then exit (default 1)
 *   -T SECONDS  receive/send timeout (default 30, 0: none) */
#include "common.h"

#define PATTERN_LEN 65521u
#define MAX_CHUNK (64u << 20)
#define SINK_BUF (256u << 10)

static void usage(void)
{
	fprintf(stderr,
		"usage: %s [-a ADDR] -p PORT [-m MIB | -B BYTES] [-c CHUNK] [-T SECONDS]\n"
		"       %s -l [-a ADDR] [-p PORT] [-n STREAMS] [-T SECONDS]\n",
		prog, prog);
	exit(2);
}

static void print_line(uint64_t bytes, uint64_t ns, uint64_t fnv, const char *stack)
{
	double secs = (double)ns / 1e9;
	printf("bulk bytes=%llu seconds=%.6f gbit_s=%.3f fnv=0x%016llx stack=%s\n",
	       (unsigned long long)bytes, secs, secs > 0 ? (double)bytes * 8 / secs / 1e9 : 0.0,
	       (unsigned long long)fnv, stack);
	fflush(stdout);
}

/* buf[i] = pattern[i % PATTERN_LEN] for i < len: the pattern from a fixed xorshift64 seed. */
static void fill_pattern(unsigned char *buf, size_t len)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < len; i++) {
		if (i < PATTERN_LEN) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			buf[i] = (unsigned char)(x >> 56);
		} else {
			buf[i] = buf[i - PATTERN_LEN];
		}
	}
}

static int sender(const struct sockaddr_in *sa, uint64_t total, size_t chunk, unsigned timeout)
{
	unsigned char *buf = malloc(chunk + PATTERN_LEN);
	if (buf == NULL) {
		fprintf(stderr, "%s: out of memory\n", prog);
		return 1;
	}
	fill_pattern(buf, chunk + PATTERN_LEN);
	int fd = connect_to(sa, timeout);
	if (fd < 0) {
		free(buf);
		return 1;
	}
	const char *stack = stack_of(fd);
	int rc = 0;
	uint64_t t0 = now_ns();
	for (uint64_t off = 0; off < total;) {
		size_t len = total - off < chunk ? (size_t)(total - off) : chunk;
		ssize_t n = send(fd, buf + off % PATTERN_LEN, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "%s: send after %llu bytes: %s\n", prog, (unsigned long long)off,
				errno == EAGAIN ? "timed out" : strerror(errno));
			rc = 1;
			break;
		}
		off += (uint64_t)n;
	}
	if (rc == 0 && shutdown(fd, SHUT_WR) != 0) {
		fprintf(stderr, "%s: shutdown: %s\n", prog, strerror(errno));
		rc = 1;
	}
	/* The peer closes once it has everything; anything it sends is drained and ignored. */
	while (rc == 0) {
		unsigned char sink[4096];
		ssize_t n = read(fd, sink, sizeof sink);
		if (n == 0)
			break;
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "%s: waiting for the peer's close: %s\n", prog,
				errno == EAGAIN ? "timed out" : strerror(errno));
			rc = 1;
		}
	}
	uint64_t elapsed = now_ns() - t0;
	if (close_checked(fd, "connection") != 0)
		rc = 1;
	if (rc == 0) {
		struct fnv64w f;
		fnv64w_init(&f);
		for (uint64_t off = 0; off < total;) {
			size_t len = total - off < chunk ? (size_t)(total - off) : chunk;
			fnv64w_update(&f, buf + off % PATTERN_LEN, len);
			off += len;
		}
		print_line(total, elapsed, fnv64w_final(&f), stack);
	}
	free(buf);
	return rc;
}

/* Reads one stream to its end; prints its line. */
static int sink_one(int fd)
{
	unsigned char *buf = malloc(SINK_BUF);
	if (buf == NULL) {
		fprintf(stderr, "%s: out of memory\n", prog);
		return 1;
	}
	struct fnv64w f;
	fnv64w_init(&f);
	uint64_t t0 = 0;
	int rc = 0;
	for (;;) {
		ssize_t n = read(fd, buf, SINK_BUF);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "%s: read after %llu bytes: %s\n", prog,
				(unsigned long long)f.total, errno == EAGAIN ? "timed out" : strerror(errno));
			rc = 1;
			break;
		}
		if (n == 0)
			break;
		if (f.total == 0)
			t0 = now_ns();
		fnv64w_update(&f, buf, (size_t)n);
	}
	uint64_t elapsed = f.total > 0 ? now_ns() - t0 : 0;
	if (rc == 0)
		print_line(f.total, elapsed, fnv64w_final(&f), stack_of(fd));
	free(buf);
	return rc;
}

static int sink(const char *host, uint16_t port, uint64_t streams, unsigned timeout)
{
	int lfd = listen_on(host, port, 16);
	printf("ready port=%u preload=%s\n", (unsigned)local_port(lfd), preloaded());
	fflush(stdout);
	int rc = 0;
	for (uint64_t done = 0; done < streams && rc == 0;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "%s: accept: %s\n", prog, strerror(errno));
			rc = 1;
			break;
		}
		if (set_timeouts(fd, timeout) != 0)
			rc = 1;
		else
			rc = sink_one(fd);
		if (close_checked(fd, "connection") != 0)
			rc = 1;
		done++;
	}
	if (close_checked(lfd, "listener") != 0)
		rc = 1;
	return rc;
}

int main(int argc, char **argv)
{
	prog = "bulk_send";
	const char *host = NULL;
	int listen_mode = 0, have_port = 0;
	uint16_t port = 0;
	uint64_t total = 256ull << 20, streams = 1;
	size_t chunk = 256u << 10;
	unsigned timeout = 30;
	int opt;
	while ((opt = getopt(argc, argv, "la:p:m:B:c:n:T:h")) != -1) {
		switch (opt) {
		case 'l': listen_mode = 1; break;
		case 'a': host = optarg; break;
		case 'p':
			port = (uint16_t)arg_u64('p', optarg, 0, 65535);
			have_port = 1;
			break;
		case 'm': total = arg_u64('m', optarg, 0, 1ull << 24) << 20; break;
		case 'B': total = arg_u64('B', optarg, 0, UINT64_MAX >> 1); break;
		case 'c': chunk = (size_t)arg_u64('c', optarg, 1, MAX_CHUNK); break;
		case 'n': streams = arg_u64('n', optarg, 1, UINT64_MAX); break;
		case 'T': timeout = (unsigned)arg_u64('T', optarg, 0, 86400); break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();
	if (listen_mode)
		return sink(host ? host : "0.0.0.0", port, streams, timeout);
	if (!have_port || port == 0)
		usage();
	struct sockaddr_in sa = make_addr(host ? host : "127.0.0.1", port);
	return sender(&sa, total, chunk, timeout);
}
