/* The chunk fast path (one pass, plus the shape cache) against the full,
 * jsmn path: wherever the fast one takes a chunk, every field must be what
 * the full one reads, the content the very same bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/json.h"
#include "unit.h"

#define CHAT_HEAD "{\"id\":\"chatcmpl-wVVhM90dohVOJ1PuSbOuDnskXUyjh\",\"object\":\"chat.completion.chunk\"," \
                  "\"created\":1796114582,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_f3a9c2e1d0\","
#define CHAT(delta, finish) CHAT_HEAD "\"choices\":[{\"index\":0,\"delta\":" delta ",\"logprobs\":null," \
                            "\"finish_reason\":" finish "}]}"
#define CHAT_U(delta, finish) CHAT_HEAD "\"choices\":[{\"index\":0,\"delta\":" delta ",\"logprobs\":null," \
                              "\"finish_reason\":" finish "}],\"usage\":null}"
#define RESP(delta) "{\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\"," \
                    "\"output_index\":0,\"content_index\":0,\"delta\":" delta "}"

/* Content deltas as the fast path must take them. */
static const char *const fast_corpus[] = {
    CHAT("{\"content\":\"tok3 \"}", "null"),
    CHAT_U("{\"content\":\"tok3 \"}", "null"),
    CHAT_U("{\"content\":\"tok4 \"}", "null"),
    CHAT_U("{\"role\":\"assistant\",\"content\":\"\"}", "null"),
    CHAT_U("{\"content\":\"say \\\"hi\\\"\"}", "null"),
    CHAT_U("{\"content\":\"ends in a quote\\\"\"}", "null"),
    CHAT_U("{\"content\":\"ends in a backslash\\\\\"}", "null"),
    CHAT_U("{\"content\":\"\\\\\\\\\\\\\"}", "null"),
    CHAT_U("{\"content\":\"caf\\u00e9 \\ud83d\\ude00 \\n\\t\\/\\b\\f\\r\"}", "null"),
    CHAT_U("{\"content\":\"caf\xc3\xa9, raw UTF-8, long enough to cross sixteen-byte blocks twice over\"}",
           "null"),
    CHAT_U("{\"content\":\"the words usage, error and finish_reason\"}", "null"),
    CHAT_U("{\"content\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":9},\\\"finish_reason\\\":\\\"stop\\\"\"}", "null"),
    CHAT_U("{\"content\":\"x\",\"refusal\":null}", "null"),
    CHAT_U("{}", "null"),
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}},{\"index\":1,\"delta\":{\"content\":\"b\"}}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}},{\"index\":1,\"delta\":{\"content\":\"b\"}}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":null}}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":\"odd\",\"text\":\"t\"}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"first\"},\"delta\":{\"content\":\"second\"}}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\",\"content\":\"two\"}}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"choices\":[]}",
    "{\"id\":\"c\",\"choices\":[{\"text\":\"completion text\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}",
    "{\"id\":\"c\",\"choices\":[{\"text\":\"\",\"index\":0}]}",
    "{\"id\":\"c\",\"choices\":[7,[],\"s\",{\"delta\":{\"content\":\"late\"}}]}",
    "{\"id\":\"c\",\"choices\":{\"delta\":{\"content\":\"not an array\"}}}",
    "{\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"obfuscation\":\"q8Zt\"}",
    "{\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"obfuscation\":\"q8Zt0Aa91\"}",
    RESP("\"Hello\""),
    RESP("\"\""),
    RESP("\"a \\\"quoted\\\" word\""),
    "{\"type\":\"response.output_text.delta\",\"delta\":\"a\",\"delta\":\"b\"}",
    "{\"delta\":\"x\",\"type\":\"response.output_text.delta\"}",
    "{\"type\":\"response.created\",\"delta\":\"x\"}",
    "{\"type\":\"response.reasoning.delta\",\"delta\":{\"text\":\"x\"}}",
    "{\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"delta\":\"b\"}",
    "{\"delta\":\"b\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}",
    "{\"delta\":\"b\",\"choices\":[{\"delta\":{\"content\":\"\"}}]}",
    "  {\"id\" : \"c\" , \"choices\" : [ { \"delta\" : { \"content\" : \"spaced\" } } ] , \"usage\" : null }\r\n",
    "{\"a\":[1,-2,3.5e10,-0.25E-3,true,false,null,{},[]],\"choices\":[{\"delta\":{\"content\":\"n\"}}]}",
    "{\"error\":null,\"usage\":null,\"choices\":[{\"finish_reason\":null,\"delta\":{\"content\":\"n\"}}]}",
    "{}",
};

/* What the fast path must leave to jsmn: usage, errors, finishes, the
 * Responses API's events with usage, and what is not JSON. */
static const char *const full_corpus[] = {
    CHAT_U("{}", "\"stop\""),
    CHAT("{\"content\":\"last\"}", "\"length\""),
    CHAT_HEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":16,\"total_tokens\":36}}",
    CHAT_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1}}",
    "{\"error\":{\"message\":\"upstream overloaded\",\"type\":\"server_error\",\"code\":null}}",
    "{\"error\":\"flat\"}",
    "{\"usage\":7,\"choices\":[{\"delta\":{\"content\":\"n\"}}]}",
    "{\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":5,\"output_tokens\":7}}}",
    "{\"choices\":[{\"delta\":{\"content\":\"x\",\"usage\":{}}}]}",
    /* not JSON, or not JSON the fast path vouches for */
    "",
    "   ",
    "[]",
    "{",
    "{\"id\":\"c\"",
    "{\"id\":\"c\",}",
    "{\"id\":\"c\"} x",
    "{\"id\" \"c\"}",
    "{\"id\":tru}",
    "{\"id\":01}",
    "{\"id\":1.}",
    "{\"id\":-}",
    "{\"a\":\"raw\ttab\"}",
    "{\"a\":\"bad escape \\x\"}",
    "{\"a\":\"short \\u12\"}",
    "{\"a\":\"unterminated}",
    "{\"a\":\"\\\"}",
    "{\"choices\":[{\"delta\":{\"content\":\"x\"}]}",
    "{\"choices\":[{\"delta\":{\"content\":\"x\"}}]",
    "{\"a\":[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]}",
};

typedef struct chunk_read {
    int rc;
    json_chunk_info info;
} chunk_read;

static bool same_info(const json_chunk_info *a, const json_chunk_info *b)
{
    return a->usage_only == b->usage_only && a->has_usage == b->has_usage &&
           a->prompt_tokens == b->prompt_tokens && a->completion_tokens == b->completion_tokens &&
           a->is_error == b->is_error && a->has_content == b->has_content && a->content.len == b->content.len &&
           (a->content.len == 0 || a->content.ptr == b->content.ptr);
}

/* Both paths over an exact-size copy (ASan sees a read past its end);
 * returns whether the fast one took it. */
static bool agree_at(const char *chunk, const char *file, int line)
{
    size_t len = strlen(chunk);
    char *copy = malloc(len ? len : 1);
    memcpy(copy, chunk, len);
    arena a;
    arena_init(&a);
    json_chunk_info fast, full;
    bool took = json_inspect_chunk_fast(copy, len, &fast);
    int rc = json_inspect_chunk_full(copy, len, &a, &full);
    json_chunk_info both;
    int rc_both = json_inspect_chunk(copy, len, &a, &both);
    if (took && (rc != 0 || !same_info(&fast, &full)))
        unit_fail(file, line, "fast and full paths disagree (full rc %d) on %s", rc, chunk);
    if (rc_both != rc || (rc == 0 && !same_info(&both, &full)))
        unit_fail(file, line, "json_inspect_chunk differs from the full path on %s", chunk);
    free(copy);
    arena_reset(&a);
    return took;
}
#define agree(chunk) agree_at((chunk), __FILE__, __LINE__)

TEST(json_fast_takes_content_deltas_as_the_full_path_reads_them)
{
    /* Twice over: the first pass mostly parses, the second (each chunk
     * after itself) goes through the shape cache. */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < sizeof fast_corpus / sizeof *fast_corpus; i++) {
            if (!agree(fast_corpus[i]))
                unit_fail(__FILE__, __LINE__, "fast path refused %s", fast_corpus[i]);
            if (pass == 1 && !agree(fast_corpus[i]))
                unit_fail(__FILE__, __LINE__, "fast path refused it again: %s", fast_corpus[i]);
        }
}

TEST(json_fast_leaves_usage_errors_finishes_and_non_json_to_jsmn)
{
    for (size_t i = 0; i < sizeof full_corpus / sizeof *full_corpus; i++) {
        /* Primed with a content delta first, so the cache is tried too. */
        agree(fast_corpus[1]);
        if (agree(full_corpus[i]))
            unit_fail(__FILE__, __LINE__, "fast path took %s", full_corpus[i]);
    }
}

TEST(json_fast_every_pair_agrees)
{
    /* Each chunk after each other one: whatever shape is cached, the answer
     * is the full path's. */
    const char *const *sets[] = {fast_corpus, full_corpus};
    size_t counts[] = {sizeof fast_corpus / sizeof *fast_corpus, sizeof full_corpus / sizeof *full_corpus};
    for (int s = 0; s < 2; s++)
        for (size_t i = 0; i < counts[s]; i++)
            for (int t = 0; t < 2; t++)
                for (size_t j = 0; j < counts[t]; j++) {
                    agree(sets[s][i]);
                    agree(sets[t][j]);
                }
}

TEST(json_fast_cache_keeps_empty_and_changed_slots_apart)
{
    /* The cached shape has "a" as content; the same skeleton with content
     * "" reads differently for a two-choice chunk (the second choice's
     * text is taken), so it must not match blindly. */
    const char *two = "{\"choices\":[{\"delta\":{\"content\":\"a\"}},{\"delta\":{\"content\":\"b\"}}]}";
    const char *two_empty = "{\"choices\":[{\"delta\":{\"content\":\"\"}},{\"delta\":{\"content\":\"b\"}}]}";
    CHECK(agree(two));
    CHECK(agree(two_empty));
    CHECK(agree(two));
    /* A content that is a quote away from another structure. */
    CHECK(agree(CHAT_U("{\"content\":\"a\"}", "null")));
    CHECK(!agree(CHAT_U("{\"content\":\"a\",\"x\":\"b\"}", "\"stop\"")));
    CHECK(agree(CHAT_U("{\"content\":\"a\\\",\\\"x\\\":\\\"b\"}", "null")));
    CHECK(!agree(CHAT_U("{\"content\":\"a\\q\"}", "null")));
    CHECK(!agree(CHAT_U("{\"content\":\"a\\\"}", "null")));
    /* The type value is part of the skeleton: another type reads differently. */
    CHECK(agree(RESP("\"x\"")));
    const char *other = "{\"type\":\"response.output_text.done\",\"sequence_number\":4,\"item_id\":\"msg_1\","
                        "\"output_index\":0,\"content_index\":0,\"delta\":\"x\"}";
    CHECK(agree(other));
    json_chunk_info info;
    CHECK(json_inspect_chunk_fast(other, strlen(other), &info) && !info.has_content);
    CHECK(json_inspect_chunk_fast(RESP("\"y\""), strlen(RESP("\"y\"")), &info) && info.has_content);
}

TEST(json_fast_reads_what_the_relay_counts)
{
    json_chunk_info info;
    const char *c = CHAT_U("{\"content\":\"tok3 \"}", "null");
    for (int i = 0; i < 2; i++) {
        CHECK(json_inspect_chunk_fast(c, strlen(c), &info));
        CHECK(info.has_content && !info.has_usage && !info.usage_only && !info.is_error);
        CHECK(slice_eq(info.content, SLICE_LIT("tok3 ")));
    }
    const char *r = RESP("\"He said \\\"hi\\\"\"");
    CHECK(json_inspect_chunk_fast(r, strlen(r), &info));
    CHECK(info.has_content && slice_eq(info.content, SLICE_LIT("He said \\\"hi\\\"")));
    const char *role = CHAT_U("{\"role\":\"assistant\",\"content\":\"\"}", "null");
    CHECK(json_inspect_chunk_fast(role, strlen(role), &info));
    CHECK(!info.has_content && info.content.len == 0);
}

TEST(json_fast_cache_follows_a_new_stream)
{
    /* Another stream: a new id, a new time, a longer number, text with
     * escapes; then a number the cache must not take as one. */
    static const char *const stream[] = {
        "{\"id\":\"chatcmpl-1\",\"created\":1796114582,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}",
        "{\"id\":\"chatcmpl-22\",\"created\":1796114583,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}",
        "{\"id\":\"chatcmpl-22\",\"created\":1796114583,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"c\\\\\"}}]}",
        "{\"id\":\"chatcmpl-22\",\"created\":17961145830,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"d\"}}]}",
        "{\"id\":\"chatcmpl-3\",\"created\":-1.5e3,\"choices\":[{\"index\":10,\"delta\":{\"content\":\"e\"}}]}",
        "{\"id\":\"\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"f\"}}]}",
        "{\"id\":\"chatcmpl-22\",\"created\":1796114583,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"g\"}}]}",
    };
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < sizeof stream / sizeof *stream; i++)
            CHECK(agree(stream[i]));
    CHECK(!agree("{\"id\":\"chatcmpl-22\",\"created\":01,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"g\"}}]}"));
    CHECK(!agree("{\"id\":\"chatcmpl-22\",\"created\":1.,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"g\"}}]}"));
    CHECK(!agree("{\"id\":\"chatcmpl-22\",\"created\":1796114583,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"g}}]}"));
    json_chunk_info info;
    const char *last = stream[6];
    CHECK(json_inspect_chunk_fast(last, strlen(last), &info) && slice_eq(info.content, SLICE_LIT("g")));
}

/* The final path against the full one, on an exact-size copy. */
static bool final_agrees_at(const char *chunk, const char *file, int line)
{
    size_t len = strlen(chunk);
    char *copy = malloc(len ? len : 1);
    memcpy(copy, chunk, len);
    arena a;
    arena_init(&a);
    json_chunk_info fin, full;
    bool took = json_inspect_chunk_final(copy, len, &fin);
    int rc = json_inspect_chunk_full(copy, len, &a, &full);
    if (took && (rc != 0 || !same_info(&fin, &full)))
        unit_fail(file, line, "final and full paths disagree (full rc %d) on %s", rc, chunk);
    free(copy);
    arena_reset(&a);
    return took;
}
#define final_agrees(chunk) final_agrees_at((chunk), __FILE__, __LINE__)

TEST(json_final_reads_finishes_and_usage_as_the_full_path)
{
    for (int pass = 0; pass < 2; pass++) { /* the second pass mostly through the shape cache */
        for (size_t i = 0; i < sizeof fast_corpus / sizeof *fast_corpus; i++)
            CHECK(final_agrees(fast_corpus[i])); /* what the fast path takes, the final one takes too */
        for (size_t i = 0; i < sizeof full_corpus / sizeof *full_corpus; i++) {
            final_agrees(full_corpus[i]);
            final_agrees(full_corpus[i]);
        }
    }
    /* The chunks that end a chat stream are its to take. */
    CHECK(final_agrees(CHAT_U("{}", "\"stop\"")));
    CHECK(final_agrees(CHAT("{\"content\":\"last\"}", "\"length\"")));
    CHECK(final_agrees(CHAT_HEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":16,"
                                 "\"total_tokens\":36}}"));
    CHECK(final_agrees(CHAT_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],"
                                 "\"usage\":{\"prompt_tokens\":1}}"));
    CHECK(final_agrees("{\"usage\":7,\"choices\":[{\"delta\":{\"content\":\"n\"}}]}"));
    CHECK(final_agrees("{\"choices\":[{\"text\":\"t\",\"finish_reason\":\"stop\"}],"
                       "\"usage\":{\"input_tokens\":\"5\",\"output_tokens\":7.9,\"prompt_tokens\":{}}}"));
    CHECK(final_agrees("{\"choices\":[{\"finish_reason\":1,\"delta\":{\"content\":\"\"}},"
                       "{\"finish_reason\":\"stop\",\"delta\":{\"content\":\"second\"}}]}"));
    CHECK(final_agrees("{\"usage\":{\"prompt_tokens\":1},\"choices\":[],\"usage\":{\"completion_tokens\":2},"
                       "\"choices\":[1]}"));
    /* Left to the full path: errors, "response", a final key elsewhere,
     * a choice or usage too large for the small token array. */
    CHECK(!final_agrees("{\"error\":{\"message\":\"upstream overloaded\",\"type\":\"server_error\",\"code\":null}}"));
    CHECK(!final_agrees("{\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5}}}"));
    CHECK(!final_agrees("{\"choices\":[{\"delta\":{\"content\":\"x\",\"usage\":{}}}]}"));
    CHECK(!final_agrees("{\"finish_reason\":\"stop\",\"choices\":[]}"));
    CHECK(!final_agrees("{\"choices\":[{\"delta\":{\"finish_reason\":\"stop\"}}]}"));
    char big[2048];
    size_t n = (size_t)snprintf(big, sizeof big, "{\"choices\":[{\"finish_reason\":\"stop\",\"logprobs\":[");
    for (int i = 0; i < 60; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "%s%d", i ? "," : "", i);
    snprintf(big + n, sizeof big - n, "],\"delta\":{\"content\":\"x\"}}]}");
    CHECK(!final_agrees(big));
    json_chunk_info info;
    arena a;
    arena_init(&a);
    CHECK(json_inspect_chunk(big, strlen(big), &a, &info) == 0 && slice_eq(info.content, SLICE_LIT("x")));
    arena_reset(&a);
}

TEST(json_final_reads_what_the_relay_counts)
{
    json_chunk_info info;
    const char *usage = CHAT_HEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":28,\"completion_tokens\":16,"
                                  "\"total_tokens\":44}}";
    CHECK(json_inspect_chunk_final(usage, strlen(usage), &info));
    CHECK(info.has_usage && info.usage_only && info.prompt_tokens == 28 && info.completion_tokens == 16);
    CHECK(!info.has_content && !info.is_error);
    const char *finish = CHAT("{\"content\":\"last words\"}", "\"length\"");
    CHECK(json_inspect_chunk_final(finish, strlen(finish), &info));
    CHECK(info.has_content && slice_eq(info.content, SLICE_LIT("last words")) && !info.has_usage);
}

TEST(json_final_cache_follows_new_streams)
{
    /* Finish and usage chunks of streams that differ in ids, times, counts
     * and text: each pair after the others, so most go through the cache. */
    static const char *const chunks[] = {
        "{\"id\":\"chatcmpl-1\",\"created\":1796114582,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}",
        "{\"id\":\"chatcmpl-1\",\"created\":1796114582,\"choices\":[],\"usage\":{\"prompt_tokens\":28,\"completion_tokens\":16,\"total_tokens\":44}}",
        "{\"id\":\"chatcmpl-222\",\"created\":1796114583,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":null}",
        "{\"id\":\"chatcmpl-222\",\"created\":1796114583,\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":123456,\"total_tokens\":123463}}",
        "{\"id\":\"\",\"created\":1,\"choices\":[],\"usage\":{\"prompt_tokens\":-1.5e3,\"completion_tokens\":0,\"total_tokens\":2}}",
        "{\"id\":\"c\",\"created\":2,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"last\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}",
        "{\"id\":\"cc\",\"created\":3,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\\"q\\\" longer\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":40,\"total_tokens\":70}}",
    };
    size_t n = sizeof chunks / sizeof *chunks;
    for (int pass = 0; pass < 3; pass++)
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++) {
                CHECK(final_agrees(chunks[i]));
                CHECK(final_agrees(chunks[j]));
            }
    json_chunk_info info;
    const char *u = chunks[3];
    CHECK(json_inspect_chunk_final(chunks[1], strlen(chunks[1]), &info));
    CHECK(json_inspect_chunk_final(u, strlen(u), &info) && info.usage_only && info.completion_tokens == 123456);
    const char *c = chunks[6];
    CHECK(json_inspect_chunk_final(chunks[5], strlen(chunks[5]), &info));
    CHECK(json_inspect_chunk_final(c, strlen(c), &info) && info.has_content && info.prompt_tokens == 30);
    CHECK(slice_eq(info.content, SLICE_LIT("\\\"q\\\" longer")));
    /* Same skeleton, another structure in a value's place: not the cache's. */
    CHECK(final_agrees("{\"id\":\"c\",\"created\":{},\"choices\":[],\"usage\":{\"prompt_tokens\":1}}"));
    CHECK(final_agrees("{\"id\":\"c\",\"created\":5,\"choices\":[],\"usage\":{\"prompt_tokens\":{}}}"));
    CHECK(json_inspect_chunk_final(chunks[1], strlen(chunks[1]), &info));
    CHECK(!json_inspect_chunk_final("{\"id\":\"chatcmpl-1\",\"created\":1796114582,\"choices\":[],\"usage\":{\"prompt_tokens\":28,\"completion_tokens\":16,\"total_tokens\":44}",
                                    strlen(chunks[1]) - 1, &info));
}
