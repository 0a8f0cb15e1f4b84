/* stress: the lock model of libmsock's TCP sockets under many threads (tests/preload_process.rs,
 * issue 5 "a stress test with many threads reading, writing, closing and forking proves it").
 *
 * usage: stress ADDR PORT SECONDS [quiet] [nofork]     (ADDR:PORT: an echo server)
 *
 * For SECONDS, eight threads work on connections to the echo server at once:
 * - 2 duplex pairs: on each of connections A and B one thread writes the pattern stream in
 *   random chunks while another reads the echo and checks it (one socket, two threads);
 * - 2 exchangers: pick one of 3 shared slot connections, lock it, write a random-size request,
 *   read its echo back; now and then close the slot's connection and open a new one;
 * - 1 churner: connect, one exchange, close, again;
 * - 1 poller: a non-blocking connection driven by epoll (EPOLLOUT switched with epoll_ctl while
 *   the window is full), plus poll() on A and B while their threads block in them;
 * - 1 forker: every 100 ms locks a slot and forks; the child does one exchange on that shared
 *   slot and _exit()s; every third time the child execs /bin/true instead.
 * Every echoed byte is checked against the pattern at its stream offset. The main thread prints
 * the counters every second on stderr (a deadlock shows as counters that stop), then stops the
 * threads, ends every stream with shutdown(SHUT_WR) and checks each echo to its end of file.
 * With `quiet` no descriptor is opened or closed while the threads run (no churner, no slot
 * reopen): forks then never race a close. With `nofork` the forker thread does not run.
 * Prints `stress ok ...` and exits 0, or exits 1 after a message. */
#include "helpers.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/time.h>
#include <time.h>

#define SLOTS 3
#define MAX_EXCHANGE 32768
#define WINDOW (256 * 1024)
#define IO_TIMEOUT_S 15

static const char *host;
static uint16_t port;
static atomic_int stop;
static int quiet, nofork;

static atomic_ulong n_exchanges, n_reopens, n_churns, n_forks, n_execs, n_polls, n_epoll_bytes;
static atomic_ulong n_duplex_bytes[2];

struct slot {
	pthread_mutex_t lock;
	int fd;
	uint64_t offset; /* bytes exchanged on this connection so far */
};

static struct slot slots[SLOTS];

struct duplex {
	int fd;
	atomic_ullong written;
	atomic_int shutting; /* set just before the writer's shutdown(SHUT_WR): end of file due */
};

static struct duplex duplex[2];
static int epoll_conn = -1;

static int open_conn(int cloexec)
{
	for (int attempt = 0;; attempt++) {
		int fd = try_connect(host, port);
		if (fd >= 0) {
			if (cloexec && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
				die("FD_CLOEXEC");
			if (set_timeouts(fd, IO_TIMEOUT_S) != 0)
				die("SO_RCVTIMEO/SO_SNDTIMEO");
			return fd;
		}
		if (attempt >= 50)
			die("connect %s:%u", host, (unsigned)port);
		usleep(20000);
	}
}

/* One request/response of `len` pattern bytes at stream offset `off` on `fd`; 0, or -1 with a
 * message (the caller decides whether to die: a fork child must _exit). */
static int exchange(int fd, uint64_t off, size_t len, const char *who)
{
	static __thread unsigned char out[MAX_EXCHANGE], in[MAX_EXCHANGE];
	pattern_fill(out, off, len);
	if (write_all(fd, out, len) != 0) {
		dprintf(2, "%s: write %zu at %llu: %s\n", who, len, (unsigned long long)off,
			strerror(errno));
		return -1;
	}
	ssize_t got = read_full(fd, in, len);
	if (got != (ssize_t)len) {
		dprintf(2, "%s: read %zd of %zu at %llu: %s\n", who, got, len,
			(unsigned long long)off, got < 0 ? strerror(errno) : "end of file");
		return -1;
	}
	long bad = pattern_mismatch(in, off, len);
	if (bad >= 0) {
		dprintf(2, "%s: echo byte %llu differs\n", who, (unsigned long long)(off + bad));
		return -1;
	}
	return 0;
}

static void *duplex_writer(void *arg)
{
	struct duplex *d = arg;
	unsigned seed = (unsigned)(d - duplex) * 7919u + 1;
	static __thread unsigned char buf[16384];
	uint64_t off = 0;
	int i = (int)(d - duplex);
	while (!atomic_load(&stop)) {
		/* At most WINDOW unechoed bytes: the echo server's queue stays small. */
		if (off - atomic_load(&n_duplex_bytes[i]) > WINDOW) {
			usleep(500);
			continue;
		}
		size_t len = 1 + (size_t)rand_r(&seed) % sizeof buf;
		pattern_fill(buf, off, len);
		if (write_all(d->fd, buf, len) != 0)
			die("duplex %d: write at %llu", i, (unsigned long long)off);
		off += len;
		atomic_store(&d->written, off);
	}
	atomic_store(&d->shutting, 1);
	if (shutdown(d->fd, SHUT_WR) != 0)
		die("duplex %d: shutdown", i);
	return NULL;
}

static void *duplex_reader(void *arg)
{
	struct duplex *d = arg;
	int i = (int)(d - duplex);
	static __thread unsigned char buf[65536];
	uint64_t off = 0;
	for (;;) {
		ssize_t k = read(d->fd, buf, sizeof buf);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			die("duplex %d: read at %llu", i, (unsigned long long)off);
		}
		if (k == 0)
			break;
		long bad = pattern_mismatch(buf, off, (size_t)k);
		if (bad >= 0) {
			errno = 0;
			die("duplex %d: echo byte %llu differs", i, (unsigned long long)(off + bad));
		}
		off += (uint64_t)k;
		atomic_store(&n_duplex_bytes[i], off);
	}
	/* The echo's end of file is due once the writer has begun its shutdown(SHUT_WR), not
	 * only once that call has returned: the FIN may come back first. `written` is final by
	 * then. */
	if (!atomic_load(&d->shutting) || off != atomic_load(&d->written)) {
		errno = 0;
		die("duplex %d: end of file after %llu bytes, %llu written%s", i,
		    (unsigned long long)off, (unsigned long long)atomic_load(&d->written),
		    atomic_load(&d->shutting) ? "" : ", before the writer's shutdown");
	}
	return NULL;
}

static void *exchanger(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg * 104729u + 3;
	char who[32];
	snprintf(who, sizeof who, "exchanger %u", (unsigned)(uintptr_t)arg);
	while (!atomic_load(&stop)) {
		struct slot *s = &slots[rand_r(&seed) % SLOTS];
		pthread_mutex_lock(&s->lock);
		if (s->fd < 0 || (!quiet && rand_r(&seed) % 20 == 0)) {
			if (s->fd >= 0 && close(s->fd) != 0)
				die("%s: close", who);
			s->fd = open_conn(0);
			s->offset = 0;
			atomic_fetch_add(&n_reopens, 1);
		}
		size_t len = 1 + (size_t)rand_r(&seed) % MAX_EXCHANGE;
		if (exchange(s->fd, s->offset, len, who) != 0)
			die("%s failed", who);
		s->offset += len;
		pthread_mutex_unlock(&s->lock);
		atomic_fetch_add(&n_exchanges, 1);
	}
	return NULL;
}

static void *churner(void *arg)
{
	(void)arg;
	unsigned seed = 17;
	while (!atomic_load(&stop)) {
		int fd = open_conn(rand_r(&seed) % 2);
		size_t len = 1 + (size_t)rand_r(&seed) % 2048;
		if (exchange(fd, 0, len, "churner") != 0)
			die("churner failed");
		if (close(fd) != 0)
			die("churner: close");
		atomic_fetch_add(&n_churns, 1);
	}
	return NULL;
}

static void *poller(void *arg)
{
	(void)arg;
	int fd = epoll_conn;
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
		die("poller: O_NONBLOCK");
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.fd = fd };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
		die("epoll_ctl ADD");
	int want_out = 1, shut = 0;
	uint64_t sent = 0, recvd = 0;
	unsigned seed = 99;
	static __thread unsigned char buf[65536];
	for (;;) {
		if (atomic_load(&stop) && !shut) {
			if (shutdown(fd, SHUT_WR) != 0)
				die("poller: shutdown");
			shut = 1;
		}
		int out = !shut && sent - recvd < WINDOW;
		if (out != want_out) {
			ev.events = EPOLLIN | (out ? EPOLLOUT : 0);
			if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) != 0)
				die("epoll_ctl MOD");
			want_out = out;
		}
		struct epoll_event got[4];
		int n = epoll_wait(ep, got, 4, 50);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			if (got[i].events & EPOLLOUT && want_out) {
				size_t len = 1 + (size_t)rand_r(&seed) % 8192;
				pattern_fill(buf, sent, len);
				ssize_t k = write(fd, buf, len);
				if (k < 0 && errno != EAGAIN && errno != EINTR)
					die("poller: write");
				if (k > 0)
					sent += (uint64_t)k;
			}
			if (got[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
				ssize_t k = read(fd, buf, sizeof buf);
				if (k < 0 && errno != EAGAIN && errno != EINTR)
					die("poller: read");
				if (k == 0) {
					if (!shut || recvd != sent) {
						errno = 0;
						die("poller: end of file at %llu, sent %llu",
						    (unsigned long long)recvd, (unsigned long long)sent);
					}
					close(ep);
					return NULL;
				}
				if (k > 0) {
					long bad = pattern_mismatch(buf, recvd, (size_t)k);
					if (bad >= 0) {
						errno = 0;
						die("poller: echo byte %llu differs",
						    (unsigned long long)(recvd + bad));
					}
					recvd += (uint64_t)k;
					atomic_store(&n_epoll_bytes, recvd);
				}
			}
		}
		/* poll() on the duplex sockets while their own threads block in them. */
		struct pollfd pf[2] = { { .fd = duplex[0].fd, .events = POLLIN | POLLOUT },
					{ .fd = duplex[1].fd, .events = POLLIN | POLLOUT } };
		if (poll(pf, 2, 0) < 0 && errno != EINTR)
			die("poll");
		for (int i = 0; i < 2; i++)
			if (pf[i].revents & (POLLNVAL | POLLERR)) {
				errno = 0;
				die("poll: duplex %d revents 0x%x", i, pf[i].revents);
			}
		atomic_fetch_add(&n_polls, 1);
	}
}

static void *forker(void *arg)
{
	(void)arg;
	unsigned seed = 4242;
	for (unsigned round = 0; !atomic_load(&stop); round++) {
		usleep(100000);
		if (round % 3 == 2) {
			pid_t pid = fork();
			if (pid < 0)
				die("fork (exec)");
			if (pid == 0) {
				execl("/bin/true", "true", (char *)NULL);
				dprintf(2, "exec /bin/true: %s\n", strerror(errno));
				_exit(1);
			}
			reap_ok(pid, "exec child");
			atomic_fetch_add(&n_execs, 1);
			continue;
		}
		struct slot *s = &slots[rand_r(&seed) % SLOTS];
		size_t len = 1 + (size_t)rand_r(&seed) % 4096;
		pthread_mutex_lock(&s->lock);
		if (s->fd < 0) {
			pthread_mutex_unlock(&s->lock);
			continue;
		}
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0)
			_exit(exchange(s->fd, s->offset, len, "fork child") == 0 ? 0 : 1);
		reap_ok(pid, "fork child");
		s->offset += len;
		pthread_mutex_unlock(&s->lock);
		atomic_fetch_add(&n_forks, 1);
	}
	return NULL;
}

static struct timespec t0;

static double elapsed_s(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
}

static void progress(const char *what)
{
	dprintf(2,
		"%.1f s %s: exchanges %lu reopens %lu churns %lu forks %lu execs %lu polls %lu "
		"duplex %lu/%lu epoll %lu\n",
		elapsed_s(), what, atomic_load(&n_exchanges), atomic_load(&n_reopens), atomic_load(&n_churns),
		atomic_load(&n_forks), atomic_load(&n_execs), atomic_load(&n_polls),
		atomic_load(&n_duplex_bytes[0]), atomic_load(&n_duplex_bytes[1]),
		atomic_load(&n_epoll_bytes));
}

int main(int argc, char **argv)
{
	prog = "stress";
	if (argc < 4) {
		fprintf(stderr, "usage: stress ADDR PORT SECONDS [quiet] [nofork]\n");
		return 2;
	}
	for (int i = 4; i < argc; i++) {
		if (strcmp(argv[i], "quiet") == 0)
			quiet = 1;
		else if (strcmp(argv[i], "nofork") == 0)
			nofork = 1;
		else
			die("unknown option '%s'", argv[i]);
	}
	host = argv[1];
	port = (uint16_t)parse_num(argv[2]);
	unsigned seconds = (unsigned)parse_num(argv[3]);
	signal(SIGPIPE, SIG_IGN);
	clock_gettime(CLOCK_MONOTONIC, &t0);

	for (int i = 0; i < SLOTS; i++) {
		pthread_mutex_init(&slots[i].lock, NULL);
		slots[i].fd = open_conn(0);
		slots[i].offset = 0;
	}
	for (int i = 0; i < 2; i++)
		duplex[i].fd = open_conn(1);
	epoll_conn = open_conn(1);

	pthread_t t[8];
	int n = 0;
	for (int i = 0; i < 2; i++) {
		if (pthread_create(&t[n++], NULL, duplex_writer, &duplex[i]) != 0 ||
		    pthread_create(&t[n++], NULL, duplex_reader, &duplex[i]) != 0)
			die("pthread_create duplex");
	}
	for (uintptr_t i = 0; i < 2; i++)
		if (pthread_create(&t[n++], NULL, exchanger, (void *)i) != 0)
			die("pthread_create exchanger");
	if ((!quiet && pthread_create(&t[n++], NULL, churner, NULL) != 0) ||
	    pthread_create(&t[n++], NULL, poller, NULL) != 0)
		die("pthread_create");
	pthread_t fork_thread;
	if (!nofork && pthread_create(&fork_thread, NULL, forker, NULL) != 0)
		die("pthread_create forker");

	for (unsigned s = 0; s < seconds; s++) {
		sleep(1);
		progress("running");
	}
	atomic_store(&stop, 1);
	progress("stopping");
	static const char *names[] = { "duplex writer 0", "duplex reader 0", "duplex writer 1",
				       "duplex reader 1", "exchanger 0", "exchanger 1", "churner",
				       "poller" };
	for (int i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		dprintf(2, "joined %s at %.1f s\n", quiet && i == 6 ? "poller" : names[i],
			elapsed_s());
	}
	if (!nofork)
		pthread_join(fork_thread, NULL);
	for (int i = 0; i < SLOTS; i++)
		if (slots[i].fd >= 0 && close(slots[i].fd) != 0)
			die("close slot %d", i);
	for (int i = 0; i < 2; i++)
		if (close(duplex[i].fd) != 0)
			die("close duplex %d", i);
	if (close(epoll_conn) != 0)
		die("close the epoll connection");
	progress("done");
	printf("stress ok exchanges=%lu reopens=%lu churns=%lu forks=%lu execs=%lu polls=%lu "
	       "duplex_bytes=%lu,%lu epoll_bytes=%lu\n",
	       atomic_load(&n_exchanges), atomic_load(&n_reopens), atomic_load(&n_churns),
	       atomic_load(&n_forks), atomic_load(&n_execs), atomic_load(&n_polls),
	       atomic_load(&n_duplex_bytes[0]), atomic_load(&n_duplex_bytes[1]),
	       atomic_load(&n_epoll_bytes));
	return 0;
}
