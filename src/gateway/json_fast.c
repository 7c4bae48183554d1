/* The fast path for plain content deltas (most of a stream): a strict
 * one-pass reader that stores no tokens, and a cache of the last chunks'
 * shapes, so a chunk that is the last one with other strings is read with a
 * few compares. It answers only where the jsmn path would answer the same;
 * anything else is left to json_inspect_chunk_full. */
#include "gateway/json.h"

#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* The fast path: one pass over the chunk, RFC 8259 strict, no tokens. It
 * accepts only JSON jsmn tokenises the same way (and less: no raw control
 * characters, nesting of at most FAST_MAX_DEPTH), so what it reads is what
 * the full path would read; it bails out wherever the full path would find
 * usage, an error or a finish. Most of a chunk is strings, which are crossed
 * 16 bytes at a time where SSE2 is there. */
enum { FAST_MAX_DEPTH = 16, FAST_MAX_TOKENS = JSON_STACK_TOKENS - 12 };

typedef enum fast_role { ROLE_PLAIN, ROLE_TOP, ROLE_CHOICES, ROLE_CHOICE, ROLE_DELTA } fast_role;

enum { SHAPE_MAX_SLOTS = 24, SHAPE_MAX_BYTES = 1024 };

typedef struct fast {
    const char *p, *end;
    int tokens;
    /* json_inspect_chunk_final: a top-level usage object and a choice's
     * finish_reason are taken (each such object then read through jsmn)
     * instead of refused. */
    bool final;
    bool choices_empty; /* the last top-level "choices" array had no element */
    /* What the final shape cache needs to know of the chunk it learns. */
    size_t choices_keys, choices_elements, content_keys; /* content_keys: top-level "type" or "delta" */
    size_t usage_objects, finish_choices;
    const char *usage_at, *usage_end, *choice_at, *choice_end;
    /* The string and number values met, for the shape cache; a "type"
     * value is not one (its bytes decide has_content, so they stay). */
    size_t slots;
    bool too_many_slots;
    const char *slot_start[SHAPE_MAX_SLOTS], *slot_end[SHAPE_MAX_SLOTS];
    bool slot_number[SHAPE_MAX_SLOTS];
} fast;

typedef enum fast_kind { KIND_OTHER, KIND_STRING, KIND_NULL, KIND_ARRAY, KIND_OBJECT } fast_kind;

/* What a parsed value was, as far as the chunk's fields care. */
typedef struct fast_value {
    fast_kind kind;
    slice str;        /* KIND_STRING: the contents, still escaped */
    size_t elements;  /* KIND_ARRAY */
    slice content;    /* ROLE_CHOICES, ROLE_CHOICE, ROLE_DELTA: the text the full path takes */
} fast_value;

/* The keys the fast path cares about, told apart once per key. */
typedef enum fast_key {
    KEY_OTHER, KEY_CHOICES, KEY_DELTA, KEY_CONTENT, KEY_TEXT, KEY_TYPE, KEY_RESPONSE,
    KEY_USAGE, KEY_ERROR, KEY_FINISH /* the final keys: see is_final_key */
} fast_key;

static bool is_final_key(fast_key k) { return k >= KEY_USAGE; }

#define KEY_IS(k, lit) ((k).len == sizeof(lit) - 1 && memcmp((k).ptr, (lit), sizeof(lit) - 1) == 0)

static fast_key classify_key(slice k)
{
    switch (k.len) {
    case 4:
        return KEY_IS(k, "type") ? KEY_TYPE : KEY_IS(k, "text") ? KEY_TEXT : KEY_OTHER;
    case 5:
        return KEY_IS(k, "delta") ? KEY_DELTA : KEY_IS(k, "usage") ? KEY_USAGE : KEY_IS(k, "error") ? KEY_ERROR : KEY_OTHER;
    case 7:
        return KEY_IS(k, "choices") ? KEY_CHOICES : KEY_IS(k, "content") ? KEY_CONTENT : KEY_OTHER;
    case 8:
        return KEY_IS(k, "response") ? KEY_RESPONSE : KEY_OTHER;
    case 13:
        return KEY_IS(k, "finish_reason") ? KEY_FINISH : KEY_OTHER;
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

static const char *digits_end(const char *p, const char *end)
{
    while (p < end && is_digit(*p))
        p++;
    return p;
}

/* The end of the number at p, or NULL when there is none (RFC 8259). */
static const char *number_end(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0') {
        p++;
    } else {
        const char *q = digits_end(p, end);
        if (q == p)
            return NULL;
        p = q;
    }
    if (p < end && *p == '.') {
        const char *q = digits_end(++p, end);
        if (q == p)
            return NULL;
        p = q;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const char *q = digits_end(p, end);
        if (q == p)
            return NULL;
        p = q;
    }
    return p;
}

static bool fast_number(fast *f)
{
    const char *e = number_end(f->p, f->end);
    if (!e)
        return false;
    f->p = e;
    return true;
}

static bool fast_value_at(fast *f, int depth, fast_role role, fast_value *v);

/* The objects json_inspect_chunk_final reads go through jsmn, as the full
 * path reads them, but each alone and into a small array: the one-pass
 * reader has checked the rest of the chunk. */
enum { FINAL_TOKENS = 48 };

/* Tokenises one object the reader has found valid; 0 when it needs more
 * tokens than FINAL_TOKENS (the full path's business then). */
static int final_tokenise(const char *s, size_t len, jsmntok_t *t)
{
    jsmn_parser p;
    jsmn_init(&p);
    int n = jsmn_parse(&p, s, len, t, FINAL_TOKENS);
    return n >= 1 && t[0].type == JSMN_OBJECT && (size_t)t[0].end == len ? n : 0;
}

/* Index of the token after the subtree rooted at i. */
static int tok_skip(const jsmntok_t *t, int n, int i)
{
    int pending = 1;
    for (; pending > 0 && i < n; i++) {
        if (t[i].type == JSMN_OBJECT)
            pending += 2 * t[i].size;
        else if (t[i].type == JSMN_ARRAY)
            pending += t[i].size;
        pending--;
    }
    return i;
}

static slice tok_text(const char *s, const jsmntok_t *t) { return (slice){s + t->start, (size_t)(t->end - t->start)}; }

/* The value of the first `key` member of the object at token obj, or -1. */
static int tok_member(const char *s, const jsmntok_t *t, int n, int obj, slice key)
{
    if (t[obj].type != JSMN_OBJECT)
        return -1;
    for (int j = obj + 1, k = 0; k < t[obj].size && j + 1 < n; k++) {
        if (slice_eq(tok_text(s, &t[j]), key))
            return j + 1;
        j = tok_skip(t, n, j + 1);
    }
    return -1;
}

static uint64_t tok_u64(const char *s, const jsmntok_t *t)
{
    uint64_t v = 0;
    for (int i = t->start; i < t->end && is_digit(s[i]); i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    return v;
}

/* A usage object (s[0..len) its braces), as the full path's read_usage. */
static bool final_usage(const char *s, size_t len, json_chunk_info *out)
{
    jsmntok_t t[FINAL_TOKENS];
    int n = final_tokenise(s, len, t);
    if (!n)
        return false;
    out->has_usage = true;
    for (int j = 1; j + 1 < n; j = tok_skip(t, n, j + 1)) {
        slice key = tok_text(s, &t[j]);
        if (slice_eq(key, SLICE_LIT("prompt_tokens")) || slice_eq(key, SLICE_LIT("input_tokens")))
            out->prompt_tokens = tok_u64(s, &t[j + 1]);
        else if (slice_eq(key, SLICE_LIT("completion_tokens")) || slice_eq(key, SLICE_LIT("output_tokens")))
            out->completion_tokens = tok_u64(s, &t[j + 1]);
    }
    return true;
}

/* A choice that carries a finish_reason: its text as choices_content takes
 * it from one element (the delta's content, else the text). */
static bool final_choice(const char *s, size_t len, slice *content)
{
    jsmntok_t t[FINAL_TOKENS];
    int n = final_tokenise(s, len, t);
    if (!n)
        return false;
    int delta = tok_member(s, t, n, 0, SLICE_LIT("delta"));
    int text = delta >= 0 ? tok_member(s, t, n, delta, SLICE_LIT("content")) : tok_member(s, t, n, 0, SLICE_LIT("text"));
    bool some = text >= 0 && t[text].type == JSMN_STRING && t[text].end > t[text].start;
    *content = some ? tok_text(s, &t[text]) : (slice){NULL, 0};
    return true;
}

/* The members of an object (f->p at its brace), with what the full path
 * reads from them for the object's role. */
static bool fast_object(fast *f, int depth, fast_role role, fast_value *v, json_chunk_info *out)
{
    const char *open = f->p;
    v->kind = KIND_OBJECT;
    f->p++;
    fast_space(f);
    if (f->p < f->end && *f->p == '}') {
        f->p++;
        return true;
    }
    bool delta_seen = false, text_seen = false, content_seen = false, finish_seen = false;
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
        fast_space(f);
        const char *value_at = f->p;
        fast_value val;
        if (!fast_value_at(f, depth + 1, inner, &val))
            return false;
        if (val.kind != KIND_NULL && is_final_key(kind)) {
            /* the full path's business, but for what the final mode reads */
            if (!f->final)
                return false;
            if (kind == KEY_FINISH && role == ROLE_CHOICE)
                finish_seen = true;
            else if (kind != KEY_USAGE || role != ROLE_TOP)
                return false;
            else if (val.kind == KIND_OBJECT) {
                if (!final_usage(value_at, (size_t)(f->p - value_at), out))
                    return false;
                f->usage_objects++;
                f->usage_at = value_at;
                f->usage_end = f->p;
            }
        }
        if (role == ROLE_TOP) {
            /* as json_inspect_chunk_full reads the top level, in order */
            if (kind == KEY_RESPONSE)
                return false;
            f->choices_keys += kind == KEY_CHOICES;
            f->content_keys += kind == KEY_TYPE || kind == KEY_DELTA;
            if (inner == ROLE_CHOICES && val.kind == KIND_ARRAY) {
                f->choices_empty = val.elements == 0;
                f->choices_elements = val.elements;
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
        if (finish_seen) {
            f->finish_choices++;
            f->choice_at = open;
            f->choice_end = f->p;
            return final_choice(open, (size_t)(f->p - open), &v->content);
        }
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
    /* A final chunk's: where its usage object and its finishing choice lie
     * (len 0: none), read through jsmn again on every match. */
    size_t usage_at, usage_len, choice_at, choice_len;
    bool choices_empty;
    size_t tail; /* bytes after the last value */
    char bytes[SHAPE_MAX_BYTES];
} shape;

/* Two: a stream's first chunk (the role) and the rest differ in shape. */
static shape shapes[2];
static size_t newest_shape;

/* How many leading bytes a and b (n each) share. Four blocks a turn while
 * all agree, then two, and the last block read overlapping the one before
 * (no byte-wise tail): a chunk is compared a few times over, up to each
 * changed value. */
__attribute__((always_inline)) static inline size_t common_prefix(const char *a, const char *b, size_t n)
{
    size_t i = 0;
#ifdef __SSE2__
    for (; i + 64 <= n; i += 64) { /* four blocks tested at once; the loop below finds where */
        __m128i e0 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i)));
        __m128i e1 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 16)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i + 16)));
        __m128i e2 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 32)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i + 32)));
        __m128i e3 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 48)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i + 48)));
        if (_mm_movemask_epi8(_mm_and_si128(_mm_and_si128(e0, e1), _mm_and_si128(e2, e3))) != 0xffff)
            break;
    }
    for (; i + 32 <= n; i += 32) {
        __m128i x0 = _mm_loadu_si128((const __m128i *)(const void *)(a + i));
        __m128i y0 = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
        __m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)(a + i + 16));
        __m128i y1 = _mm_loadu_si128((const __m128i *)(const void *)(b + i + 16));
        unsigned same = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x0, y0)) |
                        (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x1, y1)) << 16;
        if (same != 0xffffffffu)
            return i + (size_t)__builtin_ctz(~same);
    }
    if (n >= 16) {
        /* at most two blocks left; the last one may start before i */
        while (i < n) {
            size_t at = i + 16 <= n ? i : n - 16;
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(a + at));
            __m128i y = _mm_loadu_si128((const __m128i *)(const void *)(b + at));
            unsigned differ = ((unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) ^ 0xffffu) & (0xffffu << (i - at));
            if (differ)
                return at + (size_t)__builtin_ctz(differ);
            i = at + 16;
        }
        return n;
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
/* The values a match found changed (scanned anew), in order: everything
 * else of data is the cached chunk's bytes, moved by those values' change
 * in length. */
typedef struct shape_diff {
    size_t count;
    size_t slot[SHAPE_MAX_SLOTS], start[SHAPE_MAX_SLOTS], end[SHAPE_MAX_SLOTS];
} shape_diff;

/* Whether data is the cached chunk but for the values in its slots, each
 * valid (an empty string staying empty, a non-empty one non-empty). Inlined
 * in both callers: it is most of the cost of a cached chunk. */
__attribute__((always_inline)) static inline bool shape_compare(const shape *sh, const char *data, size_t len,
                                                                shape_diff *d)
{
    size_t pi = 0, di = 0, slot = 0; /* offsets in the cached chunk and in data */
    d->count = 0;
#ifdef __SSE2__
    /* What follows the last value is compared as it stands, up to both
     * ends: a chunk of another kind (a finish after content deltas) mostly
     * differs there, found with one compare instead of a whole pass. */
    if (sh->tail >= 16 && len >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(sh->bytes + sh->len - 16));
        __m128i y = _mm_loadu_si128((const __m128i *)(const void *)(data + len - 16));
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)) != 0xffff)
            return false;
    }
#endif
    for (;;) {
        size_t room = sh->len - pi < len - di ? sh->len - pi : len - di;
        size_t same = common_prefix(sh->bytes + pi, data + di, room);
        pi += same;
        di += same;
        /* Values passed whole are the same bytes, so the same values. */
        while (slot < sh->slots && sh->end[slot] < pi)
            slot++;
        if (pi == sh->len && di == len)
            break; /* every value passed: the chunk ends in a brace */
        /* A difference: fine only within a value (or just after it: the
         * new one is longer). Scan the new value from its start. */
        if (slot == sh->slots || sh->start[slot] > pi)
            return false;
        di -= pi - sh->start[slot];
        const char *close;
        if (sh->number[slot])
            close = number_end(data + di, data + len);
        else
            close = string_close(data + di, data + len);
        if (!close || (close == data + di) != (sh->start[slot] == sh->end[slot]))
            return false;
        d->slot[d->count] = slot;
        d->start[d->count] = di;
        d->end[d->count++] = di = (size_t)(close - data);
        pi = sh->end[slot++];
    }
    return slot == sh->slots;
}

/* Where offset x of the cached chunk (not inside a value) lies in data. */
static size_t shape_moved(const shape *sh, const shape_diff *d, size_t x)
{
    size_t moved = x;
    for (size_t k = 0; k < d->count && sh->end[d->slot[k]] <= x; k++)
        moved = x + d->end[k] - sh->end[d->slot[k]];
    return moved;
}

/* Where the value in slot s lies in data. */
static void shape_value(const shape *sh, const shape_diff *d, size_t s, size_t *start, size_t *end)
{
    for (size_t k = 0; k < d->count; k++)
        if (d->slot[k] == s) {
            *start = d->start[k];
            *end = d->end[k];
            return;
        }
    *start = shape_moved(sh, d, sh->start[s]);
    *end = *start + sh->end[s] - sh->start[s];
}

static bool shape_match(shape *sh, const char *data, size_t len, json_chunk_info *out)
{
    shape_diff d;
    if (!shape_compare(sh, data, len, &d))
        return false;
    slice content = {NULL, 0};
    if (sh->content_slot < sh->slots) {
        size_t start, end;
        shape_value(sh, &d, sh->content_slot, &start, &end);
        content = (slice){data + start, end - start};
    }
    *out = (json_chunk_info){.has_content = sh->has_content, .content = content};
    bool refresh = d.count > 1 || (d.count == 1 && d.slot[0] != sh->content_slot);
    if (refresh && len <= SHAPE_MAX_BYTES) {
        /* every value moved by the changes before it (wrapping arithmetic:
         * a value may have shrunk), the changed ones where they now lie */
        size_t shift = 0;
        for (size_t s = 0, k = 0; s < sh->slots; s++) {
            if (k < d.count && d.slot[k] == s) {
                shift = d.end[k] - sh->end[s];
                sh->start[s] = d.start[k];
                sh->end[s] = d.end[k];
                k++;
            } else {
                sh->start[s] += shift;
                sh->end[s] += shift;
            }
        }
        memcpy(sh->bytes, data, len);
        sh->len = len;
        sh->tail = len - (sh->slots ? sh->end[sh->slots - 1] : 0);
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
    sh->tail = len - (sh->slots ? sh->end[sh->slots - 1] : 0);
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

static bool content_cached(const char *data, size_t len, json_chunk_info *out)
{
    for (size_t k = 0; k < 2; k++) {
        size_t i = (newest_shape + k) % 2;
        if (shapes[i].len && shape_match(&shapes[i], data, len, out))
            return true;
    }
    return false;
}

static bool content_parsed(const char *data, size_t len, json_chunk_info *out)
{
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

bool json_inspect_chunk_fast(const char *data, size_t len, json_chunk_info *out)
{
    return content_cached(data, len, out) || content_parsed(data, len, out);
}

/* The final chunks' shape cache: a stream's finish chunk and its usage
 * chunk, each much like the last stream's. A match vouches for the
 * structure, as for content deltas; what is counted is read again by jsmn
 * from the usage object and the finishing choice, found where the cached
 * chunk had them, moved by the values before them that changed length. */
static shape final_shapes[2];
static size_t newest_final;

static bool final_match(const shape *sh, const char *data, size_t len, json_chunk_info *out)
{
    shape_diff d;
    if (!shape_compare(sh, data, len, &d))
        return false;
    *out = (json_chunk_info){0};
    if (sh->usage_len) {
        size_t at = shape_moved(sh, &d, sh->usage_at);
        if (!final_usage(data + at, shape_moved(sh, &d, sh->usage_at + sh->usage_len) - at, out))
            return false;
    }
    if (sh->choice_len) {
        size_t at = shape_moved(sh, &d, sh->choice_at);
        if (!final_choice(data + at, shape_moved(sh, &d, sh->choice_at + sh->choice_len) - at, &out->content))
            return false;
        out->has_content = out->content.len > 0;
    }
    out->usage_only = out->has_usage && sh->choices_empty;
    return true;
}

/* Learns a final chunk whose reading the cache can replay: one "choices"
 * (empty, or just the finishing choice), at most one usage object, no
 * top-level "type" or "delta". */
static void final_learn(shape *sh, const fast *f, const char *data, size_t len)
{
    sh->len = 0;
    bool one_choice = f->finish_choices == 1 && f->choices_elements == 1;
    bool no_choice = f->finish_choices == 0 && f->choices_elements == 0;
    if (f->too_many_slots || len > SHAPE_MAX_BYTES || f->choices_keys != 1 || f->content_keys ||
        f->usage_objects > 1 || !(one_choice || no_choice) || f->usage_objects + f->finish_choices == 0)
        return;
    for (size_t i = 0; i < f->slots; i++) {
        sh->start[i] = (size_t)(f->slot_start[i] - data);
        sh->end[i] = (size_t)(f->slot_end[i] - data);
        sh->number[i] = f->slot_number[i];
    }
    memcpy(sh->bytes, data, len);
    sh->slots = f->slots;
    sh->content_slot = f->slots; /* none: every value is read again */
    sh->has_content = false;
    sh->usage_at = f->usage_objects ? (size_t)(f->usage_at - data) : 0;
    sh->usage_len = f->usage_objects ? (size_t)(f->usage_end - f->usage_at) : 0;
    sh->choice_at = one_choice ? (size_t)(f->choice_at - data) : 0;
    sh->choice_len = one_choice ? (size_t)(f->choice_end - f->choice_at) : 0;
    sh->choices_empty = f->choices_empty;
    sh->len = len;
    sh->tail = len - (sh->slots ? sh->end[sh->slots - 1] : 0);
}

static bool final_cached(const char *data, size_t len, json_chunk_info *out)
{
    /* The other entry first: a stream's finish and usage chunks alternate. */
    for (size_t k = 1; k <= 2; k++) {
        size_t i = (newest_final + k) % 2;
        if (final_shapes[i].len && final_match(&final_shapes[i], data, len, out)) {
            newest_final = i;
            return true;
        }
    }
    return false;
}

static bool final_parsed(const char *data, size_t len, json_chunk_info *out)
{
    *out = (json_chunk_info){0};
    fast f = {.p = data, .end = data + len, .final = true};
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
    out->usage_only = out->has_usage && f.choices_empty;
    newest_final = (newest_final + 1) % 2;
    final_learn(&final_shapes[newest_final], &f, data, len);
    return true;
}

bool json_inspect_chunk_final(const char *data, size_t len, json_chunk_info *out)
{
    return final_cached(data, len, out) || final_parsed(data, len, out);
}

/* Each way answers as the full path would, so the order is only about
 * cost: the caches first, a stream's last chunks before any parse. */
bool json_inspect_chunk_known(const char *data, size_t len, json_chunk_info *out)
{
    return content_cached(data, len, out) || final_cached(data, len, out) || content_parsed(data, len, out) ||
           final_parsed(data, len, out);
}
