/* echo_server: a single-process TCP echo server for many clients (epoll, level-triggered,
 * non-blocking sockets): every byte a client sends comes back to it, in order, until the
 * client closes. The peer of echo_client's latency measurement.
 *
 * A client that does not read its echoes is not read from either (its pending bytes wait
 * for EPOLLOUT), so one slow client cannot make the server buffer without bound.
 *
 * usage: echo_server [-a ADDR] [-p PORT] [-n CONNS]
 *   -a ADDR   IPv4 address to listen on (default 0.0.0.0)
 *   -p PORT   port (default 0: any; the chosen port is printed)
 *   -n CONNS  exit after CONNS connections have closed (default 0: run until SIGTERM/SIGINT)
 * Prints `ready port=P` once listening and, on exit, `echo_server conns=C bytes=B`. */
#include "common.h"

#include <fcntl.h>
#include <sys/epoll.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 64

struct conn {
	int fd;
	size_t len; /* bytes in buf not yet echoed */
	size_t off; /* of which `off` were already sent */
	char buf[BUF_SIZE];
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: %s [-a ADDR] [-p PORT] [-n CONNS]\n", prog);
	exit(2);
}

static int set_nonblocking(int fd)
{
	int flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
		fprintf(stderr, "%s: fcntl O_NONBLOCK: %s\n", prog, strerror(errno));
		return -1;
	}
	return 0;
}

/* Interest set for `c`: read when nothing is pending, write while something is. */
static int watch(int ep, int op, struct conn *c)
{
	struct epoll_event ev = { .events = c->len > c->off ? EPOLLOUT : EPOLLIN, .data.ptr = c };
	if (epoll_ctl(ep, op, c->fd, &ev) != 0) {
		fprintf(stderr, "%s: epoll_ctl: %s\n", prog, strerror(errno));
		return -1;
	}
	return 0;
}

/* Moves bytes for one ready connection. 1: keep it; 0: finished (EOF); -1: failed. */
static int serve(int ep, struct conn *c, uint64_t *bytes)
{
	int was_pending = c->len > c->off;
	for (;;) {
		if (c->len > c->off) {
			ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					break;
				if (errno != ECONNRESET && errno != EPIPE)
					fprintf(stderr, "%s: send: %s\n", prog, strerror(errno));
				return -1;
			}
			c->off += (size_t)n;
			*bytes += (uint64_t)n;
			continue;
		}
		c->len = c->off = 0;
		ssize_t n = recv(c->fd, c->buf, BUF_SIZE, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno != ECONNRESET)
				fprintf(stderr, "%s: recv: %s\n", prog, strerror(errno));
			return -1;
		}
		if (n == 0)
			return 0;
		c->len = (size_t)n;
	}
	int pending = c->len > c->off;
	if (pending != was_pending && watch(ep, EPOLL_CTL_MOD, c) != 0)
		return -1;
	return 1;
}

int main(int argc, char **argv)
{
	prog = "echo_server";
	const char *host = "0.0.0.0";
	uint16_t port = 0;
	uint64_t max_conns = 0;
	int opt;
	while ((opt = getopt(argc, argv, "a:p:n:h")) != -1) {
		switch (opt) {
		case 'a': host = optarg; break;
		case 'p': port = (uint16_t)arg_u64('p', optarg, 0, 65535); break;
		case 'n': max_conns = arg_u64('n', optarg, 0, UINT64_MAX); break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
		fprintf(stderr, "%s: sigaction: %s\n", prog, strerror(errno));
		return 1;
	}

	int lfd = listen_on(host, port, 1024);
	if (set_nonblocking(lfd) != 0) {
		close(lfd);
		return 1;
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		fprintf(stderr, "%s: epoll_create1: %s\n", prog, strerror(errno));
		close(lfd);
		return 1;
	}
	struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) != 0) {
		fprintf(stderr, "%s: epoll_ctl listener: %s\n", prog, strerror(errno));
		close(ep);
		close(lfd);
		return 1;
	}
	printf("ready port=%u preload=%s\n", (unsigned)local_port(lfd), preloaded());
	fflush(stdout);

	/* Every open connection, so an early exit closes and frees them all. */
	struct conn **open = NULL;
	size_t nopen = 0, cap = 0;
	uint64_t closed = 0, bytes = 0;
	int status = 0;
	struct epoll_event events[MAX_EVENTS];
	while (!stop && (max_conns == 0 || closed < max_conns)) {
		int n = epoll_wait(ep, events, MAX_EVENTS, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "%s: epoll_wait: %s\n", prog, strerror(errno));
			status = 1;
			break;
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = events[i].data.ptr;
			if (c == NULL) {
				int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd < 0) {
					if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
					    errno != ECONNABORTED)
						fprintf(stderr, "%s: accept: %s\n", prog, strerror(errno));
					continue;
				}
				set_nodelay(fd);
				if (nopen == cap) {
					size_t ncap = cap ? 2 * cap : 64;
					struct conn **grown = realloc(open, ncap * sizeof *open);
					if (grown == NULL) {
						fprintf(stderr, "%s: out of memory\n", prog);
						close(fd);
						continue;
					}
					open = grown;
					cap = ncap;
				}
				c = malloc(sizeof *c);
				if (c == NULL) {
					fprintf(stderr, "%s: out of memory\n", prog);
					close(fd);
					continue;
				}
				c->fd = fd;
				c->len = c->off = 0;
				if (watch(ep, EPOLL_CTL_ADD, c) != 0) {
					close(fd);
					free(c);
					continue;
				}
				open[nopen++] = c;
				continue;
			}
			if (serve(ep, c, &bytes) > 0)
				continue;
			/* Finished or failed: closing the fd also removes it from the epoll set. */
			close(c->fd);
			for (size_t j = 0; j < nopen; j++) {
				if (open[j] == c) {
					open[j] = open[--nopen];
					break;
				}
			}
			free(c);
			closed++;
		}
	}
	for (size_t j = 0; j < nopen; j++) {
		close(open[j]->fd);
		free(open[j]);
	}
	free(open);
	close(ep);
	close(lfd);
	printf("echo_server conns=%llu bytes=%llu\n", (unsigned long long)closed,
	       (unsigned long long)bytes);
	return status;
}
