/* The client keys file: its grammar, every rejection with the line it names,
 * unnamed clients' names, lookup by digest, and a large file from disk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gateway/keys.h"
#include "unit.h"

#define CHECK_U64(a, b)                                                                            \
    do {                                                                                           \
        unsigned long long unit_a_ = (a), unit_b_ = (b);                                           \
        if (unit_a_ != unit_b_)                                                                    \
            unit_fail(__FILE__, __LINE__, "%s == %s (%llu vs %llu)", #a, #b, unit_a_, unit_b_);   \
    } while (0)

static keyring *parse_text(const char *text, size_t len, char *why, size_t why_cap)
{
    why[0] = '\0';
    return keyring_parse(text, len, "keys.txt", why, why_cap);
}

/* The error a keys text is rejected with, or "(accepted)". */
static const char *rejection_of(const char *text, size_t len)
{
    static char why[256];
    keyring *k = parse_text(text, len, why, sizeof why);
    if (k) {
        keyring_free(k);
        return "(accepted)";
    }
    return why;
}

#define CHECK_REJECTED(text, message) CHECK_STR(rejection_of((text), strlen(text)), (message))

static client_key *find_str(keyring *k, const char *key) { return keyring_find(k, slice_of(key)); }

static void hex_of(const unsigned char *d, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[2 * n] = '\0';
}

TEST(keys_good_file)
{
    static const char text[] = "# clients of the gateway\n"
                               "\n"
                               "sk-alpha alice 60 100000 2\r\n"
                               "\tsk-beta\tbob\t-\t5000\r\n"
                               "   sk-unnamed-1\n"
                               "sk-dash - - - 3\n"
                               "  # an indented comment\n"
                               "\t \r\n"
                               "\r\n"
                               "sk-tab\t\tcarol   7   \t\n"
                               "sk-alphabet dave@example.com/team+1 - 42";
    char why[256];
    keyring *k = parse_text(text, strlen(text), why, sizeof why);
    CHECK(k != NULL);
    if (!k) {
        unit_fail(__FILE__, __LINE__, "rejected: %s", why);
        return;
    }
    CHECK_EQ_SIZE(keyring_count(k), 6);
    CHECK(keyring_at(k, 6) == NULL);

    client_key *c = keyring_at(k, 0);
    CHECK_STR(c->name, "alice");
    CHECK_U64(c->spec.rpm, 60);
    CHECK_U64(c->spec.tpm, 100000);
    CHECK_U64(c->spec.streams, 2);
    CHECK(find_str(k, "sk-alpha") == c);

    c = keyring_at(k, 1);
    CHECK_STR(c->name, "bob");
    CHECK_U64(c->spec.rpm, 0);
    CHECK_U64(c->spec.tpm, 5000);
    CHECK_U64(c->spec.streams, 0);
    CHECK(find_str(k, "sk-beta") == c);

    /* printf %s sk-unnamed-1 | sha256sum: 776c631b2a067e8c... */
    c = keyring_at(k, 2);
    CHECK_STR(c->name, "key:776c631b");
    CHECK(!limit_spec_any(&c->spec));
    CHECK(find_str(k, "sk-unnamed-1") == c);

    /* A name of "-" is no name: printf %s sk-dash | sha256sum: 101e79fe... */
    c = keyring_at(k, 3);
    CHECK_STR(c->name, "key:101e79fe");
    CHECK_U64(c->spec.rpm, 0);
    CHECK_U64(c->spec.tpm, 0);
    CHECK_U64(c->spec.streams, 3);

    c = keyring_at(k, 4);
    CHECK_STR(c->name, "carol");
    CHECK_U64(c->spec.rpm, 7);
    CHECK_U64(c->spec.tpm, 0);
    CHECK_U64(c->spec.streams, 0);
    CHECK(find_str(k, "sk-tab") == c);

    /* The last line has no newline; the name uses @ . / + as well. */
    c = keyring_at(k, 5);
    CHECK_STR(c->name, "dave@example.com/team+1");
    CHECK_U64(c->spec.rpm, 0);
    CHECK_U64(c->spec.tpm, 42);
    CHECK(find_str(k, "sk-alphabet") == c);
    keyring_free(k);
}

TEST(keys_limits_bounds_and_positional_fields)
{
    char why[256];
    /* Fields are positional: a lone number after the key is a name. */
    keyring *k = parse_text("sk-1 60\n", 8, why, sizeof why);
    CHECK(k != NULL);
    if (k) {
        CHECK_STR(keyring_at(k, 0)->name, "60");
        CHECK(!limit_spec_any(&keyring_at(k, 0)->spec));
        keyring_free(k);
    }
    static const char big[] = "sk-2 n 4294967295 4294967295 4294967295\n";
    k = parse_text(big, strlen(big), why, sizeof why);
    CHECK(k != NULL);
    if (k) {
        CHECK_U64(keyring_at(k, 0)->spec.rpm, 4294967295u);
        CHECK_U64(keyring_at(k, 0)->spec.tpm, 4294967295u);
        CHECK_U64(keyring_at(k, 0)->spec.streams, 4294967295u);
        keyring_free(k);
    }
    static const char ones[] = "sk-3 n 1 1 1\nsk-4 m 007\n";
    k = parse_text(ones, strlen(ones), why, sizeof why);
    CHECK(k != NULL);
    if (k) {
        CHECK_U64(keyring_at(k, 0)->spec.rpm, 1);
        CHECK_U64(keyring_at(k, 0)->spec.streams, 1);
        CHECK_U64(keyring_at(k, 1)->spec.rpm, 7);
        keyring_free(k);
    }
}

TEST(keys_digest_and_default_name_match_sha256sum)
{
    /* printf %s sk-alpha | sha256sum */
    unsigned char d[KEY_DIGEST_LEN];
    char hex[2 * KEY_DIGEST_LEN + 1];
    key_digest(SLICE_LIT("sk-alpha"), d);
    hex_of(d, sizeof d, hex);
    CHECK_STR(hex, "2179e632e89277f18aa600491b68ad55121fd6caa045e047fdeb426088a5a5f1");
    /* printf '' | sha256sum */
    key_digest((slice){NULL, 0}, d);
    hex_of(d, sizeof d, hex);
    CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    char why[256];
    static const char text[] = "sk-alpha\nsk-beta -\n";
    keyring *k = parse_text(text, strlen(text), why, sizeof why);
    CHECK(k != NULL);
    if (!k)
        return;
    CHECK_STR(keyring_at(k, 0)->name, "key:2179e632");
    /* printf %s sk-beta | sha256sum: c29d79ad08b23ba5... */
    CHECK_STR(keyring_at(k, 1)->name, "key:c29d79ad");
    key_digest(SLICE_LIT("sk-beta"), d);
    CHECK(digest_equal(keyring_at(k, 1)->digest, d, KEY_DIGEST_LEN));
    keyring_free(k);
}

TEST(keys_rejections_name_the_line)
{
    CHECK_REJECTED("# header\n\nsk-a a 0\n", "keys.txt line 3: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a -5\n", "keys.txt line 1: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-z z 1\nsk-a a abc\n", "keys.txt line 2: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a 1.5\n", "keys.txt line 1: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a +5\n", "keys.txt line 1: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a 4294967296\n", "keys.txt line 1: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a 99999999999999999999\n", "keys.txt line 1: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a --\n", "keys.txt line 1: rpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a 5 0\n", "keys.txt line 1: tpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a 5 1k\n", "keys.txt line 1: tpm must be a positive integer or -");
    CHECK_REJECTED("sk-a a - - 0\n", "keys.txt line 1: streams must be a positive integer or -");
    CHECK_REJECTED("sk-a a - - x\n", "keys.txt line 1: streams must be a positive integer or -");
    CHECK_REJECTED("sk-a a 1 2 3 4\n",
                   "keys.txt line 1: too many fields (expected KEY [name] [rpm] [tpm] [streams])");
    /* A trailing comment is not a comment: it is an extra field. */
    CHECK_REJECTED("sk-a a 1 2 3 # note\n",
                   "keys.txt line 1: too many fields (expected KEY [name] [rpm] [tpm] [streams])");
    CHECK_REJECTED("sk-a\r\nsk-b b\r\n\r\nsk-c al!ce\r\n",
                   "keys.txt line 4: name may only hold letters, digits and - _ . : @ / +");
    CHECK_REJECTED("sk-a #name\n", "keys.txt line 1: name may only hold letters, digits and - _ . : @ / +");
    CHECK_REJECTED("sk-a na\"me\n", "keys.txt line 1: name may only hold letters, digits and - _ . : @ / +");
    CHECK_REJECTED("sk-a n\xc3\xa9\n", "keys.txt line 1: name may only hold letters, digits and - _ . : @ / +");

    /* Names: 64 characters are fine, 65 are not. */
    char text[1200];
    char name[66];
    memset(name, 'n', 64);
    name[64] = '\0';
    snprintf(text, sizeof text, "sk-a %s 1\n", name);
    CHECK_REJECTED(text, "(accepted)");
    name[64] = 'n';
    name[65] = '\0';
    snprintf(text, sizeof text, "sk-a ok\nsk-b %s 1\n", name);
    CHECK_REJECTED(text, "keys.txt line 2: name is longer than 64 characters");

    /* Keys: 512 bytes are fine, 513 are not. */
    char key[514];
    memset(key, 'k', 512);
    key[512] = '\0';
    snprintf(text, sizeof text, "%s\n", key);
    CHECK_REJECTED(text, "(accepted)");
    key[512] = 'k';
    key[513] = '\0';
    snprintf(text, sizeof text, "#\n#\n\t%s name\n", key);
    CHECK_REJECTED(text, "keys.txt line 3: key is longer than 512 bytes");

    CHECK_REJECTED("sk-\x01x\n", "keys.txt line 1: key has a character that is not visible ASCII");
    CHECK_REJECTED("ok\nsk-\x7f\n", "keys.txt line 2: key has a character that is not visible ASCII");
    CHECK_REJECTED("sk-\xc3\xa9t\xc3\xa9\n", "keys.txt line 1: key has a character that is not visible ASCII");
    CHECK_REJECTED("\xef\xbb\xbfsk-bom\n", "keys.txt line 1: key has a character that is not visible ASCII");
    CHECK_REJECTED("sk-a\vname\n", "keys.txt line 1: key has a character that is not visible ASCII");
    /* A lone CR inside a line is part of the key, not a line end. */
    CHECK_REJECTED("sk-a\rsk-b\n", "keys.txt line 1: key has a character that is not visible ASCII");
    static const char nul[] = "sk-a\nsk-\0b\n";
    CHECK_STR(rejection_of(nul, sizeof nul - 1), "keys.txt line 2: NUL byte");

    /* A duplicate is reported where it repeats, not where it first appears. */
    CHECK_REJECTED("sk-a a\nsk-b b\n# again:\n\nsk-a c\n", "keys.txt line 5: duplicate key");
    CHECK_REJECTED("sk-b\r\nsk-a\r\n  sk-b other 5\r\n", "keys.txt line 3: duplicate key");

    CHECK_STR(rejection_of("", 0), "keys.txt: no keys (a line is KEY [name] [rpm] [tpm] [streams])");
    CHECK_REJECTED("# only\n\n   # comments\r\n\t\n", "keys.txt: no keys (a line is KEY [name] [rpm] [tpm] [streams])");
    CHECK_REJECTED("\n\n\n", "keys.txt: no keys (a line is KEY [name] [rpm] [tpm] [streams])");
}

TEST(keys_error_message_is_bounded)
{
    char why[12];
    memset(why, 'x', sizeof why);
    keyring *k = keyring_parse("sk-a a 0\n", 9, "a-long-source-name", why, sizeof why);
    CHECK(k == NULL);
    CHECK(memchr(why, '\0', sizeof why) != NULL);
    CHECK_STR(why, "a-long-sour");
}

TEST(keys_lookup)
{
    static const char text[] = "sk-alpha a\nsk-alphabet b\nsk-beta c\nX d\n";
    char why[256];
    keyring *k = parse_text(text, strlen(text), why, sizeof why);
    CHECK(k != NULL);
    if (!k)
        return;
    client_key *alpha = find_str(k, "sk-alpha");
    client_key *alphabet = find_str(k, "sk-alphabet");
    CHECK(alpha != NULL && alphabet != NULL && alpha != alphabet);
    CHECK(alpha && strcmp(alpha->name, "a") == 0);
    CHECK(alphabet && strcmp(alphabet->name, "b") == 0);
    CHECK(find_str(k, "sk-beta") == keyring_at(k, 2));
    CHECK(find_str(k, "X") == keyring_at(k, 3));
    /* Prefixes, extensions and near misses are different keys. */
    CHECK(find_str(k, "sk-alph") == NULL);
    CHECK(find_str(k, "sk-alphabe") == NULL);
    CHECK(find_str(k, "sk-alphabets") == NULL);
    CHECK(find_str(k, "sk-alpha ") == NULL);
    CHECK(find_str(k, " sk-alpha") == NULL);
    CHECK(find_str(k, "SK-ALPHA") == NULL);
    CHECK(find_str(k, "sk-gamma") == NULL);
    CHECK(keyring_find(k, (slice){"sk-alphabet", 8}) == alpha);
    /* Empty and oversized presented keys are absent, never hashed into a match. */
    CHECK(keyring_find(k, (slice){NULL, 0}) == NULL);
    CHECK(keyring_find(k, (slice){"", 0}) == NULL);
    char huge[513];
    memset(huge, 'k', sizeof huge);
    CHECK(keyring_find(k, (slice){huge, sizeof huge}) == NULL);
    keyring_free(k);
}

TEST(keys_longest_key_is_found)
{
    char text[600];
    memset(text, 'K', 512);
    memcpy(text + 512, " long\n", 7);
    char why[256];
    keyring *k = parse_text(text, strlen(text), why, sizeof why);
    CHECK(k != NULL);
    if (!k)
        return;
    /* printf %s K...K (512 of them) | sha256sum: c3590b52... */
    CHECK(keyring_find(k, (slice){text, 512}) == keyring_at(k, 0));
    CHECK(keyring_find(k, (slice){text, 511}) == NULL);
    text[512] = 'K';
    CHECK(keyring_find(k, (slice){text, 513}) == NULL);
    unsigned char d[KEY_DIGEST_LEN];
    char hex[2 * KEY_DIGEST_LEN + 1];
    hex_of(keyring_at(k, 0)->digest, KEY_DIGEST_LEN, hex);
    CHECK_STR(hex, "c3590b52d8052264f69c860988c8f22eb3172762b84ec2afd9e914ef7357ec83");
    key_digest((slice){text, 512}, d);
    CHECK(digest_equal(d, keyring_at(k, 0)->digest, KEY_DIGEST_LEN));
    keyring_free(k);
}

enum { MANY_KEYS = 10000 };

static void many_key(size_t i, char *out, size_t cap)
{
    /* Varied lengths and contents, all distinct. */
    snprintf(out, cap, "sk-%zu-%08zx%.*s", i, (i * 2654435761u) & 0xffffffffu, (int)(i % 7), "abcdefg");
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

TEST(keys_load_ten_thousand_from_file)
{
    char path[] = "/tmp/ssegate-keys-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    FILE *f = fdopen(fd, "w");
    CHECK(f != NULL);
    if (!f) {
        close(fd);
        unlink(path);
        return;
    }
    fputs("# generated\n", f);
    char key[64];
    for (size_t i = 0; i < MANY_KEYS; i++) {
        many_key(i, key, sizeof key);
        if (i % 3 == 0)
            fprintf(f, "%s c%zu %zu - %zu\n", key, i, i + 1, i % 5 + 1);
        else if (i % 3 == 1)
            fprintf(f, "\t%s\r\n", key);
        else
            fprintf(f, "%s c%zu\n\n", key, i);
    }
    CHECK(fclose(f) == 0);

    char why[256] = "";
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    keyring *k = keyring_load(path, why, sizeof why);
    double load_ms = ms_since(&t0);
    unlink(path);
    if (!k) {
        unit_fail(__FILE__, __LINE__, "load failed: %s", why);
        return;
    }
    printf("# keys: loaded %d keys from a file in %.2f ms\n", MANY_KEYS, load_ms);
    CHECK_EQ_SIZE(keyring_count(k), MANY_KEYS);
    size_t missing = 0, misnamed = 0;
    char want[CLIENT_NAME_MAX + 1];
    for (size_t i = 0; i < MANY_KEYS; i++) {
        many_key(i, key, sizeof key);
        client_key *c = find_str(k, key);
        if (c != keyring_at(k, i)) {
            missing++;
            continue;
        }
        if (i % 3 == 1) {
            unsigned char d[KEY_DIGEST_LEN];
            key_digest(slice_of(key), d);
            memcpy(want, "key:", 4);
            hex_of(d, 4, want + 4);
        } else {
            snprintf(want, sizeof want, "c%zu", i);
        }
        if (strcmp(c->name, want) != 0 || (i % 3 == 0 && (c->spec.rpm != i + 1 || c->spec.streams != i % 5 + 1)))
            misnamed++;
    }
    CHECK_EQ_SIZE(missing, 0);
    CHECK_EQ_SIZE(misnamed, 0);
    many_key(MANY_KEYS, key, sizeof key);
    CHECK(find_str(k, key) == NULL);
    many_key(17, key, sizeof key);
    key[0] = 'S';
    CHECK(find_str(k, key) == NULL);
    key[0] = 's';
    key[strlen(key) - 1] ^= 1;
    CHECK(find_str(k, key) == NULL);
    CHECK(find_str(k, "sk-") == NULL);
    keyring_free(k);
}

TEST(keys_load_errors)
{
    char why[256];
    CHECK(keyring_load("/nonexistent/ssegate-keys", why, sizeof why) == NULL);
    CHECK_STR(why, "cannot read keys file /nonexistent/ssegate-keys: No such file or directory");

    char path[] = "/tmp/ssegate-keys-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    close(fd);
    CHECK(keyring_load(path, why, sizeof why) == NULL);
    char want[300];
    snprintf(want, sizeof want, "%s: no keys (a line is KEY [name] [rpm] [tpm] [streams])", path);
    CHECK_STR(why, want);

    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("sk-a\nsk-b b 10\nsk-a\n", f);
        fclose(f);
        CHECK(keyring_load(path, why, sizeof why) == NULL);
        snprintf(want, sizeof want, "%s line 3: duplicate key", path);
        CHECK_STR(why, want);
    }
    unlink(path);
}

TEST(keys_digest_equal)
{
    unsigned char a[KEY_DIGEST_LEN], b[KEY_DIGEST_LEN];
    key_digest(SLICE_LIT("one"), a);
    memcpy(b, a, sizeof b);
    CHECK(digest_equal(a, b, sizeof a) == 1);
    CHECK(digest_equal(a, a, sizeof a) == 1);
    b[0] ^= 0x80;
    CHECK(digest_equal(a, b, sizeof a) == 0);
    b[0] ^= 0x80;
    b[KEY_DIGEST_LEN - 1] ^= 1;
    CHECK(digest_equal(a, b, sizeof a) == 0);
    /* Only the first len bytes count. */
    CHECK(digest_equal(a, b, KEY_DIGEST_LEN - 1) == 1);
    CHECK(digest_equal(a, b, 0) == 1);
    key_digest(SLICE_LIT("two"), b);
    CHECK(digest_equal(a, b, sizeof a) == 0);
}
