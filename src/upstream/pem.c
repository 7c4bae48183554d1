#include "upstream/pem.h"

/* BearSSL's inline helpers trip -Wconversion; they are not our code. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#include <bearssl.h>
#pragma GCC diagnostic pop
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void byte_sink_append(void *ctx, const void *src, size_t len)
{
    byte_sink *s = ctx;
    if (s->oom || len == 0)
        return;
    if (len > s->cap - s->len) {
        size_t cap = s->cap ? s->cap : 256;
        while (len > cap - s->len)
            cap *= 2;
        unsigned char *nb = realloc(s->buf, cap);
        if (nb == NULL) {
            s->oom = true;
            return;
        }
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, src, len);
    s->len += len;
}

static void wipe_free(void *p, size_t len)
{
    if (p != NULL)
        explicit_bzero(p, len);
    free(p);
}

void pem_free(pem_object *objs, size_t count)
{
    if (objs == NULL)
        return;
    for (size_t i = 0; i < count; i++) {
        free(objs[i].name);
        wipe_free(objs[i].der, objs[i].len);
    }
    free(objs);
}

/* Everything the decoding loop carries, so that helpers can fail cleanly. */
typedef struct {
    br_pem_decoder_context pc;
    byte_sink sink;
    char *name; /* name of the object being decoded, NULL outside objects */
    pem_object *objs;
    size_t count, cap;
} pem_state;

static int finish_object(pem_state *st)
{
    if (st->sink.oom)
        return -1;
    if (st->count == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 8;
        pem_object *no = realloc(st->objs, cap * sizeof *no);
        if (no == NULL)
            return -1;
        st->objs = no;
        st->cap = cap;
    }
    /* Shrink-wrap is not worth a copy: keep the sink's buffer as is. */
    st->objs[st->count++] = (pem_object){ st->name, st->sink.buf, st->sink.len };
    st->name = NULL;
    st->sink = (byte_sink){ 0 };
    return 0;
}

static void drop_current(pem_state *st)
{
    free(st->name);
    st->name = NULL;
    wipe_free(st->sink.buf, st->sink.cap);
    st->sink = (byte_sink){ 0 };
}

/* Feeds bytes to the decoder, acting on every event it raises. Returns 0,
 * or -1 with a message. */
static int feed(pem_state *st, const unsigned char *p, size_t len, const char *path,
                const char *what, char *why, size_t why_cap)
{
    while (len > 0) {
        size_t n = br_pem_decoder_push(&st->pc, p, len);
        p += n;
        len -= n;
        switch (br_pem_decoder_event(&st->pc)) {
        case BR_PEM_BEGIN_OBJ:
            drop_current(st); /* a BEGIN inside an object restarts it */
            st->name = strdup(br_pem_decoder_name(&st->pc));
            if (st->name == NULL)
                goto oom;
            br_pem_decoder_setdest(&st->pc, byte_sink_append, &st->sink);
            break;
        case BR_PEM_END_OBJ:
            if (st->name != NULL && finish_object(st) < 0)
                goto oom;
            break;
        case BR_PEM_ERROR:
            snprintf(why, why_cap, "malformed PEM data in %s %s", what, path);
            return -1;
        default:
            break;
        }
    }
    return 0;
oom:
    snprintf(why, why_cap, "out of memory reading %s %s", what, path);
    return -1;
}

int pem_read_file(const char *path, const char *what, pem_object **out, size_t *count,
                  char *why, size_t why_cap)
{
    *out = NULL;
    *count = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(why, why_cap, "cannot open %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    pem_state *st = calloc(1, sizeof *st);
    if (st == NULL) {
        fclose(f);
        snprintf(why, why_cap, "out of memory reading %s %s", what, path);
        return -1;
    }
    br_pem_decoder_init(&st->pc);

    int rc = 0;
    unsigned char chunk[4096];
    for (;;) {
        size_t n = fread(chunk, 1, sizeof chunk, f);
        if (n > 0 && feed(st, chunk, n, path, what, why, why_cap) < 0) {
            rc = -1;
            break;
        }
        if (n < sizeof chunk) {
            if (ferror(f)) {
                snprintf(why, why_cap, "cannot read %s %s: %s", what, path, strerror(errno));
                rc = -1;
            }
            break;
        }
    }
    fclose(f);
    /* The decoder only sees an END banner once its line ends; a file whose
     * last line lacks a newline still deserves to parse. */
    if (rc == 0 && feed(st, (const unsigned char *)"\n", 1, path, what, why, why_cap) < 0)
        rc = -1;
    if (rc == 0 && st->name != NULL) {
        snprintf(why, why_cap, "unterminated PEM object \"%s\" in %s %s", st->name, what,
                 path);
        rc = -1;
    }
    drop_current(st);
    if (rc == 0) {
        *out = st->objs;
        *count = st->count;
    } else {
        pem_free(st->objs, st->count);
    }
    free(st);
    return rc;
}
