/* The chunked decoder: the input fed in pieces (state carried), and
 * decoded in place the way the relay does it, must give exactly what one
 * call over the whole input gives; no call produces more than it consumes,
 * and until the end every byte offered is consumed. An error stops before
 * its offending byte, at the same place however the input was split. */
#include "fuzz.h"
#include "http/http.h"

typedef struct outcome {
    http_chunked_result result;
    size_t consumed, produced;
} outcome;

/* Feeds src in pieces into out (a separate buffer). */
static outcome in_pieces(const char *src, size_t size, char *out, fuzz_rng *rng)
{
    http_chunked st = {0};
    outcome o = {CHUNKED_MORE, 0, 0};
    while (o.result == CHUNKED_MORE) {
        size_t n = o.consumed < size ? fuzz_piece(rng, size - o.consumed) : 0;
        char *piece = fuzz_copy(src + o.consumed, n);
        size_t used = 0, made = 0;
        o.result = http_chunked_decode(&st, out + o.produced, piece, n, &used, &made);
        free(piece);
        FUZZ_CHECK(used <= n && made <= used);
        if (o.result == CHUNKED_MORE)
            FUZZ_CHECK(used == n);
        o.consumed += used;
        o.produced += made;
        if (o.consumed == size)
            break;
    }
    return o;
}

/* The relay's way: raw bytes arrive after the decoded ones in one buffer and
 * are decoded down over their own framing (dst <= src). */
static outcome in_place(const char *src, size_t size, char *buf, fuzz_rng *rng)
{
    http_chunked st = {0};
    outcome o = {CHUNKED_MORE, 0, 0};
    size_t have = 0;
    while (o.result == CHUNKED_MORE && have < size) {
        size_t n = fuzz_piece(rng, size - have);
        memcpy(buf + have, src + have, n);
        have += n;
        size_t used = 0, made = 0;
        o.result = http_chunked_decode(&st, buf + o.produced, buf + o.consumed, have - o.consumed, &used, &made);
        FUZZ_CHECK(made <= used);
        if (o.result == CHUNKED_MORE)
            FUZZ_CHECK(o.consumed + used == have);
        o.consumed += used;
        o.produced += made;
        FUZZ_CHECK(o.produced <= o.consumed);
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    char *copy = fuzz_copy(data, size);
    char *once = fuzz_alloc(size), *split = fuzz_alloc(size), *inplace = fuzz_alloc(size);

    http_chunked st = {0};
    outcome whole = {CHUNKED_MORE, 0, 0};
    whole.result = http_chunked_decode(&st, once, copy, size, &whole.consumed, &whole.produced);
    FUZZ_CHECK(whole.consumed <= size && whole.produced <= whole.consumed);
    if (whole.result == CHUNKED_MORE)
        FUZZ_CHECK(whole.consumed == size);
    if (whole.result == CHUNKED_DONE) /* the shortest body is "0\r\n\r\n"; every body ends in CRLF CRLF */
        FUZZ_CHECK(st.state == CHUNK_DONE && whole.consumed >= 5 &&
                   memcmp(src + whole.consumed - 4, "\r\n\r\n", 4) == 0);
    if (whole.result == CHUNKED_ERROR) /* an error is final */
        FUZZ_CHECK(st.state == CHUNK_INVALID && whole.consumed < size);

    fuzz_rng rng = fuzz_rng_from(data, size);
    outcome parts = in_pieces(src, size, split, &rng);
    FUZZ_CHECK(parts.result == whole.result);
    FUZZ_CHECK(parts.consumed == whole.consumed && parts.produced == whole.produced);
    FUZZ_CHECK(memcmp(split, once, whole.produced) == 0);

    outcome inp = in_place(src, size, inplace, &rng);
    FUZZ_CHECK(inp.result == whole.result);
    FUZZ_CHECK(inp.consumed == whole.consumed && inp.produced == whole.produced);
    FUZZ_CHECK(memcmp(inplace, once, whole.produced) == 0);

    /* dst == src over the whole input. */
    memcpy(copy, src, size);
    http_chunked st2 = {0};
    size_t used = 0, made = 0;
    http_chunked_result r = http_chunked_decode(&st2, copy, copy, size, &used, &made);
    FUZZ_CHECK(r == whole.result && used == whole.consumed && made == whole.produced);
    FUZZ_CHECK(memcmp(copy, once, made) == 0);

    free(copy);
    free(once);
    free(split);
    free(inplace);
    return 0;
}
