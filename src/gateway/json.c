#include "gateway/json.h"

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum { STACK_TOKENS = 512 };

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

/* The fast path: one pass over the chunk, RFC 8259 strict, no tokens. It
 * accepts only JSON jsmn tokenises the same way (and less: no raw control
 * characters, nesting of at most FAST_MAX_DEPTH), so what it reads is what
 * the full path would read; it bails out wherever the full path would find
 * usage, an error or a finish. Most of a chunk is strings, which are crossed
 * 16 bytes at a time where SSE2 is there. */
enum { FAST_MAX_DEPTH = 16, FAST_MAX_TOKENS = STACK_TOKENS - 12 };

typedef enum fast_role { ROLE_PLAIN, ROLE_TOP, ROLE_CHOICES, ROLE_CHOICE, ROLE_DELTA } fast_role;

enum { SHAPE_MAX_SLOTS = 24, SHAPE_MAX_BYTES = 1024 };

typedef struct fast {
    const char *p, *end;
    int tokens;
    /* The string and number values met, for the shape cache; a "type"
     * value is not one (its bytes decide has_content, so they stay). */
    size_t slots;
    bool too_many_slots;
    const char *slot_start[SHAPE_MAX_SLOTS], *slot_end[SHAPE_MAX_SLOTS];
    bool slot_number[SHAPE_MAX_SLOTS];
} fast;

typedef enum fast_kind { KIND_OTHER, KIND_STRING, KIND_NULL, KIND_ARRAY } fast_kind;

/* What a parsed value was, as far as the chunk's fields care. */
typedef struct fast_value {
    fast_kind kind;
    slice str;        /* KIND_STRING: the contents, still escaped */
    size_t elements;  /* KIND_ARRAY */
    slice content;    /* ROLE_CHOICES, ROLE_CHOICE, ROLE_DELTA: the text the full path takes */
} fast_value;

/* The keys the fast path cares about, told apart once per key. */
typedef enum fast_key { KEY_OTHER, KEY_CHOICES, KEY_DELTA, KEY_CONTENT, KEY_TEXT, KEY_TYPE, KEY_RESPONSE, KEY_FINAL } fast_key;

#define KEY_IS(k, lit) ((k).len == sizeof(lit) - 1 && memcmp((k).ptr, (lit), sizeof(lit) - 1) == 0)

static fast_key classify_key(slice k)
{
    switch (k.len) {
    case 4:
        return KEY_IS(k, "type") ? KEY_TYPE : KEY_IS(k, "text") ? KEY_TEXT : KEY_OTHER;
    case 5:
        return KEY_IS(k, "delta") ? KEY_DELTA : KEY_IS(k, "usage") || KEY_IS(k, "error") ? KEY_FINAL : KEY_OTHER;
    case 7:
        return KEY_IS(k, "choices") ? KEY_CHOICES : KEY_IS(k, "content") ? KEY_CONTENT : KEY_OTHER;
    case 8:
        return KEY_IS(k, "response") ? KEY_RESPONSE : KEY_OTHER;
    case 13:
        return KEY_IS(k, "finish_reason") ? KEY_FINAL : KEY_OTHER;
    default:
        return KEY_OTHER;
    }
}

static bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* p is just past an opening quote: the closing quote, or NULL for a string
 * the fast path does not take (unterminated, a bad escape, a control byte). */
static const char *string_close(const char *p, const char *end)
{
    for (;;) {
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), control = _mm_set1_epi8(0x1f);
        while (end - p >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
            __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                                       _mm_cmpeq_epi8(_mm_max_epu8(x, control), control));
            unsigned mask = (unsigned)_mm_movemask_epi8(hit);
            if (mask) {
                p += __builtin_ctz(mask);
                break;
            }
            p += 16;
        }
#endif
        while (p < end && (unsigned char)*p >= 0x20 && *p != '"' && *p != '\\')
            p++;
        if (p >= end || (unsigned char)*p < 0x20)
            return NULL;
        if (*p == '"')
            return p;
        if (++p >= end) /* past the backslash */
            return NULL;
        if (*p == 'u') {
            if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4]))
                return NULL;
            p += 5;
        } else if (*p == '"' || *p == '\\' || *p == '/' || *p == 'b' || *p == 'f' || *p == 'n' || *p == 'r' ||
                   *p == 't') {
            p++;
        } else {
            return NULL;
        }
    }
}

static void skip_space(fast *f)
{
    while (f->p < f->end && is_space(*f->p))
        f->p++;
}

/* Chunks seldom have white space: one compare for the usual case. */
static inline void fast_space(fast *f)
{
    if (f->p < f->end && (unsigned char)*f->p <= ' ')
        skip_space(f);
}

static bool fast_string(fast *f, slice *out)
{
    const char *close = string_close(f->p + 1, f->end);
    if (!close)
        return false;
    *out = (slice){f->p + 1, (size_t)(close - f->p - 1)};
    f->p = close + 1;
    return true;
}

static bool fast_literal(fast *f, const char *lit, size_t n)
{
    if ((size_t)(f->end - f->p) < n || memcmp(f->p, lit, n) != 0)
        return false;
    f->p += n;
    return true;
}

static bool fast_digits(fast *f)
{
    const char *start = f->p;
    while (f->p < f->end && is_digit(*f->p))
        f->p++;
    return f->p > start;
}

static bool fast_number(fast *f)
{
    if (f->p < f->end && *f->p == '-')
        f->p++;
    if (f->p < f->end && *f->p == '0')
        f->p++;
    else if (!fast_digits(f))
        return false;
    if (f->p < f->end && *f->p == '.') {
        f->p++;
        if (!fast_digits(f))
            return false;
    }
    if (f->p < f->end && (*f->p == 'e' || *f->p == 'E')) {
        f->p++;
        if (f->p < f->end && (*f->p == '+' || *f->p == '-'))
            f->p++;
        if (!fast_digits(f))
            return false;
    }
    return true;
}

static bool fast_value_at(fast *f, int depth, fast_role role, fast_value *v);

/* The members of an object (f->p at its brace), with what the full path
 * reads from them for the object's role. */
static bool fast_object(fast *f, int depth, fast_role role, fast_value *v, json_chunk_info *out)
{
    f->p++;
    fast_space(f);
    if (f->p < f->end && *f->p == '}') {
        f->p++;
        return true;
    }
    bool delta_seen = false, text_seen = false, content_seen = false;
    slice text = {NULL, 0};
    for (;;) {
        slice key;
        fast_space(f);
        if (f->p >= f->end || *f->p != '"' || !fast_string(f, &key) || ++f->tokens > FAST_MAX_TOKENS)
            return false;
        fast_space(f);
        if (f->p >= f->end || *f->p != ':')
            return false;
        f->p++;
        fast_role inner = ROLE_PLAIN;
        fast_key kind = classify_key(key);
        if (role == ROLE_TOP && kind == KEY_CHOICES)
            inner = ROLE_CHOICES;
        else if (role == ROLE_CHOICE && !delta_seen && kind == KEY_DELTA)
            inner = ROLE_DELTA;
        fast_value val;
        if (!fast_value_at(f, depth + 1, inner, &val))
            return false;
        if (val.kind != KIND_NULL && kind == KEY_FINAL)
            return false; /* the full path's business */
        if (role == ROLE_TOP) {
            /* as json_inspect_chunk_full reads the top level, in order */
            if (kind == KEY_RESPONSE)
                return false;
            if (inner == ROLE_CHOICES && val.kind == KIND_ARRAY) {
                out->content = val.content;
                out->has_content |= val.content.len > 0;
            } else if (kind == KEY_TYPE && val.kind == KIND_STRING) {
                out->has_content |= slice_eq(val.str, SLICE_LIT("response.output_text.delta"));
                if (!f->too_many_slots)
                    f->slots--; /* part of the skeleton */
            } else if (kind == KEY_DELTA && val.kind == KIND_STRING && !out->content.len) {
                out->content = val.str;
            }
        } else if (role == ROLE_CHOICE) {
            /* as choices_content: the first delta's content, else the first text */
            if (inner == ROLE_DELTA) {
                delta_seen = true;
                v->content = val.content;
            } else if (!text_seen && kind == KEY_TEXT) {
                text_seen = true;
                text = val.kind == KIND_STRING ? val.str : (slice){NULL, 0};
            }
        } else if (role == ROLE_DELTA && !content_seen && kind == KEY_CONTENT) {
            content_seen = true;
            v->content = val.kind == KIND_STRING ? val.str : (slice){NULL, 0};
        }
        fast_space(f);
        if (f->p < f->end && *f->p == ',') {
            f->p++;
            continue;
        }
        if (f->p >= f->end || *f->p != '}')
            return false;
        f->p++;
        if (role == ROLE_CHOICE && !delta_seen)
            v->content = text;
        return true;
    }
}

static bool fast_array(fast *f, int depth, fast_role role, fast_value *v)
{
    f->p++;
    fast_space(f);
    if (f->p < f->end && *f->p == ']') {
        f->p++;
        return true;
    }
    for (;;) {
        fast_value el;
        if (!fast_value_at(f, depth + 1, role == ROLE_CHOICES ? ROLE_CHOICE : ROLE_PLAIN, &el))
            return false;
        v->elements++;
        if (role == ROLE_CHOICES && !v->content.len)
            v->content = el.content; /* the first choice with text */
        fast_space(f);
        if (f->p < f->end && *f->p == ',') {
            f->p++;
            continue;
        }
        if (f->p >= f->end || *f->p != ']')
            return false;
        f->p++;
        return true;
    }
}

static void note_slot(fast *f, const char *start, const char *end, bool number)
{
    if (f->slots == SHAPE_MAX_SLOTS) {
        f->too_many_slots = true;
        return;
    }
    f->slot_start[f->slots] = start;
    f->slot_end[f->slots] = end;
    f->slot_number[f->slots++] = number;
}

static bool fast_value_at(fast *f, int depth, fast_role role, fast_value *v)
{
    *v = (fast_value){0};
    fast_space(f);
    if (f->p >= f->end || depth > FAST_MAX_DEPTH || ++f->tokens > FAST_MAX_TOKENS)
        return false;
    switch (*f->p) {
    case '"':
        v->kind = KIND_STRING;
        if (!fast_string(f, &v->str))
            return false;
        note_slot(f, v->str.ptr, v->str.ptr + v->str.len, false);
        return true;
    case '{':
        /* a choice's role only matters for an object; a delta's likewise */
        return fast_object(f, depth, role == ROLE_CHOICES ? ROLE_PLAIN : role, v, NULL);
    case '[':
        v->kind = KIND_ARRAY;
        return fast_array(f, depth, role == ROLE_CHOICES ? ROLE_CHOICES : ROLE_PLAIN, v);
    case 'n':
        v->kind = KIND_NULL;
        return fast_literal(f, "null", 4);
    case 't':
        return fast_literal(f, "true", 4);
    case 'f':
        return fast_literal(f, "false", 5);
    default: {
        const char *start = f->p;
        if (!fast_number(f))
            return false;
        note_slot(f, start, f->p, true);
        return true;
    }
    }
}

/* The shape cache. A stream's chunks differ in their strings (the text, and
 * in some APIs a random padding) and their numbers (a timestamp) and little
 * else, so the last chunks the parser below took are kept, with where their
 * string and number values lie. A chunk that is one of those with other
 * values in those places, each valid, a string empty where the old one
 * was, is the same JSON structure with the same keys, so the full path
 * would read it the same way: the same fields, the text from the same
 * place. Matching compares words up to the first difference, which must
 * lie in such a value; that value is scanned, and the compare goes on
 * after it. Per process: streams of other shapes only cost the parse. */
typedef struct shape {
    size_t len;                          /* 0: nothing cached */
    size_t slots;
    size_t start[SHAPE_MAX_SLOTS], end[SHAPE_MAX_SLOTS]; /* string and number values, as offsets */
    bool number[SHAPE_MAX_SLOTS];
    size_t content_slot;                 /* == slots: the content is empty, no slot */
    bool has_content;
    char bytes[SHAPE_MAX_BYTES];
} shape;

/* Two: a stream's first chunk (the role) and the rest differ in shape. */
static shape shapes[2];
static size_t newest_shape;

/* How many leading bytes a and b (n each) share. */
static size_t common_prefix(const char *a, const char *b, size_t n)
{
    size_t i = 0;
#ifdef __SSE2__
    for (; i + 16 <= n; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(a + i));
        __m128i y = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
        unsigned differ = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) ^ 0xffffu;
        if (differ)
            return i + (size_t)__builtin_ctz(differ);
    }
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return i + (size_t)__builtin_ctzll(x ^ y) / 8;
    }
#endif
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* On a match the chunk replaces the cached one when values other than the
 * text changed (a new stream's id and time), so that the stream's later
 * chunks differ from it in the text alone. */
static bool shape_match(shape *sh, const char *data, size_t len, json_chunk_info *out)
{
    size_t pi = 0, di = 0, slot = 0; /* offsets in the cached chunk and in data */
    size_t start[SHAPE_MAX_SLOTS], end[SHAPE_MAX_SLOTS];
    bool refresh = false;
    for (;;) {
        size_t room = sh->len - pi < len - di ? sh->len - pi : len - di;
        size_t same = common_prefix(sh->bytes + pi, data + di, room);
        pi += same;
        di += same;
        /* Values passed whole are the same bytes, so the same values. */
        for (; slot < sh->slots && sh->end[slot] < pi; slot++) {
            start[slot] = sh->start[slot] + di - pi;
            end[slot] = sh->end[slot] + di - pi;
        }
        if (pi == sh->len && di == len)
            break; /* every value passed: the chunk ends in a brace */
        /* A difference: fine only within a value (or just after it: the
         * new one is longer). Scan the new value from its start. */
        if (slot == sh->slots || sh->start[slot] > pi)
            return false;
        di -= pi - sh->start[slot];
        const char *close;
        if (sh->number[slot]) {
            fast f = {.p = data + di, .end = data + len};
            close = fast_number(&f) ? f.p : NULL;
        } else {
            close = string_close(data + di, data + len);
        }
        if (!close || (close == data + di) != (sh->start[slot] == sh->end[slot]))
            return false;
        refresh |= slot != sh->content_slot;
        start[slot] = di;
        end[slot] = di = (size_t)(close - data);
        pi = sh->end[slot++];
    }
    if (slot != sh->slots)
        return false;
    slice content = {NULL, 0};
    if (sh->content_slot < sh->slots)
        content = (slice){data + start[sh->content_slot], end[sh->content_slot] - start[sh->content_slot]};
    *out = (json_chunk_info){.has_content = sh->has_content, .content = content};
    if (refresh && len <= SHAPE_MAX_BYTES) {
        memcpy(sh->bytes, data, len);
        memcpy(sh->start, start, sh->slots * sizeof *start);
        memcpy(sh->end, end, sh->slots * sizeof *end);
        sh->len = len;
    }
    return true;
}

static void shape_learn(shape *sh, const fast *f, const char *data, size_t len, const json_chunk_info *info)
{
    sh->len = 0;
    if (f->too_many_slots || len > SHAPE_MAX_BYTES || len == 0)
        return;
    size_t content_slot = f->slots;
    for (size_t i = 0; i < f->slots; i++) {
        sh->start[i] = (size_t)(f->slot_start[i] - data);
        sh->end[i] = (size_t)(f->slot_end[i] - data);
        sh->number[i] = f->slot_number[i];
        if (info->content.ptr == f->slot_start[i] && info->content.len == sh->end[i] - sh->start[i])
            content_slot = i;
    }
    /* The content is a string value, so a slot, unless empty. */
    if (content_slot == f->slots && info->content.len)
        return;
    memcpy(sh->bytes, data, len);
    sh->slots = f->slots;
    sh->content_slot = content_slot;
    sh->has_content = info->has_content;
    sh->len = len;
}

/* Whether the chunk shows "finish_reason":" , "usage":{ or "error":{ as
 * written compactly: it is the full path's, and the one-pass reader would
 * find out only at the end. Spaced variants are left to that reader. Finds
 * each `":` followed by a quote or brace, 16 positions at a time. */
static bool final_key_before(const char *data, const char *colon)
{
    size_t before = (size_t)(colon - data);
    if (colon[1] == '"')
        return before >= 15 && memcmp(colon - 15, "\"finish_reason\"", 15) == 0;
    return before >= 7 && (memcmp(colon - 7, "\"usage\"", 7) == 0 || memcmp(colon - 7, "\"error\"", 7) == 0);
}

static bool looks_final(const char *data, size_t len)
{
    const char *p = data + 1, *end = data + len;
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), colon = _mm_set1_epi8(':'), brace = _mm_set1_epi8('{');
    while (end - p >= 17) {
        __m128i before = _mm_loadu_si128((const __m128i *)(const void *)(p - 1));
        __m128i at = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i after = _mm_loadu_si128((const __m128i *)(const void *)(p + 1));
        __m128i hit = _mm_and_si128(_mm_and_si128(_mm_cmpeq_epi8(before, quote), _mm_cmpeq_epi8(at, colon)),
                                    _mm_or_si128(_mm_cmpeq_epi8(after, quote), _mm_cmpeq_epi8(after, brace)));
        for (unsigned mask = (unsigned)_mm_movemask_epi8(hit); mask; mask &= mask - 1) {
            if (final_key_before(data, p + __builtin_ctz(mask)))
                return true;
        }
        p += 16;
    }
#endif
    for (; p + 1 < end; p++) {
        if (*p == ':' && p[-1] == '"' && (p[1] == '"' || p[1] == '{') && final_key_before(data, p))
            return true;
    }
    return false;
}

bool json_inspect_chunk_fast(const char *data, size_t len, json_chunk_info *out)
{
    for (size_t k = 0; k < 2; k++) {
        size_t i = (newest_shape + k) % 2;
        if (shapes[i].len && shape_match(&shapes[i], data, len, out))
            return true;
    }
    *out = (json_chunk_info){0};
    if (len < 2 || looks_final(data, len))
        return false;
    fast f = {.p = data, .end = data + len};
    fast_space(&f);
    if (f.p >= f.end || *f.p != '{')
        return false;
    f.tokens = 1;
    fast_value top = {0};
    bool ok = fast_object(&f, 0, ROLE_TOP, &top, out);
    fast_space(&f);
    if (!ok || f.p != f.end) {
        *out = (json_chunk_info){0};
        return false;
    }
    newest_shape = (newest_shape + 1) % 2;
    shape_learn(&shapes[newest_shape], &f, data, len, out);
    return true;
}

int json_inspect_chunk(const char *data, size_t len, arena *a, json_chunk_info *out)
{
    if (json_inspect_chunk_fast(data, len, out))
        return 0;
    return json_inspect_chunk_full(data, len, a, out);
}

/* End of the object starting at p[0] == '{', or NULL when it does not close. */
static const char *object_end(const char *p, const char *end)
{
    size_t depth = 0;
    for (; p < end; p++) {
        if (*p == '"') {
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\')
                    p++;
            if (p >= end)
                return NULL;
        } else if (*p == '{') {
            depth++;
        } else if (*p == '}' && --depth == 0) {
            return p + 1;
        }
    }
    return NULL;
}

bool json_find_usage(const char *body, size_t len, arena *a, json_chunk_info *out)
{
    *out = (json_chunk_info){0};
    static const char key[] = "\"usage\"";
    const char *end = body + len, *last = NULL;
    for (const char *p = body; (p = memmem(p, (size_t)(end - p), key, sizeof key - 1)) != NULL; p += sizeof key - 1)
        if (p == body || p[-1] != '\\') /* an escaped quote is inside a string */
            last = p;
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
