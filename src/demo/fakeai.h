/* A fake OpenAI-compatible upstream served on the reactor: the gateway's demo
 * upstream and the engine of tools/mock-upstream. It speaks OpenAI's wire
 * format (streamed chat.completion.chunk events, chat.completion, models,
 * embeddings, error JSON) over plaintext or TLS, paced by loop timers, and
 * when asked plays the faults the gateway must survive. */
#ifndef SSEGATE_FAKEAI_H
#define SSEGATE_FAKEAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/slice.h"
#include "upstream/tls.h"
#include "core/wbuf.h"

typedef struct fakeai fakeai;

typedef struct fakeai_config {
    size_t chunks;     /* content deltas per streamed reply (tok<i> rule) */
    uint64_t delay_ms; /* pause before each content delta; 0: as fast as the socket takes them */
    /* When set, the reply is this text split into word tokens (each keeps the
     * whitespace that follows it) and `chunks` is ignored; else the tok<i> rule. */
    const char *reply_text;
    const char *model;      /* model named in answers when the request names none */
    const char *expect_key; /* NULL: no check; else 401 unless "Authorization: Bearer <key>" */
    const tls_server_cred *tls; /* NULL: plaintext. Borrowed: keep it alive until fakeai_stop. */
    bool faults; /* honour X-Mock-* request headers and serve /_mock/stats, /_mock/last */
} fakeai_config;

/* Listens on listen_addr ("HOST:PORT", port 0 for an ephemeral one) and
 * serves on `l`. Strings in cfg are copied. On failure returns NULL with
 * *why set to a sentence. */
fakeai *fakeai_start(loop *l, const char *listen_addr, const fakeai_config *cfg, const char **why);

/* The address actually bound, e.g. "127.0.0.1:41234". */
const char *fakeai_address(const fakeai *f);

/* Closes the listener and every connection and frees everything, at once.
 * Call it when no event of this loop is being dispatched (after loop_run
 * returned): connections are freed immediately, not deferred. */
void fakeai_stop(fakeai *f);

/* ---- the pure parts, exposed for the unit tests ---- */

enum { FAKEAI_TOKEN_SCRATCH = 32 };

/* Content token i of the default reply: "tok<i> ", except every fifth one
 * (i % 5 == 4), which is "q\"b\\s\n<é😀> " to exercise JSON escaping.
 * The result may point into scratch. */
slice fakeai_default_token(size_t i, char scratch[FAKEAI_TOKEN_SCRATCH]);

/* Splits text into word tokens, each keeping the whitespace after it (and
 * the first one the whitespace before it), so their concatenation is text.
 * Stores up to max of them and returns how many there are. */
size_t fakeai_split_words(slice text, slice *out, size_t max);

typedef enum fakeai_chunk_kind {
    FAKEAI_CHUNK_ROLE,    /* delta {"role":"assistant","content":""} */
    FAKEAI_CHUNK_CONTENT, /* delta {"content":"..."} */
    FAKEAI_CHUNK_FINISH,  /* delta {}, finish_reason "stop" */
    FAKEAI_CHUNK_USAGE    /* choices [] and the usage object */
} fakeai_chunk_kind;

typedef struct fakeai_reply_meta {
    slice id;          /* "chatcmpl-..." */
    uint64_t created;  /* unix seconds */
    slice model;       /* already valid inside a JSON string */
    slice fingerprint; /* "fp_..." */
    /* The request asked for usage: like OpenAI, every chunk but the usage
     * chunk then carries "usage":null. */
    bool usage_null;
    uint64_t prompt_tokens, completion_tokens;
} fakeai_reply_meta;

/* Appends one chat.completion.chunk object, without SSE framing. */
void fakeai_format_chunk(wbuf *b, const fakeai_reply_meta *m, fakeai_chunk_kind kind, slice content);

typedef enum fakeai_fault_kind {
    FAKEAI_FAULT_NONE,
    FAKEAI_FAULT_STATUS,          /* status:CODE */
    FAKEAI_FAULT_CLOSE_AFTER,     /* close-after:K */
    FAKEAI_FAULT_RESET_AFTER,     /* reset-after:K */
    FAKEAI_FAULT_HANG,            /* hang */
    FAKEAI_FAULT_HANG_AFTER,      /* hang-after:K */
    FAKEAI_FAULT_GARBAGE,         /* garbage */
    FAKEAI_FAULT_BAD_CHUNKED,     /* bad-chunked (after K = 2 content chunks) */
    FAKEAI_FAULT_CLOSE_DELIMITED, /* close-delimited */
    FAKEAI_FAULT_TRICKLE,         /* trickle */
    FAKEAI_FAULT_CRLF,            /* crlf */
    FAKEAI_FAULT_COMMENTS         /* comments */
} fakeai_fault_kind;

typedef struct fakeai_fault {
    fakeai_fault_kind kind;
    uint64_t arg; /* the status code, or K */
} fakeai_fault;

/* Parses an X-Mock-Fault value; false when it names no known fault. */
bool fakeai_parse_fault(slice value, fakeai_fault *out);

#endif
