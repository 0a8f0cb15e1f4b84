/* execl, execlp and execle: variadic, so written in C (stable Rust cannot define C-variadic
   functions). Each collects its arguments into an argv array on the stack, as glibc's own
   versions do, and calls libmsock's execv / execvp / execve, which hand msock's sockets over
   to the new image (preload/src/process.rs). */

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

/* Same bound as glibc's: an argument list longer than this cannot be passed anyway. */
#define MSOCK_EXECL_MAX 65536

static size_t count_args(const char *arg, va_list ap)
{
    size_t n = 1; /* arg itself (may be the terminating NULL) */
    if (arg == NULL)
        return n;
    while (va_arg(ap, const char *) != NULL && n < MSOCK_EXECL_MAX)
        n++;
    return n + 1; /* the terminating NULL */
}

int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    va_end(ap);
    if (n >= MSOCK_EXECL_MAX) {
        errno = E2BIG;
        return -1;
    }
    const char *argv[n];
    argv[0] = arg;
    va_start(ap, arg);
    for (size_t i = 1; i < n; i++)
        argv[i] = va_arg(ap, const char *);
    va_end(ap);
    argv[n - 1] = NULL;
    return execv(path, (char *const *)argv);
}

int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    va_end(ap);
    if (n >= MSOCK_EXECL_MAX) {
        errno = E2BIG;
        return -1;
    }
    const char *argv[n];
    argv[0] = arg;
    va_start(ap, arg);
    for (size_t i = 1; i < n; i++)
        argv[i] = va_arg(ap, const char *);
    va_end(ap);
    argv[n - 1] = NULL;
    return execvp(file, (char *const *)argv);
}

int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    size_t n = count_args(arg, ap);
    va_end(ap);
    if (n >= MSOCK_EXECL_MAX) {
        errno = E2BIG;
        return -1;
    }
    const char *argv[n];
    argv[0] = arg;
    va_start(ap, arg);
    for (size_t i = 1; i < n; i++)
        argv[i] = va_arg(ap, const char *);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    argv[n - 1] = NULL;
    return execve(path, (char *const *)argv, envp);
}
