#include "gateway/keys.h"

#include <bearssl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/wbuf.h"

enum { MAX_KEY_LEN = 512, MAX_KEYS = 1 << 22 };

struct keyring {
    client_key *keys;
    size_t count, cap;
    uint32_t *slots; /* index + 1 into keys; 0 is empty. Size is a power of two. */
    size_t slot_mask;
};

void key_digest(slice data, unsigned char out[KEY_DIGEST_LEN])
{
    br_sha256_context h;
    br_sha256_init(&h);
    br_sha256_update(&h, data.ptr, data.len);
    br_sha256_out(&h, out);
}

int digest_equal(const unsigned char *a, const unsigned char *b, size_t len)
{
    unsigned diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (unsigned)(a[i] ^ b[i]);
    return diff == 0;
}

/* The digest is uniformly random: its first bytes are a good hash. */
static size_t slot_of(const unsigned char *digest)
{
    uint64_t h;
    memcpy(&h, digest, sizeof h);
    return (size_t)h;
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.' || c == ':' || c == '@' || c == '/' || c == '+';
}

static bool key_char(char c) { return c > 0x20 && c < 0x7f; }

/* One whitespace-separated field of line[*at..len). */
static slice next_field(const char *line, size_t len, size_t *at)
{
    size_t i = *at;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    size_t start = i;
    while (i < len && line[i] != ' ' && line[i] != '\t')
        i++;
    *at = i;
    return (slice){line + start, i - start};
}

static int parse_limit(slice f, uint64_t *out)
{
    if (slice_eq(f, SLICE_LIT("-"))) {
        *out = 0;
        return 0;
    }
    return slice_to_u64(f, UINT32_MAX, out) && *out > 0 ? 0 : -1;
}

static void say(char *why, size_t cap, const char *source, size_t line, const char *what)
{
    snprintf(why, cap, "%s line %zu: %s", source, line, what);
}

static bool add_key(keyring *k, const client_key *ck)
{
    if (k->count == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 64;
        client_key *grown = realloc(k->keys, cap * sizeof *grown);
        if (!grown)
            return false;
        k->keys = grown;
        k->cap = cap;
    }
    k->keys[k->count++] = *ck;
    return true;
}

/* Builds the digest table; false on a duplicate key (its index in *dup). */
static int index_keys(keyring *k, size_t *dup)
{
    size_t size = 16;
    while (size < 2 * k->count)
        size *= 2;
    k->slots = calloc(size, sizeof *k->slots);
    if (!k->slots)
        return -1;
    k->slot_mask = size - 1;
    for (size_t i = 0; i < k->count; i++) {
        size_t s = slot_of(k->keys[i].digest) & k->slot_mask;
        while (k->slots[s]) {
            if (memcmp(k->keys[k->slots[s] - 1].digest, k->keys[i].digest, KEY_DIGEST_LEN) == 0) {
                *dup = i;
                return 1;
            }
            s = (s + 1) & k->slot_mask;
        }
        k->slots[s] = (uint32_t)(i + 1);
    }
    return 0;
}

static void default_name(client_key *ck)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(ck->name, "key:", 4);
    for (size_t i = 0; i < 4; i++) {
        ck->name[4 + 2 * i] = hex[ck->digest[i] >> 4];
        ck->name[5 + 2 * i] = hex[ck->digest[i] & 15];
    }
    ck->name[12] = '\0';
}

/* Parses one non-blank, non-comment line into *ck; NULL or what is wrong. */
static const char *parse_line(const char *line, size_t len, client_key *ck)
{
    memset(ck, 0, sizeof *ck);
    size_t at = 0;
    slice key = next_field(line, len, &at);
    if (key.len > MAX_KEY_LEN)
        return "key is longer than 512 bytes";
    for (size_t i = 0; i < key.len; i++)
        if (!key_char(key.ptr[i]))
            return "key has a character that is not visible ASCII";
    key_digest(key, ck->digest);
    slice name = next_field(line, len, &at);
    if (name.len > CLIENT_NAME_MAX)
        return "name is longer than 64 characters";
    for (size_t i = 0; i < name.len; i++)
        if (!name_char(name.ptr[i]))
            return "name may only hold letters, digits and - _ . : @ / +";
    if (name.len && !slice_eq(name, SLICE_LIT("-"))) {
        memcpy(ck->name, name.ptr, name.len);
        ck->name[name.len] = '\0';
    } else {
        default_name(ck);
    }
    uint64_t *limits[] = {&ck->spec.rpm, &ck->spec.tpm, &ck->spec.streams};
    static const char *const bad[] = {"rpm must be a positive integer or -", "tpm must be a positive integer or -",
                                      "streams must be a positive integer or -"};
    for (size_t i = 0; i < 3; i++) {
        slice f = next_field(line, len, &at);
        if (f.len == 0)
            break;
        if (parse_limit(f, limits[i]) != 0)
            return bad[i];
    }
    if (next_field(line, len, &at).len)
        return "too many fields (expected KEY [name] [rpm] [tpm] [streams])";
    return NULL;
}

keyring *keyring_parse(const char *text, size_t len, const char *source, char *why, size_t why_cap)
{
    keyring *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(why, why_cap, "%s: out of memory", source);
        return NULL;
    }
    size_t line_no = 0, pos = 0;
    size_t *line_of = NULL, line_cap = 0; /* line number of each key, for the duplicate message */
    while (pos < len) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl ? 1 : 0);
        line_no++;
        if (n && line[n - 1] == '\r')
            n--;
        size_t lead = 0;
        while (lead < n && (line[lead] == ' ' || line[lead] == '\t'))
            lead++;
        if (lead == n || line[lead] == '#')
            continue;
        if (memchr(line, '\0', n)) {
            say(why, why_cap, source, line_no, "NUL byte");
            goto fail;
        }
        client_key ck;
        const char *bad = parse_line(line + lead, n - lead, &ck);
        if (bad) {
            say(why, why_cap, source, line_no, bad);
            goto fail;
        }
        if (k->count >= MAX_KEYS) {
            say(why, why_cap, source, line_no, "more than 4194304 keys");
            goto fail;
        }
        if (k->count == line_cap) {
            line_cap = line_cap ? line_cap * 2 : 64;
            size_t *grown = realloc(line_of, line_cap * sizeof *grown);
            if (!grown)
                goto oom;
            line_of = grown;
        }
        line_of[k->count] = line_no;
        if (!add_key(k, &ck))
            goto oom;
    }
    if (k->count == 0) {
        snprintf(why, why_cap, "%s: no keys (a line is KEY [name] [rpm] [tpm] [streams])", source);
        goto fail;
    }
    size_t dup = 0;
    int rc = index_keys(k, &dup);
    if (rc < 0)
        goto oom;
    if (rc > 0) {
        say(why, why_cap, source, line_of[dup], "duplicate key");
        goto fail;
    }
    free(line_of);
    return k;
oom:
    snprintf(why, why_cap, "%s: out of memory", source);
fail:
    free(line_of);
    keyring_free(k);
    return NULL;
}

keyring *keyring_load(const char *path, char *why, size_t why_cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, why_cap, "cannot read keys file %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 64 * 1024;
            char *grown = realloc(text, cap);
            if (!grown) {
                free(text);
                fclose(f);
                snprintf(why, why_cap, "%s: out of memory", path);
                return NULL;
            }
            text = grown;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    bool failed = ferror(f) != 0;
    fclose(f);
    keyring *k = NULL;
    if (failed)
        snprintf(why, why_cap, "cannot read keys file %s", path);
    else
        k = keyring_parse(text, len, path, why, why_cap);
    if (text) {
        explicit_bzero(text, len); /* the file held secrets */
        free(text);
    }
    return k;
}

keyring *keyring_with(const keyring *base, const client_key *more, size_t count, char *why, size_t why_cap)
{
    keyring *k = calloc(1, sizeof *k);
    if (!k)
        goto oom;
    for (size_t i = 0; base && i < base->count; i++)
        if (!add_key(k, &base->keys[i]))
            goto oom;
    for (size_t i = 0; i < count; i++)
        if (!add_key(k, &more[i]))
            goto oom;
    size_t dup = 0;
    int rc = index_keys(k, &dup);
    if (rc < 0)
        goto oom;
    if (rc > 0) {
        const client_key *twice = &k->keys[dup], *first = twice;
        for (size_t i = 0; i < dup && first == twice; i++)
            if (digest_equal(k->keys[i].digest, twice->digest, KEY_DIGEST_LEN))
                first = &k->keys[i];
        snprintf(why, why_cap, "client \"%s\" has the same key as client \"%s\"", twice->name, first->name);
        keyring_free(k);
        return NULL;
    }
    return k;
oom:
    snprintf(why, why_cap, "out of memory");
    keyring_free(k);
    return NULL;
}

void keyring_free(keyring *k)
{
    if (!k)
        return;
    free(k->keys);
    free(k->slots);
    free(k);
}

size_t keyring_count(const keyring *k) { return k ? k->count : 0; }

client_key *keyring_at(keyring *k, size_t i) { return i < k->count ? &k->keys[i] : NULL; }

client_key *keyring_find(keyring *k, slice presented)
{
    if (presented.len == 0 || presented.len > MAX_KEY_LEN)
        return NULL;
    unsigned char d[KEY_DIGEST_LEN];
    key_digest(presented, d);
    return keyring_find_digest(k, d);
}

client_key *keyring_find_digest(keyring *k, const unsigned char d[KEY_DIGEST_LEN])
{
    if (!k->slots)
        return NULL;
    for (size_t s = slot_of(d) & k->slot_mask; k->slots[s]; s = (s + 1) & k->slot_mask) {
        client_key *ck = &k->keys[k->slots[s] - 1];
        if (digest_equal(ck->digest, d, KEY_DIGEST_LEN))
            return ck;
    }
    return NULL;
}
