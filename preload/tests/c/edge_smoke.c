/* Run under LD_PRELOAD=libmsock.so by tests/edge.rs. Exercises the C edge with no netserver:
   every check prints "ok <name>" or "FAIL <name>: ..." and the exit status is the number of
   failures. Mode "down": AF_INET/AF_INET6 datagram sockets must fail with ENETDOWN at once.
   Mode "fallback": MSOCK_FALLBACK=kernel, they must be kernel sockets. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "msock.h"

static int failures;

#define CHECK(name, cond, ...)                                                     \
    do {                                                                           \
        if (cond) {                                                                \
            printf("ok %s\n", name);                                               \
        } else {                                                                   \
            failures++;                                                            \
            printf("FAIL %s: ", name);                                             \
            printf(__VA_ARGS__);                                                   \
            printf(" (errno %d %s)\n", errno, strerror(errno));                    \
        }                                                                          \
    } while (0)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void common(void) {
    /* Non-msock descriptors pass through every interposed call. */
    int p[2];
    CHECK("pipe", pipe(p) == 0, "pipe");
    CHECK("write-pipe", write(p[1], "hello", 5) == 5, "write");
    int n = -1;
    CHECK("ioctl-fionread-pipe", ioctl(p[0], FIONREAD, &n) == 0 && n == 5, "n=%d", n);
    CHECK("fcntl-setfl", fcntl(p[0], F_SETFL, O_NONBLOCK) == 0, "setfl");
    CHECK("fcntl-getfl", (fcntl(p[0], F_GETFL) & O_NONBLOCK) != 0, "getfl");
    int d = fcntl(p[0], F_DUPFD_CLOEXEC, 100);
    CHECK("fcntl-dupfd", d >= 100 && (fcntl(d, F_GETFD) & FD_CLOEXEC), "d=%d", d);
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    CHECK("poll-pipe", poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN), "poll");
    char buf[16];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    CHECK("readv-pipe", readv(p[0], &iov, 1) == 5 && memcmp(buf, "hello", 5) == 0, "readv");
    CHECK("read-empty-nonblock", read(p[0], buf, 1) == -1 && errno == EAGAIN, "read");
    int d2 = dup(p[1]);
    CHECK("dup2", d2 >= 0 && dup2(p[1], d2) == d2 && dup3(p[1], d2, O_CLOEXEC) == d2, "dup");
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(p[0], &rs);
    struct timeval tv = {0, 0};
    CHECK("select-pipe", select(p[0] + 1, &rs, NULL, NULL, &tv) == 0, "select");
    close(d);
    close(d2);
    close(p[0]);
    close(p[1]);

    int u[2];
    CHECK("socketpair-unix", socketpair(AF_UNIX, SOCK_DGRAM, 0, u) == 0, "socketpair");
    CHECK("send-unix", send(u[0], "x", 1, 0) == 1, "send");
    CHECK("recv-unix", recv(u[1], buf, sizeof buf, 0) == 1 && buf[0] == 'x', "recv");
    close(u[0]);
    close(u[1]);

    int t = socket(AF_INET, SOCK_STREAM, 0);
    CHECK("tcp-socket-kernel", t >= 0, "tcp");
    int (*is_msock)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "msock_is_msock_fd");
    unsigned (*version)(void) = (unsigned (*)(void))dlsym(RTLD_DEFAULT, "msock_version");
    CHECK("msock-symbols", is_msock && version && version() == MSOCK_VERSION, "dlsym");
    CHECK("tcp-not-msock", is_msock && is_msock(t) == 0, "is_msock");
    close(t);
}

static int down(void) {
    double t0 = now();
    errno = 0;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK("udp4-enetdown", s == -1 && errno == ENETDOWN, "s=%d", s);
    errno = 0;
    s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP);
    CHECK("udp6-enetdown", s == -1 && errno == ENETDOWN, "s=%d", s);
    CHECK("no-hang", now() - t0 < 1.0, "took %.3fs", now() - t0);
    common();
    return failures;
}

static int fallback(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK("udp4-fallback-kernel", s >= 0, "s=%d", s);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    CHECK("bind-loopback", bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    CHECK("getsockname", getsockname(s, (struct sockaddr *)&a, &len) == 0 && a.sin_port != 0, "gsn");
    CHECK("sendto-self", sendto(s, "ping", 4, 0, (struct sockaddr *)&a, sizeof a) == 4, "sendto");
    char buf[8];
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    CHECK("recvfrom-self", recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen) == 4 &&
                               memcmp(buf, "ping", 4) == 0 && from.sin_port == a.sin_port,
          "recvfrom");
    close(s);
    common();
    return failures;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc > 1 && strcmp(argv[1], "fallback") == 0) return fallback();
    return down();
}
