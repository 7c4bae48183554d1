#include "gateway/json.h"

#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS
#include <jsmn.h>

enum { STACK_TOKENS = JSON_STACK_TOKENS };

/* Index of the token after the subtree rooted at i. */
static int skip(const jsmntok_t *t, int count, int i)
{
    int pending = 1;
    while (pending > 0 && i < count) {
        if (t[i].type == JSMN_OBJECT)
            pending += 2 * t[i].size;
        else if (t[i].type == JSMN_ARRAY)
            pending += t[i].size;
        pending--;
        i++;
    }
    return i;
}

static slice tok_slice(const char *s, const jsmntok_t *t)
{
    return (slice){s + t->start, (size_t)(t->end - t->start)};
}

#define tok_is(s, t, lit) slice_eq(tok_slice((s), (t)), SLICE_LIT(lit))

static bool only_space(const char *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

/* Tokenises s into the stack array or, when it needs more, into the arena.
 * Returns the token count or a negative jsmn error. */
static int tokenise(const char *s, size_t len, jsmntok_t *stack, arena *a, jsmntok_t **toks)
{
    jsmn_parser p;
    jsmn_init(&p);
    int n = jsmn_parse(&p, s, len, stack, STACK_TOKENS);
    *toks = stack;
    if (n != JSMN_ERROR_NOMEM)
        return n;
    jsmn_init(&p);
    n = jsmn_parse(&p, s, len, NULL, 0);
    if (n < 0)
        return n;
    *toks = arena_alloc(a, (size_t)n * sizeof(jsmntok_t));
    if (!*toks)
        return JSMN_ERROR_NOMEM;
    jsmn_init(&p);
    return jsmn_parse(&p, s, len, *toks, (unsigned)n);
}

enum { MAX_DEPTH = 128 };

/* jsmn finds the tokens but, even strict, lets through {"a"}, {"a":tru},
 * {"a":1,}, [1 2], a leading zero, a raw newline in a string. The walk
 * below checks what lies between and inside the tokens, so invalid JSON
 * is refused here (400) instead of being sent upstream. */

typedef struct walk {
    const char *s;
    const jsmntok_t *t;
    int n;
    /* Client bodies get every check (a 400 is the answer); upstream chunks
     * only the structure our own reads rely on: an invalid chunk is relayed
     * as the upstream sent it either way, so the rest would only cost time
     * on the hottest path. */
    bool strict;
} walk;

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* s[from..to) is white space around exactly one `sep` (none when sep is 0). */
static bool gap_is(const char *s, size_t from, size_t to, char sep)
{
    bool seen = sep == 0;
    for (size_t i = from; i < to; i++) {
        if (is_space(s[i]))
            continue;
        if (s[i] != sep || seen)
            return false;
        seen = true;
    }
    return seen;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* true, false, null, or a number as RFC 8259 §6 has it. */
bool json_primitive_ok(slice v)
{
    const char *p = v.ptr;
    size_t len = v.len;
    if (slice_eq(v, SLICE_LIT("true")) || slice_eq(v, SLICE_LIT("false")) || slice_eq(v, SLICE_LIT("null")))
        return true;
    size_t i = 0;
    if (i < len && p[i] == '-')
        i++;
    if (i < len && p[i] == '0') {
        i++;
    } else {
        if (i >= len || !is_digit(p[i]))
            return false;
        while (i < len && is_digit(p[i]))
            i++;
    }
    if (i < len && p[i] == '.') {
        if (++i >= len || !is_digit(p[i]))
            return false;
        while (i < len && is_digit(p[i]))
            i++;
    }
    if (i < len && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < len && (p[i] == '+' || p[i] == '-'))
            i++;
        if (i >= len || !is_digit(p[i]))
            return false;
        while (i < len && is_digit(p[i]))
            i++;
    }
    return i == len;
}

/* jsmn strict checks escapes; control characters are ours to refuse. */
static bool string_ok(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] < 0x20)
            return false;
    return true;
}

/* First and one-past-last byte of token i as it stands in the text. */
static size_t tok_begin(const walk *w, int i) { return (size_t)w->t[i].start - (w->t[i].type == JSMN_STRING); }
static size_t tok_finish(const walk *w, int i) { return (size_t)w->t[i].end + (w->t[i].type == JSMN_STRING); }

/* Checks the value at token i; returns the index after it, or -1. */
static int check_value(const walk *w, int i, int depth)
{
    if (i >= w->n || depth > MAX_DEPTH)
        return -1;
    const jsmntok_t *t = &w->t[i];
    const char *s = w->s;
    size_t len = (size_t)(t->end - t->start);
    if (t->type == JSMN_STRING)
        return t->size == 0 && (!w->strict || string_ok(s + t->start, len)) ? i + 1 : -1;
    if (t->type == JSMN_PRIMITIVE)
        return t->size == 0 && (!w->strict || json_primitive_ok((slice){s + t->start, len})) ? i + 1 : -1;
    bool object = t->type == JSMN_OBJECT;
    if (!object && t->type != JSMN_ARRAY)
        return -1;
    size_t at = (size_t)t->start + 1; /* after the bracket */
    int j = i + 1;
    for (int k = 0; k < t->size; k++) {
        if (j >= w->n || (w->strict && !gap_is(s, at, tok_begin(w, j), k ? ',' : 0)))
            return -1;
        if (object) {
            /* a key: a string holding exactly one value, after a colon */
            const jsmntok_t *key = &w->t[j];
            if (key->type != JSMN_STRING || key->size != 1 || j + 1 >= w->n)
                return -1;
            if (w->strict && (!string_ok(s + key->start, (size_t)(key->end - key->start)) ||
                              !gap_is(s, tok_finish(w, j), tok_begin(w, j + 1), ':')))
                return -1;
            j++;
        }
        int next = check_value(w, j, depth + 1);
        if (next < 0)
            return -1;
        at = tok_finish(w, j);
        j = next;
    }
    return !w->strict || gap_is(s, at, (size_t)t->end - 1, 0) ? j : -1;
}

/* One well-formed top-level object spanning the whole text. */
static bool is_whole_object(const char *s, size_t len, const jsmntok_t *t, int n, bool strict)
{
    walk w = {s, t, n, strict};
    return n >= 1 && t[0].type == JSMN_OBJECT && only_space(s, 0, (size_t)t[0].start) &&
           only_space(s, (size_t)t[0].end, len) && check_value(&w, 0, 0) == n;
}

/* A value's bytes in the text: jsmn leaves a string's quotes outside it. */
static size_t value_start(const jsmntok_t *t) { return (size_t)t->start - (t->type == JSMN_STRING ? 1 : 0); }
static size_t value_end(const jsmntok_t *t) { return (size_t)t->end + (t->type == JSMN_STRING ? 1 : 0); }

int json_inspect_request(const char *body, size_t len, arena *a, json_request_info *out, const char **why)
{
    *out = (json_request_info){0};
    jsmntok_t stack[STACK_TOKENS], *t;
    int n = tokenise(body, len, stack, a, &t);
    if (n == JSMN_ERROR_NOMEM) {
        *why = "request body has too many JSON tokens";
        return -1;
    }
    if (n < 0 || !is_whole_object(body, len, t, n, true)) {
        *why = n == 0 || len == 0 ? "request body is empty; expected a JSON object"
                                  : "request body is not valid JSON (expected one JSON object)";
        return -1;
    }
    int options = -1;
    for (int i = 1; i < n;) {
        const jsmntok_t *key = &t[i], *val = &t[i + 1];
        if (tok_is(body, key, "model") && val->type == JSMN_STRING)
            out->model = tok_slice(body, val);
        else if (tok_is(body, key, "stream"))
            out->stream = val->type == JSMN_PRIMITIVE && tok_is(body, val, "true");
        else if (tok_is(body, key, "stream_options"))
            options = i + 1;
        i = skip(t, n, i + 1);
    }
    if (!out->stream)
        return 0;

    json_edit *e = &out->usage_edit;
    e->active = true;
    if (options < 0) {
        /* Before the closing brace of the top-level object. */
        e->at = (size_t)t[0].end - 1;
        e->insert = SLICE_LIT(",\"stream_options\":{\"include_usage\":true}");
        return 0;
    }
    const jsmntok_t *o = &t[options];
    if (o->type != JSMN_OBJECT) {
        e->at = value_start(o);
        e->remove = value_end(o) - e->at;
        e->insert = SLICE_LIT("{\"include_usage\":true}");
        return 0;
    }
    int end = skip(t, n, options);
    const jsmntok_t *usage = NULL; /* the last one: what an upstream parser keeps */
    for (int i = options + 1; i < end; i = skip(t, n, i + 1))
        if (tok_is(body, &t[i], "include_usage"))
            usage = &t[i + 1];
    if (usage) {
        if (tok_is(body, usage, "true")) {
            out->client_wants_usage = true;
            e->active = false;
        } else {
            e->at = value_start(usage);
            e->remove = value_end(usage) - e->at;
            e->insert = SLICE_LIT("true");
        }
        return 0;
    }
    e->at = (size_t)o->start + 1;
    e->insert = o->size ? SLICE_LIT("\"include_usage\":true,") : SLICE_LIT("\"include_usage\":true");
    return 0;
}

static uint64_t tok_u64(const char *s, const jsmntok_t *t)
{
    uint64_t v = 0;
    for (int i = t->start; i < t->end && s[i] >= '0' && s[i] <= '9'; i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    return v;
}

/* Reads a usage object at token u (chat's prompt/completion_tokens or the
 * Responses API's input/output_tokens). */
static void read_usage(const char *s, const jsmntok_t *t, int n, int u, json_chunk_info *out)
{
    out->has_usage = true;
    int end = skip(t, n, u);
    for (int j = u + 1; j < end;) {
        if (tok_is(s, &t[j], "prompt_tokens") || tok_is(s, &t[j], "input_tokens"))
            out->prompt_tokens = tok_u64(s, &t[j + 1]);
        else if (tok_is(s, &t[j], "completion_tokens") || tok_is(s, &t[j], "output_tokens"))
            out->completion_tokens = tok_u64(s, &t[j + 1]);
        j = skip(t, n, j + 1);
    }
}

/* Token i is the value of `key` in the object at token obj, or -1. */
static int member(const char *s, const jsmntok_t *t, int n, int obj, const char *key)
{
    if (t[obj].type != JSMN_OBJECT)
        return -1;
    size_t klen = strlen(key);
    for (int j = obj + 1, k = 0; k < t[obj].size && j + 1 < n; k++) {
        if (slice_eq(tok_slice(s, &t[j]), (slice){key, klen}))
            return j + 1;
        j = skip(t, n, j + 1);
    }
    return -1;
}

/* The first choice whose delta (or, for completions, text) is a non-empty
 * string: its contents, still JSON-escaped; empty when none. */
static slice choices_content(const char *s, const jsmntok_t *t, int n, int arr)
{
    for (int j = arr + 1, k = 0; k < t[arr].size && j < n; k++) {
        int delta = member(s, t, n, j, "delta");
        int text = delta >= 0 ? member(s, t, n, delta, "content") : member(s, t, n, j, "text");
        if (text >= 0 && t[text].type == JSMN_STRING && t[text].end > t[text].start)
            return tok_slice(s, &t[text]);
        j = skip(t, n, j);
    }
    return (slice){NULL, 0};
}

int json_inspect_chunk_full(const char *data, size_t len, arena *a, json_chunk_info *out)
{
    *out = (json_chunk_info){0};
    jsmntok_t stack[STACK_TOKENS], *t;
    int n = tokenise(data, len, stack, a, &t);
    if (n < 0 || !is_whole_object(data, len, t, n, false))
        return -1;
    bool choices_empty = false;
    for (int i = 1; i < n;) {
        const jsmntok_t *key = &t[i], *val = &t[i + 1];
        if (tok_is(data, key, "choices") && val->type == JSMN_ARRAY) {
            choices_empty = val->size == 0;
            out->content = choices_content(data, t, n, i + 1);
            out->has_content |= out->content.len > 0;
        } else if (tok_is(data, key, "error") && val->type == JSMN_OBJECT) {
            out->is_error = true;
        } else if (tok_is(data, key, "usage") && val->type == JSMN_OBJECT) {
            read_usage(data, t, n, i + 1, out);
        } else if (tok_is(data, key, "response") && val->type == JSMN_OBJECT) {
            int u = member(data, t, n, i + 1, "usage");
            if (u >= 0 && t[u].type == JSMN_OBJECT)
                read_usage(data, t, n, u, out);
        } else if (tok_is(data, key, "type") && tok_is(data, val, "response.output_text.delta")) {
            out->has_content = true;
        } else if (tok_is(data, key, "delta") && val->type == JSMN_STRING && !out->content.len) {
            out->content = tok_slice(data, val); /* the Responses API's text delta */
        }
        i = skip(t, n, i + 1);
    }
    out->usage_only = out->has_usage && choices_empty;
    return 0;
}

int json_inspect_chunk(const char *data, size_t len, arena *a, json_chunk_info *out)
{
    if (json_inspect_chunk_known(data, len, out))
        return 0;
    return json_inspect_chunk_full(data, len, a, out);
}

/* End of the object starting at p[0] == '{', or NULL when it does not close. */
static const char *object_end(const char *p, const char *end)
{
    size_t depth = 0;
    for (; p < end; p++) {
        if (*p == '"') { /* to the quote that closes it: one after an even run of backslashes */
            const char *open = p, *run;
            do {
                p = memchr(p + 1, '"', (size_t)(end - p - 1));
                if (!p)
                    return NULL;
                for (run = p; run - 1 > open && run[-1] == '\\'; run--)
                    ;
            } while ((p - run) % 2);
        } else if (*p == '{') {
            depth++;
        } else if (*p == '}' && --depth == 0) {
            return p + 1;
        }
    }
    return NULL;
}

/* How far left the search for "usage" (quoted) may move when the first byte
 * of its window is c and the window is not a match: to where c meets the
 * same byte of the key, or past the key when it has none. */
static size_t usage_skip(char c)
{
    switch (c) {
    case 'u': return 1;
    case 's': return 2;
    case 'a': return 3;
    case 'g': return 4;
    case 'e': return 5;
    case '"': return 6;
    default: return 7;
    }
}

bool json_find_usage(const char *body, size_t len, arena *a, json_chunk_info *out)
{
    *out = (json_chunk_info){0};
    static const char key[] = "\"usage\"";
    const char *end = body + len, *last = NULL;
    /* From the end back (answers put usage last, or nearly), skipping as
     * far as the window's first byte allows. */
    for (size_t at = len >= sizeof key - 1 ? len - (sizeof key - 1) + 1 : 0; at > 0 && !last;) {
        const char *p = body + at - 1;
        if (*p == '"' && memcmp(p, key, sizeof key - 1) == 0 && (p == body || p[-1] != '\\'))
            last = p; /* (an escaped quote is inside a string) */
        size_t skip = usage_skip(*p);
        at = at > skip ? at - skip : 0;
    }
    if (!last)
        return false;
    const char *v = last + sizeof key - 1;
    while (v < end && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n' || *v == ':'))
        v++;
    const char *close = v < end && *v == '{' ? object_end(v, end) : NULL;
    if (!close)
        return false;
    jsmntok_t stack[STACK_TOKENS], *t;
    int n = tokenise(v, (size_t)(close - v), stack, a, &t);
    if (n < 1 || !is_whole_object(v, (size_t)(close - v), t, n, false))
        return false;
    read_usage(v, t, n, 0, out);
    return true;
}

void json_write_error(wbuf *b, const char *message, const char *type, const char *code)
{
    wbuf_puts(b, "{\"error\":{\"message\":\"");
    wbuf_put_json_escaped(b, slice_of(message));
    wbuf_puts(b, "\",\"type\":\"");
    wbuf_put_json_escaped(b, slice_of(type));
    wbuf_puts(b, "\",\"param\":null,\"code\":");
    if (code) {
        wbuf_put_char(b, '"');
        wbuf_put_json_escaped(b, slice_of(code));
        wbuf_put_char(b, '"');
    } else {
        wbuf_puts(b, "null");
    }
    wbuf_puts(b, "}}");
}
