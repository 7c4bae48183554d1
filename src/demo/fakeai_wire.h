/* The fake upstream's pure half: the bytes its answers carry and the grammar
 * of its X-Mock-* request headers. No sockets and no state, so the server
 * (fakeai.c) and the unit tests share it; nothing else should need it. */
#ifndef SSEGATE_FAKEAI_WIRE_H
#define SSEGATE_FAKEAI_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/slice.h"
#include "core/wbuf.h"

enum {
    FAKEAI_TOKEN_SCRATCH = 32,
    FAKEAI_MAX_CHUNKS = 1000000,
    FAKEAI_ECHO_BODY_MAX = 200, /* request-body bytes the echo faults repeat */
};
/* 2^53 - 1: the largest count every JSON reader (doubles included) keeps exact. */
#define FAKEAI_USAGE_MAX ((uint64_t)9007199254740991u)

/* Content token i of the default reply: "tok<i> ", except every fifth one
 * (i % 5 == 4), which is "q\"b\\s\n<é😀> " to exercise JSON escaping.
 * The result may point into scratch. */
slice fakeai_default_token(size_t i, char scratch[FAKEAI_TOKEN_SCRATCH]);

/* Splits text into word tokens, each keeping the whitespace after it (and
 * the first one the whitespace before it), so their concatenation is text.
 * Stores up to max of them and returns how many there are. */
size_t fakeai_split_words(slice text, slice *out, size_t max);

/* One reply's identity, its content and the usage it reports. */
typedef struct fakeai_reply_meta {
    slice id;          /* "chatcmpl-..." or, for the Responses API, "resp_..." */
    slice item_id;     /* Responses API: the output message's "msg_..." */
    uint64_t created;  /* unix seconds */
    slice model;       /* already valid inside a JSON string */
    slice fingerprint; /* "fp_..." */
    /* The request asked for usage: like OpenAI, every chunk but the usage
     * chunk then carries "usage":null. */
    bool usage_null;
    bool no_usage; /* the no-usage fault: no answer reports usage */
    uint64_t prompt_tokens, completion_tokens;
    /* The content: `chunks` tokens, words[i % word_count] when words are
     * given, else the default rule. */
    const slice *words;
    size_t word_count, chunks;
} fakeai_reply_meta;

/* Content token i of the reply; may point into scratch. */
slice fakeai_token(const fakeai_reply_meta *m, size_t i, char scratch[FAKEAI_TOKEN_SCRATCH]);

/* At most the bytes the whole content takes once JSON-escaped. */
size_t fakeai_text_bound(const fakeai_reply_meta *m);

typedef enum fakeai_chunk_kind {
    FAKEAI_CHUNK_ROLE,    /* delta {"role":"assistant","content":""} */
    FAKEAI_CHUNK_CONTENT, /* delta {"content":"..."} */
    FAKEAI_CHUNK_FINISH,  /* delta {}, finish_reason "stop" */
    FAKEAI_CHUNK_USAGE    /* choices [] and the usage object */
} fakeai_chunk_kind;

/* Appends one chat.completion.chunk object, without SSE framing. */
void fakeai_format_chunk(wbuf *b, const fakeai_reply_meta *m, fakeai_chunk_kind kind, slice content);

/* Appends a chat.completion object holding the whole content. */
void fakeai_format_completion(wbuf *b, const fakeai_reply_meta *m);

/* Appends a Responses API "response" object: completed, with the whole
 * content as one output message and its usage; or in_progress, with no
 * output and "usage":null. */
void fakeai_format_response(wbuf *b, const fakeai_reply_meta *m, bool completed);

typedef enum fakeai_response_event {
    FAKEAI_RESPONSE_CREATED,   /* the in_progress response */
    FAKEAI_RESPONSE_DELTA,     /* one piece of the output text */
    FAKEAI_RESPONSE_COMPLETED  /* the completed response */
} fakeai_response_event;

/* The SSE event name: "response.created" and so on. */
const char *fakeai_response_event_name(fakeai_response_event kind);

/* Appends one streamed Responses API event's data (JSON, no SSE framing);
 * seq is its sequence_number, delta the text of a DELTA event. */
void fakeai_format_response_event(wbuf *b, const fakeai_reply_meta *m, fakeai_response_event kind, uint64_t seq,
                                  slice delta);

/* Appends a model list; each id already valid inside a JSON string. */
void fakeai_format_models(wbuf *b, const slice *ids, size_t count);

/* Appends an embeddings list of one fixed vector. */
void fakeai_format_embeddings(wbuf *b, const fakeai_reply_meta *m);

/* The key an Authorization value carries: what follows "Bearer " (the
 * scheme matched case-insensitively), else the whole value. */
slice fakeai_bearer_key(slice authorization);

/* The first FAKEAI_ECHO_BODY_MAX bytes of body, cut short of a UTF-8
 * sequence that would straddle the end, so the echo stays valid UTF-8. */
slice fakeai_body_prefix(slice body);

/* echo:CODE's body: OpenAI's error JSON whose message repeats the key and
 * the start of the request body. */
void fakeai_format_echo_error(wbuf *b, slice key, slice body_prefix);

/* echo-event's last event: an in-stream error object repeating the same. */
void fakeai_format_echo_event(wbuf *b, slice key, slice body_prefix);

/* html:CODE's body: an nginx-style error page with the key in a comment. */
void fakeai_format_html_error(wbuf *b, uint64_t status, slice key);

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
    FAKEAI_FAULT_COMMENTS,        /* comments */
    FAKEAI_FAULT_ECHO,            /* echo:CODE, 400..599 */
    FAKEAI_FAULT_ECHO_EVENT,      /* echo-event (an error event after K = 2 content chunks) */
    FAKEAI_FAULT_HTML,            /* html:CODE, 400..599 */
    FAKEAI_FAULT_NO_USAGE         /* no-usage */
} fakeai_fault_kind;

typedef struct fakeai_fault {
    fakeai_fault_kind kind;
    uint64_t arg; /* the status code, or K */
} fakeai_fault;

/* Parses an X-Mock-Fault value; false when it names no known fault. */
bool fakeai_parse_fault(slice value, fakeai_fault *out);

/* Parses an X-Mock-Usage value "P,C": two decimal integers, each at most
 * FAKEAI_USAGE_MAX, nothing else. */
bool fakeai_parse_usage(slice value, uint64_t *prompt, uint64_t *completion);

#endif
