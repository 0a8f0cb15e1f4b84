/* concurrent_server: the concurrent (inetd-style) server of the paper's Figure 5 (§4.2):
 *
 *     listen(fd); for (;;) { newfd = accept(fd);
 *                            if (fork() == 0) { close(fd); serve(newfd); exit(0); }
 *                            close(newfd); }
 *
 * With -c the listener carries SO_CONCURRENT_SERVER (level SOL_MSOCK, include/msock.h):
 * under msock an accepted connection is then cached straight into the child at fork (one
 * cache, no flush) instead of into the parent first (cache, flush at fork, cache into the
 * child at the parent's close). On the kernel stack the option fails with ENOPROTOOPT; the
 * server says so and serves anyway.
 *
 * usage: concurrent_server [-a ADDR] [-p PORT] [-c] [-t] [-m echo|reply] [-q BYTES]
 *                          [-R BYTES] [-n CONNS] [-T SECONDS]
 *   -a ADDR     IPv4 address to listen on (default 0.0.0.0)
 *   -p PORT     port (default 0: any; printed in the ready line)
 *   -c          set SO_CONCURRENT_SERVER on the listener
 *   -t          the parent touches each accepted socket after the fork, before closing it
 *               (a MSG_PEEK|MSG_DONTWAIT recv: msock's recall-on-access path)
 *   -m echo     the child echoes everything until end of file (default)
 *   -m reply    the child reads requests and answers each with -R bytes, until end of file
 *   -q BYTES    reply mode: a request is BYTES bytes (default 0: a line ending in '\n')
 *   -R BYTES    reply mode: answer size (default 64; the last byte is '\n')
 *   -n CONNS    accept CONNS connections, wait for their children, exit (default 0: forever)
 *   -T SECONDS  receive/send timeout of each child's connection (default 30, 0: none)
 * Prints `ready port=P concurrent=on|off|unsupported preload=yes|no` once listening and, on
 * exit, `concurrent_server conns=C child_failures=F`. */
#include "common.h"

#include <sys/wait.h>

#define BUF_SIZE 65536
#define MAX_REPLY (64u << 20)

enum mode { MODE_ECHO, MODE_REPLY };

struct config {
	enum mode mode;
	size_t request; /* 0: line */
	size_t reply;
	unsigned timeout_s;
};

static volatile sig_atomic_t child_failures;
static volatile sig_atomic_t stop;

/* Reaps every finished child; counts those that did not exit with status 0. */
static void on_sigchld(int sig)
{
	(void)sig;
	int saved = errno;
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			child_failures++;
	}
	errno = saved;
}

static void on_stop(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: %s [-a ADDR] [-p PORT] [-c] [-t] [-m echo|reply] [-q BYTES] [-R BYTES]\n"
		"       [-n CONNS] [-T SECONDS]\n",
		prog);
	exit(2);
}

static int serve_echo(int fd)
{
	char buf[BUF_SIZE];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "%s[%d]: read: %s\n", prog, (int)getpid(), strerror(errno));
			return -1;
		}
		if (n == 0)
			return 0;
		if (write_all(fd, buf, (size_t)n) != 0) {
			fprintf(stderr, "%s[%d]: write: %s\n", prog, (int)getpid(), strerror(errno));
			return -1;
		}
	}
}

/* Reads the next request: `cfg->request` bytes, or a line. 1: got one; 0: clean end of
 * file between requests; -1: error or a truncated request. `buf` holds [*start, *end). */
static int next_request(int fd, const struct config *cfg, char *buf, size_t *start, size_t *end)
{
	for (;;) {
		size_t have = *end - *start;
		if (cfg->request > 0 && have >= cfg->request) {
			*start += cfg->request;
			return 1;
		}
		if (cfg->request == 0) {
			char *nl = memchr(buf + *start, '\n', have);
			if (nl != NULL) {
				*start = (size_t)(nl - buf) + 1;
				return 1;
			}
		}
		if (*start > 0) {
			memmove(buf, buf + *start, have);
			*start = 0;
			*end = have;
		}
		if (*end == BUF_SIZE) {
			fprintf(stderr, "%s[%d]: request longer than %u bytes\n", prog, (int)getpid(),
				BUF_SIZE);
			return -1;
		}
		ssize_t n = read(fd, buf + *end, BUF_SIZE - *end);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "%s[%d]: read: %s\n", prog, (int)getpid(), strerror(errno));
			return -1;
		}
		if (n == 0) {
			if (have == 0)
				return 0;
			fprintf(stderr, "%s[%d]: end of file inside a request\n", prog, (int)getpid());
			return -1;
		}
		*end += (size_t)n;
	}
}

static int serve_reply(int fd, const struct config *cfg)
{
	char *buf = malloc(BUF_SIZE);
	char *answer = malloc(cfg->reply > 0 ? cfg->reply : 1);
	if (buf == NULL || answer == NULL) {
		fprintf(stderr, "%s[%d]: out of memory\n", prog, (int)getpid());
		free(buf);
		free(answer);
		return -1;
	}
	memset(answer, 'y', cfg->reply);
	if (cfg->reply > 0)
		answer[cfg->reply - 1] = '\n';
	size_t start = 0, end = 0;
	int rc;
	while ((rc = next_request(fd, cfg, buf, &start, &end)) == 1) {
		if (write_all(fd, answer, cfg->reply) != 0) {
			fprintf(stderr, "%s[%d]: write: %s\n", prog, (int)getpid(), strerror(errno));
			rc = -1;
			break;
		}
	}
	free(buf);
	free(answer);
	return rc;
}

/* The child's whole life: it owns `fd` (the listener is already closed). */
static int serve(int fd, const struct config *cfg)
{
	if (set_timeouts(fd, cfg->timeout_s) != 0) {
		close(fd);
		return -1;
	}
	set_nodelay(fd);
	int rc = cfg->mode == MODE_ECHO ? serve_echo(fd) : serve_reply(fd, cfg);
	if (close_checked(fd, "connection") != 0)
		rc = -1;
	return rc;
}

int main(int argc, char **argv)
{
	prog = "concurrent_server";
	const char *host = "0.0.0.0";
	uint16_t port = 0;
	int concurrent = 0, touch = 0;
	uint64_t max_conns = 0;
	struct config cfg = { .mode = MODE_ECHO, .request = 0, .reply = 64, .timeout_s = 30 };
	int opt;
	while ((opt = getopt(argc, argv, "a:p:ctm:q:R:n:T:h")) != -1) {
		switch (opt) {
		case 'a': host = optarg; break;
		case 'p': port = (uint16_t)arg_u64('p', optarg, 0, 65535); break;
		case 'c': concurrent = 1; break;
		case 't': touch = 1; break;
		case 'm':
			if (strcmp(optarg, "echo") == 0)
				cfg.mode = MODE_ECHO;
			else if (strcmp(optarg, "reply") == 0)
				cfg.mode = MODE_REPLY;
			else
				usage();
			break;
		case 'q': cfg.request = (size_t)arg_u64('q', optarg, 0, BUF_SIZE); break;
		case 'R': cfg.reply = (size_t)arg_u64('R', optarg, 0, MAX_REPLY); break;
		case 'n': max_conns = arg_u64('n', optarg, 0, UINT64_MAX); break;
		case 'T': cfg.timeout_s = (unsigned)arg_u64('T', optarg, 0, 86400); break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_sigchld;
	sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
	if (sigaction(SIGCHLD, &sa, NULL) != 0) {
		fprintf(stderr, "%s: sigaction SIGCHLD: %s\n", prog, strerror(errno));
		return 1;
	}
	sa.sa_handler = on_stop;
	sa.sa_flags = 0; /* interrupt accept */
	if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
		fprintf(stderr, "%s: sigaction: %s\n", prog, strerror(errno));
		return 1;
	}

	int lfd = listen_on(host, port, 1024);
	const char *cs = "off";
	if (concurrent) {
		int one = 1;
		if (setsockopt(lfd, SOL_MSOCK, SO_CONCURRENT_SERVER, &one, sizeof one) == 0) {
			cs = "on";
		} else {
			cs = "unsupported";
			fprintf(stderr,
				"%s: setsockopt(SOL_MSOCK, SO_CONCURRENT_SERVER): %s (not under msock?); "
				"continuing without it\n",
				prog, strerror(errno));
		}
	}
	printf("ready port=%u concurrent=%s preload=%s\n", (unsigned)local_port(lfd), cs,
	       preloaded());
	fflush(stdout);

	uint64_t conns = 0;
	int status = 0;
	while (!stop && (max_conns == 0 || conns < max_conns)) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "%s: accept: %s\n", prog, strerror(errno));
			status = 1;
			break;
		}
		conns++;
		fflush(NULL); /* nothing buffered may be written twice */
		pid_t pid = fork();
		if (pid < 0) {
			fprintf(stderr, "%s: fork: %s\n", prog, strerror(errno));
			close(fd);
			status = 1;
			break;
		}
		if (pid == 0) {
			signal(SIGTERM, SIG_DFL);
			signal(SIGINT, SIG_DFL);
			signal(SIGCHLD, SIG_DFL);
			close(lfd);
			exit(serve(fd, &cfg) == 0 ? 0 : 1);
		}
		if (touch) {
			char byte;
			ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				fprintf(stderr, "%s: parent's peek: %s\n", prog, strerror(errno));
		}
		if (close_checked(fd, "accepted socket (parent)") != 0)
			status = 1;
	}
	if (close_checked(lfd, "listener") != 0)
		status = 1;
	/* Wait for the children still serving, with the handler held off so the two cannot
	 * race on the failure count. */
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, 0);
		if (pid > 0) {
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				child_failures++;
			continue;
		}
		if (errno == EINTR)
			continue;
		break; /* ECHILD: none left */
	}
	printf("concurrent_server conns=%llu child_failures=%d\n", (unsigned long long)conns,
	       (int)child_failures);
	if (child_failures != 0)
		status = 1;
	return status;
}
