/* Resumable streams: the token and Last-Event-ID format, the owner check,
 * the ring (wrap, growth through the size classes, eviction, position lost,
 * several readers, backpressure with nobody attached), the window and
 * abandonment on a fake clock, and memory that all comes back. */
#include <stdio.h>
#include <string.h>

#include "core/base64.h"
#include "gateway/replay.h"
#include "unit.h"

enum { WINDOW = 60000, MiB = 1 << 20 };

static slice ev(char *buf, size_t cap, uint64_t i, size_t len)
{
    /* event i: its number, then filler, so a mix-up shows */
    int head = snprintf(buf, cap, "%llu:", (unsigned long long)i);
    for (size_t k = (size_t)head; k < len && k < cap; k++)
        buf[k] = (char)('a' + (i + k) % 26);
    return (slice){buf, len > (size_t)head ? len : (size_t)head};
}

static bool is_ev(slice got, uint64_t i, size_t len)
{
    char want[8192];
    slice w = ev(want, sizeof want, i, len);
    return slice_eq(got, w);
}

static uint64_t append(replay_stream *st, slice e)
{
    uint64_t n = 0;
    CHECK(replay_append(st, e, &n) == REPLAY_OK);
    return n;
}

static uint64_t append_text(replay_stream *st, const char *s) { return append(st, slice_of(s)); }

/* Reads one event and checks it is number n with these bytes. */
static bool reads(replay_reader *r, uint64_t n, slice want)
{
    slice e = {0};
    uint64_t got = 0;
    return replay_read(r, &e, &got) == REPLAY_EVENT && got == n && slice_eq(e, want);
}

static replay_next read_kind(replay_reader *r)
{
    slice e;
    uint64_t n;
    return replay_read(r, &e, &n);
}

/* ---- token and Last-Event-ID ------------------------------------------- */

static bool in_alphabet(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

TEST(replay_token_is_22_base64url_chars_of_16_random_bytes)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    CHECK(s != NULL);
    static char tokens[500][23];
    for (size_t i = 0; i < 500; i++) {
        replay_stream *st = replay_open(s, "team-a", 0, tokens[i]);
        CHECK(st != NULL);
        CHECK_EQ_SIZE(strlen(tokens[i]), 22);
        CHECK_STR(replay_token(st), tokens[i]);
        for (size_t k = 0; k < 22; k++)
            CHECK(in_alphabet(tokens[i][k]));
        unsigned char key[16];
        size_t len = 0;
        CHECK(base64url_decode((slice){tokens[i], 22}, key, sizeof key, &len) && len == 16);
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(tokens[i], tokens[j]) != 0);
    }
    CHECK_EQ_SIZE(replay_store_streams(s), 500);
    replay_store_free(s);
}

TEST(replay_id_line)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23], line[64];
    replay_stream *st = replay_open(s, "u", 0, token);
    wbuf b = wbuf_over(line, sizeof line - 1);
    replay_write_id(&b, st, 42);
    line[b.len] = '\0';
    char want[64];
    snprintf(want, sizeof want, "id: %s.42\n", token);
    CHECK_STR(line, want);
    /* and what a client sends back parses to the same */
    char tok[23];
    uint64_t n = 0;
    CHECK(replay_parse_last_event_id((slice){line + 4, b.len - 5}, tok, &n));
    CHECK_STR(tok, token);
    CHECK(n == 42);
    replay_store_free(s);
}

static const char TOK[] = "AAECAwQFBgcICQoLDA0ODw"; /* bytes 0..15 */

static bool parses(const char *header, uint64_t want_n)
{
    char token[23] = "untouched";
    uint64_t n = 7;
    return replay_parse_last_event_id(slice_of(header), token, &n) && n == want_n && strcmp(token, TOK) == 0;
}

static bool refused(slice header)
{
    char token[23] = "untouched";
    uint64_t n = 7;
    return !replay_parse_last_event_id(header, token, &n) && n == 7 && strcmp(token, "untouched") == 0;
}

#define REFUSED(s) refused(SLICE_LIT(s))

TEST(replay_last_event_id_good)
{
    CHECK(parses("AAECAwQFBgcICQoLDA0ODw.1", 1));
    CHECK(parses("AAECAwQFBgcICQoLDA0ODw.42", 42));
    CHECK(parses("AAECAwQFBgcICQoLDA0ODw.0", 0)); /* before the first event: replay it all */
    CHECK(parses("AAECAwQFBgcICQoLDA0ODw.9999999999999999999", 9999999999999999999ull));
    char token[23];
    uint64_t n;
    CHECK(replay_parse_last_event_id(SLICE_LIT("-_-_-_-_-_-_-_-_-_-_-w.5"), token, &n));
    CHECK_STR(token, "-_-_-_-_-_-_-_-_-_-_-w");
}

TEST(replay_last_event_id_malformed)
{
    CHECK(REFUSED(""));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw"));       /* missing dot */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw1"));      /* missing dot, digit glued on */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw."));      /* missing N */
    CHECK(REFUSED(".1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0OD.1"));      /* 21 characters */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODwA.1"));    /* 23 */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODwAA.1"));   /* 24: 18 bytes */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.1.2"));   /* extra dots */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw..1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0O.Dw.1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.1."));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0OD+.1"));     /* not the URL alphabet */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0OD/.1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0OD=.1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw==.1"));   /* padding */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0OD .1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODx.1"));     /* non-zero unused bits: a second spelling */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0OD\x80.1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.01"));    /* leading zero: not how ids are written */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.00"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.+1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.-1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.1 "));
    CHECK(REFUSED(" AAECAwQFBgcICQoLDA0ODw.1"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.0x10"));
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.18446744073709551615")); /* 20 digits */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.18446744073709551616")); /* past 2^64 */
    CHECK(REFUSED("AAECAwQFBgcICQoLDA0ODw.99999999999999999999999999"));
    CHECK(refused((slice){"AAECAwQFBgcICQoLDA0ODw.1\0", 25}));
    CHECK(refused((slice){"AAECAwQFBgcICQoLDA0ODw.1", 23}));
}

/* ---- the owner and the lookup ------------------------------------------ */

TEST(replay_find_checks_the_owner_exactly)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23];
    replay_stream *st = replay_open(s, "team-a", 0, token), *got = NULL;
    append_text(st, "data: 1\n\n");
    CHECK(replay_find(s, token, "team-a", 0, 0, &got) == REPLAY_FOUND && got == st);
    got = NULL;
    CHECK(replay_find(s, token, "team-b", 0, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(replay_find(s, token, "team", 0, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(replay_find(s, token, "team-a ", 0, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(replay_find(s, token, "Team-A", 0, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(replay_find(s, token, "", 0, 0, &got) == REPLAY_NOT_FOUND);
    /* foreign answers as unknown does, whatever the position */
    CHECK(replay_find(s, token, "team-b", 99, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(replay_find(s, TOK, "team-a", 0, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(got == NULL);
    /* a token that is not one, or is one with a character changed */
    CHECK(replay_find(s, "short", "team-a", 0, 0, &got) == REPLAY_NOT_FOUND);
    char longer[32];
    snprintf(longer, sizeof longer, "%sA", token);
    CHECK(replay_find(s, longer, "team-a", 0, 0, &got) == REPLAY_NOT_FOUND);
    char other[23];
    memcpy(other, token, sizeof other);
    other[3] = other[3] == 'A' ? 'B' : 'A';
    CHECK(replay_find(s, other, "team-a", 0, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(got == NULL);
    /* the anonymous owner is the empty name */
    replay_stream *anon = replay_open(s, "", 0, token);
    CHECK(replay_find(s, token, "", 0, 0, &got) == REPLAY_FOUND && got == anon);
    CHECK(replay_find(s, token, "team-a", 0, 0, &got) == REPLAY_NOT_FOUND);
    replay_store_free(s);
}

TEST(replay_find_positions)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23];
    replay_stream *st = replay_open(s, "u", 0, token), *got;
    CHECK(replay_find(s, token, "u", 0, 0, &got) == REPLAY_FOUND); /* nothing yet: live from the start */
    CHECK(replay_find(s, token, "u", 1, 0, &got) == REPLAY_POSITION_LOST);
    for (int i = 0; i < 5; i++)
        append_text(st, "data: x\n\n");
    CHECK(replay_last(st) == 5);
    for (uint64_t n = 0; n <= 5; n++)
        CHECK(replay_find(s, token, "u", n, 0, &got) == REPLAY_FOUND);
    /* ids never handed out */
    CHECK(replay_find(s, token, "u", 6, 0, &got) == REPLAY_POSITION_LOST);
    CHECK(replay_find(s, token, "u", UINT64_MAX, 0, &got) == REPLAY_POSITION_LOST);
    replay_store_free(s);
}

TEST(replay_table_survives_many_streams_and_removals)
{
    replay_store *s = replay_store_new(REPLAY_MIN_BUFFER, WINDOW);
    enum { N = 3000 };
    static char tokens[N][23];
    static replay_stream *streams[N];
    for (size_t i = 0; i < N; i++)
        streams[i] = replay_open(s, "u", 0, tokens[i]);
    /* cancel two thirds, in an order unrelated to the table's */
    for (size_t i = 0; i < N; i++)
        if ((i * 7919) % 3 != 0) {
            replay_cancel(streams[i]);
            streams[i] = NULL;
        }
    CHECK_EQ_SIZE(replay_store_streams(s), N / 3);
    for (size_t i = 0; i < N; i++) {
        replay_stream *got = NULL;
        replay_lookup l = replay_find(s, tokens[i], "u", 0, 0, &got);
        if (streams[i])
            CHECK(l == REPLAY_FOUND && got == streams[i]);
        else
            CHECK(l == REPLAY_NOT_FOUND);
    }
    for (size_t i = 0; i < N; i++)
        if (streams[i])
            replay_cancel(streams[i]);
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    CHECK_EQ_SIZE(replay_store_streams(s), 0);
    replay_store_free(s);
}

/* ---- the ring ----------------------------------------------------------- */

TEST(replay_append_read_wait_done)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23];
    replay_stream *st = replay_open(s, "u", 0, token);
    replay_reader r;
    replay_attach(st, &r, 0);
    CHECK(replay_attached(st) == 1);
    CHECK(read_kind(&r) == REPLAY_WAIT);
    CHECK(append_text(st, "event: message\ndata: a\n\n") == 1);
    CHECK(append_text(st, "") == 2); /* an empty event is still an event */
    CHECK(append_text(st, "data: c\n\n") == 3);
    CHECK(reads(&r, 1, SLICE_LIT("event: message\ndata: a\n\n")));
    CHECK(reads(&r, 2, SLICE_LIT("")));
    CHECK(reads(&r, 3, SLICE_LIT("data: c\n\n")));
    CHECK(read_kind(&r) == REPLAY_WAIT);
    CHECK(!replay_ended(st));
    replay_end(st, 10);
    CHECK(replay_ended(st));
    CHECK(read_kind(&r) == REPLAY_DONE);
    /* a second reader from the start replays everything, then done */
    replay_reader r2;
    replay_attach(st, &r2, 0);
    CHECK(replay_attached(st) == 2);
    CHECK(reads(&r2, 1, SLICE_LIT("event: message\ndata: a\n\n")));
    CHECK(reads(&r2, 2, SLICE_LIT("")));
    CHECK(reads(&r2, 3, SLICE_LIT("data: c\n\n")));
    CHECK(read_kind(&r2) == REPLAY_DONE);
    replay_detach(&r, 10);
    replay_detach(&r2, 10);
    CHECK(replay_attached(st) == 0);
    replay_store_free(s);
}

TEST(replay_ring_grows_through_size_classes)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23];
    size_t empty = replay_store_bytes(s);
    replay_stream *st = replay_open(s, "u", 0, token);
    size_t overhead = replay_store_bytes(s) - empty;
    CHECK(overhead > 0 && overhead < 1024);
    /* no ring until the first event */
    CHECK_EQ_SIZE(replay_store_bytes(s), empty + overhead);
    replay_reader r;
    replay_attach(st, &r, 0);
    static const size_t classes[] = {4096, 16384, 65536, 262144, MiB};
    size_t stored = 0, seen[5] = {0};
    char buf[1000];
    uint64_t i = 0;
    /* 1000-byte events take 1004 bytes each: fill well past the maximum */
    while (stored < 3 * MiB) {
        i++;
        CHECK(append(st, ev(buf, sizeof buf, i, sizeof buf)) == i);
        stored += 1004;
        /* the ring is the smallest class that holds what is kept */
        size_t ring = replay_store_bytes(s) - overhead - empty, want = 0;
        while (want < 4 && classes[want] < stored)
            want++;
        CHECK_EQ_SIZE(ring, classes[want]);
        seen[want]++;
    }
    for (size_t c = 0; c < 5; c++)
        CHECK(seen[c] > 0);
    /* the reader never read, so it has lost the oldest events */
    CHECK(read_kind(&r) == REPLAY_LOST);
    replay_detach(&r, 0);
    /* about the last MiB is kept, all of it intact */
    replay_stream *got;
    uint64_t oldest = i - MiB / 1004 + 1;
    CHECK(replay_find(s, token, "u", oldest - 2, 0, &got) == REPLAY_POSITION_LOST);
    CHECK(replay_find(s, token, "u", oldest, 0, &got) == REPLAY_FOUND);
    replay_attach(st, &r, oldest);
    for (uint64_t k = oldest + 1; k <= i; k++)
        CHECK(reads(&r, k, ev(buf, sizeof buf, k, sizeof buf)));
    CHECK(read_kind(&r) == REPLAY_WAIT);
    replay_detach(&r, 0);
    replay_cancel(st);
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    replay_store_free(s);
}

TEST(replay_ring_grows_only_to_a_maximum_between_classes)
{
    replay_store *s = replay_store_new(100000, WINDOW);
    char token[23], buf[500];
    replay_stream *st = replay_open(s, "u", 0, token);
    size_t overhead = replay_store_bytes(s);
    replay_reader r;
    replay_attach(st, &r, 0);
    for (uint64_t i = 1; i <= 1000; i++)
        append(st, ev(buf, sizeof buf, i, sizeof buf));
    CHECK_EQ_SIZE(replay_store_bytes(s) - overhead, 100000);
    replay_detach(&r, 0);
    replay_store_free(s);
    /* a maximum below the first class is the only class */
    s = replay_store_new(1000, WINDOW);
    st = replay_open(s, "u", 0, token);
    append_text(st, "data: x\n\n");
    CHECK_EQ_SIZE(replay_store_bytes(s) - overhead, 1000);
    replay_store_free(s);
    CHECK(replay_store_new(REPLAY_MIN_BUFFER - 1, WINDOW) == NULL);
    CHECK(replay_store_new(REPLAY_MAX_BUFFER + 1, WINDOW) == NULL);
}

/* A small ring that wraps again and again under a reader that keeps up,
 * and readers attached at every position across the wrap point. */
TEST(replay_ring_wraps)
{
    replay_store *s = replay_store_new(256, WINDOW);
    char token[23], buf[128];
    replay_stream *st = replay_open(s, "u", 0, token);
    replay_reader live;
    replay_attach(st, &live, 0);
    uint64_t n = 0;
    for (uint64_t i = 1; i <= 2000; i++) {
        size_t len = 5 + (size_t)(i * 37 % 90);
        CHECK(append(st, ev(buf, sizeof buf, i, len)) == i);
        CHECK(reads(&live, i, ev(buf, sizeof buf, i, len)));
        if (i % 97 == 0) {
            /* everything still kept can be read by a newcomer, from any point */
            replay_stream *got;
            uint64_t first = i;
            while (first > 1 && replay_find(s, token, "u", first - 2, 0, &got) == REPLAY_FOUND)
                first--;
            CHECK(first < i);
            for (uint64_t from = first - 1; from <= i; from++) {
                replay_reader late;
                CHECK(replay_find(s, token, "u", from, 0, &got) == REPLAY_FOUND);
                replay_attach(st, &late, from);
                for (uint64_t k = from + 1; k <= i; k++)
                    CHECK(reads(&late, k, ev(buf, sizeof buf, k, 5 + (size_t)(k * 37 % 90))));
                CHECK(read_kind(&late) == REPLAY_WAIT);
                replay_detach(&late, 0);
            }
        }
        n = i;
    }
    CHECK(n == 2000);
    CHECK(read_kind(&live) == REPLAY_WAIT);
    replay_detach(&live, 0);
    replay_store_free(s);
}

TEST(replay_eviction_loses_lagging_readers_only)
{
    replay_store *s = replay_store_new(4096, WINDOW);
    char token[23], buf[200];
    replay_stream *st = replay_open(s, "u", 0, token);
    replay_reader fast, slow;
    replay_attach(st, &fast, 0);
    replay_attach(st, &slow, 0);
    CHECK(replay_attached(st) == 2);
    /* 100-byte events: a 4 KiB ring keeps 39 of them */
    for (uint64_t i = 1; i <= 39; i++)
        append(st, ev(buf, sizeof buf, i, 100));
    CHECK(reads(&slow, 1, ev(buf, sizeof buf, 1, 100)));
    for (uint64_t i = 1; i <= 39; i++)
        CHECK(reads(&fast, i, ev(buf, sizeof buf, i, 100)));
    /* one more evicts event 1, which slow has read: it is fine */
    append(st, ev(buf, sizeof buf, 40, 100));
    CHECK(reads(&slow, 2, ev(buf, sizeof buf, 2, 100)));
    /* two more evict 2 and 3: slow wanted 3 */
    append(st, ev(buf, sizeof buf, 41, 100));
    append(st, ev(buf, sizeof buf, 42, 100));
    CHECK(read_kind(&slow) == REPLAY_LOST);
    CHECK(read_kind(&slow) == REPLAY_LOST); /* and stays so */
    for (uint64_t i = 40; i <= 42; i++)
        CHECK(reads(&fast, i, ev(buf, sizeof buf, i, 100)));
    replay_stream *got;
    CHECK(replay_find(s, token, "u", 2, 0, &got) == REPLAY_POSITION_LOST);
    CHECK(replay_find(s, token, "u", 3, 0, &got) == REPLAY_FOUND);
    replay_detach(&slow, 0);
    replay_attach(st, &slow, 3);
    CHECK(reads(&slow, 4, ev(buf, sizeof buf, 4, 100)));
    replay_detach(&slow, 0);
    replay_detach(&fast, 0);
    replay_store_free(s);
}

TEST(replay_several_readers_at_different_positions)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23], buf[64];
    replay_stream *st = replay_open(s, "u", 0, token);
    for (uint64_t i = 1; i <= 10; i++)
        append(st, ev(buf, sizeof buf, i, 20 + i));
    replay_reader r[4];
    static const uint64_t from[4] = {0, 3, 10, 50};
    for (size_t k = 0; k < 4; k++)
        replay_attach(st, &r[k], from[k]);
    CHECK(replay_attached(st) == 4);
    CHECK(r[0].next == 1 && r[1].next == 4 && r[2].next == 11 && r[3].next == 11);
    /* interleaved: each keeps its own place while more arrive */
    for (uint64_t i = 11; i <= 30; i++) {
        append(st, ev(buf, sizeof buf, i, 20 + i));
        for (size_t k = 0; k < 4; k++)
            if ((i + k) % 3 != 0) {
                uint64_t want = r[k].next;
                CHECK(reads(&r[k], want, ev(buf, sizeof buf, want, 20 + want)));
            }
    }
    replay_end(st, 0);
    for (size_t k = 0; k < 4; k++) {
        uint64_t want = r[k].next;
        slice e;
        uint64_t n;
        replay_next res;
        while ((res = replay_read(&r[k], &e, &n)) == REPLAY_EVENT) {
            CHECK(n == want);
            CHECK(is_ev(e, n, 20 + n));
            want++;
        }
        CHECK(res == REPLAY_DONE);
        CHECK(want == 31);
    }
    /* detaching in a different order than attaching */
    replay_detach(&r[2], 0);
    replay_detach(&r[0], 0);
    replay_detach(&r[3], 0);
    CHECK(replay_attached(st) == 1);
    replay_detach(&r[1], 0);
    CHECK(replay_attached(st) == 0);
    replay_store_free(s);
}

TEST(replay_full_with_nobody_attached_holds_the_upstream)
{
    replay_store *s = replay_store_new(4096, WINDOW);
    char token[23], buf[200];
    replay_stream *st = replay_open(s, "u", 0, token);
    uint64_t i = 0, n = 99;
    while (i < 100 && replay_append(st, ev(buf, sizeof buf, i + 1, 100), &n) == REPLAY_OK) {
        CHECK(n == i + 1);
        i++;
    }
    CHECK(i == 39);
    CHECK(n == 39); /* the refused event got no number */
    CHECK(replay_last(st) == 39);
    CHECK(replay_append(st, ev(buf, sizeof buf, 40, 100), &n) == REPLAY_FULL);
    /* nothing was dropped: a client coming back gets it all */
    replay_stream *got;
    CHECK(replay_find(s, token, "u", 0, 0, &got) == REPLAY_FOUND);
    replay_reader r;
    replay_attach(st, &r, 0);
    /* with a reader the ring makes room by evicting the oldest */
    CHECK(replay_append(st, ev(buf, sizeof buf, 40, 100), &n) == REPLAY_OK && n == 40);
    CHECK(read_kind(&r) == REPLAY_LOST); /* it had not read event 1 yet */
    replay_detach(&r, 0);
    replay_attach(st, &r, 1);
    for (uint64_t k = 2; k <= 40; k++)
        CHECK(reads(&r, k, ev(buf, sizeof buf, k, 100)));
    /* gone again: full again */
    replay_detach(&r, 0);
    CHECK(replay_append(st, ev(buf, sizeof buf, 41, 100), &n) == REPLAY_FULL);
    CHECK(n == 40 && replay_last(st) == 40);
    replay_store_free(s);
}

TEST(replay_event_bigger_than_the_buffer)
{
    replay_store *s = replay_store_new(4096, WINDOW);
    char token[23], big[4093];
    memset(big, 'x', sizeof big);
    replay_stream *st = replay_open(s, "u", 0, token);
    uint64_t n = 0;
    append_text(st, "data: 1\n\n");
    /* with nobody attached: held, nothing lost */
    CHECK(replay_append(st, (slice){big, sizeof big}, &n) == REPLAY_FULL);
    CHECK(replay_append(st, (slice){big, sizeof big - 1}, &n) == REPLAY_FULL); /* 4092 + 4 fits alone only */
    replay_reader r;
    replay_attach(st, &r, 0);
    /* 4092 bytes fit once the older event is evicted */
    CHECK(replay_append(st, (slice){big, sizeof big - 1}, &n) == REPLAY_OK && n == 2);
    CHECK(read_kind(&r) == REPLAY_LOST);
    replay_detach(&r, 0);
    replay_attach(st, &r, 1);
    CHECK(reads(&r, 2, (slice){big, sizeof big - 1}));
    /* one byte more can never be kept: numbered, dropped, readers lose it */
    CHECK(replay_append(st, (slice){big, sizeof big}, &n) == REPLAY_OK && n == 3);
    CHECK(read_kind(&r) == REPLAY_LOST);
    replay_stream *got;
    CHECK(replay_find(s, token, "u", 2, 0, &got) == REPLAY_POSITION_LOST);
    CHECK(replay_find(s, token, "u", 3, 0, &got) == REPLAY_FOUND);
    replay_detach(&r, 0);
    replay_attach(st, &r, 3);
    CHECK(append_text(st, "data: 4\n\n") == 4);
    CHECK(reads(&r, 4, SLICE_LIT("data: 4\n\n")));
    replay_detach(&r, 0);
    replay_store_free(s);
}

/* The ring against a model that keeps every event: whatever a reader is
 * given is the right event in order; a loss is real (the position is no
 * longer findable); memory stays within the maximum. */
TEST(replay_ring_against_a_model)
{
    enum { EVENTS = 20000, READERS = 3, MAX = 2048 };
    replay_store *s = replay_store_new(MAX, WINDOW);
    char token[23], buf[700];
    replay_stream *st = replay_open(s, "u", 0, token);
    size_t overhead = replay_store_bytes(s);
    static size_t lens[EVENTS + 1];
    replay_reader r[READERS];
    bool attached[READERS] = {false};
    uint64_t rng = 0x2545f4914f6cdd1dull, last = 0;
    size_t losses = 0, fulls = 0, events_read = 0;
    for (int step = 0; step < 200000 && last < EVENTS; step++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        unsigned op = (unsigned)(rng % 16);
        size_t k = (size_t)(rng >> 8) % READERS;
        if (op < 6) {
            /* mostly small events, now and then a large one */
            size_t len = (rng >> 16) % 8 == 0 ? (size_t)((rng >> 20) % sizeof buf) : (size_t)((rng >> 20) % 60);
            uint64_t n = 0;
            replay_append_result res = replay_append(st, ev(buf, sizeof buf, last + 1, len), &n);
            size_t real = ev(buf, sizeof buf, last + 1, len).len;
            if (res == REPLAY_OK) {
                CHECK(n == last + 1);
                last = n;
                lens[n] = real;
            } else {
                CHECK(replay_attached(st) == 0);
                fulls++;
            }
        } else if (op < 13 && attached[k]) {
            uint64_t want = r[k].next;
            slice e;
            uint64_t n;
            replay_next res = replay_read(&r[k], &e, &n);
            if (res == REPLAY_EVENT) {
                CHECK(n == want);
                CHECK(is_ev(e, n, lens[n]));
                events_read++;
            } else if (res == REPLAY_WAIT) {
                CHECK(want == last + 1);
            } else {
                CHECK(res == REPLAY_LOST);
                replay_stream *got;
                CHECK(replay_find(s, token, "u", want - 1, 0, &got) == REPLAY_POSITION_LOST);
                replay_detach(&r[k], 0);
                attached[k] = false;
                losses++;
            }
        } else if (op < 15 && !attached[k]) {
            /* come back at the oldest findable position or a random later one */
            uint64_t from = last > 0 ? (rng >> 24) % (last + 1) : 0;
            replay_stream *got;
            while (replay_find(s, token, "u", from, 0, &got) == REPLAY_POSITION_LOST)
                from++;
            replay_attach(st, &r[k], from);
            attached[k] = true;
        } else if (attached[k]) {
            replay_detach(&r[k], 0);
            attached[k] = false;
        }
        CHECK(replay_store_bytes(s) <= overhead + MAX);
    }
    CHECK(last == EVENTS);
    printf("# replay model: %zu events read, %zu losses, %zu full\n", events_read, losses, fulls);
    CHECK(losses > 0 && fulls > 0 && events_read > EVENTS / 4);
    for (size_t k = 0; k < READERS; k++)
        if (attached[k])
            replay_detach(&r[k], 0);
    replay_cancel(st);
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    replay_store_free(s);
}

/* ---- window, abandonment, memory ---------------------------------------- */

static size_t abandoned_calls;
static replay_stream *abandoned_last;
static void *abandoned_user;
static bool abandoned_cancels;

static void on_abandoned(void *ctx, replay_stream *st)
{
    CHECK(ctx == &abandoned_calls);
    abandoned_calls++;
    abandoned_last = st;
    abandoned_user = replay_user(st);
    if (abandoned_cancels)
        replay_cancel(st); /* what a caller tearing down its relay may do */
}

TEST(replay_window_after_end_on_a_fake_clock)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23];
    replay_stream *st = replay_open(s, "u", 1000, token), *got;
    replay_reader r;
    replay_attach(st, &r, 0);
    CHECK(replay_next_deadline(s) == UINT64_MAX); /* attached and running: no deadline */
    append_text(st, "data: 1\n\n");
    append_text(st, "data: 2\n\n");
    replay_end(st, 5000);
    CHECK(replay_next_deadline(s) == 5000 + WINDOW);
    replay_end(st, 9000); /* ending twice changes nothing */
    CHECK(replay_next_deadline(s) == 5000 + WINDOW);
    replay_detach(&r, 6000);
    CHECK(replay_next_deadline(s) == 5000 + WINDOW);
    abandoned_calls = 0;
    CHECK(replay_expire(s, 5000 + WINDOW - 1, on_abandoned, &abandoned_calls) == 5000 + WINDOW);
    CHECK(replay_find(s, token, "u", 1, 5000 + WINDOW - 1, &got) == REPLAY_FOUND);
    /* at the deadline it is gone for lookups even before the timer runs */
    CHECK(replay_find(s, token, "u", 1, 5000 + WINDOW, &got) == REPLAY_NOT_FOUND);
    CHECK(replay_store_bytes(s) > 0);
    CHECK(replay_expire(s, 5000 + WINDOW, on_abandoned, &abandoned_calls) == UINT64_MAX);
    CHECK(abandoned_calls == 0); /* it ended: not abandoned */
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    CHECK_EQ_SIZE(replay_store_streams(s), 0);
    CHECK(replay_find(s, token, "u", 1, 0, &got) == REPLAY_NOT_FOUND);
    replay_store_free(s);
}

TEST(replay_abandoned_when_nobody_attached_for_the_window)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23];
    int relay_state;
    /* opened and never attached: the clock runs from the open */
    replay_stream *never = replay_open(s, "u", 0, token);
    replay_set_user(never, &relay_state);
    CHECK(replay_user(never) == &relay_state);
    CHECK(replay_next_deadline(s) == WINDOW);
    /* attached, then the client goes: the clock runs from the detach */
    char token2[23];
    replay_stream *left = replay_open(s, "u", 100, token2);
    replay_reader r;
    replay_attach(left, &r, 0);
    append_text(left, "data: 1\n\n");
    replay_detach(&r, 30000);
    CHECK(replay_next_deadline(s) == WINDOW);
    abandoned_calls = 0;
    abandoned_cancels = false;
    CHECK(replay_expire(s, WINDOW - 1, on_abandoned, &abandoned_calls) == WINDOW);
    CHECK(abandoned_calls == 0);
    CHECK(replay_expire(s, WINDOW, on_abandoned, &abandoned_calls) == 30000 + WINDOW);
    CHECK(abandoned_calls == 1 && abandoned_last == never && abandoned_user == &relay_state);
    replay_stream *got;
    CHECK(replay_find(s, token, "u", 0, WINDOW, &got) == REPLAY_NOT_FOUND);
    /* coming back in time stops the clock */
    CHECK(replay_find(s, token2, "u", 1, 40000, &got) == REPLAY_FOUND && got == left);
    replay_attach(left, &r, 1);
    CHECK(replay_next_deadline(s) == UINT64_MAX);
    CHECK(replay_expire(s, 1000000, on_abandoned, &abandoned_calls) == UINT64_MAX);
    CHECK(abandoned_calls == 1);
    /* and going again restarts it; this time the callback cancels, harmlessly */
    replay_detach(&r, 1000000);
    CHECK(replay_find(s, token2, "u", 1, 1000000 + WINDOW, &got) == REPLAY_NOT_FOUND);
    abandoned_cancels = true;
    CHECK(replay_expire(s, 1000000 + WINDOW, on_abandoned, &abandoned_calls) == UINT64_MAX);
    abandoned_cancels = false;
    CHECK(abandoned_calls == 2 && abandoned_last == left);
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    replay_store_free(s);
}

TEST(replay_expiry_under_an_attached_reader)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23];
    replay_stream *st = replay_open(s, "u", 0, token);
    size_t overhead = replay_store_bytes(s);
    replay_reader slow;
    replay_attach(st, &slow, 0);
    append_text(st, "data: 1\n\n");
    append_text(st, "data: 2\n\n");
    replay_end(st, 0);
    CHECK(reads(&slow, 1, SLICE_LIT("data: 1\n\n")));
    /* the window passes with the reader still attached: the ring goes now */
    CHECK(replay_expire(s, WINDOW, NULL, NULL) == UINT64_MAX);
    CHECK_EQ_SIZE(replay_store_bytes(s), overhead);
    CHECK(read_kind(&slow) == REPLAY_LOST);
    replay_stream *got;
    CHECK(replay_find(s, token, "u", 1, WINDOW, &got) == REPLAY_NOT_FOUND);
    replay_detach(&slow, WINDOW);
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    replay_store_free(s);
}

TEST(replay_cancel_frees_at_once)
{
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23], token2[23];
    replay_stream *a = replay_open(s, "u", 0, token);
    replay_stream *b = replay_open(s, "u", 0, token2);
    size_t one = replay_store_bytes(s) / 2;
    append_text(a, "data: 1\n\n");
    replay_reader r;
    replay_attach(b, &r, 0);
    append_text(b, "data: 1\n\n");
    CHECK(replay_store_bytes(s) == 2 * one + 2 * 4096);
    replay_cancel(a);
    CHECK_EQ_SIZE(replay_store_bytes(s), one + 4096);
    replay_stream *got;
    CHECK(replay_find(s, token, "u", 0, 0, &got) == REPLAY_NOT_FOUND);
    /* cancelled under a reader: the reader is told, the ring is freed */
    replay_cancel(b);
    CHECK_EQ_SIZE(replay_store_bytes(s), one);
    CHECK(read_kind(&r) == REPLAY_LOST);
    CHECK(replay_find(s, token2, "u", 0, 0, &got) == REPLAY_NOT_FOUND);
    CHECK(replay_next_deadline(s) == UINT64_MAX);
    replay_detach(&r, 0);
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    replay_store_free(s);
}

TEST(replay_memory_returns_to_zero_after_everything_expires)
{
    replay_store *s = replay_store_new(64 * 1024, 1000);
    char token[23], buf[3000];
    enum { N = 50 };
    replay_stream *st[N];
    replay_reader r[N];
    uint64_t now = 0;
    for (size_t i = 0; i < N; i++, now += 10) {
        st[i] = replay_open(s, i % 2 ? "a" : "b", now, token);
        replay_attach(st[i], &r[i], 0);
        for (uint64_t k = 1; k <= i * 3; k++)
            append(st[i], ev(buf, sizeof buf, k, 100 + (size_t)(k * 131 % 2800)));
        /* a third end, a third are left by their client, a third stay attached and never end */
        if (i % 3 == 0)
            replay_end(st[i], now);
        if (i % 3 != 2)
            replay_detach(&r[i], now);
    }
    CHECK(replay_store_bytes(s) > 0);
    abandoned_calls = 0;
    uint64_t next = replay_expire(s, now, on_abandoned, &abandoned_calls);
    CHECK(next == 1000); /* the first one's, opened at 0 and ended or left at once */
    while (next != UINT64_MAX)
        next = replay_expire(s, next, on_abandoned, &abandoned_calls);
    CHECK(abandoned_calls == N / 3 + (N % 3 == 2));
    /* the attached ones remain; their clients going ends them too */
    CHECK_EQ_SIZE(replay_store_streams(s), N / 3);
    for (size_t i = 2; i < N; i += 3) {
        replay_detach(&r[i], now);
    }
    CHECK(replay_next_deadline(s) == now + 1000);
    replay_expire(s, now + 1000, on_abandoned, &abandoned_calls);
    CHECK_EQ_SIZE(replay_store_bytes(s), 0);
    CHECK_EQ_SIZE(replay_store_streams(s), 0);
    replay_store_free(s);
}

TEST(replay_store_free_with_everything_in_flight)
{
    /* readers attached, husks, rings at several sizes: all freed (ASan checks) */
    replay_store *s = replay_store_new(MiB, WINDOW);
    char token[23], buf[5000];
    replay_stream *a = replay_open(s, "u", 0, token), *b = replay_open(s, "u", 0, token);
    replay_reader ra, rb;
    replay_attach(a, &ra, 0);
    replay_attach(b, &rb, 0);
    for (uint64_t k = 1; k <= 40; k++)
        append(a, ev(buf, sizeof buf, k, sizeof buf));
    append_text(b, "data: 1\n\n");
    replay_cancel(b); /* a husk under rb */
    CHECK(read_kind(&rb) == REPLAY_LOST);
    CHECK(replay_store_bytes(s) > 0);
    replay_store_free(s);
    replay_store_free(NULL);
}
