/* Request body inspection (model, stream, the include_usage edit), chunk
 * inspection, and the error writer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/json.h"
#include "unit.h"

/* The body with the edit applied (or as is when the edit is inactive). */
static const char *apply_edit(const char *body, const json_edit *e)
{
    static char out[1024];
    size_t len = strlen(body);
    if (!e->active) {
        snprintf(out, sizeof out, "%s", body);
        return out;
    }
    if (e->at > len || e->remove > len - e->at || len + e->insert.len >= sizeof out)
        return "(edit out of range)";
    size_t n = 0;
    memcpy(out, body, e->at);
    n += e->at;
    memcpy(out + n, e->insert.ptr, e->insert.len);
    n += e->insert.len;
    memcpy(out + n, body + e->at + e->remove, len - e->at - e->remove);
    n += len - e->at - e->remove;
    out[n] = '\0';
    return out;
}

typedef struct req_case {
    int rc;
    json_request_info info;
    const char *why;
    char model[128];
} req_case;

static void inspect(const char *body, req_case *c)
{
    arena a;
    arena_init(&a);
    /* An exact-size copy, so ASan sees reads past the end. */
    size_t len = strlen(body);
    char *copy = malloc(len ? len : 1);
    memcpy(copy, body, len);
    c->why = NULL;
    c->rc = json_inspect_request(copy, len, &a, &c->info, &c->why);
    snprintf(c->model, sizeof c->model, "%.*s", (int)c->info.model.len, c->info.model.ptr ? c->info.model.ptr : "");
    /* The edit is offsets plus a literal insert, so it outlives the copy. */
    free(copy);
    arena_reset(&a);
}

static void check_edit(const char *body, const char *want)
{
    req_case c;
    inspect(body, &c);
    if (c.rc != 0) {
        unit_fail(__FILE__, __LINE__, "rejected %s: %s", body, c.why ? c.why : "?");
        return;
    }
    CHECK(c.info.stream);
    CHECK(!c.info.client_wants_usage);
    CHECK(c.info.usage_edit.active);
    const char *got = apply_edit(body, &c.info.usage_edit);
    if (strcmp(got, want) != 0)
        unit_fail(__FILE__, __LINE__, "edit of %s\n  gave %s\n  want %s", body, got, want);
    /* The edited body inspects as wanting usage and needs no more edits. */
    req_case again;
    inspect(want, &again);
    CHECK(again.rc == 0);
    CHECK(again.info.client_wants_usage);
    CHECK(!again.info.usage_edit.active);
}

TEST(json_request_model_and_stream)
{
    req_case c;
    inspect("{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &c);
    CHECK(c.rc == 0);
    CHECK_STR(c.model, "gpt-4o-mini");
    CHECK(!c.info.stream);
    CHECK(!c.info.usage_edit.active);

    inspect(" \r\n\t{ \"stream\" : false , \"model\" : \"a\\\"b\" } \n", &c);
    CHECK(c.rc == 0);
    CHECK(!c.info.stream);
    CHECK_STR(c.model, "a\\\"b"); /* still escaped */
    CHECK(!c.info.usage_edit.active);

    /* Only a literal true streams; a model that is not a string is none. */
    inspect("{\"stream\":\"true\",\"model\":42}", &c);
    CHECK(c.rc == 0);
    CHECK(!c.info.stream);
    CHECK_STR(c.model, "");
    inspect("{\"stream\":1}", &c);
    CHECK(c.rc == 0 && !c.info.stream);
    inspect("{\"stream\":null}", &c);
    CHECK(c.rc == 0 && !c.info.stream);

    /* Keys nested deeper do not count. */
    inspect("{\"messages\":[{\"model\":\"x\",\"stream\":true}],\"metadata\":{\"stream\":true,\"model\":\"y\"}}", &c);
    CHECK(c.rc == 0);
    CHECK(!c.info.stream);
    CHECK_STR(c.model, "");

    /* stream false: stream_options are left alone. */
    inspect("{\"stream\":false,\"stream_options\":{\"include_usage\":false}}", &c);
    CHECK(c.rc == 0);
    CHECK(!c.info.usage_edit.active);
    CHECK(!c.info.client_wants_usage);

    inspect("{}", &c);
    CHECK(c.rc == 0);
    CHECK(!c.info.stream);
}

TEST(json_request_usage_edit)
{
    /* no stream_options: added before the closing brace */
    check_edit("{\"model\":\"m\",\"stream\":true,\"messages\":[]}",
               "{\"model\":\"m\",\"stream\":true,\"messages\":[],\"stream_options\":{\"include_usage\":true}}");
    check_edit("{\"stream\":true}", "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    check_edit("{\"stream\":true } ", "{\"stream\":true ,\"stream_options\":{\"include_usage\":true}} ");
    /* stream_options {} */
    check_edit("{\"stream\":true,\"stream_options\":{}}", "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    check_edit("{\"stream_options\":{ },\"stream\":true}",
               "{\"stream_options\":{\"include_usage\":true },\"stream\":true}");
    /* stream_options with other members */
    check_edit("{\"stream\":true,\"stream_options\":{\"x\":1}}",
               "{\"stream\":true,\"stream_options\":{\"include_usage\":true,\"x\":1}}");
    check_edit("{\"stream\":true,\"stream_options\":{\"x\":{\"include_usage\":false}}}",
               "{\"stream\":true,\"stream_options\":{\"include_usage\":true,\"x\":{\"include_usage\":false}}}");
    /* include_usage false, or some other non-true value */
    check_edit("{\"stream\":true,\"stream_options\":{\"include_usage\":false}}",
               "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    check_edit("{\"stream\":true,\"stream_options\":{\"a\":[1],\"include_usage\":null,\"b\":2}}",
               "{\"stream\":true,\"stream_options\":{\"a\":[1],\"include_usage\":true,\"b\":2}}");
    check_edit("{\"stream\":true,\"stream_options\":{\"include_usage\":\"yes\"}}",
               "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    /* stream_options null or another non-object */
    check_edit("{\"stream\":true,\"stream_options\":null}", "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    check_edit("{\"stream_options\":[1,2],\"stream\":true}",
               "{\"stream_options\":{\"include_usage\":true},\"stream\":true}");
    check_edit("{\"stream_options\":\"x\",\"stream\":true}",
               "{\"stream_options\":{\"include_usage\":true},\"stream\":true}");

    /* include_usage true: the client asked; nothing to edit. */
    req_case c;
    inspect("{\"stream\":true,\"stream_options\":{\"include_usage\":true}}", &c);
    CHECK(c.rc == 0);
    CHECK(c.info.stream);
    CHECK(c.info.client_wants_usage);
    CHECK(!c.info.usage_edit.active);
    inspect("{\"stream_options\":{\"x\":[],\"include_usage\":true},\"model\":\"m\",\"stream\":true}", &c);
    CHECK(c.rc == 0 && c.info.client_wants_usage && !c.info.usage_edit.active);
    CHECK_STR(c.model, "m");
}

TEST(json_request_invalid)
{
    static const char *const bad[] = {
        "",
        "   ",
        "[]",
        "[{\"stream\":true}]",
        "\"x\"",
        "42",
        "null",
        "{",
        "}",
        "{\"a\":1",
        "{\"a\":1}}",
        "{\"a\":1} x",
        "{\"a\":1}{}",
        "{\"a\":1},",
        "{'a':1}",
        "{a:1}",
        "{1:2}",
        "{\"a\":\"unterminated}",
        "{\"a\":\"bad escape \\q\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":[1,2}",
        "{\"a\":{\"b\":1]}",
        "{\"a\":1 \"b\":2}",
        "{\"a\" \"b\"}",
        /* a key with no value */
        "{\"a\"}",
        "{\"model\"}",
        "{\"stream\"}",
        "{\"stream\":true,\"stream_options\"}",
        "{\"stream\":true,\"stream_options\":{\"include_usage\"}}",
        "{\"a\":{\"b\"}}",
        "{\"a\":}",
        "{\"model\":}",
        "{\"a\":1,\"b\"}",
        /* jsmn lets these through; the structure walk does not */
        "{:,:}",
        "{\"a\":tru}",
        "{\"a\":1,}",
        "{,\"a\":1}",
        "{\"a\":[1 2]}",
        "{\"a\":[1,,2]}",
        "{\"a\":[1,]}",
        "{\"a\":01}",
        "{\"a\":-}",
        "{\"a\":1.}",
        "{\"a\":1e}",
        "{\"a\":\"raw\nnewline\"}",
        "{\"a\"::1}",
        "{\"a\":1,,\"b\":2}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        req_case c;
        inspect(bad[i], &c);
        if (c.rc != -1)
            unit_fail(__FILE__, __LINE__, "accepted %s", bad[i]);
        else if (c.why == NULL || c.why[0] == '\0')
            unit_fail(__FILE__, __LINE__, "no reason for %s", bad[i]);
    }
    /* NUL bytes: in the middle, and after the object. */
    static const char nul1[] = "{\"a\":1}\0";
    static const char nul2[] = "{\"a\":\"x\0y\"}";
    arena a;
    arena_init(&a);
    json_request_info info;
    const char *why;
    CHECK(json_inspect_request(nul1, sizeof nul1 - 1, &a, &info, &why) == -1);
    CHECK(json_inspect_request(nul2, sizeof nul2 - 1, &a, &info, &why) == -1);
    arena_reset(&a);
}

/* A body with more tokens than fit on the stack goes through the arena. */
static char *big_body(size_t numbers, const char *tail)
{
    size_t cap = 64 + 2 * numbers + strlen(tail);
    char *s = malloc(cap);
    size_t n = (size_t)snprintf(s, cap, "{\"stream\":true,\"a\":[");
    for (size_t i = 0; i < numbers; i++) {
        s[n++] = '0';
        s[n++] = ',';
    }
    n--;
    snprintf(s + n, cap - n, "]%s}", tail);
    return s;
}

TEST(json_request_many_tokens)
{
    for (size_t count = 400; count <= 2400; count += 1000) {
        char *body = big_body(count, ",\"model\":\"big\"");
        req_case c;
        inspect(body, &c);
        CHECK(c.rc == 0);
        CHECK_STR(c.model, "big");
        CHECK(c.info.stream);
        CHECK(c.info.usage_edit.active);
        free(body);
        /* A key without a value after many tokens: invalid, and no read past
         * the token array (ASan would see it when the tokens are in the arena). */
        body = big_body(count, ",\"model\"");
        inspect(body, &c);
        CHECK(c.rc == -1);
        free(body);
        body = big_body(count, ",\"stream_options\":{\"include_usage\"}");
        inspect(body, &c);
        CHECK(c.rc == -1);
        free(body);
    }
}

/* ---- chunks ---- */

static int inspect_chunk(const char *data, json_chunk_info *info)
{
    arena a;
    arena_init(&a);
    size_t len = strlen(data);
    char *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    int rc = json_inspect_chunk(copy, len, &a, info);
    free(copy);
    arena_reset(&a);
    return rc;
}

TEST(json_chunk_usage_only)
{
    json_chunk_info info;
    CHECK(inspect_chunk("{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\","
                        "\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,"
                        "\"prompt_tokens_details\":{\"cached_tokens\":0}}}",
                        &info) == 0);
    CHECK(info.usage_only);
    CHECK(info.has_usage);
    CHECK_EQ_SIZE(info.prompt_tokens, 9);
    CHECK_EQ_SIZE(info.completion_tokens, 12);
    CHECK(!info.is_error);

    /* usage first, choices after; big numbers */
    CHECK(inspect_chunk("{\"usage\":{\"completion_tokens\":4294967296,\"prompt_tokens\":0},\"choices\":[]}", &info) ==
          0);
    CHECK(info.usage_only);
    CHECK(info.completion_tokens == 4294967296u);
    CHECK_EQ_SIZE(info.prompt_tokens, 0);
}

TEST(json_chunk_content)
{
    json_chunk_info info;
    CHECK(inspect_chunk("{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":"
                        "{\"content\":\"q\\\"b\\\\s\\n<\\u00e9>\"},\"logprobs\":null,\"finish_reason\":null}],"
                        "\"usage\":null}",
                        &info) == 0);
    CHECK(!info.usage_only);
    CHECK(!info.has_usage);
    CHECK(!info.is_error);
    /* usage on a chunk that also has choices: counted, but not usage-only */
    CHECK(inspect_chunk("{\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
                        &info) == 0);
    CHECK(info.has_usage);
    CHECK(!info.usage_only);
    CHECK_EQ_SIZE(info.completion_tokens, 2);
    /* a "usage" key deeper down is not the chunk's usage */
    CHECK(inspect_chunk("{\"choices\":[],\"x\":{\"usage\":{\"prompt_tokens\":5}}}", &info) == 0);
    CHECK(!info.has_usage);
    CHECK(!info.usage_only);
    /* "choices":[] without usage */
    CHECK(inspect_chunk("{\"choices\":[]}", &info) == 0);
    CHECK(!info.usage_only);
}

TEST(json_chunk_error_and_invalid)
{
    json_chunk_info info;
    CHECK(inspect_chunk("{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":null}}",
                        &info) == 0);
    CHECK(info.is_error);
    CHECK(inspect_chunk("{\"error\":\"text\"}", &info) == 0);
    CHECK(!info.is_error);
    static const char *const bad[] = {"",     "[DONE]", "not json", "{\"choices\":[}", "{\"a\":1}x", "[]",
                                      "{\"usage\"}", "{\"usage\":{\"prompt_tokens\"}}", "{\"choices\":[],"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (inspect_chunk(bad[i], &info) != -1)
            unit_fail(__FILE__, __LINE__, "chunk accepted: %s", bad[i]);
}

TEST(json_chunk_large)
{
    /* More tokens than the stack holds. */
    size_t count = 3000;
    char *s = malloc(64 + 2 * count);
    size_t n = (size_t)sprintf(s, "{\"choices\":[],\"usage\":{\"prompt_tokens\":7},\"x\":[");
    for (size_t i = 0; i < count; i++) {
        s[n++] = '1';
        s[n++] = ',';
    }
    n--;
    strcpy(s + n, "]}");
    json_chunk_info info;
    CHECK(inspect_chunk(s, &info) == 0);
    CHECK(info.usage_only);
    CHECK_EQ_SIZE(info.prompt_tokens, 7);
    free(s);
}

TEST(json_error_writer)
{
    char mem[256];
    wbuf b = wbuf_over(mem, sizeof mem);
    json_write_error(&b, "bad \"x\"\n\\", "invalid_request_error", "bad_json");
    CHECK(!b.overflow);
    CHECK_EQ_SIZE(b.len, strlen("{\"error\":{\"message\":\"bad \\\"x\\\"\\n\\\\\",\"type\":\"invalid_request_error\","
                                "\"param\":null,\"code\":\"bad_json\"}}"));
    CHECK(memcmp(mem,
                 "{\"error\":{\"message\":\"bad \\\"x\\\"\\n\\\\\",\"type\":\"invalid_request_error\","
                 "\"param\":null,\"code\":\"bad_json\"}}",
                 b.len) == 0);
    b = wbuf_over(mem, sizeof mem);
    json_write_error(&b, "m", "t", NULL);
    const char *want = "{\"error\":{\"message\":\"m\",\"type\":\"t\",\"param\":null,\"code\":null}}";
    CHECK_EQ_SIZE(b.len, strlen(want));
    CHECK(memcmp(mem, want, b.len) == 0);
    /* What it writes is an error chunk to the chunk inspector. */
    mem[b.len] = '\0';
    json_chunk_info info;
    CHECK(inspect_chunk(mem, &info) == 0);
    CHECK(info.is_error);
    /* Too small a buffer overflows rather than truncating silently. */
    b = wbuf_over(mem, 10);
    json_write_error(&b, "m", "t", NULL);
    CHECK(b.overflow);
}

TEST(json_request_valid_edge_cases)
{
    static const char *const good[] = {
        "{}",
        " {\"a\" : [ ] , \"b\" : { } } ",
        "{\"n\":[0,-0,1.5,-2e10,3E+2,4e-1,true,false,null]}",
        "{\"s\":\"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9\"}",
        "{\"model\":\"gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        arena a;
        arena_init(&a);
        json_request_info info;
        const char *why = NULL;
        int rc = json_inspect_request(good[i], strlen(good[i]), &a, &info, &why);
        if (rc != 0)
            fprintf(stderr, "  rejected %s: %s\n", good[i], why);
        CHECK(rc == 0);
        arena_reset(&a);
    }
}

TEST(json_request_duplicate_include_usage_last_wins)
{
    const char *body = "{\"stream\":true,\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}";
    arena a;
    arena_init(&a);
    json_request_info info;
    const char *why = NULL;
    CHECK(json_inspect_request(body, strlen(body), &a, &info, &why) == 0);
    CHECK(!info.client_wants_usage);
    CHECK(info.usage_edit.active);
    CHECK(info.usage_edit.insert.len == 4 && memcmp(info.usage_edit.insert.ptr, "true", 4) == 0);
    CHECK(info.usage_edit.remove == 5 && memcmp(body + info.usage_edit.at, "false", 5) == 0);
    arena_reset(&a);
}

TEST(json_find_usage_reads_the_last_usage_object)
{
    arena a;
    arena_init(&a);
    json_chunk_info info;
    const char *chat = "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"the \\\"usage\\\": {\\\"prompt_tokens\\\":9}\"}}],"
                       "\"usage\" : {\"prompt_tokens\":12,\"completion_tokens\":34,\"total_tokens\":46,"
                       "\"prompt_tokens_details\":{\"cached_tokens\":0}}}";
    CHECK(json_find_usage(chat, strlen(chat), &a, &info));
    CHECK(info.has_usage && info.prompt_tokens == 12 && info.completion_tokens == 34);
    const char *responses = "{\"object\":\"response\",\"usage\":{\"input_tokens\":5,\"output_tokens\":7}}";
    CHECK(json_find_usage(responses, strlen(responses), &a, &info));
    CHECK(info.prompt_tokens == 5 && info.completion_tokens == 7);
    const char *none[] = {"{\"id\":\"x\"}", "{\"usage\":null}", "{\"usage\":{\"prompt_tokens\":1", "{\"usage\":{\"a\":\"}\"",
                          "\"usage\""};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        CHECK(!json_find_usage(none[i], strlen(none[i]), &a, &info));
    /* a brace inside a string does not end the object */
    const char *tricky = "{\"usage\":{\"note\":\"}{\\\"\",\"completion_tokens\":3}}";
    CHECK(json_find_usage(tricky, strlen(tricky), &a, &info) && info.completion_tokens == 3);
    arena_reset(&a);
}
