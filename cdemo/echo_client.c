/* echo_client: TCP request/response latency, or connection rate, against an echo server
 * (echo_server, concurrent_server -m echo) or any server answering a request of -s bytes
 * with -R bytes.
 *
 * Latency (default): one connection; after -w warm-up exchanges, -n timed exchanges, each
 * "write S bytes, read R bytes". Prints
 *     rtt_us median=.. p99=.. mean=.. min=.. max=.. n=.. size=.. stack=msock|kernel
 * Connection rate (-r): -n timed connections (after -w warm-up ones), each "connect, write S
 * bytes, read R bytes, close" (the inetd pattern); prints
 *     conn_rate per_s=.. median_us=.. p99_us=.. n=.. stack=msock|kernel
 * per_s counts every client's connections over the wall time from the first start to the
 * last end; the times are per connection.
 *
 * usage: echo_client [-a ADDR] -p PORT [-r] [-s BYTES] [-R BYTES] [-n COUNT] [-w COUNT]
 *                    [-P CLIENTS] [-T SECONDS] [-E]
 *   -a ADDR     server IPv4 address (default 127.0.0.1)
 *   -p PORT     server port
 *   -r          connection-rate mode
 *   -s BYTES    request size (default 1; the last byte is '\n' so line servers can parse)
 *   -R BYTES    response size (default: the request size)
 *   -n COUNT    timed exchanges (latency) or connections (-r) per client (default 10000)
 *   -w COUNT    untimed warm-up exchanges or connections first (default 100)
 *   -P CLIENTS  that many client processes in parallel (fork), results merged (default 1)
 *   -T SECONDS  connect/receive/send timeout (default 10, 0: none)
 *   -E          do not check that the response echoes the request (checked when -R = -s)
 * stack= says whether msock served the connection (libmsock's msock_is_msock_fd). */
#include "common.h"

#include <fcntl.h>
#include <sys/wait.h>

#define MAX_MSG (16u << 20)

struct opts {
	struct sockaddr_in server;
	int rate;
	size_t req, resp;
	uint64_t count, warmup;
	unsigned clients;
	unsigned timeout_s;
	int verify;
};

/* What one client process measured. */
struct result {
	uint64_t t_start, t_end; /* CLOCK_MONOTONIC ns around the timed part */
	uint64_t n;              /* samples */
	int msock;               /* 1 if msock served the (last) connection */
};

static void usage(void)
{
	fprintf(stderr,
		"usage: %s [-a ADDR] -p PORT [-r] [-s BYTES] [-R BYTES] [-n COUNT] [-w COUNT]\n"
		"       [-P CLIENTS] [-T SECONDS] [-E]\n",
		prog);
	exit(2);
}

/* One request/response on `fd`. 0, or -1 after a message. */
static int exchange(int fd, const struct opts *o, const char *req, char *resp)
{
	if (write_all(fd, req, o->req) != 0) {
		fprintf(stderr, "%s: write: %s\n", prog, strerror(errno));
		return -1;
	}
	ssize_t n = read_full(fd, resp, o->resp);
	if (n < 0) {
		fprintf(stderr, "%s: read: %s\n", prog,
			errno == EAGAIN ? "timed out" : strerror(errno));
		return -1;
	}
	if ((size_t)n != o->resp) {
		fprintf(stderr, "%s: peer closed after %zd of %zu response bytes\n", prog, n, o->resp);
		return -1;
	}
	if (o->verify && memcmp(req, resp, o->req) != 0) {
		fprintf(stderr, "%s: response differs from the request\n", prog);
		return -1;
	}
	return 0;
}

/* One connection of the rate mode; `msock` gets whether msock served it. */
static int one_connection(const struct opts *o, const char *req, char *resp, int *msock)
{
	int fd = connect_to(&o->server, o->timeout_s);
	if (fd < 0)
		return -1;
	int rc = exchange(fd, o, req, resp);
	*msock = strcmp(stack_of(fd), "msock") == 0;
	if (close_checked(fd, "connection") != 0)
		rc = -1;
	return rc;
}

/* Runs one client: fills samples[0..o->count) with nanoseconds. 0, or -1 after a message. */
static int run_client(const struct opts *o, uint64_t *samples, struct result *res)
{
	char *req = malloc(o->req);
	char *resp = malloc(o->resp > 0 ? o->resp : 1);
	if (req == NULL || resp == NULL) {
		fprintf(stderr, "%s: out of memory\n", prog);
		free(req);
		free(resp);
		return -1;
	}
	for (size_t i = 0; i < o->req; i++)
		req[i] = (char)('a' + i % 26);
	req[o->req - 1] = '\n';
	int rc = 0;
	memset(res, 0, sizeof *res);
	if (o->rate) {
		for (uint64_t i = 0; i < o->warmup && rc == 0; i++)
			rc = one_connection(o, req, resp, &res->msock);
		res->t_start = now_ns();
		for (uint64_t i = 0; i < o->count && rc == 0; i++) {
			uint64_t t0 = now_ns();
			rc = one_connection(o, req, resp, &res->msock);
			if (rc == 0)
				samples[res->n++] = now_ns() - t0;
		}
		res->t_end = now_ns();
	} else {
		int fd = connect_to(&o->server, o->timeout_s);
		if (fd < 0) {
			rc = -1;
		} else {
			res->msock = strcmp(stack_of(fd), "msock") == 0;
			for (uint64_t i = 0; i < o->warmup && rc == 0; i++)
				rc = exchange(fd, o, req, resp);
			res->t_start = now_ns();
			for (uint64_t i = 0; i < o->count && rc == 0; i++) {
				uint64_t t0 = now_ns();
				rc = exchange(fd, o, req, resp);
				if (rc == 0)
					samples[res->n++] = now_ns() - t0;
			}
			res->t_end = now_ns();
			if (close_checked(fd, "connection") != 0)
				rc = -1;
		}
	}
	free(req);
	free(resp);
	return rc;
}

/* Writes/reads exactly `len` bytes on a pipe. */
static int pipe_write(int fd, const void *buf, size_t len)
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

static int pipe_read(int fd, void *buf, size_t len)
{
	ssize_t n = read_full(fd, buf, len);
	return n == (ssize_t)len ? 0 : -1;
}

/* Runs o->clients client processes, each after a common start signal, and merges their
 * samples into `all` (capacity clients * count); the merged result goes to `total`. */
static int run_parallel(const struct opts *o, uint64_t *all, struct result *total)
{
	int go[2];
	if (pipe2(go, O_CLOEXEC) != 0) {
		fprintf(stderr, "%s: pipe: %s\n", prog, strerror(errno));
		return -1;
	}
	int *from = calloc(o->clients, sizeof *from);
	pid_t *pids = calloc(o->clients, sizeof *pids);
	if (from == NULL || pids == NULL) {
		fprintf(stderr, "%s: out of memory\n", prog);
		free(from);
		free(pids);
		close(go[0]);
		close(go[1]);
		return -1;
	}
	unsigned started = 0;
	int rc = 0;
	fflush(NULL);
	for (; started < o->clients; started++) {
		int p[2];
		if (pipe2(p, O_CLOEXEC) != 0) {
			fprintf(stderr, "%s: pipe: %s\n", prog, strerror(errno));
			rc = -1;
			break;
		}
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "%s: fork: %s\n", prog, strerror(errno));
			close(p[0]);
			close(p[1]);
			rc = -1;
			break;
		}
		if (pid == 0) {
			close(p[0]);
			close(go[1]);
			for (unsigned j = 0; j < started; j++)
				close(from[j]);
			char byte;
			if (read(go[0], &byte, 1) != 0) /* EOF: go */
				_exit(1);
			close(go[0]);
			struct result r;
			int crc = run_client(o, all, &r);
			int wrc = pipe_write(p[1], &r, sizeof r);
			if (wrc == 0)
				wrc = pipe_write(p[1], all, r.n * sizeof *all);
			close(p[1]);
			exit(crc == 0 && wrc == 0 ? 0 : 1);
		}
		close(p[1]);
		from[started] = p[0];
		pids[started] = pid;
	}
	close(go[0]);
	close(go[1]); /* start (or, after a failure, let the started ones run and finish) */
	memset(total, 0, sizeof *total);
	total->msock = 1;
	for (unsigned j = 0; j < started; j++) {
		struct result r;
		if (pipe_read(from[j], &r, sizeof r) != 0 || r.n > o->count ||
		    pipe_read(from[j], all + total->n, r.n * sizeof *all) != 0) {
			fprintf(stderr, "%s: client %u sent no complete result\n", prog, j);
			rc = -1;
		} else {
			if (total->n == 0 || r.t_start < total->t_start)
				total->t_start = r.t_start;
			if (r.t_end > total->t_end)
				total->t_end = r.t_end;
			total->n += r.n;
			total->msock &= r.msock;
		}
		close(from[j]);
		int st = 0;
		pid_t w;
		while ((w = waitpid(pids[j], &st, 0)) < 0 && errno == EINTR)
			;
		if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			rc = -1;
	}
	free(from);
	free(pids);
	return rc;
}

int main(int argc, char **argv)
{
	prog = "echo_client";
	const char *host = "127.0.0.1";
	int have_port = 0, have_resp = 0, no_verify = 0;
	uint16_t port = 0;
	struct opts o = { .rate = 0, .req = 1, .count = 10000, .warmup = 100, .clients = 1,
			  .timeout_s = 10 };
	int opt;
	while ((opt = getopt(argc, argv, "a:p:rs:R:n:w:P:T:Eh")) != -1) {
		switch (opt) {
		case 'a': host = optarg; break;
		case 'p':
			port = (uint16_t)arg_u64('p', optarg, 1, 65535);
			have_port = 1;
			break;
		case 'r': o.rate = 1; break;
		case 's': o.req = (size_t)arg_u64('s', optarg, 1, MAX_MSG); break;
		case 'R':
			o.resp = (size_t)arg_u64('R', optarg, 0, MAX_MSG);
			have_resp = 1;
			break;
		case 'n': o.count = arg_u64('n', optarg, 1, 100000000); break;
		case 'w': o.warmup = arg_u64('w', optarg, 0, 100000000); break;
		case 'P': o.clients = (unsigned)arg_u64('P', optarg, 1, 1024); break;
		case 'T': o.timeout_s = (unsigned)arg_u64('T', optarg, 0, 86400); break;
		case 'E': no_verify = 1; break;
		default: usage();
		}
	}
	if (optind != argc || !have_port)
		usage();
	o.server = make_addr(host, port);
	if (!have_resp)
		o.resp = o.req;
	o.verify = !no_verify && o.resp == o.req;

	uint64_t *samples = malloc((size_t)o.count * o.clients * sizeof *samples);
	if (samples == NULL) {
		fprintf(stderr, "%s: out of memory for %llu samples\n", prog,
			(unsigned long long)(o.count * o.clients));
		return 1;
	}
	struct result res;
	int rc = o.clients == 1 ? run_client(&o, samples, &res) : run_parallel(&o, samples, &res);
	if (rc != 0 || res.n == 0) {
		fprintf(stderr, "%s: failed after %llu samples\n", prog, (unsigned long long)res.n);
		free(samples);
		return 1;
	}
	qsort(samples, res.n, sizeof *samples, cmp_u64);
	double sum = 0;
	for (uint64_t i = 0; i < res.n; i++)
		sum += (double)samples[i];
	double median = percentile_sorted(samples, res.n, 50) / 1e3;
	double p99 = percentile_sorted(samples, res.n, 99) / 1e3;
	const char *stack = res.msock ? "msock" : "kernel";
	if (o.rate) {
		double secs = (double)(res.t_end - res.t_start) / 1e9;
		printf("conn_rate per_s=%.1f median_us=%.2f p99_us=%.2f n=%llu clients=%u stack=%s\n",
		       secs > 0 ? (double)res.n / secs : 0.0, median, p99, (unsigned long long)res.n,
		       o.clients, stack);
	} else {
		printf("rtt_us median=%.2f p99=%.2f mean=%.2f min=%.2f max=%.2f n=%llu size=%zu "
		       "clients=%u stack=%s\n",
		       median, p99, sum / (double)res.n / 1e3, (double)samples[0] / 1e3,
		       (double)samples[res.n - 1] / 1e3, (unsigned long long)res.n, o.req, o.clients,
		       stack);
	}
	free(samples);
	return 0;
}
