#include "upstream/cfgfile.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "gateway/json.h"

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

enum {
    MAX_DEPTH = 64,    /* the schema needs 4; anything deeper is refused, and recursion stays bounded */
    PATH_CAP = 384,
    PATH_LEVELS = 16,  /* the schema's paths are at most 5 levels deep */
    SHOWN_MAX = 64,    /* bytes of a name quoted in a message */
    WEIGHT_MAX = 1000000,
    CONNS_MAX = 1000000,
    CLIENT_KEY_MAX = 512, /* as the keys file */
};

typedef struct reader {
    const char *s;
    size_t len;
    jsmntok_t *t;
    int n;
    const char *source;
    const cfgfile_env *env;
    config_gen *g;
    char *why;
    size_t why_cap;
    char path[PATH_CAP];
    size_t path_len;
    size_t marks[PATH_LEVELS];
    size_t levels;
    slice *scratch; /* the keys of one object, for the duplicate check */
} reader;

/* ---- messages ---- */

/* s made fit for a message: at most SHOWN_MAX bytes, odd bytes as '?'. */
static const char *shown(slice s, char *buf, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < s.len && i < SHOWN_MAX && n + 4 < cap; i++) {
        char c = s.ptr[i];
        buf[n++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? c : '?';
    }
    if (s.len > SHOWN_MAX && n + 4 < cap) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

enum { SHOWN_CAP = SHOWN_MAX + 8 };

static void path_append(reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void path_append(reader *r, const char *fmt, ...)
{
    size_t room = PATH_CAP - r->path_len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->path + r->path_len, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        r->path_len += (size_t)n < room ? (size_t)n : room - 1;
}

static void enter(reader *r)
{
    if (r->levels < PATH_LEVELS)
        r->marks[r->levels] = r->path_len;
    r->levels++;
}

static bool is_word(slice s)
{
    if (s.len == 0)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

/* .name, or ["odd name"] when it is not a plain word */
static void enter_key(reader *r, slice key)
{
    enter(r);
    char buf[SHOWN_CAP];
    if (is_word(key))
        path_append(r, "%s%.*s", r->path_len ? "." : "", (int)key.len, key.ptr);
    else
        path_append(r, "[\"%s\"]", shown(key, buf, sizeof buf));
}

static void enter_name(reader *r, const char *name) { enter_key(r, slice_of(name)); }

/* ["gpt-4o"]: how route and alias names show */
static void enter_quoted(reader *r, slice key)
{
    enter(r);
    char buf[SHOWN_CAP];
    path_append(r, "[\"%s\"]", shown(key, buf, sizeof buf));
}

static void enter_index(reader *r, size_t i)
{
    enter(r);
    path_append(r, "[%zu]", i);
}

/* Pops one level; passes rc through so a call can be wrapped. */
static int leave(reader *r, int rc)
{
    if (r->levels > 0 && --r->levels < PATH_LEVELS) {
        r->path_len = r->marks[r->levels];
        r->path[r->path_len] = '\0';
    }
    return rc;
}

static int fail(reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(reader *r, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (r->why_cap == 0)
        return -1;
    if (r->path_len)
        snprintf(r->why, r->why_cap, "%s: %.*s: %s", r->source, (int)r->path_len, r->path, what);
    else
        snprintf(r->why, r->why_cap, "%s: %s", r->source, what);
    return -1;
}

static int fail_at(reader *r, size_t offset, const char *what)
{
    size_t line = 1;
    for (size_t i = 0; i < offset && i < r->len; i++)
        line += r->s[i] == '\n';
    if (r->why_cap)
        snprintf(r->why, r->why_cap, "%s: line %zu: %s", r->source, line, what);
    return -1;
}

static int out_of_memory(reader *r) { return fail(r, "out of memory"); }

/* ---- the JSON itself: jsmn finds tokens, this checks what lies between ---- */

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static slice tok_raw(const reader *r, int i)
{
    return (slice){r->s + r->t[i].start, (size_t)(r->t[i].end - r->t[i].start)};
}

/* Where token i begins and ends in the text (a string's quotes included). */
static size_t tok_begin(const jsmntok_t *t) { return (size_t)t->start - (t->type == JSMN_STRING); }
static size_t tok_finish(const jsmntok_t *t) { return (size_t)t->end + (t->type == JSMN_STRING); }

/* s[from..to) is blanks around exactly one sep (none when sep is 0);
 * else *bad is where it goes wrong. */
static bool gap_ok(const char *s, size_t from, size_t to, char sep, size_t *bad)
{
    bool seen = sep == 0;
    for (size_t i = from; i < to; i++) {
        if (is_space(s[i]))
            continue;
        if (s[i] != sep || seen) {
            *bad = i;
            return false;
        }
        seen = true;
    }
    if (!seen)
        *bad = to;
    return seen;
}

/* RFC 8259 §6, or one of the three literals. */

/* jsmn checks escapes; raw control characters are for us to refuse. */
static bool string_ok(slice v, size_t *bad, size_t base)
{
    for (size_t i = 0; i < v.len; i++)
        if ((unsigned char)v.ptr[i] < 0x20) {
            *bad = base + i;
            return false;
        }
    return true;
}

/* Checks the value at token i; the index after it, or -1 with *bad. */
static int walk_value(const reader *r, int i, int depth, size_t *bad)
{
    if (i >= r->n) {
        *bad = r->len;
        return -1;
    }
    const jsmntok_t *t = &r->t[i];
    if (depth > MAX_DEPTH) {
        *bad = (size_t)t->start;
        return -1;
    }
    slice raw = tok_raw(r, i);
    if (t->type == JSMN_STRING)
        return t->size == 0 && string_ok(raw, bad, (size_t)t->start) ? i + 1 : (*bad = (size_t)t->start, -1);
    if (t->type == JSMN_PRIMITIVE)
        return t->size == 0 && json_primitive_ok(raw) ? i + 1 : (*bad = (size_t)t->start, -1);
    bool object = t->type == JSMN_OBJECT;
    if (!object && t->type != JSMN_ARRAY) {
        *bad = (size_t)t->start;
        return -1;
    }
    size_t at = (size_t)t->start + 1;
    int j = i + 1;
    for (int k = 0; k < t->size; k++) {
        if (j >= r->n) {
            *bad = r->len;
            return -1;
        }
        if (!gap_ok(r->s, at, tok_begin(&r->t[j]), k ? ',' : 0, bad))
            return -1;
        if (object) {
            const jsmntok_t *key = &r->t[j];
            if (key->type != JSMN_STRING || key->size != 1 || j + 1 >= r->n) {
                *bad = key->type == JSMN_STRING ? tok_finish(key) : tok_begin(key);
                return -1;
            }
            if (!string_ok(tok_raw(r, j), bad, (size_t)key->start) ||
                !gap_ok(r->s, tok_finish(key), tok_begin(&r->t[j + 1]), ':', bad))
                return -1;
            j++;
        }
        int next = walk_value(r, j, depth + 1, bad);
        if (next < 0)
            return -1;
        at = tok_finish(&r->t[j]);
        j = next;
    }
    return gap_ok(r->s, at, (size_t)t->end - 1, 0, bad) ? j : -1;
}

static int tokenise(reader *r)
{
    jsmn_parser p;
    jsmn_init(&p);
    int n = jsmn_parse(&p, r->s, r->len, NULL, 0);
    if (n >= 0) {
        r->t = malloc(((size_t)n + 1) * sizeof *r->t);
        if (!r->t)
            return fail(r, "out of memory");
        jsmn_init(&p);
        n = jsmn_parse(&p, r->s, r->len, r->t, (unsigned)n + 1);
    }
    if (n == JSMN_ERROR_PART)
        return fail_at(r, p.pos, "invalid JSON (an unterminated string, list or object)");
    if (n < 0)
        return fail_at(r, p.pos, "invalid JSON");
    r->n = n;
    size_t first = 0;
    while (first < r->len && is_space(r->s[first]))
        first++;
    if (n == 0)
        return first < r->len ? fail_at(r, first, "invalid JSON") : fail(r, "is empty; expected a JSON object");
    if (r->t[0].type != JSMN_OBJECT)
        return fail_at(r, first, "the top level must be a JSON object");
    size_t bad = 0;
    int end = walk_value(r, 0, 0, &bad);
    if (end < 0)
        return fail_at(r, bad, "invalid JSON");
    if (end != n || !gap_ok(r->s, (size_t)r->t[0].end, r->len, 0, &bad))
        return fail_at(r, end != n ? tok_begin(&r->t[end]) : bad, "invalid JSON (more after the top-level object)");
    return 0;
}

/* ---- the schema ---- */

/* Index of the token after the value at i. */
static int skip(const reader *r, int i)
{
    int pending = 1;
    while (pending > 0 && i < r->n) {
        if (r->t[i].type == JSMN_OBJECT)
            pending += 2 * r->t[i].size;
        else if (r->t[i].type == JSMN_ARRAY)
            pending += r->t[i].size;
        pending--;
        i++;
    }
    return i;
}

static int by_bytes(const void *a, const void *b)
{
    slice x = *(const slice *)a, y = *(const slice *)b;
    size_t n = x.len < y.len ? x.len : y.len;
    int c = n ? memcmp(x.ptr, y.ptr, n) : 0;
    return c ? c : (x.len > y.len) - (x.len < y.len);
}

/* A key given twice is refused: which one counts would be a guess. Keys
 * are compared as written (escapes included), which is enough as no name
 * we accept holds an escape. */
static int check_unique_keys(reader *r, int o, bool quoted)
{
    size_t count = (size_t)r->t[o].size;
    int j = o + 1;
    for (size_t k = 0; k < count; k++) {
        r->scratch[k] = tok_raw(r, j);
        j = skip(r, j + 1);
    }
    if (count > 1)
        qsort(r->scratch, count, sizeof *r->scratch, by_bytes);
    for (size_t k = 1; k < count; k++)
        if (slice_eq(r->scratch[k - 1], r->scratch[k])) {
            quoted ? enter_quoted(r, r->scratch[k]) : enter_key(r, r->scratch[k]);
            return leave(r, fail(r, "given twice"));
        }
    return 0;
}

/* Finds each of names[] in the object at token o: at[k] is its value's
 * token, or -1. An unknown key fails, listing the known ones. */
static int read_members(reader *r, int o, const char *const *names, size_t count, int *at)
{
    if (r->t[o].type != JSMN_OBJECT)
        return fail(r, "must be an object");
    if (check_unique_keys(r, o, false) != 0)
        return -1;
    for (size_t k = 0; k < count; k++)
        at[k] = -1;
    int j = o + 1;
    for (int m = 0; m < r->t[o].size; m++) {
        slice key = tok_raw(r, j);
        size_t k = 0;
        while (k < count && !slice_eq(key, slice_of(names[k])))
            k++;
        if (k == count) {
            char expected[256];
            wbuf b = wbuf_over(expected, sizeof expected - 1);
            for (size_t e = 0; e < count; e++) {
                wbuf_puts(&b, e ? ", " : "");
                wbuf_puts(&b, names[e]);
            }
            expected[b.len] = '\0';
            enter_key(r, key);
            return leave(r, fail(r, "unknown key (expected one of %s)", expected));
        }
        at[k] = j + 1;
        j = skip(r, j + 1);
    }
    return 0;
}

static void put_utf8(char *out, size_t *n, uint32_t cp)
{
    if (cp < 0x80) {
        out[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*n)++] = (char)(0xc0 | (cp >> 6));
        out[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xe0 | (cp >> 12));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*n)++] = (char)(0x80 | (cp & 0x3f));
    } else {
        out[(*n)++] = (char)(0xf0 | (cp >> 18));
        out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3f));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[(*n)++] = (char)(0x80 | (cp & 0x3f));
    }
}

static bool hex4(slice raw, size_t at, uint32_t *out)
{
    if (at + 4 > raw.len)
        return false;
    uint32_t v = 0;
    for (size_t i = at; i < at + 4; i++) {
        char c = raw.ptr[i];
        uint32_t d = is_digit(c) ? (uint32_t)(c - '0')
                     : (c >= 'a' && c <= 'f') ? (uint32_t)(c - 'a' + 10)
                     : (c >= 'A' && c <= 'F') ? (uint32_t)(c - 'A' + 10)
                                              : 16;
        if (d > 15)
            return false;
        v = v * 16 + d;
    }
    *out = v;
    return true;
}

/* The string at token i, unescaped, into out[cap] NUL-terminated. Never
 * longer than as written: an escape is at least as long as what it means. */
static int decode_string(reader *r, int i, char *out, size_t cap, size_t *len)
{
    if (r->t[i].type != JSMN_STRING)
        return fail(r, "must be a string");
    slice raw = tok_raw(r, i);
    if (raw.len >= cap)
        return fail(r, "is longer than %zu bytes", cap - 1);
    size_t n = 0;
    for (size_t k = 0; k < raw.len; k++) {
        char c = raw.ptr[k];
        if (c != '\\') {
            out[n++] = c;
            continue;
        }
        if (++k >= raw.len)
            return fail(r, "holds an invalid escape");
        c = raw.ptr[k];
        static const char plain[] = "\"\\/bfnrt", meant[] = "\"\\/\b\f\n\r\t";
        const char *e = c ? strchr(plain, c) : NULL;
        if (e) {
            out[n++] = meant[e - plain];
            continue;
        }
        uint32_t cp, low;
        if (c != 'u' || !hex4(raw, k + 1, &cp))
            return fail(r, "holds an invalid escape");
        k += 4;
        if (cp >= 0xd800 && cp < 0xdc00) {
            if (k + 2 >= raw.len || raw.ptr[k + 1] != '\\' || raw.ptr[k + 2] != 'u' || !hex4(raw, k + 3, &low) ||
                low < 0xdc00 || low >= 0xe000)
                return fail(r, "holds an invalid \\u escape (a lone surrogate)");
            k += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
        } else if (cp >= 0xdc00 && cp < 0xe000) {
            return fail(r, "holds an invalid \\u escape (a lone surrogate)");
        }
        if (cp == 0)
            return fail(r, "must not hold a NUL character");
        put_utf8(out, &n, cp);
    }
    out[n] = '\0';
    *len = n;
    return 0;
}

/* A decoded string copied into the generation. */
static int read_string(reader *r, int i, const char **out)
{
    if (r->t[i].type != JSMN_STRING)
        return fail(r, "must be a string");
    size_t cap = (size_t)(r->t[i].end - r->t[i].start) + 1, len;
    char *buf = gen_alloc(r->g, cap);
    if (!buf)
        return out_of_memory(r);
    if (decode_string(r, i, buf, cap, &len) != 0)
        return -1;
    if (len == 0)
        return fail(r, "is empty");
    *out = buf;
    return 0;
}

/* The raw bytes of a string copied into the generation (for names that may
 * hold no escape, where raw and meant are the same). */
static int copy_raw(reader *r, slice raw, slice *out)
{
    char *buf = gen_alloc(r->g, raw.len + 1);
    if (!buf)
        return out_of_memory(r);
    if (raw.len)
        memcpy(buf, raw.ptr, raw.len);
    *out = (slice){buf, raw.len};
    return 0;
}

static bool upstream_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' || c == '_' || c == '.';
}

static int read_upstream_name(reader *r, int i, const char **out)
{
    if (r->t[i].type != JSMN_STRING)
        return fail(r, "must be a string");
    slice raw = tok_raw(r, i);
    if (raw.len == 0 || raw.len > UPSTREAM_NAME_MAX)
        return fail(r, "must be 1 to %d characters", UPSTREAM_NAME_MAX);
    for (size_t k = 0; k < raw.len; k++)
        if (!upstream_name_char(raw.ptr[k]))
            return fail(r, "may only hold letters, digits and - _ .");
    slice copy = {NULL, 0};
    if (copy_raw(r, raw, &copy) != 0)
        return -1;
    *out = copy.ptr;
    return 0;
}

/* A model name is matched against request bodies byte for byte, so it
 * holds no escape and is its own JSON string contents. */
static int read_model(reader *r, int i, bool star_allowed, slice *out)
{
    if (r->t[i].type != JSMN_STRING)
        return fail(r, "must be a string (a model name)");
    slice raw = tok_raw(r, i);
    if (raw.len == 0 || raw.len > MODEL_NAME_MAX || memchr(raw.ptr, '\\', raw.len))
        return fail(r, "a model name must be 1 to %d bytes without escapes", MODEL_NAME_MAX);
    if (!star_allowed && slice_eq(raw, SLICE_LIT("*")))
        return fail(r, "\"*\" is not allowed here");
    return copy_raw(r, raw, out);
}

static int read_count(reader *r, int i, uint64_t max, uint64_t *out)
{
    slice raw = tok_raw(r, i);
    bool digits = r->t[i].type == JSMN_PRIMITIVE && raw.len > 0;
    for (size_t k = 0; digits && k < raw.len; k++)
        digits = is_digit(raw.ptr[k]);
    uint64_t v = 0;
    if (!digits || (raw.len < 20 && slice_to_u64(raw, UINT64_MAX, &v) && v == 0))
        return fail(r, "must be a positive integer");
    if (raw.len >= 20 || v > max)
        return fail(r, "must be at most %llu", (unsigned long long)max);
    *out = v;
    return 0;
}

static int read_duration(reader *r, int i, uint64_t *out)
{
    char text[32];
    size_t len;
    if (r->t[i].type != JSMN_STRING)
        return fail(r, "must be a duration string such as \"3s\", \"250ms\" or \"2m\"");
    if (decode_string(r, i, text, sizeof text, &len) != 0)
        return -1;
    if (parse_duration_ms(text, out) != 0)
        return fail(r, "must be a duration such as \"3s\", \"250ms\" or \"2m\"");
    if (*out == 0)
        return fail(r, "must be longer than 0");
    return 0;
}

/* org and project go out as header values. */
static int read_header_value(reader *r, int i, const char **out)
{
    if (read_string(r, i, out) != 0)
        return -1;
    for (const char *p = *out; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            return fail(r, "must be printable ASCII (it is sent as a header)");
    return 0;
}

enum { SRC_KEY, SRC_KEY_FILE, SRC_KEY_ENV };

/* One of key / key_file / key_env (tokens at[0..2], -1 when absent) into
 * out[cap]: *len is 0 when none is given. */
static int read_secret(reader *r, const int *at, char *out, size_t cap, size_t max_len, size_t *len)
{
    static const char *const names[] = {"key", "key_file", "key_env"};
    static const char *const counted[] = {"", "", "two", "three"};
    int given = (at[0] >= 0) + (at[1] >= 0) + (at[2] >= 0);
    *len = 0;
    if (given == 0)
        return 0;
    if (given > 1)
        return fail(r, "give one of key, key_file, key_env, not %s", counted[given]);
    int which = at[SRC_KEY] >= 0 ? SRC_KEY : at[SRC_KEY_FILE] >= 0 ? SRC_KEY_FILE : SRC_KEY_ENV;
    enter_name(r, names[which]);
    char where[CFGFILE_SECRET_MAX];
    size_t n;
    if (which == SRC_KEY) {
        if (decode_string(r, at[SRC_KEY], out, cap, &n) != 0)
            return leave(r, -1);
    } else {
        if (decode_string(r, at[which], where, sizeof where, &n) != 0)
            return leave(r, -1);
        if (n == 0)
            return leave(r, fail(r, "is empty"));
        if (which == SRC_KEY_FILE) {
            const char *why = "cannot be read";
            out[0] = '\0';
            if (r->env->read_secret(r->env->ctx, where, out, cap, &why) != 0)
                return leave(r, fail(r, "%s: %s", where, why));
            n = strnlen(out, cap);
            if (n == 0)
                return leave(r, fail(r, "%s is empty", where));
        } else {
            const char *v = r->env->get_env(r->env->ctx, where);
            if (!v || !*v)
                return leave(r, fail(r, "%s is not set", where));
            n = strlen(v);
            if (n >= cap)
                return leave(r, fail(r, "%s is longer than %zu bytes", where, cap - 1));
            memcpy(out, v, n + 1);
        }
    }
    if (n == 0)
        return leave(r, fail(r, "the key is empty"));
    if (n > max_len)
        return leave(r, fail(r, "the key is longer than %zu bytes", max_len));
    for (size_t k = 0; k < n; k++)
        if (out[k] <= 0x20 || out[k] >= 0x7f)
            return leave(r, fail(r, "the key has a character that is not visible ASCII"));
    *len = n;
    return leave(r, 0);
}

/* ---- upstreams ---- */

enum {
    U_NAME, U_URL, U_KEY, U_KEY_FILE, U_KEY_ENV, U_WEIGHT, U_MODELS, U_MAX_CONNS,
    U_CONNECT, U_FIRST_BYTE, U_IDLE, U_ORG, U_PROJECT, U_COUNT
};
static const char *const upstream_keys[U_COUNT] = {
    "name", "url", "key", "key_file", "key_env", "weight", "models", "max_conns",
    "connect_timeout", "first_byte_timeout", "idle_timeout", "org", "project"};

static int read_models(reader *r, int a, upstream_def *u)
{
    if (r->t[a].type != JSMN_ARRAY)
        return fail(r, "must be a list of model names");
    size_t count = (size_t)r->t[a].size;
    if (count == 0)
        return fail(r, "is empty (leave it out to serve any model)");
    slice *models = gen_alloc(r->g, count * sizeof *models);
    if (!models)
        return out_of_memory(r);
    int j = a + 1;
    for (size_t k = 0; k < count; k++) {
        enter_index(r, k);
        if (leave(r, read_model(r, j, true, &models[k])) != 0)
            return -1;
        u->any_model |= slice_eq(models[k], SLICE_LIT("*"));
        j = skip(r, j);
    }
    size_t dup = models_sort(models, count);
    if (dup < count) {
        char buf[SHOWN_CAP];
        return fail(r, "\"%s\" is listed twice", shown(models[dup], buf, sizeof buf));
    }
    u->models = models;
    u->model_count = count;
    return 0;
}

/* Member k of an upstream, read under its path by fn. */
#define MEMBER(r, k, call) (enter_name((r), upstream_keys[(k)]), leave((r), (call)))

static int read_upstream(reader *r, int o, upstream_def *u)
{
    int at[U_COUNT];
    if (read_members(r, o, upstream_keys, U_COUNT, at) != 0)
        return -1;
    if (at[U_NAME] < 0)
        return fail(r, "needs a \"name\"");
    if (at[U_URL] < 0)
        return fail(r, "needs a \"url\"");
    u->weight = 1;
    u->any_model = true;
    if (MEMBER(r, U_NAME, read_upstream_name(r, at[U_NAME], &u->name)) != 0 ||
        MEMBER(r, U_URL, read_string(r, at[U_URL], &u->url_text)) != 0)
        return -1;
    const char *why = NULL;
    if (url_parse(u->url_text, &u->base, &why) != 0)
        return MEMBER(r, U_URL, fail(r, "%s", why));
    uint64_t v;
    if (at[U_WEIGHT] >= 0) {
        if (MEMBER(r, U_WEIGHT, read_count(r, at[U_WEIGHT], WEIGHT_MAX, &v)) != 0)
            return -1;
        u->weight = (uint32_t)v;
    }
    if (at[U_MAX_CONNS] >= 0) {
        if (MEMBER(r, U_MAX_CONNS, read_count(r, at[U_MAX_CONNS], CONNS_MAX, &v)) != 0)
            return -1;
        u->max_conns = (size_t)v;
    }
    if (at[U_MODELS] >= 0) {
        u->any_model = false;
        if (MEMBER(r, U_MODELS, read_models(r, at[U_MODELS], u)) != 0)
            return -1;
    }
    if ((at[U_CONNECT] >= 0 && MEMBER(r, U_CONNECT, read_duration(r, at[U_CONNECT], &u->connect_timeout_ms)) != 0) ||
        (at[U_FIRST_BYTE] >= 0 &&
         MEMBER(r, U_FIRST_BYTE, read_duration(r, at[U_FIRST_BYTE], &u->first_byte_timeout_ms)) != 0) ||
        (at[U_IDLE] >= 0 && MEMBER(r, U_IDLE, read_duration(r, at[U_IDLE], &u->idle_timeout_ms)) != 0) ||
        (at[U_ORG] >= 0 && MEMBER(r, U_ORG, read_header_value(r, at[U_ORG], &u->org)) != 0) ||
        (at[U_PROJECT] >= 0 && MEMBER(r, U_PROJECT, read_header_value(r, at[U_PROJECT], &u->project)) != 0))
        return -1;

    char secret[CFGFILE_SECRET_MAX];
    size_t len;
    int rc = read_secret(r, &at[U_KEY], secret, sizeof secret, sizeof secret - 1, &len);
    if (rc == 0 && len > 0) {
        char *key = gen_alloc(r->g, len + 1);
        if (key) {
            memcpy(key, secret, len + 1);
            u->key = key;
        } else {
            rc = out_of_memory(r);
        }
    }
    explicit_bzero(secret, sizeof secret);
    if (rc != 0)
        return -1;
    if (!u->key && u->base.tls)
        return fail(r, "an https:// upstream needs one of key, key_file, key_env");
    return 0;
}

static int read_upstreams(reader *r, int a)
{
    config_gen *g = r->g;
    if (r->t[a].type != JSMN_ARRAY)
        return fail(r, "must be a list of upstreams");
    size_t count = (size_t)r->t[a].size;
    if (count == 0)
        return fail(r, "is empty; name at least one upstream");
    if (count > ROUTES_MAX_UPSTREAMS)
        return fail(r, "has %zu upstreams; at most %d are allowed", count, ROUTES_MAX_UPSTREAMS);
    g->upstreams = gen_alloc(g, count * sizeof *g->upstreams);
    if (!g->upstreams)
        return out_of_memory(r);
    int j = a + 1;
    for (size_t i = 0; i < count; i++) {
        upstream_def *u = &g->upstreams[i];
        u->index = (unsigned)i;
        enter_index(r, i);
        if (leave(r, read_upstream(r, j, u)) != 0)
            return -1;
        g->upstream_count = i + 1;
        for (size_t k = 0; k < i; k++)
            if (strcmp(g->upstreams[k].name, u->name) == 0) {
                enter_index(r, i);
                enter_name(r, "name");
                int rc = fail(r, "\"%s\" is already the name of upstreams[%zu]", u->name, k);
                return leave(r, leave(r, rc));
            }
        j = skip(r, j);
    }
    return 0;
}

/* ---- routes ---- */

/* The upstream named by the string at token i, once per route. */
static int route_member(reader *r, int i, slice model, uint64_t *seen, uint8_t *out)
{
    if (r->t[i].type != JSMN_STRING)
        return fail(r, "a group holds upstream names only");
    slice name = tok_raw(r, i);
    char buf[SHOWN_CAP], mbuf[SHOWN_CAP];
    upstream_def *u = gen_upstream(r->g, name);
    if (!u)
        return fail(r, "no upstream named \"%s\"", shown(name, buf, sizeof buf));
    if (*seen & ((uint64_t)1 << u->index))
        return fail(r, "\"%s\" is already in this route", u->name);
    /* The fallback route's upstreams take what their models admit; an
     * exact route must not name one that would refuse its model. */
    if (!slice_eq(model, SLICE_LIT("*")) && !upstream_serves(u, model))
        return fail(r, "upstream \"%s\" does not serve \"%s\" (its models leave it out)", u->name,
                    shown(model, mbuf, sizeof mbuf));
    *seen |= (uint64_t)1 << u->index;
    *out = (uint8_t)u->index;
    return 0;
}

static int read_group(reader *r, int e, slice model, uint64_t *seen, route_group *grp)
{
    bool lone = r->t[e].type == JSMN_STRING;
    if (!lone && r->t[e].type != JSMN_ARRAY)
        return fail(r, "must be an upstream name or a list of them (a group sharing load by weight)");
    size_t count = lone ? 1 : (size_t)r->t[e].size;
    if (count == 0)
        return fail(r, "is an empty group");
    if (count > ROUTES_MAX_UPSTREAMS)
        return fail(r, "names more than %d upstreams", ROUTES_MAX_UPSTREAMS);
    uint8_t *members = gen_alloc(r->g, count);
    grp->current = gen_alloc(r->g, count * sizeof *grp->current);
    if (!members || !grp->current)
        return out_of_memory(r);
    grp->members = members;
    grp->count = count;
    if (lone)
        return route_member(r, e, model, seen, &members[0]);
    int j = e + 1;
    for (size_t k = 0; k < count; k++) {
        enter_index(r, k);
        if (leave(r, route_member(r, j, model, seen, &members[k])) != 0)
            return -1;
        j = skip(r, j);
    }
    return 0;
}

static int read_route(reader *r, int v, slice model, route *out)
{
    if (r->t[v].type != JSMN_ARRAY)
        return fail(r, "must be a list of upstream names or groups (lists of names)");
    size_t count = (size_t)r->t[v].size;
    if (count == 0)
        return fail(r, "is empty");
    if (count > ROUTES_MAX_UPSTREAMS)
        return fail(r, "has more than %d entries", ROUTES_MAX_UPSTREAMS);
    out->model = model;
    out->steps = gen_alloc(r->g, count * sizeof *out->steps);
    if (!out->steps)
        return out_of_memory(r);
    out->step_count = count;
    uint64_t seen = 0;
    int j = v + 1;
    for (size_t k = 0; k < count; k++) {
        enter_index(r, k);
        if (leave(r, read_group(r, j, model, &seen, &out->steps[k])) != 0)
            return -1;
        j = skip(r, j);
    }
    return 0;
}

static int read_routes(reader *r, int o)
{
    config_gen *g = r->g;
    if (r->t[o].type != JSMN_OBJECT)
        return fail(r, "must be an object mapping models (or \"*\") to lists of upstreams");
    if (check_unique_keys(r, o, true) != 0)
        return -1;
    size_t count = (size_t)r->t[o].size;
    g->routes = gen_alloc(g, (count ? count : 1) * sizeof *g->routes);
    if (!g->routes)
        return out_of_memory(r);
    int j = o + 1;
    for (size_t k = 0; k < count; k++) {
        slice key = tok_raw(r, j);
        enter_quoted(r, key);
        slice model;
        route *rt = &g->routes[g->route_count];
        if (slice_eq(key, SLICE_LIT("*"))) {
            rt = g->fallback = gen_alloc(g, sizeof *g->fallback);
            if (!rt)
                return leave(r, out_of_memory(r));
        }
        if (read_model(r, j, true, &model) != 0 || read_route(r, j + 1, model, rt) != 0)
            return leave(r, -1);
        leave(r, 0);
        if (rt != g->fallback)
            g->route_count++;
        j = skip(r, j + 1);
    }
    return 0;
}

/* ---- aliases ---- */

static const char *const alias_keys[] = {"upstream", "model"};

static int read_alias(reader *r, int key, model_alias *a)
{
    config_gen *g = r->g;
    char buf[SHOWN_CAP];
    if (read_model(r, key, false, &a->name) != 0)
        return -1;
    if (gen_route(g, a->name))
        return fail(r, "is also a route; a name is an alias or a route, not both");
    int at[2];
    if (r->t[key + 1].type != JSMN_OBJECT)
        return fail(r, "must be an object such as {\"upstream\": \"local\", \"model\": \"llama3.2\"}");
    if (read_members(r, key + 1, alias_keys, 2, at) != 0)
        return -1;
    if (at[1] < 0)
        return fail(r, "needs a \"model\"");
    enter_name(r, "model");
    if (leave(r, read_model(r, at[1], false, &a->model)) != 0)
        return -1;
    a->upstream = -1;
    if (at[0] >= 0) {
        enter_name(r, "upstream");
        if (r->t[at[0]].type != JSMN_STRING)
            return leave(r, fail(r, "must be a string (an upstream name)"));
        slice name = tok_raw(r, at[0]);
        const upstream_def *u = gen_upstream(g, name);
        if (!u)
            return leave(r, fail(r, "no upstream named \"%s\"", shown(name, buf, sizeof buf)));
        leave(r, 0);
        if (!upstream_serves(u, a->model)) {
            enter_name(r, "model");
            return leave(r, fail(r, "upstream \"%s\" does not serve \"%s\" (its models leave it out)", u->name,
                                 shown(a->model, buf, sizeof buf)));
        }
        a->upstream = (int)u->index;
    }
    return 0;
}

static int read_aliases(reader *r, int o)
{
    config_gen *g = r->g;
    if (r->t[o].type != JSMN_OBJECT)
        return fail(r, "must be an object mapping alias names to {\"upstream\": ..., \"model\": ...}");
    if (check_unique_keys(r, o, true) != 0)
        return -1;
    size_t count = (size_t)r->t[o].size;
    g->aliases = gen_alloc(g, (count ? count : 1) * sizeof *g->aliases);
    if (!g->aliases)
        return out_of_memory(r);
    int j = o + 1;
    for (size_t k = 0; k < count; k++) {
        enter_quoted(r, tok_raw(r, j));
        if (leave(r, read_alias(r, j, &g->aliases[k])) != 0)
            return -1;
        g->alias_count = k + 1;
        j = skip(r, j + 1);
    }
    gen_seal(g);
    /* An alias that routes by its model needs a model that routes. */
    for (size_t k = 0; k < g->alias_count; k++) {
        const model_alias *a = &g->aliases[k];
        if (a->upstream >= 0)
            continue;
        char buf[SHOWN_CAP];
        route_target t;
        enter_quoted(r, a->name);
        enter_name(r, "model");
        int rc = 0;
        if (gen_alias(g, a->model))
            rc = fail(r, "\"%s\" is itself an alias; aliases do not chain", shown(a->model, buf, sizeof buf));
        else if (routes_resolve(g, a->model, &t) != 0)
            rc = fail(r, "no route or upstream serves \"%s\"", shown(a->model, buf, sizeof buf));
        if (leave(r, leave(r, rc)) != 0)
            return -1;
    }
    return 0;
}

/* ---- clients ---- */

enum { C_KEY, C_KEY_FILE, C_KEY_ENV, C_NAME, C_RPM, C_TPM, C_STREAMS, C_COUNT };
static const char *const client_keys[C_COUNT] = {"key", "key_file", "key_env", "name", "rpm", "tpm", "streams"};

/* As the keys file allows. */
static bool client_name_char(char c)
{
    return upstream_name_char(c) || c == ':' || c == '@' || c == '/' || c == '+';
}

static void default_client_name(client_key *ck)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(ck->name, "key:", 4);
    for (size_t i = 0; i < 4; i++) {
        ck->name[4 + 2 * i] = hex[ck->digest[i] >> 4];
        ck->name[5 + 2 * i] = hex[ck->digest[i] & 15];
    }
    ck->name[12] = '\0';
}

static int read_client(reader *r, int o, client_key *ck)
{
    int at[C_COUNT];
    if (read_members(r, o, client_keys, C_COUNT, at) != 0)
        return -1;
    char secret[CFGFILE_SECRET_MAX];
    size_t len;
    int rc = read_secret(r, &at[C_KEY], secret, sizeof secret, CLIENT_KEY_MAX, &len);
    if (rc == 0 && len == 0)
        rc = fail(r, "needs one of key, key_file, key_env");
    if (rc == 0)
        key_digest((slice){secret, len}, ck->digest);
    explicit_bzero(secret, sizeof secret);
    if (rc != 0)
        return -1;
    if (at[C_NAME] >= 0) {
        enter_name(r, "name");
        slice name = tok_raw(r, at[C_NAME]);
        if (r->t[at[C_NAME]].type != JSMN_STRING)
            return leave(r, fail(r, "must be a string"));
        if (name.len == 0 || name.len > CLIENT_NAME_MAX)
            return leave(r, fail(r, "must be 1 to %d characters", CLIENT_NAME_MAX));
        for (size_t k = 0; k < name.len; k++)
            if (!client_name_char(name.ptr[k]))
                return leave(r, fail(r, "may only hold letters, digits and - _ . : @ / +"));
        memcpy(ck->name, name.ptr, name.len);
        ck->name[name.len] = '\0';
        leave(r, 0);
    } else {
        default_client_name(ck);
    }
    uint64_t *limits[] = {&ck->spec.rpm, &ck->spec.tpm, &ck->spec.streams};
    for (size_t k = 0; k < 3; k++)
        if (at[C_RPM + k] >= 0) {
            enter_name(r, client_keys[C_RPM + k]);
            if (leave(r, read_count(r, at[C_RPM + k], UINT32_MAX, limits[k])) != 0)
                return -1;
        }
    return 0;
}

static int by_digest(const void *a, const void *b)
{
    const client_key *x = *(const client_key *const *)a, *y = *(const client_key *const *)b;
    int c = memcmp(x->digest, y->digest, KEY_DIGEST_LEN);
    return c ? c : (x > y) - (x < y);
}

static int read_clients(reader *r, int a)
{
    config_gen *g = r->g;
    if (r->t[a].type != JSMN_ARRAY)
        return fail(r, "must be a list of clients");
    size_t count = (size_t)r->t[a].size;
    g->clients = gen_alloc(g, (count ? count : 1) * sizeof *g->clients);
    if (!g->clients)
        return out_of_memory(r);
    int j = a + 1;
    for (size_t i = 0; i < count; i++) {
        enter_index(r, i);
        if (leave(r, read_client(r, j, &g->clients[i])) != 0)
            return -1;
        g->client_count = i + 1;
        j = skip(r, j);
    }
    if (count < 2)
        return 0;
    const client_key **order = malloc(count * sizeof *order);
    if (!order)
        return out_of_memory(r);
    for (size_t i = 0; i < count; i++)
        order[i] = &g->clients[i];
    qsort(order, count, sizeof *order, by_digest);
    int rc = 0;
    for (size_t i = 1; i < count && rc == 0; i++)
        if (memcmp(order[i - 1]->digest, order[i]->digest, KEY_DIGEST_LEN) == 0) {
            enter_index(r, (size_t)(order[i] - g->clients));
            rc = leave(r, fail(r, "same key as clients[%zu]", (size_t)(order[i - 1] - g->clients)));
        }
    free(order);
    return rc;
}

/* ---- the whole file ---- */

enum { T_UPSTREAMS, T_ROUTES, T_ALIASES, T_CLIENTS, T_COUNT };
static const char *const top_keys[T_COUNT] = {"upstreams", "routes", "aliases", "clients"};

static int read_top(reader *r)
{
    int at[T_COUNT];
    if (read_members(r, 0, top_keys, T_COUNT, at) != 0)
        return -1;
    if (at[T_UPSTREAMS] < 0)
        return fail(r, "needs \"upstreams\", a list of at least one upstream");
    /* Upstreams first whatever the order in the file: the rest names them. */
    enter_name(r, "upstreams");
    if (leave(r, read_upstreams(r, at[T_UPSTREAMS])) != 0)
        return -1;
    if (at[T_ROUTES] >= 0) {
        enter_name(r, "routes");
        if (leave(r, read_routes(r, at[T_ROUTES])) != 0)
            return -1;
    }
    gen_seal(r->g);
    if (at[T_ALIASES] >= 0) {
        enter_name(r, "aliases");
        if (leave(r, read_aliases(r, at[T_ALIASES])) != 0)
            return -1;
    }
    if (at[T_CLIENTS] >= 0) {
        enter_name(r, "clients");
        if (leave(r, read_clients(r, at[T_CLIENTS])) != 0)
            return -1;
    }
    gen_seal(r->g);
    return 0;
}

config_gen *cfgfile_parse(const char *text, size_t len, const char *source, const cfgfile_env *env, char *why,
                          size_t why_cap)
{
    reader r = {.s = text, .len = len, .source = source, .env = env, .why = why, .why_cap = why_cap};
    if (why_cap)
        why[0] = '\0';
    if (len > CFGFILE_MAX_SIZE) {
        fail(&r, "is larger than 1 MiB");
        return NULL;
    }
    r.g = gen_new();
    if (!r.g) {
        fail(&r, "out of memory");
        return NULL;
    }
    int rc = tokenise(&r);
    if (rc == 0) {
        r.scratch = malloc(((size_t)r.n / 2 + 1) * sizeof *r.scratch);
        rc = r.scratch ? read_top(&r) : fail(&r, "out of memory");
    }
    free(r.scratch);
    free(r.t);
    if (rc != 0) {
        gen_release(r.g);
        return NULL;
    }
    return r.g;
}

/* ---- the system's files and environment ---- */

static int system_read_secret(void *ctx, const char *path, char *out, size_t cap, const char **why)
{
    (void)ctx;
    FILE *f = fopen(path, "r");
    if (!f) {
        *why = strerror(errno);
        return -1;
    }
    out[0] = '\0';
    bool got = fgets(out, (int)(cap < 65536 ? cap : 65536), f) != NULL;
    bool whole = !got || strchr(out, '\n') || feof(f);
    fclose(f);
    if (!whole) {
        explicit_bzero(out, cap);
        *why = "its first line is too long";
        return -1;
    }
    size_t n = strcspn(out, "\r\n");
    while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '\t'))
        n--;
    out[n] = '\0';
    return 0;
}

static const char *system_get_env(void *ctx, const char *name)
{
    (void)ctx;
    return getenv(name);
}

const cfgfile_env cfgfile_system_env = {system_read_secret, system_get_env, NULL};

config_gen *cfgfile_load(const char *path, char *why, size_t why_cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, why_cap, "cannot read config file %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(CFGFILE_MAX_SIZE + 1);
    if (!text) {
        fclose(f);
        snprintf(why, why_cap, "%s: out of memory", path);
        return NULL;
    }
    size_t len = fread(text, 1, CFGFILE_MAX_SIZE + 1, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    config_gen *g = NULL;
    if (failed)
        snprintf(why, why_cap, "cannot read config file %s", path);
    else
        g = cfgfile_parse(text, len, path, &cfgfile_system_env, why, why_cap);
    explicit_bzero(text, len); /* it may hold keys */
    free(text);
    return g;
}
