/* Debian's libbearssl.a was compiled against glibc with _FORTIFY_SOURCE, so
 * its objects call glibc's bounds-checked memcpy/memmove/memset entry points.
 * musl has none; these give a musl build the same contract: the compiler's
 * known size of the destination bounds the write, and an overrun aborts the
 * process as glibc does rather than corrupting memory. Under glibc the file
 * is empty and glibc's own versions are used. */
#include <string.h> /* first: it is what defines __GLIBC__ under glibc */

#ifndef __GLIBC__

#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

/* Declared here only: nothing of ours calls them, and no header may. */
void *__memcpy_chk(void *dst, const void *src, size_t len, size_t dst_len);
void *__memmove_chk(void *dst, const void *src, size_t len, size_t dst_len);
void *__memset_chk(void *dst, int c, size_t len, size_t dst_len);

static _Noreturn void overflow_detected(void)
{
    static const char msg[] = "*** buffer overflow detected ***: terminated\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    abort();
}

void *__memcpy_chk(void *dst, const void *src, size_t len, size_t dst_len)
{
    if (len > dst_len)
        overflow_detected();
    return memcpy(dst, src, len);
}

void *__memmove_chk(void *dst, const void *src, size_t len, size_t dst_len)
{
    if (len > dst_len)
        overflow_detected();
    return memmove(dst, src, len);
}

void *__memset_chk(void *dst, int c, size_t len, size_t dst_len)
{
    if (len > dst_len)
        overflow_detected();
    return memset(dst, c, len);
}

#endif
