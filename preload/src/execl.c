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

/* Number of argv slots for `arg` and the arguments after it, terminating NULL included;
   MSOCK_EXECL_MAX or more when the list is too long. */
static size_t count_args(const char *arg, va_list ap)
{
    size_t n = 1; /* arg itself (may be the terminating NULL) */
    if (arg == NULL)
        return n;
    while (va_arg(ap, const char *) != NULL && n < MSOCK_EXECL_MAX)
        n++;
    return n + 1; /* the terminating NULL */
}

/* Fills argv[0..n) from `arg` and `ap` (n from count_args); `ap` is left after the NULL. */
static void fill_args(const char **argv, size_t n, const char *arg, va_list *ap)
{
    argv[0] = arg;
    for (size_t i = 1; i < n; i++)
        argv[i] = va_arg(*ap, const char *);
    argv[n - 1] = NULL;
}

/* Declares `argv` (a VLA) filled with `arg` and the variadic arguments of the enclosing
   function; returns E2BIG from it when there are too many. Leaves `ap` open after the list's
   NULL (execle reads envp from it) for the caller to va_end. */
#define COLLECT_ARGS(arg, ap, argv)                                                          \
    va_start(ap, arg);                                                                       \
    size_t n_##argv = count_args(arg, ap);                                                   \
    va_end(ap);                                                                              \
    if (n_##argv >= MSOCK_EXECL_MAX) {                                                       \
        errno = E2BIG;                                                                       \
        return -1;                                                                           \
    }                                                                                        \
    const char *argv[n_##argv];                                                              \
    va_start(ap, arg);                                                                       \
    fill_args(argv, n_##argv, arg, &ap)

int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    COLLECT_ARGS(arg, ap, argv);
    va_end(ap);
    return execv(path, (char *const *)argv);
}

int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    COLLECT_ARGS(arg, ap, argv);
    va_end(ap);
    return execvp(file, (char *const *)argv);
}

int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    COLLECT_ARGS(arg, ap, argv);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return execve(path, (char *const *)argv, envp);
}
