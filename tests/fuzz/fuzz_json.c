/* Request bodies and stream chunks through jsmn. A strict RFC 8259 check
 * written here judges the input: a valid object must be accepted (nesting
 * within reason), and when the usage edit is active the edited body must
 * still be valid, now streaming with include_usage true and needing no
 * edit. Inputs jsmn takes although they are not JSON are only counted. */
#include "core/arena.h"
#include "fuzz.h"
#include "gateway/json.h"

enum { SANE_DEPTH = 32 };

typedef struct strict {
    const unsigned char *s;
    size_t n, i;
    int depth, max_depth;
} strict;

static bool s_value(strict *v);

static void s_ws(strict *v)
{
    while (v->i < v->n && (v->s[v->i] == ' ' || v->s[v->i] == '\t' || v->s[v->i] == '\n' || v->s[v->i] == '\r'))
        v->i++;
}

static bool s_eat(strict *v, char c)
{
    if (v->i < v->n && v->s[v->i] == (unsigned char)c) {
        v->i++;
        return true;
    }
    return false;
}

static bool s_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool s_string(strict *v)
{
    if (!s_eat(v, '"'))
        return false;
    while (v->i < v->n) {
        unsigned char c = v->s[v->i++];
        if (c == '"')
            return true;
        if (c < 0x20)
            return false;
        if (c != '\\')
            continue;
        if (v->i >= v->n)
            return false;
        c = v->s[v->i++];
        if (c == 'u') {
            for (int k = 0; k < 4; k++)
                if (v->i >= v->n || !s_hex(v->s[v->i++]))
                    return false;
        } else if (!strchr("\"\\/bfnrt", c) || c == 0) {
            return false;
        }
    }
    return false;
}

static bool s_digits(strict *v)
{
    size_t start = v->i;
    while (v->i < v->n && v->s[v->i] >= '0' && v->s[v->i] <= '9')
        v->i++;
    return v->i > start;
}

static bool s_number(strict *v)
{
    s_eat(v, '-');
    if (s_eat(v, '0')) {
        /* no leading zeros */
    } else if (v->i < v->n && v->s[v->i] >= '1' && v->s[v->i] <= '9') {
        s_digits(v);
    } else {
        return false;
    }
    if (s_eat(v, '.') && !s_digits(v))
        return false;
    if (s_eat(v, 'e') || s_eat(v, 'E')) {
        if (!s_eat(v, '+'))
            s_eat(v, '-');
        if (!s_digits(v))
            return false;
    }
    return true;
}

static bool s_literal(strict *v, const char *lit)
{
    size_t len = strlen(lit);
    if (v->n - v->i < len || memcmp(v->s + v->i, lit, len) != 0)
        return false;
    v->i += len;
    return true;
}

static bool s_container(strict *v, bool object)
{
    v->i++; /* the opening bracket */
    if (++v->depth > v->max_depth)
        v->max_depth = v->depth;
    if (v->depth > 200)
        return false;
    s_ws(v);
    if (s_eat(v, object ? '}' : ']')) {
        v->depth--;
        return true;
    }
    for (;;) {
        if (object) {
            s_ws(v);
            if (!s_string(v))
                return false;
            s_ws(v);
            if (!s_eat(v, ':'))
                return false;
        }
        if (!s_value(v))
            return false;
        s_ws(v);
        if (s_eat(v, ','))
            continue;
        if (!s_eat(v, object ? '}' : ']'))
            return false;
        v->depth--;
        return true;
    }
}

static bool s_value(strict *v)
{
    s_ws(v);
    if (v->i >= v->n)
        return false;
    switch (v->s[v->i]) {
    case '{': return s_container(v, true);
    case '[': return s_container(v, false);
    case '"': return s_string(v);
    case 't': return s_literal(v, "true");
    case 'f': return s_literal(v, "false");
    case 'n': return s_literal(v, "null");
    default: return s_number(v);
    }
}

/* One JSON object and nothing else but white space; *depth gets its nesting. */
static bool strict_object(const char *s, size_t n, int *depth)
{
    strict v = {(const unsigned char *)s, n, 0, 0, 0};
    s_ws(&v);
    bool ok = v.i < n && s[v.i] == '{' && s_value(&v);
    s_ws(&v);
    *depth = v.max_depth;
    return ok && v.i == n;
}

static bool within(const char *buf, size_t len, slice s)
{
    return s.len == 0 || (s.ptr >= buf && s.ptr + s.len <= buf + len);
}

static bool same_chunk(const json_chunk_info *a, const json_chunk_info *b)
{
    return a->usage_only == b->usage_only && a->has_usage == b->has_usage &&
           a->prompt_tokens == b->prompt_tokens && a->completion_tokens == b->completion_tokens &&
           a->is_error == b->is_error && a->has_content == b->has_content && a->content.len == b->content.len &&
           (a->content.len == 0 || a->content.ptr == b->content.ptr);
}

static unsigned long lenient_accepts; /* jsmn took what is not JSON */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return 0;
    arena a;
    arena_init(&a);
    char *body = fuzz_copy(data, size);
    int depth = 0;
    bool valid = strict_object(body, size, &depth);
    json_request_info info;
    const char *why = NULL;
    int rc = json_inspect_request(body, size, &a, &info, &why);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc == -1)
        FUZZ_CHECK(why != NULL && why[0] != '\0');
    if (valid && depth <= SANE_DEPTH && rc != 0) {
        fprintf(stderr, "valid body rejected (%s): %.*s\n", why, (int)size, body);
        FUZZ_CHECK(rc == 0);
    }
    if (rc == 0 && !valid && ++lenient_accepts == 1)
        fprintf(stderr, "note: jsmn accepts input that is not JSON, e.g. %.*s\n", (int)(size < 200 ? size : 200),
                body);
    if (rc == 0) {
        FUZZ_CHECK(within(body, size, info.model));
        const json_edit *e = &info.usage_edit;
        if (!info.stream)
            FUZZ_CHECK(!e->active && !info.client_wants_usage);
        if (info.client_wants_usage)
            FUZZ_CHECK(!e->active);
        if (info.stream && !info.client_wants_usage)
            FUZZ_CHECK(e->active);
        if (e->active && valid) {
            FUZZ_CHECK(e->at <= size && e->remove <= size - e->at && e->insert.len > 0);
            size_t len = size - e->remove + e->insert.len;
            char *edited = fuzz_alloc(len);
            memcpy(edited, body, e->at);
            memcpy(edited + e->at, e->insert.ptr, e->insert.len);
            memcpy(edited + e->at + e->insert.len, body + e->at + e->remove, size - e->at - e->remove);
            int depth2 = 0;
            bool valid2 = strict_object(edited, len, &depth2);
            json_request_info again;
            int rc2 = json_inspect_request(edited, len, &a, &again, &why);
            if (!valid2 || rc2 != 0 || !again.stream || !again.client_wants_usage || again.usage_edit.active) {
                fprintf(stderr, "body:        %.*s\nedited body: %.*s\n", (int)size, body, (int)len, edited);
                FUZZ_CHECK(valid2);
                FUZZ_CHECK(rc2 == 0);
                FUZZ_CHECK(again.stream);
                FUZZ_CHECK(again.client_wants_usage);
                FUZZ_CHECK(!again.usage_edit.active);
            }
            /* The model survives the edit. */
            FUZZ_CHECK(slice_eq(again.model, info.model));
            free(edited);
        }
    }

    json_chunk_info chunk;
    rc = json_inspect_chunk(body, size, &a, &chunk);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (valid && depth <= SANE_DEPTH)
        FUZZ_CHECK(rc == 0);
    if (rc == 0 && chunk.usage_only)
        FUZZ_CHECK(chunk.has_usage);
    if (!chunk.has_usage)
        FUZZ_CHECK(chunk.prompt_tokens == 0 && chunk.completion_tokens == 0);

    /* The fast path (and the shape cache, primed by earlier inputs and then
     * by this one) must read exactly what the full path reads, wherever it
     * takes the input at all. */
    json_chunk_info full;
    int full_rc = json_inspect_chunk_full(body, size, &a, &full);
    FUZZ_CHECK(full_rc == rc);
    for (int round = 0; round < 2; round++) {
        json_chunk_info fast;
        if (!json_inspect_chunk_fast(body, size, &fast))
            continue;
        if (full_rc != 0 || !same_chunk(&fast, &full)) {
            fprintf(stderr, "fast path disagrees (round %d, full rc %d): %.*s\n", round, full_rc, (int)size, body);
            FUZZ_CHECK(full_rc == 0);
            FUZZ_CHECK(same_chunk(&fast, &full));
        }
    }

    /* Likewise the final path (usage and finishes, jsmn for those objects). */
    for (int round = 0; round < 2; round++) { /* the second through its shape cache */
        json_chunk_info fin;
        if (json_inspect_chunk_final(body, size, &fin) && (full_rc != 0 || !same_chunk(&fin, &full))) {
            fprintf(stderr, "final path disagrees (round %d, full rc %d): %.*s\n", round, full_rc, (int)size, body);
            FUZZ_CHECK(full_rc == 0);
            FUZZ_CHECK(same_chunk(&fin, &full));
        }
    }

    free(body);
    arena_reset(&a);
    arena_release_cached();
    return 0;
}
