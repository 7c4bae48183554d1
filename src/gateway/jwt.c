#include "gateway/jwt.h"

#include "core/base64.h"
#include "gateway/json.h"

/* BearSSL's inline helpers trip -Wconversion; they are not our code. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wconversion"
#include <bearssl.h>
#pragma GCC diagnostic pop
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

/* ---- key storage ------------------------------------------------------- */

enum {
    RSA_MIN_BITS = 2048,              /* RFC 7518 §3.3 */
    RSA_MAX_BYTES = 4096 / 8,         /* BearSSL's RSA engines stop there */
    RSA_MAX_E_BYTES = 8,
    EC_MAX_POINT = 1 + 2 * 48, /* uncompressed P-384 */
    KID_MAX = 127,
    FILE_MAX = 1024 * 1024,
    WHY_MAX = 384,
};

typedef enum key_type { KEY_RSA, KEY_EC } key_type;

typedef struct jwt_key {
    key_type type;
    int curve;    /* BR_EC_secp256r1 or BR_EC_secp384r1 for EC keys */
    int only_alg; /* index into algs[] from a JWK's "alg", or -1 */
    bool has_kid;
    size_t kid_len;
    char kid[KID_MAX];
    size_t nlen, elen, qlen;
    unsigned char n[RSA_MAX_BYTES], e[RSA_MAX_E_BYTES];
    unsigned char q[EC_MAX_POINT];
} jwt_key;

struct jwt_keys {
    unsigned char *secret;
    size_t secret_len;
    jwt_key *keys;
    size_t count, cap;
    char why[WHY_MAX];
};

jwt_keys *jwt_keys_new(void) { return calloc(1, sizeof(jwt_keys)); }

void jwt_keys_free(jwt_keys *k)
{
    if (k == NULL)
        return;
    if (k->secret != NULL)
        explicit_bzero(k->secret, k->secret_len);
    free(k->secret);
    free(k->keys);
    free(k);
}

size_t jwt_keys_count(const jwt_keys *k) { return k->count + (k->secret != NULL); }

__attribute__((format(printf, 3, 4))) static int fail(jwt_keys *k, const char **why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k->why, sizeof k->why, fmt, ap);
    va_end(ap);
    *why = k->why;
    return -1;
}

/* 1-based line of text[at]. */
static unsigned line_of(const char *text, size_t len, size_t at)
{
    unsigned line = 1;
    for (size_t i = 0; i < at && i < len; i++)
        line += text[i] == '\n';
    return line;
}

/* ---- algorithms -------------------------------------------------------- */

typedef enum alg_family { FAM_HMAC, FAM_RSA, FAM_EC } alg_family;

typedef struct alg_desc {
    const char *name;
    alg_family family;
    const br_hash_class *hash;
    const unsigned char *rsa_oid;
    size_t hash_len;
    int curve; /* ES: the curve the key must be on */
} alg_desc;

static const alg_desc algs[] = {
    {"HS256", FAM_HMAC, &br_sha256_vtable, NULL, 32, 0},
    {"HS384", FAM_HMAC, &br_sha384_vtable, NULL, 48, 0},
    {"HS512", FAM_HMAC, &br_sha512_vtable, NULL, 64, 0},
    {"RS256", FAM_RSA, &br_sha256_vtable, BR_HASH_OID_SHA256, 32, 0},
    {"RS384", FAM_RSA, &br_sha384_vtable, BR_HASH_OID_SHA384, 48, 0},
    {"RS512", FAM_RSA, &br_sha512_vtable, BR_HASH_OID_SHA512, 64, 0},
    {"ES256", FAM_EC, &br_sha256_vtable, NULL, 32, BR_EC_secp256r1},
    {"ES384", FAM_EC, &br_sha384_vtable, NULL, 48, BR_EC_secp384r1},
};
enum { ALG_COUNT = sizeof algs / sizeof algs[0] };

static size_t coord_len(int curve) { return curve == BR_EC_secp256r1 ? 32 : 48; }

/* ---- JSON through jsmn ------------------------------------------------- */

/* jsmn, even strict, lets through {"a"}, {"a":1,}, [1 2], bare words, a raw
 * control character in a string and anything after the first value; the
 * walk below checks what lies between and inside the tokens, so a document
 * that passes is one RFC 8259 object and nothing else. */

enum { JSON_MAX_DEPTH = 32 };

typedef struct jdoc {
    const char *s;
    size_t len;
    const jsmntok_t *t;
    int n;
    size_t bad_at; /* where the walk gave up, for messages */
} jdoc;

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static slice tok_slice(const jdoc *d, int i)
{
    return (slice){d->s + d->t[i].start, (size_t)(d->t[i].end - d->t[i].start)};
}

/* A token's first and one-past-last byte in the text, quotes included. */
static size_t tok_begin(const jdoc *d, int i) { return (size_t)d->t[i].start - (d->t[i].type == JSMN_STRING); }
static size_t tok_finish(const jdoc *d, int i) { return (size_t)d->t[i].end + (d->t[i].type == JSMN_STRING); }

/* s[from..to) is white space around exactly one `sep` (none when sep is 0). */
static bool gap_is(const char *s, size_t from, size_t to, char sep)
{
    bool seen = sep == 0;
    for (size_t i = from; i < to; i++) {
        if (is_ws(s[i]))
            continue;
        if (s[i] != sep || seen)
            return false;
        seen = true;
    }
    return seen;
}


/* The bytes a JSON string's raw contents stand for, one at a time: escapes
 * undone, \uXXXX (and surrogate pairs) as UTF-8. */
typedef struct jstr_iter {
    slice raw;
    size_t i;
    unsigned char pend[4];
    unsigned npend, ipend;
} jstr_iter;

enum { JSTR_END = -1, JSTR_BAD = -2 };

static int hex4(const char *p, size_t avail, uint32_t *out)
{
    if (avail < 4)
        return -1;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (uint32_t)(c - 'A' + 10);
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

static int jstr_next(jstr_iter *it)
{
    if (it->ipend < it->npend)
        return it->pend[it->ipend++];
    const char *p = it->raw.ptr;
    size_t n = it->raw.len;
    if (it->i >= n)
        return JSTR_END;
    unsigned char c = (unsigned char)p[it->i++];
    if (c < 0x20)
        return JSTR_BAD;
    if (c != '\\')
        return c;
    if (it->i >= n)
        return JSTR_BAD;
    switch (p[it->i++]) {
    case '"': return '"';
    case '\\': return '\\';
    case '/': return '/';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'u': break;
    default: return JSTR_BAD;
    }
    uint32_t cp;
    if (hex4(p + it->i, n - it->i, &cp) < 0)
        return JSTR_BAD;
    it->i += 4;
    if (cp >= 0xdc00 && cp <= 0xdfff)
        return JSTR_BAD; /* a low surrogate on its own */
    if (cp >= 0xd800 && cp <= 0xdbff) {
        uint32_t lo;
        if (n - it->i < 6 || p[it->i] != '\\' || p[it->i + 1] != 'u' || hex4(p + it->i + 2, n - it->i - 2, &lo) < 0 ||
            lo < 0xdc00 || lo > 0xdfff)
            return JSTR_BAD;
        it->i += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (cp < 0x80)
        return (int)cp;
    if (cp < 0x800) {
        it->pend[0] = (unsigned char)(0xc0 | cp >> 6);
        it->pend[1] = (unsigned char)(0x80 | (cp & 0x3f));
        it->npend = 2;
    } else if (cp < 0x10000) {
        it->pend[0] = (unsigned char)(0xe0 | cp >> 12);
        it->pend[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        it->pend[2] = (unsigned char)(0x80 | (cp & 0x3f));
        it->npend = 3;
    } else {
        it->pend[0] = (unsigned char)(0xf0 | cp >> 18);
        it->pend[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
        it->pend[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        it->pend[3] = (unsigned char)(0x80 | (cp & 0x3f));
        it->npend = 4;
    }
    it->ipend = 1;
    return it->pend[0];
}

static jstr_iter jstr_of(slice raw) { return (jstr_iter){.raw = raw}; }

static bool jstr_valid(slice raw)
{
    jstr_iter it = jstr_of(raw);
    int c;
    while ((c = jstr_next(&it)) >= 0)
        ;
    return c == JSTR_END;
}

/* Two raw (valid) JSON strings stand for the same bytes. */
static bool jstr_eq(slice a, slice b)
{
    jstr_iter x = jstr_of(a), y = jstr_of(b);
    for (;;) {
        int ca = jstr_next(&x), cb = jstr_next(&y);
        if (ca != cb)
            return false;
        if (ca < 0)
            return true;
    }
}

static bool jstr_eq_bytes(slice raw, const char *bytes, size_t len)
{
    jstr_iter it = jstr_of(raw);
    for (size_t i = 0; i < len; i++)
        if (jstr_next(&it) != (unsigned char)bytes[i])
            return false;
    return jstr_next(&it) == JSTR_END;
}

/* Unescapes into out[0..cap); false when it does not fit. */
static bool jstr_copy(slice raw, char *out, size_t cap, size_t *len)
{
    jstr_iter it = jstr_of(raw);
    size_t n = 0;
    int c;
    while ((c = jstr_next(&it)) >= 0) {
        if (n == cap)
            return false;
        out[n++] = (char)c;
    }
    *len = n;
    return true;
}

/* Checks the value at token i; returns the index after it, or -1. */
static int jcheck(jdoc *d, int i, int depth)
{
    if (i >= d->n || depth > JSON_MAX_DEPTH)
        return -1;
    const jsmntok_t *t = &d->t[i];
    d->bad_at = (size_t)t->start;
    if (t->type == JSMN_STRING)
        return t->size == 0 && jstr_valid(tok_slice(d, i)) ? i + 1 : -1;
    if (t->type == JSMN_PRIMITIVE)
        return t->size == 0 && json_primitive_ok(tok_slice(d, i)) ? i + 1 : -1;
    bool object = t->type == JSMN_OBJECT;
    if (!object && t->type != JSMN_ARRAY)
        return -1;
    size_t at = (size_t)t->start + 1;
    int j = i + 1;
    for (int k = 0; k < t->size; k++) {
        if (j >= d->n || !gap_is(d->s, at, tok_begin(d, j), k ? ',' : 0))
            return -1;
        if (object) {
            d->bad_at = (size_t)d->t[j].start;
            if (d->t[j].type != JSMN_STRING || d->t[j].size != 1 || j + 1 >= d->n ||
                !jstr_valid(tok_slice(d, j)) || !gap_is(d->s, tok_finish(d, j), tok_begin(d, j + 1), ':'))
                return -1;
            j++;
        }
        int next = jcheck(d, j, depth + 1);
        if (next < 0)
            return -1;
        at = tok_finish(d, j);
        j = next;
    }
    d->bad_at = at;
    return gap_is(d->s, at, (size_t)t->end - 1, 0) ? j : -1;
}

typedef enum jparse_rc { JP_OK, JP_NOT_OBJECT, JP_TOO_BIG } jparse_rc;

/* Tokenises s into toks[0..cap) and checks it is exactly one JSON object. */
static jparse_rc jparse(jdoc *d, const char *s, size_t len, jsmntok_t *toks, unsigned cap)
{
    *d = (jdoc){s, len, toks, 0, 0};
    jsmn_parser p;
    jsmn_init(&p);
    int n = jsmn_parse(&p, s, len, toks, cap);
    d->bad_at = p.pos;
    if (n == JSMN_ERROR_NOMEM)
        return JP_TOO_BIG;
    if (n < 1)
        return JP_NOT_OBJECT;
    d->n = n;
    if (toks[0].type != JSMN_OBJECT || !gap_is(s, 0, (size_t)toks[0].start, 0))
        return JP_NOT_OBJECT;
    if (jcheck(d, 0, 0) != n)
        return JP_NOT_OBJECT;
    d->bad_at = (size_t)toks[0].end;
    return gap_is(s, (size_t)toks[0].end, len, 0) ? JP_OK : JP_NOT_OBJECT;
}

/* Index of the token after the subtree rooted at i: tokens come in document
 * order, so it is the first one that starts past i's end. */
static int jskip(const jdoc *d, int i)
{
    int j = i + 1;
    while (j < d->n && d->t[j].start < d->t[i].end)
        j++;
    return j;
}

/* The value of member `name` of the object at obj, or -1. */
static int jget(const jdoc *d, int obj, const char *name)
{
    size_t len = strlen(name);
    int j = obj + 1;
    for (int k = 0; k < d->t[obj].size; k++) {
        if (jstr_eq_bytes(tok_slice(d, j), name, len))
            return j + 1;
        j = jskip(d, j + 1);
    }
    return -1;
}

/* Some member name of the object at obj appears twice (after unescaping). */
static bool jdups(const jdoc *d, int obj)
{
    int size = d->t[obj].size, a = obj + 1;
    for (int x = 0; x < size; x++) {
        int b = jskip(d, a + 1);
        for (int y = x + 1; y < size; y++) {
            if (jstr_eq(tok_slice(d, a), tok_slice(d, b)))
                return true;
            b = jskip(d, b + 1);
        }
        a = jskip(d, a + 1);
    }
    return false;
}

static bool jis_string(const jdoc *d, int i) { return d->t[i].type == JSMN_STRING; }

/* A non-negative integer without fraction or exponent, within uint64_t. */
static bool jget_u64(const jdoc *d, int i, uint64_t *out)
{
    slice s = tok_slice(d, i);
    if (d->t[i].type != JSMN_PRIMITIVE || s.len == 0)
        return false;
    uint64_t v = 0;
    for (size_t j = 0; j < s.len; j++) {
        if (!is_digit(s.ptr[j]))
            return false;
        uint64_t digit = (uint64_t)(s.ptr[j] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    *out = v;
    return true;
}

/* ---- DER and public keys ----------------------------------------------- */

typedef struct der {
    const unsigned char *p;
    size_t len;
} der;

/* Takes the next element if it has `tag`: its contents into *content, and
 * the whole element (header included) into *whole when asked. Definite,
 * minimal lengths only, as DER has them. */
static bool der_take(der *d, unsigned char tag, der *content, der *whole)
{
    if (d->len < 2 || d->p[0] != tag)
        return false;
    size_t hdr = 2, len = d->p[1];
    if (len & 0x80) {
        size_t nb = len & 0x7f;
        if (nb == 0 || nb > 3 || d->len - 2 < nb || d->p[2] == 0)
            return false;
        len = 0;
        for (size_t i = 0; i < nb; i++)
            len = len << 8 | d->p[2 + i];
        if (len < 0x80)
            return false;
        hdr += nb;
    }
    if (len > d->len - hdr)
        return false;
    if (content)
        *content = (der){d->p + hdr, len};
    if (whole)
        *whole = (der){d->p, hdr + len};
    d->p += hdr + len;
    d->len -= hdr + len;
    return true;
}

static bool der_is(der d, const char *bytes, size_t len) { return d.len == len && memcmp(d.p, bytes, len) == 0; }
#define DER_IS(d, lit) der_is((d), (lit), sizeof(lit) - 1)

/* A positive INTEGER, its leading zero octet dropped. */
static bool der_uint(der *d, der *out)
{
    der v;
    if (!der_take(d, 0x02, &v, NULL) || v.len == 0 || (v.p[0] & 0x80))
        return false;
    if (v.p[0] == 0 && v.len > 1) {
        if (!(v.p[1] & 0x80))
            return false; /* not minimal */
        v.p++;
        v.len--;
    }
    *out = v;
    return true;
}

/* Key material as found, pointing into the input. */
typedef struct key_material {
    key_type type;
    int curve;
    der n, e, q;
} key_material;

typedef struct key_meta {
    bool has_kid;
    size_t kid_len;
    char kid[KID_MAX];
    int only_alg;
} key_meta;

static const key_meta no_meta = {.only_alg = -1};

static const char *parse_pkcs1_rsa(der in, key_material *m)
{
    der seq;
    if (!der_take(&in, 0x30, &seq, NULL) || in.len != 0)
        return "not a DER RSAPublicKey";
    m->type = KEY_RSA;
    if (!der_uint(&seq, &m->n) || !der_uint(&seq, &m->e) || seq.len != 0)
        return "RSAPublicKey is not two positive INTEGERs";
    return NULL;
}

static const char *parse_spki(der in, key_material *m)
{
    der spki, alg, oid, bits;
    if (!der_take(&in, 0x30, &spki, NULL) || in.len != 0)
        return "not a DER SubjectPublicKeyInfo";
    if (!der_take(&spki, 0x30, &alg, NULL) || !der_take(&alg, 0x06, &oid, NULL))
        return "SubjectPublicKeyInfo has no algorithm identifier";
    if (!der_take(&spki, 0x03, &bits, NULL) || spki.len != 0)
        return "SubjectPublicKeyInfo has no public key BIT STRING";
    if (bits.len < 1 || bits.p[0] != 0)
        return "public key BIT STRING has unused bits";
    der key = {bits.p + 1, bits.len - 1};
    if (DER_IS(oid, "\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01")) { /* rsaEncryption */
        if (alg.len != 0 && !DER_IS(alg, "\x05\x00"))
            return "rsaEncryption parameters are not NULL";
        return parse_pkcs1_rsa(key, m);
    }
    if (DER_IS(oid, "\x2a\x86\x48\xce\x3d\x02\x01")) { /* id-ecPublicKey */
        der curve;
        if (!der_take(&alg, 0x06, &curve, NULL) || alg.len != 0)
            return "EC key has no named curve";
        if (DER_IS(curve, "\x2a\x86\x48\xce\x3d\x03\x01\x07"))
            m->curve = BR_EC_secp256r1;
        else if (DER_IS(curve, "\x2b\x81\x04\x00\x22"))
            m->curve = BR_EC_secp384r1;
        else if (DER_IS(curve, "\x2b\x81\x04\x00\x23"))
            return "EC curve P-521 is not supported (only P-256 and P-384)";
        else
            return "EC curve is not supported (only P-256 and P-384)";
        m->type = KEY_EC;
        m->q = key;
        return NULL;
    }
    if (DER_IS(oid, "\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0a"))
        return "RSA-PSS keys are not supported (use an rsaEncryption key)";
    if (DER_IS(oid, "\x2b\x65\x70") || DER_IS(oid, "\x2b\x65\x71"))
        return "Ed25519/Ed448 keys are not supported";
    return "key algorithm is not supported (only RSA and EC)";
}

/* Only the key is taken; the certificate itself is not checked. */
static const char *parse_certificate(der in, key_material *m)
{
    der cert, tbs, spki;
    if (!der_take(&in, 0x30, &cert, NULL) || in.len != 0 || !der_take(&cert, 0x30, &tbs, NULL))
        return "not a DER certificate";
    if (tbs.len > 0 && tbs.p[0] == 0xa0 && !der_take(&tbs, 0xa0, NULL, NULL))
        return "certificate version is malformed";
    /* serialNumber, signature, issuer, validity, subject */
    if (!der_take(&tbs, 0x02, NULL, NULL) || !der_take(&tbs, 0x30, NULL, NULL) || !der_take(&tbs, 0x30, NULL, NULL) ||
        !der_take(&tbs, 0x30, NULL, NULL) || !der_take(&tbs, 0x30, NULL, NULL) || !der_take(&tbs, 0x30, NULL, &spki))
        return "certificate has no SubjectPublicKeyInfo where expected";
    return parse_spki(spki, m);
}

static int bit_length(const unsigned char *p, size_t len)
{
    if (len == 0)
        return 0;
    int bits = (int)(len - 1) * 8;
    for (unsigned char top = p[0]; top; top >>= 1)
        bits++;
    return bits;
}

/* Checks the material and appends it as a key. Returns NULL or a reason. */
static const char *add_key(jwt_keys *k, const key_material *m, const key_meta *meta)
{
    jwt_key key = {.type = m->type, .curve = m->curve, .only_alg = meta->only_alg, .has_kid = meta->has_kid,
                   .kid_len = meta->kid_len};
    memcpy(key.kid, meta->kid, meta->kid_len);
    if (m->type == KEY_RSA) {
        der n = m->n, e = m->e;
        while (n.len > 0 && n.p[0] == 0)
            n.p++, n.len--;
        while (e.len > 0 && e.p[0] == 0)
            e.p++, e.len--;
        int bits = bit_length(n.p, n.len);
        if (bits < RSA_MIN_BITS)
            return "RSA modulus is shorter than 2048 bits";
        if (n.len > RSA_MAX_BYTES)
            return "RSA modulus is longer than 4096 bits";
        if (!(n.p[n.len - 1] & 1))
            return "RSA modulus is even";
        if (e.len == 0 || e.len > RSA_MAX_E_BYTES || !(e.p[e.len - 1] & 1) || (e.len == 1 && e.p[0] < 3))
            return "RSA exponent is not an odd number of at least 3 (and at most 64 bits)";
        memcpy(key.n, n.p, n.len);
        key.nlen = n.len;
        memcpy(key.e, e.p, e.len);
        key.elen = e.len;
    } else {
        size_t want = 1 + 2 * coord_len(m->curve);
        if (m->q.len != want || m->q.p[0] != 0x04)
            return "EC point is not an uncompressed point of the curve's size";
        memcpy(key.q, m->q.p, want);
        key.qlen = want;
        /* BearSSL decodes the point before multiplying and fails off the curve. */
        unsigned char probe[EC_MAX_POINT];
        memcpy(probe, m->q.p, want);
        if (!br_ec_prime_i31.mul(probe, want, (const unsigned char *)"\x01", 1, m->curve))
            return "EC point is not on the curve";
    }
    if (k->count == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 4;
        jwt_key *nk = realloc(k->keys, cap * sizeof *nk);
        if (nk == NULL)
            return "out of memory";
        k->keys = nk;
        k->cap = cap;
    }
    k->keys[k->count++] = key;
    return NULL;
}

static const char *add_der(jwt_keys *k, jwt_der_kind kind, der in, const key_meta *meta)
{
    key_material m = {0};
    const char *bad = kind == JWT_DER_SPKI        ? parse_spki(in, &m)
                      : kind == JWT_DER_PKCS1_RSA ? parse_pkcs1_rsa(in, &m)
                                                  : parse_certificate(in, &m);
    return bad ? bad : add_key(k, &m, meta);
}

int jwt_keys_parse_der(jwt_keys *k, jwt_der_kind kind, const unsigned char *der_bytes, size_t len,
                       const char *origin, const char **why)
{
    const char *bad = add_der(k, kind, (der){der_bytes, len}, &no_meta);
    return bad ? fail(k, why, "%s: %s", origin, bad) : 0;
}

/* ---- PEM --------------------------------------------------------------- */

enum { PEM_OBJECT_MAX = 16 * 1024 };

typedef struct pem_state {
    br_pem_decoder_context pc;
    const char *text;
    size_t len, off; /* off: bytes of text consumed */
    bool in_object;
    unsigned begin_line;
    char name[128];
    unsigned char der[PEM_OBJECT_MAX];
    size_t der_len;
    bool der_overflow;
    size_t objects, keys_before;
} pem_state;

static void pem_collect(void *ctx, const void *src, size_t len)
{
    pem_state *st = ctx;
    if (len > sizeof st->der - st->der_len) {
        st->der_overflow = true;
        return;
    }
    memcpy(st->der + st->der_len, src, len);
    st->der_len += len;
}

static bool name_is(const char *name, const char *want) { return strcmp(name, want) == 0; }

static int pem_object_done(jwt_keys *k, pem_state *st, const char *origin, const char **why)
{
    const char *name = st->name;
    unsigned line = st->begin_line;
    st->in_object = false;
    st->objects++;
    if (st->der_overflow)
        return fail(k, why, "%s line %u: PEM object \"%s\" is larger than 16 KiB", origin, line, name);
    if (name_is(name, "EC PARAMETERS"))
        return 0; /* openssl ecparam writes these before the key */
    if (strstr(name, "PRIVATE KEY") != NULL)
        return fail(k, why, "%s line %u: \"%s\" is a private key; give the public key", origin, line, name);
    jwt_der_kind kind;
    if (name_is(name, "PUBLIC KEY"))
        kind = JWT_DER_SPKI;
    else if (name_is(name, "RSA PUBLIC KEY"))
        kind = JWT_DER_PKCS1_RSA;
    else if (name_is(name, "CERTIFICATE"))
        kind = JWT_DER_CERTIFICATE;
    else
        return fail(k, why, "%s line %u: unexpected PEM object \"%s\" (expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)",
                    origin, line, name);
    const char *bad = add_der(k, kind, (der){st->der, st->der_len}, &no_meta);
    return bad ? fail(k, why, "%s line %u: %s: %s", origin, line, name, bad) : 0;
}

/* Feeds bytes to the decoder, acting on each event. `from_text` tells
 * whether the bytes are the text's (for line numbers). */
static int pem_feed(jwt_keys *k, pem_state *st, const char *p, size_t len, bool from_text, const char *origin,
                    const char **why)
{
    while (len > 0) {
        size_t used = br_pem_decoder_push(&st->pc, p, len);
        p += used;
        len -= used;
        if (from_text)
            st->off += used;
        /* The byte that raised the event: the end of a banner line, or the culprit. */
        unsigned line = line_of(st->text, st->len, st->off ? st->off - 1 : 0);
        switch (br_pem_decoder_event(&st->pc)) {
        case BR_PEM_BEGIN_OBJ:
            st->in_object = true;
            st->begin_line = line;
            snprintf(st->name, sizeof st->name, "%s", br_pem_decoder_name(&st->pc));
            st->der_len = 0;
            st->der_overflow = false;
            br_pem_decoder_setdest(&st->pc, pem_collect, st);
            break;
        case BR_PEM_END_OBJ:
            if (st->in_object && pem_object_done(k, st, origin, why) < 0)
                return -1;
            break;
        case BR_PEM_ERROR:
            return fail(k, why, "%s line %u: malformed PEM", origin, line);
        default:
            break;
        }
    }
    return 0;
}

int jwt_keys_parse_pem(jwt_keys *k, const char *text, size_t len, const char *origin, const char **why)
{
    pem_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return fail(k, why, "%s: out of memory", origin);
    size_t before = k->count;
    st->text = text;
    st->len = len;
    br_pem_decoder_init(&st->pc);
    /* The decoder acts on a banner once its line ends; a last line without
     * a newline still counts. */
    int rc = pem_feed(k, st, text, len, true, origin, why);
    if (rc == 0)
        rc = pem_feed(k, st, "\n", 1, false, origin, why);
    if (rc == 0 && st->in_object)
        rc = fail(k, why, "%s line %u: PEM object \"%s\" has no END line", origin, st->begin_line, st->name);
    if (rc == 0 && k->count == before)
        rc = fail(k, why, "%s: no public key found (expected -----BEGIN PUBLIC KEY-----)", origin);
    if (rc != 0)
        k->count = before;
    free(st);
    return rc;
}

/* ---- JWKS -------------------------------------------------------------- */

static int alg_index(slice raw)
{
    for (int a = 0; a < ALG_COUNT; a++)
        if (jstr_eq_bytes(raw, algs[a].name, strlen(algs[a].name)))
            return a;
    return -1;
}

/* Decodes member `name` (a base64url string) of the JWK at obj; on failure
 * writes why into msg. */
static bool jwk_bytes(const jdoc *d, int obj, const char *name, unsigned char *out, size_t cap, size_t *len,
                      char *msg, size_t msg_cap)
{
    int v = jget(d, obj, name);
    const char *bad = NULL;
    if (v < 0)
        bad = "is missing";
    else if (!jis_string(d, v))
        bad = "is not a string";
    else if (base64url_decoded_len(tok_slice(d, v).len) > cap)
        bad = "is longer than any supported key's";
    else if (!base64url_decode(tok_slice(d, v), out, cap, len))
        bad = "is not base64url (unpadded, canonical)";
    if (bad)
        snprintf(msg, msg_cap, "member %s %s", name, bad);
    return bad == NULL;
}

typedef enum jwk_rc { JWK_ADDED, JWK_SKIPPED, JWK_BAD } jwk_rc;

/* Adds the JWK at obj, skips it when it is not for us, or writes into msg
 * why it is wrong. */
static jwk_rc jwk_add(jwt_keys *k, const jdoc *d, int obj, char *msg, size_t msg_cap)
{
    static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};
    for (size_t i = 0; i < sizeof private_members / sizeof private_members[0]; i++)
        if (jget(d, obj, private_members[i]) >= 0) {
            snprintf(msg, msg_cap, "holds private or secret key material (member %s); give public keys only",
                     private_members[i]);
            return JWK_BAD;
        }
    const char *bad = NULL;
    int kty = jget(d, obj, "kty"), use = jget(d, obj, "use"), kid = jget(d, obj, "kid"), alg = jget(d, obj, "alg");
    if (kty < 0 || !jis_string(d, kty))
        bad = "has no kty string";
    else if (use >= 0 && !jis_string(d, use))
        bad = "member use is not a string";
    else if (kid >= 0 && !jis_string(d, kid))
        bad = "member kid is not a string";
    else if (alg >= 0 && !jis_string(d, alg))
        bad = "member alg is not a string";
    if (bad) {
        snprintf(msg, msg_cap, "%s", bad);
        return JWK_BAD;
    }
    if (use >= 0 && !jstr_eq_bytes(tok_slice(d, use), "sig", 3))
        return JWK_SKIPPED; /* an encryption key */

    key_meta meta = no_meta;
    if (kid >= 0) {
        if (!jstr_copy(tok_slice(d, kid), meta.kid, sizeof meta.kid, &meta.kid_len)) {
            snprintf(msg, msg_cap, "kid is longer than %d bytes", KID_MAX);
            return JWK_BAD;
        }
        meta.has_kid = true;
    }
    if (alg >= 0) {
        meta.only_alg = alg_index(tok_slice(d, alg));
        if (meta.only_alg < 0)
            return JWK_SKIPPED; /* PS256, RSA-OAEP, ES512...: not ours to verify */
    }

    key_material m = {0};
    unsigned char n[RSA_MAX_BYTES + 1], e[RSA_MAX_E_BYTES], x[48], y[48], q[EC_MAX_POINT];
    size_t nlen, elen, xlen, ylen;
    slice type = tok_slice(d, kty);
    if (jstr_eq_bytes(type, "RSA", 3)) {
        if (meta.only_alg >= 0 && algs[meta.only_alg].family != FAM_RSA) {
            snprintf(msg, msg_cap, "alg %s does not fit kty RSA", algs[meta.only_alg].name);
            return JWK_BAD;
        }
        if (!jwk_bytes(d, obj, "n", n, sizeof n, &nlen, msg, msg_cap) ||
            !jwk_bytes(d, obj, "e", e, sizeof e, &elen, msg, msg_cap))
            return JWK_BAD;
        m = (key_material){.type = KEY_RSA, .n = {n, nlen}, .e = {e, elen}};
    } else if (jstr_eq_bytes(type, "EC", 2)) {
        int crv = jget(d, obj, "crv");
        if (crv < 0 || !jis_string(d, crv)) {
            snprintf(msg, msg_cap, "EC key has no crv string");
            return JWK_BAD;
        }
        if (jstr_eq_bytes(tok_slice(d, crv), "P-256", 5))
            m.curve = BR_EC_secp256r1;
        else if (jstr_eq_bytes(tok_slice(d, crv), "P-384", 5))
            m.curve = BR_EC_secp384r1;
        else
            return JWK_SKIPPED; /* P-521, secp256k1 */
        if (meta.only_alg >= 0 && algs[meta.only_alg].curve != m.curve) {
            snprintf(msg, msg_cap, "alg %s does not fit an EC key on this curve", algs[meta.only_alg].name);
            return JWK_BAD;
        }
        size_t c = coord_len(m.curve);
        if (!jwk_bytes(d, obj, "x", x, sizeof x, &xlen, msg, msg_cap) ||
            !jwk_bytes(d, obj, "y", y, sizeof y, &ylen, msg, msg_cap))
            return JWK_BAD;
        if (xlen != c || ylen != c) {
            snprintf(msg, msg_cap, "x and y must each be %zu bytes on this curve", c);
            return JWK_BAD;
        }
        q[0] = 0x04;
        memcpy(q + 1, x, c);
        memcpy(q + 1 + c, y, c);
        m.type = KEY_EC;
        m.q = (der){q, 1 + 2 * c};
    } else {
        return JWK_SKIPPED; /* OKP, oct (refused above when it has k), and what comes next */
    }
    if ((bad = add_key(k, &m, &meta)) != NULL) {
        snprintf(msg, msg_cap, "%s", bad);
        return JWK_BAD;
    }
    return JWK_ADDED;
}

int jwt_keys_parse_jwks(jwt_keys *k, const char *text, size_t len, const char *origin, const char **why)
{
    jsmn_parser p;
    jsmn_init(&p);
    int count = jsmn_parse(&p, text, len, NULL, 0);
    if (count < 1)
        return fail(k, why, "%s line %u: not a valid JSON object", origin, line_of(text, len, p.pos));
    jsmntok_t *toks = malloc((size_t)count * sizeof *toks);
    if (toks == NULL)
        return fail(k, why, "%s: out of memory", origin);
    size_t before = k->count;
    int rc = 0;
    jdoc d;
    if (jparse(&d, text, len, toks, (unsigned)count) != JP_OK) {
        rc = fail(k, why, "%s line %u: not a valid JSON object", origin, line_of(text, len, d.bad_at));
        goto out;
    }
    if (jdups(&d, 0)) {
        rc = fail(k, why, "%s: duplicate member in the top-level object", origin);
        goto out;
    }
    int keys = jget(&d, 0, "keys");
    if (keys < 0 || d.t[keys].type != JSMN_ARRAY) {
        rc = fail(k, why, "%s: no \"keys\" array (expected {\"keys\":[...]})", origin);
        goto out;
    }
    size_t skipped = 0;
    int j = keys + 1;
    for (int i = 0; i < d.t[keys].size; i++, j = jskip(&d, j)) {
        unsigned line = line_of(text, len, (size_t)d.t[j].start);
        char msg[200] = "";
        jwk_rc r = JWK_BAD;
        if (d.t[j].type != JSMN_OBJECT)
            snprintf(msg, sizeof msg, "is not a JSON object");
        else if (jdups(&d, j))
            snprintf(msg, sizeof msg, "has a duplicate member");
        else
            r = jwk_add(k, &d, j, msg, sizeof msg);
        if (r == JWK_BAD) {
            rc = fail(k, why, "%s line %u: key %d %s", origin, line, i + 1, msg);
            goto out;
        }
        if (r == JWK_SKIPPED)
            skipped++;
    }
    if (k->count == before)
        rc = fail(k, why, "%s: no usable key (%zu skipped: only RSA, EC P-256/P-384, use sig, and algs RS*/ES256/ES384)",
                  origin, skipped);
out:
    if (rc != 0)
        k->count = before;
    free(toks);
    return rc;
}

/* ---- files ------------------------------------------------------------- */

/* The whole file, NUL-terminated, in a fresh buffer (wiped by the caller
 * when it may hold a secret). Start-up only, so one generous allocation. */
static int read_file(jwt_keys *k, const char *path, const char *what, char **out, size_t *len, const char **why)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fail(k, why, "cannot open %s %s: %s", what, path, strerror(errno));
    char *buf = malloc(FILE_MAX + 2);
    if (buf == NULL) {
        fclose(f);
        return fail(k, why, "out of memory reading %s %s", what, path);
    }
    size_t n = 0, got;
    while (n <= FILE_MAX && (got = fread(buf + n, 1, FILE_MAX + 1 - n, f)) > 0)
        n += got;
    int rc = 0;
    if (ferror(f))
        rc = fail(k, why, "cannot read %s %s: %s", what, path, strerror(errno));
    else if (n > FILE_MAX)
        rc = fail(k, why, "%s %s is larger than 1 MiB", what, path);
    fclose(f);
    if (rc != 0) {
        explicit_bzero(buf, n);
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int jwt_keys_set_secret(jwt_keys *k, const void *secret, size_t len, const char **why)
{
    if (k->secret != NULL)
        return fail(k, why, "a secret is already loaded (one secret per key set)");
    if (len == 0)
        return fail(k, why, "the secret is empty");
    k->secret = malloc(len);
    if (k->secret == NULL)
        return fail(k, why, "out of memory");
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    return 0;
}

int jwt_keys_load_secret(jwt_keys *k, const char *path, const char **why)
{
    char *buf;
    size_t len;
    if (read_file(k, path, "secret file", &buf, &len, why) < 0)
        return -1;
    size_t keep = len;
    if (keep > 0 && buf[keep - 1] == '\n')
        keep--;
    if (keep > 0 && buf[keep - 1] == '\r')
        keep--;
    int rc = 0;
    if (keep == 0)
        rc = fail(k, why, "secret file %s is empty", path);
    else if (k->secret != NULL)
        rc = fail(k, why, "secret file %s: a secret is already loaded (one secret per key set)", path);
    else if (jwt_keys_set_secret(k, buf, keep, why) < 0)
        rc = fail(k, why, "secret file %s: out of memory", path);
    explicit_bzero(buf, len);
    free(buf);
    return rc;
}

int jwt_keys_load_public(jwt_keys *k, const char *path, const char **why)
{
    char *buf;
    size_t len;
    if (read_file(k, path, "public key file", &buf, &len, why) < 0)
        return -1;
    size_t i = 0;
    while (i < len && is_ws(buf[i]))
        i++;
    int rc = i < len && buf[i] == '{' ? jwt_keys_parse_jwks(k, buf, len, path, why)
                                      : jwt_keys_parse_pem(k, buf, len, path, why);
    free(buf);
    return rc;
}

/* ---- verification ------------------------------------------------------ */

enum {
    TOKEN_JSON_MAX = JWT_MAX_TOKEN / 4 * 3, /* header and payload decoded, together */
    TOKEN_TOKENS = 512,
    SIG_MAX = RSA_MAX_BYTES,
};

static bool equal_ct(const unsigned char *a, const unsigned char *b, size_t len)
{
    unsigned char diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

static void digest(const alg_desc *a, const void *data, size_t len, unsigned char *out)
{
    br_hash_compat_context hc;
    a->hash->init(&hc.vtable);
    a->hash->update(&hc.vtable, data, len);
    a->hash->out(&hc.vtable, out);
}

static bool hmac_ok(const jwt_keys *k, const alg_desc *a, slice input, const unsigned char *sig, size_t sig_len)
{
    if (sig_len != a->hash_len)
        return false;
    br_hmac_key_context kc;
    br_hmac_context hc;
    unsigned char mac[64];
    br_hmac_key_init(&kc, a->hash, k->secret, k->secret_len);
    br_hmac_init(&hc, &kc, 0);
    br_hmac_update(&hc, input.ptr, input.len);
    br_hmac_out(&hc, mac);
    return equal_ct(mac, sig, sig_len);
}

static bool public_ok(const jwt_key *key, const alg_desc *a, const unsigned char *hash, const unsigned char *sig,
                      size_t sig_len)
{
    if (key->type == KEY_RSA) {
        if (sig_len != key->nlen)
            return false;
        br_rsa_public_key pk = {(unsigned char *)key->n, key->nlen, (unsigned char *)key->e, key->elen};
        unsigned char got[64];
        return br_rsa_i31_pkcs1_vrfy(sig, sig_len, a->rsa_oid, a->hash_len, &pk, got) == 1 &&
               equal_ct(got, hash, a->hash_len);
    }
    if (sig_len != 2 * coord_len(key->curve))
        return false;
    br_ec_public_key pk = {key->curve, (unsigned char *)key->q, key->qlen};
    return br_ecdsa_i31_vrfy_raw(br_ec_get_default(), hash, a->hash_len, &pk, sig, sig_len) == 1;
}

static bool key_fits(const jwt_key *key, int alg)
{
    const alg_desc *a = &algs[alg];
    if (key->only_alg >= 0 && key->only_alg != alg)
        return false;
    return a->family == FAM_RSA ? key->type == KEY_RSA : key->type == KEY_EC && key->curve == a->curve;
}

typedef struct token_kid {
    bool present, too_long;
    size_t len;
    char bytes[KID_MAX];
} token_kid;

static bool kid_equal(const jwt_key *key, const token_kid *kid)
{
    return key->has_kid && !kid->too_long && key->kid_len == kid->len && memcmp(key->kid, kid->bytes, kid->len) == 0;
}

/* Tries the keys the alg and kid allow; says why when none verifies. */
static const char *check_signature(const jwt_keys *k, int alg, const token_kid *kid, slice input,
                                   const unsigned char *sig, size_t sig_len)
{
    const alg_desc *a = &algs[alg];
    if (a->family == FAM_HMAC) {
        if (k->secret == NULL)
            return k->count ? "alg is HMAC but only public keys are configured (alg confusion)" : "no key is configured";
        return hmac_ok(k, a, input, sig, sig_len) ? NULL : "bad signature";
    }
    if (k->count == 0)
        return k->secret ? "alg is RSA or ECDSA but only an HMAC secret is configured" : "no key is configured";
    unsigned char hash[64];
    digest(a, input.ptr, input.len, hash);
    bool tried = false, kid_known = false;
    for (size_t i = 0; i < k->count; i++) {
        const jwt_key *key = &k->keys[i];
        bool named = kid->present && kid_equal(key, kid);
        kid_known |= named;
        if (kid->present && key->has_kid && !named)
            continue;
        if (!key_fits(key, alg))
            continue;
        tried = true;
        if (public_ok(key, a, hash, sig, sig_len))
            return NULL;
    }
    if (tried)
        return "bad signature";
    if (kid_known)
        return "alg does not match the key named by kid";
    bool any_kidless = false;
    for (size_t i = 0; i < k->count; i++)
        any_kidless |= !k->keys[i].has_kid;
    if (kid->present && !any_kidless)
        return "unknown kid";
    return a->family == FAM_RSA ? "alg is RSA but no usable RSA key is configured"
                                : "alg is ECDSA but no key on its curve is configured";
}

static bool no_control(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* Reads an optional non-negative integer claim. */
static bool claim_u64(const jdoc *d, const char *name, bool *has, uint64_t *v)
{
    int i = jget(d, 0, name);
    *has = i >= 0;
    return i < 0 || jget_u64(d, i, v);
}

static const char *check_claims(const jdoc *d, const jwt_policy *p, uint64_t now, jwt_claims *c)
{
    uint64_t leeway = p ? p->leeway_s : 0, nbf = 0, iat;
    bool has_exp, has_nbf, has_iat;
    if (!claim_u64(d, "exp", &has_exp, &c->exp))
        return "claim exp is not a non-negative integer";
    if (!has_exp)
        return "claim exp is missing";
    if (!claim_u64(d, "nbf", &has_nbf, &nbf))
        return "claim nbf is not a non-negative integer";
    if (!claim_u64(d, "iat", &has_iat, &iat))
        return "claim iat is not a non-negative integer";
    if (!claim_u64(d, "rpm", &c->has_rpm, &c->rpm))
        return "claim rpm is not a non-negative integer";
    if (!claim_u64(d, "tpm", &c->has_tpm, &c->tpm))
        return "claim tpm is not a non-negative integer";
    if (!claim_u64(d, "streams", &c->has_streams, &c->streams))
        return "claim streams is not a non-negative integer";
    if (now > c->exp && now - c->exp > leeway)
        return "token has expired";
    if (has_nbf && nbf > now && nbf - now > leeway)
        return "token is not yet valid (nbf)";

    int iss = jget(d, 0, "iss");
    if (iss >= 0 && !jis_string(d, iss))
        return "claim iss is not a string";
    if (p && p->issuer) {
        if (iss < 0)
            return "claim iss is missing";
        if (!jstr_eq_bytes(tok_slice(d, iss), p->issuer, strlen(p->issuer)))
            return "wrong issuer";
    }
    int aud = jget(d, 0, "aud");
    bool aud_match = false;
    if (aud >= 0) {
        size_t want_len = p && p->audience ? strlen(p->audience) : 0;
        if (jis_string(d, aud)) {
            aud_match = p && p->audience && jstr_eq_bytes(tok_slice(d, aud), p->audience, want_len);
        } else if (d->t[aud].type == JSMN_ARRAY) {
            int j = aud + 1;
            for (int i = 0; i < d->t[aud].size; i++, j++) {
                if (!jis_string(d, j))
                    return "claim aud is not a string or an array of strings";
                aud_match |= p && p->audience && jstr_eq_bytes(tok_slice(d, j), p->audience, want_len);
            }
        } else {
            return "claim aud is not a string or an array of strings";
        }
    }
    if (p && p->audience) {
        if (aud < 0)
            return "claim aud is missing";
        if (!aud_match)
            return "wrong audience";
    }

    int sub = jget(d, 0, "sub");
    if (sub < 0)
        return "claim sub is missing";
    if (!jis_string(d, sub))
        return "claim sub is not a string";
    size_t sub_len;
    if (!jstr_copy(tok_slice(d, sub), c->sub, JWT_MAX_SUB, &sub_len))
        return "claim sub is longer than 127 bytes";
    if (sub_len == 0)
        return "claim sub is empty";
    if (!no_control(c->sub, sub_len))
        return "claim sub contains control characters";
    c->sub[sub_len] = '\0';
    return NULL;
}

static const char *verify(const jwt_keys *k, const jwt_policy *p, slice token, uint64_t now, jwt_claims *c)
{
    if (token.len == 0)
        return "token is empty";
    if (token.len > JWT_MAX_TOKEN)
        return "token is longer than 8 KiB";
    const char *dot1 = memchr(token.ptr, '.', token.len);
    const char *end = token.ptr + token.len;
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', (size_t)(end - dot1 - 1)) : NULL;
    if (dot2 == NULL || memchr(dot2 + 1, '.', (size_t)(end - dot2 - 1)) != NULL)
        return "token is malformed: expected three dot-separated parts";
    if (memchr(token.ptr, '=', token.len) != NULL)
        return "token is malformed: '=' padding is not allowed in base64url";
    slice header_b64 = {token.ptr, (size_t)(dot1 - token.ptr)};
    slice payload_b64 = {dot1 + 1, (size_t)(dot2 - dot1 - 1)};
    slice sig_b64 = {dot2 + 1, (size_t)(end - dot2 - 1)};

    /* Header and payload share one buffer: together they fit by construction. */
    unsigned char json[TOKEN_JSON_MAX];
    size_t header_len, payload_len;
    if (!base64url_decode(header_b64, json, sizeof json, &header_len))
        return "token is malformed: header is not base64url";
    if (!base64url_decode(payload_b64, json + header_len, sizeof json - header_len, &payload_len))
        return "token is malformed: payload is not base64url";

    jsmntok_t toks[TOKEN_TOKENS];
    jdoc d;
    switch (jparse(&d, (const char *)json, header_len, toks, TOKEN_TOKENS)) {
    case JP_OK: break;
    case JP_TOO_BIG: return "token is malformed: header has too many JSON values";
    default: return "token is malformed: header is not a JSON object";
    }
    if (jdups(&d, 0))
        return "token is malformed: duplicate header member";
    int alg_tok = jget(&d, 0, "alg");
    if (alg_tok < 0)
        return "token header has no alg";
    if (!jis_string(&d, alg_tok))
        return "token header alg is not a string";
    slice alg_raw = tok_slice(&d, alg_tok);
    char lower[5];
    size_t lower_len;
    if (jstr_copy(alg_raw, lower, sizeof lower, &lower_len) && lower_len == 4) {
        for (size_t i = 0; i < 4; i++)
            lower[i] = ascii_lower(lower[i]);
        if (memcmp(lower, "none", 4) == 0)
            return "alg none is not accepted";
    }
    int alg = alg_index(alg_raw);
    if (alg < 0)
        return "unknown alg";
    token_kid kid = {0};
    int kid_tok = jget(&d, 0, "kid");
    if (kid_tok >= 0) {
        if (!jis_string(&d, kid_tok))
            return "token header kid is not a string";
        kid.present = true;
        kid.too_long = !jstr_copy(tok_slice(&d, kid_tok), kid.bytes, sizeof kid.bytes, &kid.len);
    }
    /* RFC 7515 §4.1.11: extensions we do not know must make us refuse. */
    if (jget(&d, 0, "crit") >= 0)
        return "token header has crit extensions, which are not supported";

    unsigned char sig[SIG_MAX];
    size_t sig_len;
    if (sig_b64.len == 0)
        return "token has no signature";
    if (base64url_decoded_len(sig_b64.len) > sizeof sig)
        return "bad signature";
    if (!base64url_decode(sig_b64, sig, sizeof sig, &sig_len))
        return "token is malformed: signature is not base64url";
    slice signing_input = {token.ptr, (size_t)(dot2 - token.ptr)};
    const char *bad = check_signature(k, alg, &kid, signing_input, sig, sig_len);
    if (bad)
        return bad;

    switch (jparse(&d, (const char *)json + header_len, payload_len, toks, TOKEN_TOKENS)) {
    case JP_OK: break;
    case JP_TOO_BIG: return "token is malformed: payload has too many JSON values";
    default: return "token is malformed: payload is not a JSON object";
    }
    if (jdups(&d, 0))
        return "token is malformed: duplicate claim";
    return check_claims(&d, p, now, c);
}

int jwt_verify(const jwt_keys *k, const jwt_policy *p, slice token, uint64_t now_s, jwt_claims *out,
               const char **why)
{
    jwt_claims c = {0};
    const char *bad = verify(k, p, token, now_s, &c);
    if (bad) {
        *out = (jwt_claims){0};
        *why = bad;
        return -1;
    }
    *out = c;
    return 0;
}
