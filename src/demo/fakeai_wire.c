#include "demo/fakeai_wire.h"

/* ---- content ---- */

slice fakeai_default_token(size_t i, char scratch[FAKEAI_TOKEN_SCRATCH])
{
    static const char probe[] = "q\"b\\s\n<\xc3\xa9\xf0\x9f\x98\x80> ";
    if (i % 5 == 4)
        return (slice){probe, sizeof probe - 1};
    wbuf b = wbuf_over(scratch, FAKEAI_TOKEN_SCRATCH);
    wbuf_puts(&b, "tok");
    wbuf_put_u64(&b, i);
    wbuf_put_char(&b, ' ');
    return wbuf_slice(&b);
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t fakeai_split_words(slice text, slice *out, size_t max)
{
    size_t count = 0, i = 0;
    while (i < text.len) {
        size_t start = i;
        while (i < text.len && is_space(text.ptr[i])) /* only before the first word */
            i++;
        while (i < text.len && !is_space(text.ptr[i]))
            i++;
        while (i < text.len && is_space(text.ptr[i]))
            i++;
        if (count < max)
            out[count] = (slice){text.ptr + start, i - start};
        count++;
    }
    return count;
}

slice fakeai_token(const fakeai_reply_meta *m, size_t i, char scratch[FAKEAI_TOKEN_SCRATCH])
{
    if (m->word_count)
        return m->words[i % m->word_count];
    return fakeai_default_token(i, scratch);
}

size_t fakeai_text_bound(const fakeai_reply_meta *m)
{
    char scratch[FAKEAI_TOKEN_SCRATCH];
    size_t bound = 0;
    for (size_t i = 0; i < m->chunks; i++)
        bound += 6 * fakeai_token(m, i, scratch).len;
    return bound;
}

static void put_text(wbuf *b, const fakeai_reply_meta *m)
{
    char scratch[FAKEAI_TOKEN_SCRATCH];
    for (size_t i = 0; i < m->chunks; i++)
        wbuf_put_json_escaped(b, fakeai_token(m, i, scratch));
}

/* ---- chat completions ---- */

static void put_chat_usage(wbuf *b, const fakeai_reply_meta *m)
{
    wbuf_puts(b, "\"usage\":{\"prompt_tokens\":");
    wbuf_put_u64(b, m->prompt_tokens);
    wbuf_puts(b, ",\"completion_tokens\":");
    wbuf_put_u64(b, m->completion_tokens);
    wbuf_puts(b, ",\"total_tokens\":");
    wbuf_put_u64(b, m->prompt_tokens + m->completion_tokens);
    wbuf_put_char(b, '}');
}

static void put_chat_preamble(wbuf *b, const fakeai_reply_meta *m, const char *object)
{
    wbuf_puts(b, "{\"id\":\"");
    wbuf_put_slice(b, m->id);
    wbuf_puts(b, "\",\"object\":\"");
    wbuf_puts(b, object);
    wbuf_puts(b, "\",\"created\":");
    wbuf_put_u64(b, m->created);
    wbuf_puts(b, ",\"model\":\"");
    wbuf_put_slice(b, m->model);
    wbuf_put_char(b, '"');
}

void fakeai_format_chunk(wbuf *b, const fakeai_reply_meta *m, fakeai_chunk_kind kind, slice content)
{
    put_chat_preamble(b, m, "chat.completion.chunk");
    wbuf_puts(b, ",\"system_fingerprint\":\"");
    wbuf_put_slice(b, m->fingerprint);
    wbuf_puts(b, "\",\"choices\":");
    if (kind == FAKEAI_CHUNK_USAGE) {
        wbuf_puts(b, "[],");
        put_chat_usage(b, m);
        wbuf_put_char(b, '}');
        return;
    }
    wbuf_puts(b, "[{\"index\":0,\"delta\":");
    switch (kind) {
    case FAKEAI_CHUNK_ROLE: wbuf_puts(b, "{\"role\":\"assistant\",\"content\":\"\"}"); break;
    case FAKEAI_CHUNK_CONTENT:
        wbuf_puts(b, "{\"content\":\"");
        wbuf_put_json_escaped(b, content);
        wbuf_puts(b, "\"}");
        break;
    default: wbuf_puts(b, "{}"); break;
    }
    wbuf_puts(b, ",\"logprobs\":null,\"finish_reason\":");
    wbuf_puts(b, kind == FAKEAI_CHUNK_FINISH ? "\"stop\"}]" : "null}]");
    if (m->usage_null)
        wbuf_puts(b, ",\"usage\":null");
    wbuf_put_char(b, '}');
}

void fakeai_format_completion(wbuf *b, const fakeai_reply_meta *m)
{
    put_chat_preamble(b, m, "chat.completion");
    wbuf_puts(b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
    put_text(b, m);
    wbuf_puts(b, "\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\"}],");
    if (!m->no_usage) {
        put_chat_usage(b, m);
        wbuf_put_char(b, ',');
    }
    wbuf_puts(b, "\"system_fingerprint\":\"");
    wbuf_put_slice(b, m->fingerprint);
    wbuf_puts(b, "\"}");
}

/* ---- the Responses API ---- */

void fakeai_format_response(wbuf *b, const fakeai_reply_meta *m, bool completed)
{
    wbuf_puts(b, "{\"id\":\"");
    wbuf_put_slice(b, m->id);
    wbuf_puts(b, "\",\"object\":\"response\",\"created_at\":");
    wbuf_put_u64(b, m->created);
    wbuf_puts(b, completed ? ",\"status\":\"completed\"" : ",\"status\":\"in_progress\"");
    wbuf_puts(b, ",\"model\":\"");
    wbuf_put_slice(b, m->model);
    if (!completed) {
        wbuf_puts(b, "\",\"output\":[],\"usage\":null}");
        return;
    }
    wbuf_puts(b, "\",\"output\":[{\"id\":\"");
    wbuf_put_slice(b, m->item_id);
    wbuf_puts(b, "\",\"type\":\"message\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":"
                 "[{\"type\":\"output_text\",\"annotations\":[],\"text\":\"");
    put_text(b, m);
    wbuf_puts(b, "\"}]}],\"usage\":");
    if (m->no_usage) {
        wbuf_puts(b, "null}");
        return;
    }
    wbuf_puts(b, "{\"input_tokens\":");
    wbuf_put_u64(b, m->prompt_tokens);
    wbuf_puts(b, ",\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":");
    wbuf_put_u64(b, m->completion_tokens);
    wbuf_puts(b, ",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":");
    wbuf_put_u64(b, m->prompt_tokens + m->completion_tokens);
    wbuf_puts(b, "}}");
}

const char *fakeai_response_event_name(fakeai_response_event kind)
{
    switch (kind) {
    case FAKEAI_RESPONSE_CREATED: return "response.created";
    case FAKEAI_RESPONSE_DELTA: return "response.output_text.delta";
    default: return "response.completed";
    }
}

void fakeai_format_response_event(wbuf *b, const fakeai_reply_meta *m, fakeai_response_event kind, uint64_t seq,
                                  slice delta)
{
    wbuf_puts(b, "{\"type\":\"");
    wbuf_puts(b, fakeai_response_event_name(kind));
    wbuf_puts(b, "\",\"sequence_number\":");
    wbuf_put_u64(b, seq);
    if (kind == FAKEAI_RESPONSE_DELTA) {
        wbuf_puts(b, ",\"item_id\":\"");
        wbuf_put_slice(b, m->item_id);
        wbuf_puts(b, "\",\"output_index\":0,\"content_index\":0,\"delta\":\"");
        wbuf_put_json_escaped(b, delta);
        wbuf_puts(b, "\"}");
        return;
    }
    wbuf_puts(b, ",\"response\":");
    fakeai_format_response(b, m, kind == FAKEAI_RESPONSE_COMPLETED);
    wbuf_put_char(b, '}');
}

/* ---- models and embeddings ---- */

void fakeai_format_models(wbuf *b, const slice *ids, size_t count)
{
    static const char created[] = "1715367049";
    wbuf_puts(b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < count; i++) {
        wbuf_puts(b, i ? ",{\"id\":\"" : "{\"id\":\"");
        wbuf_put_slice(b, ids[i]);
        wbuf_puts(b, "\",\"object\":\"model\",\"created\":");
        wbuf_puts(b, created);
        wbuf_puts(b, ",\"owned_by\":\"system\"}");
    }
    wbuf_puts(b, "]}");
}

void fakeai_format_embeddings(wbuf *b, const fakeai_reply_meta *m)
{
    wbuf_puts(b, "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":"
                 "[0.0023064255,-0.009327292,0.015797347,-0.0077780345,0.0041235]}],\"model\":\"");
    wbuf_put_slice(b, m->model);
    wbuf_put_char(b, '"');
    if (!m->no_usage) { /* an embedding's tokens are all prompt tokens */
        wbuf_puts(b, ",\"usage\":{\"prompt_tokens\":");
        wbuf_put_u64(b, m->prompt_tokens);
        wbuf_puts(b, ",\"total_tokens\":");
        wbuf_put_u64(b, m->prompt_tokens);
        wbuf_put_char(b, '}');
    }
    wbuf_put_char(b, '}');
}

/* ---- the leaking faults ---- */

slice fakeai_bearer_key(slice authorization)
{
    static const char scheme[] = "bearer ";
    slice head = {authorization.ptr, sizeof scheme - 1};
    if (authorization.len < head.len || !slice_eq_nocase(head, SLICE_LIT(scheme)))
        return authorization;
    return (slice){authorization.ptr + head.len, authorization.len - head.len};
}

slice fakeai_body_prefix(slice body)
{
    if (body.len <= FAKEAI_ECHO_BODY_MAX)
        return body;
    /* Back off over continuation bytes at the cut, at most three: a UTF-8
     * sequence is four bytes long at most, and garbage stays cut at 200. */
    size_t cut = FAKEAI_ECHO_BODY_MAX;
    for (size_t back = 0; back < 3 && cut > 0 && ((unsigned char)body.ptr[cut] & 0xc0) == 0x80; back++)
        cut--;
    if (((unsigned char)body.ptr[cut] & 0xc0) == 0x80)
        cut = FAKEAI_ECHO_BODY_MAX;
    return (slice){body.ptr, cut};
}

static void put_error(wbuf *b, slice before_key, slice key, slice before_body, slice body, const char *type,
                      const char *code)
{
    wbuf_puts(b, "{\"error\":{\"message\":\"");
    wbuf_put_json_escaped(b, before_key);
    wbuf_put_json_escaped(b, key);
    wbuf_put_json_escaped(b, before_body);
    wbuf_put_json_escaped(b, body);
    wbuf_puts(b, "\",\"type\":\"");
    wbuf_puts(b, type);
    wbuf_puts(b, "\",\"param\":null,\"code\":");
    wbuf_puts(b, code);
    wbuf_puts(b, "}}");
}

void fakeai_format_echo_error(wbuf *b, slice key, slice body_prefix)
{
    put_error(b, SLICE_LIT("Incorrect API key provided: "), key, SLICE_LIT(". Request body began: "), body_prefix,
              "invalid_request_error", "\"invalid_api_key\"");
}

void fakeai_format_echo_event(wbuf *b, slice key, slice body_prefix)
{
    put_error(b, SLICE_LIT("upstream failed for key "), key, SLICE_LIT("; body began: "), body_prefix, "server_error",
              "null");
}

void fakeai_format_html_error(wbuf *b, uint64_t status, slice key)
{
    wbuf_puts(b, "<html><head><title>");
    wbuf_put_u64(b, status);
    wbuf_puts(b, "</title></head><body><center><h1>");
    wbuf_put_u64(b, status);
    wbuf_puts(b, "</h1></center><hr><center>nginx</center><!-- key: ");
    wbuf_put_slice(b, key);
    wbuf_puts(b, " --></body></html>");
}

/* ---- the X-Mock-* headers ---- */

bool fakeai_parse_fault(slice v, fakeai_fault *out)
{
    static const struct {
        const char *name;
        fakeai_fault_kind kind;
        bool takes_arg;
        uint64_t min, max;
    } faults[] = {
        {"status", FAKEAI_FAULT_STATUS, true, 200, 599},
        {"close-after", FAKEAI_FAULT_CLOSE_AFTER, true, 0, FAKEAI_MAX_CHUNKS},
        {"reset-after", FAKEAI_FAULT_RESET_AFTER, true, 0, FAKEAI_MAX_CHUNKS},
        {"hang", FAKEAI_FAULT_HANG, false, 0, 0},
        {"hang-after", FAKEAI_FAULT_HANG_AFTER, true, 0, FAKEAI_MAX_CHUNKS},
        {"garbage", FAKEAI_FAULT_GARBAGE, false, 0, 0},
        {"bad-chunked", FAKEAI_FAULT_BAD_CHUNKED, false, 2, 2},
        {"close-delimited", FAKEAI_FAULT_CLOSE_DELIMITED, false, 0, 0},
        {"trickle", FAKEAI_FAULT_TRICKLE, false, 0, 0},
        {"crlf", FAKEAI_FAULT_CRLF, false, 0, 0},
        {"comments", FAKEAI_FAULT_COMMENTS, false, 0, 0},
        {"echo", FAKEAI_FAULT_ECHO, true, 400, 599},
        {"echo-event", FAKEAI_FAULT_ECHO_EVENT, false, 2, 2},
        {"html", FAKEAI_FAULT_HTML, true, 400, 599},
        {"no-usage", FAKEAI_FAULT_NO_USAGE, false, 0, 0},
    };
    const char *colon = memchr(v.ptr, ':', v.len);
    slice name = {v.ptr, colon ? (size_t)(colon - v.ptr) : v.len};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        if (!slice_eq(name, slice_of(faults[i].name)))
            continue;
        if (faults[i].takes_arg != (colon != NULL))
            return false;
        uint64_t arg = faults[i].min; /* an argument-free fault's fixed K, if any */
        if (colon && (!slice_to_u64((slice){colon + 1, v.len - name.len - 1}, faults[i].max, &arg) ||
                      arg < faults[i].min))
            return false;
        out->kind = faults[i].kind;
        out->arg = arg;
        return true;
    }
    return false;
}

bool fakeai_parse_usage(slice v, uint64_t *prompt, uint64_t *completion)
{
    const char *comma = memchr(v.ptr, ',', v.len);
    if (!comma)
        return false;
    size_t first = (size_t)(comma - v.ptr);
    slice p = {v.ptr, first}, c = {comma + 1, v.len - first - 1};
    uint64_t pv, cv;
    if (!slice_to_u64(p, FAKEAI_USAGE_MAX, &pv) || !slice_to_u64(c, FAKEAI_USAGE_MAX, &cv))
        return false;
    *prompt = pv;
    *completion = cv;
    return true;
}
