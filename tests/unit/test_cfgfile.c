/* The --config file: a full good file read field by field, every rejection
 * with the path it names, secrets from injected files and variables, a
 * real file from disk, and the clients merged into a keyring. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "gateway/keys.h"
#include "upstream/cfgfile.h"
#include "unit.h"

static int fake_read(void *ctx, const char *path, char *out, size_t cap, const char **why)
{
    (void)ctx;
    static const struct {
        const char *path, *line;
    } files[] = {
        {"/run/secrets/openai", "sk-eu-secret"},
        {"/run/secrets/team-a", "team-a-key"},
        {"/run/secrets/empty", ""},
        {"/run/secrets/spaced", "two words"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        if (strcmp(path, files[i].path) == 0) {
            snprintf(out, cap, "%s", files[i].line);
            return 0;
        }
    *why = "No such file or directory";
    return -1;
}

static const char *fake_env(void *ctx, const char *name)
{
    (void)ctx;
    if (strcmp(name, "OPENAI_API_KEY") == 0)
        return "sk-env-key";
    if (strcmp(name, "TEAM_B_KEY") == 0)
        return "team-b-key";
    if (strcmp(name, "EMPTY_VAR") == 0)
        return "";
    return NULL;
}

static const cfgfile_env fake = {fake_read, fake_env, NULL};

static config_gen *parse(const char *text, char *why, size_t cap)
{
    return cfgfile_parse(text, strlen(text), "config.json", &fake, why, cap);
}

/* The error a config text is rejected with, or "(accepted)". */
static const char *rejection_of(const char *text)
{
    static char why[512];
    config_gen *g = parse(text, why, sizeof why);
    if (g) {
        gen_release(g);
        return "(accepted)";
    }
    return why;
}

static const char example[] =
    "{\n"
    "  \"upstreams\": [\n"
    "    {\"name\": \"openai\", \"url\": \"https://api.openai.com/v1\", \"key_env\": \"OPENAI_API_KEY\",\n"
    "     \"weight\": 3, \"models\": [\"gpt-4o\", \"gpt-4o-mini\"], \"max_conns\": 512},\n"
    "    {\"name\": \"openai-eu\", \"url\": \"https://eu.api.openai.com/v1\", \"key_file\": \"/run/secrets/openai\", "
    "\"weight\": 1,\n"
    "     \"connect_timeout\": \"250ms\", \"first_byte_timeout\": \"3s\", \"idle_timeout\": \"2m\",\n"
    "     \"org\": \"org-123\", \"project\": \"proj_abc\"},\n"
    "    {\"name\": \"local\", \"url\": \"http://127.0.0.1:11434/v1\", \"models\": [\"*\"]}\n"
    "  ],\n"
    "  \"routes\": {\"gpt-4o\": [[\"openai\", \"openai-eu\"], \"local\"], \"*\": [\"local\"]},\n"
    "  \"aliases\": {\"fast\": {\"upstream\": \"local\", \"model\": \"llama3.2\"}, \"smart\": {\"model\": \"gpt-4o\"}},\n"
    "  \"clients\": [{\"key_file\": \"/run/secrets/team-a\", \"name\": \"team-a\", \"rpm\": 600, \"tpm\": 200000},\n"
    "              {\"key_env\": \"TEAM_B_KEY\", \"streams\": 4}, {\"key\": \"team-c-key\", \"name\": \"c@corp\"}]\n"
    "}\n";

TEST(cfgfile_reads_a_full_file)
{
    char why[512] = "";
    config_gen *g = parse(example, why, sizeof why);
    CHECK(g != NULL);
    if (!g) {
        unit_fail(__FILE__, __LINE__, "%s", why);
        return;
    }
    CHECK_EQ_SIZE(g->refs, 1);
    CHECK_EQ_SIZE(g->upstream_count, 3);

    const upstream_def *a = &g->upstreams[0], *b = &g->upstreams[1], *c = &g->upstreams[2];
    CHECK_STR(a->name, "openai");
    CHECK_STR(a->url_text, "https://api.openai.com/v1");
    CHECK(a->base.tls);
    CHECK_STR(a->base.host, "api.openai.com");
    CHECK_EQ_SIZE(a->base.port, 443);
    CHECK_STR(a->base.path, "/v1");
    CHECK_STR(a->key, "sk-env-key");
    CHECK_EQ_SIZE(a->weight, 3);
    CHECK_EQ_SIZE(a->max_conns, 512);
    CHECK(!a->any_model);
    CHECK_EQ_SIZE(a->model_count, 2);
    CHECK(a->org == NULL && a->project == NULL);
    CHECK_EQ_SIZE(a->connect_timeout_ms, 0);
    CHECK_EQ_SIZE(a->index, 0);

    CHECK_STR(b->name, "openai-eu");
    CHECK_STR(b->key, "sk-eu-secret");
    CHECK_EQ_SIZE(b->weight, 1);
    CHECK(b->any_model);
    CHECK(b->models == NULL);
    CHECK_EQ_SIZE(b->connect_timeout_ms, 250);
    CHECK_EQ_SIZE(b->first_byte_timeout_ms, 3000);
    CHECK_EQ_SIZE(b->idle_timeout_ms, 120000);
    CHECK_STR(b->org, "org-123");
    CHECK_STR(b->project, "proj_abc");
    CHECK_EQ_SIZE(b->max_conns, 0);

    CHECK_STR(c->name, "local");
    CHECK(c->key == NULL);
    CHECK(!c->base.tls);
    CHECK_EQ_SIZE(c->base.port, 11434);
    CHECK(c->any_model);
    CHECK_EQ_SIZE(c->weight, 1);

    CHECK_EQ_SIZE(g->route_count, 1);
    const route *r = &g->routes[0];
    CHECK(slice_eq(r->model, SLICE_LIT("gpt-4o")));
    CHECK_EQ_SIZE(r->step_count, 2);
    CHECK_EQ_SIZE(r->steps[0].count, 2);
    CHECK_EQ_SIZE(r->steps[0].members[0], 0);
    CHECK_EQ_SIZE(r->steps[0].members[1], 1);
    CHECK_EQ_SIZE(r->steps[1].count, 1);
    CHECK_EQ_SIZE(r->steps[1].members[0], 2);
    CHECK(g->fallback != NULL);
    CHECK(g->fallback && slice_eq(g->fallback->model, SLICE_LIT("*")));
    CHECK(g->fallback && g->fallback->step_count == 1 && g->fallback->steps[0].members[0] == 2);

    CHECK_EQ_SIZE(g->alias_count, 2);
    const model_alias *fast = gen_alias(g, SLICE_LIT("fast")), *smart = gen_alias(g, SLICE_LIT("smart"));
    CHECK(fast && slice_eq(fast->model, SLICE_LIT("llama3.2")) && fast->upstream == 2);
    CHECK(smart && slice_eq(smart->model, SLICE_LIT("gpt-4o")) && smart->upstream == -1);
    CHECK(gen_alias(g, SLICE_LIT("gpt-4o")) == NULL);

    CHECK_EQ_SIZE(g->client_count, 3);
    unsigned char d[KEY_DIGEST_LEN];
    key_digest(SLICE_LIT("team-a-key"), d);
    CHECK(memcmp(g->clients[0].digest, d, sizeof d) == 0);
    CHECK_STR(g->clients[0].name, "team-a");
    CHECK_EQ_SIZE(g->clients[0].spec.rpm, 600);
    CHECK_EQ_SIZE(g->clients[0].spec.tpm, 200000);
    CHECK_EQ_SIZE(g->clients[0].spec.streams, 0);
    key_digest(SLICE_LIT("team-b-key"), d);
    CHECK(memcmp(g->clients[1].digest, d, sizeof d) == 0);
    CHECK(strncmp(g->clients[1].name, "key:", 4) == 0 && strlen(g->clients[1].name) == 12);
    CHECK_EQ_SIZE(g->clients[1].spec.streams, 4);
    CHECK_STR(g->clients[2].name, "c@corp");
    gen_release(g);
}

TEST(cfgfile_minimal_file_and_order_of_sections)
{
    char why[256];
    /* routes before upstreams in the file still name them */
    config_gen *g = parse("{\"routes\": {\"m\": [\"x\"]}, \"upstreams\": [{\"name\": \"x\", \"url\": \"http://h:1\"}]}",
                          why, sizeof why);
    CHECK(g != NULL);
    if (g) {
        CHECK_EQ_SIZE(g->upstream_count, 1);
        CHECK_EQ_SIZE(g->route_count, 1);
        CHECK(g->fallback == NULL && g->alias_count == 0 && g->client_count == 0);
        CHECK(g->upstreams[0].any_model);
        gen_release(g);
    }
    /* empty sections are allowed; escapes decode in values */
    g = parse("{\"upstreams\": [{\"name\": \"x\", \"url\": \"http:\\/\\/h\\u003a8\", \"key\": \"k\\u00e9\"}],"
              " \"routes\": {}, \"aliases\": {}, \"clients\": []}",
              why, sizeof why);
    CHECK(g == NULL); /* é is not visible ASCII in a key */
    CHECK_STR(why, "config.json: upstreams[0].key: the key has a character that is not visible ASCII");
    g = parse("{\"upstreams\": [{\"name\": \"x\", \"url\": \"http:\\/\\/h\\u003a8\", \"key\": \"k\\u0041\"}],"
              " \"routes\": {}, \"aliases\": {}, \"clients\": []}",
              why, sizeof why);
    CHECK(g != NULL);
    if (g) {
        CHECK_STR(g->upstreams[0].url_text, "http://h:8");
        CHECK_EQ_SIZE(g->upstreams[0].base.port, 8);
        CHECK_STR(g->upstreams[0].key, "kA");
        gen_release(g);
    }
    /* an org may hold a non-ASCII escape that decodes to UTF-8... and is refused as a header */
    CHECK_STR(rejection_of("{\"upstreams\": [{\"name\": \"x\", \"url\": \"http://h\", \"org\": \"\\ud83d\\ude00\"}]}"),
              "config.json: upstreams[0].org: must be printable ASCII (it is sent as a header)");
}

#define U1 "{\"name\": \"a\", \"url\": \"http://127.0.0.1:9\"}"
#define U2 "{\"name\": \"b\", \"url\": \"http://127.0.0.1:10\", \"models\": [\"m1\"]}"
#define UPS "\"upstreams\": [" U1 ", " U2 "]"

static const struct {
    const char *text, *error;
} bad_files[] = {
    /* the JSON itself */
    {"", "config.json: is empty; expected a JSON object"},
    {"  \n ", "config.json: is empty; expected a JSON object"},
    {"[1]", "config.json: line 1: the top level must be a JSON object"},
    {"{\n  \"upstreams\": [\n    " U1 ",\n  ]\n}", "config.json: line 3: invalid JSON"},
    {"{\n\"upstreams\": tru\n}", "config.json: line 2: invalid JSON"},
    {"{\n\"upstreams\": [01]}", "config.json: line 2: invalid JSON"},
    {"{\"upstreams\"}", "config.json: line 1: invalid JSON"},
    {"{\n\n\"upstreams\": [\"abc\n", "config.json: line 3: invalid JSON (an unterminated string, list or object)"},
    {"{\"upstreams\": [\"a\tb\"]}", "config.json: line 1: invalid JSON"},
    {"{\"upstreams\": [1 2]}", "config.json: line 1: invalid JSON"},
    {"{\"upstreams\": [],\r\n}", "config.json: line 1: invalid JSON"},
    {"{\r\n\r\n\"upstreams\": [\r\n nul]}", "config.json: line 4: invalid JSON"},
    {"\xef\xbb\xbf{}", "config.json: line 1: invalid JSON"},
    {"{" UPS "}\n{}", "config.json: line 2: invalid JSON (more after the top-level object)"},
    {"{\"upstreams\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
     "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
     "config.json: line 1: invalid JSON"},
    /* the top level */
    {"{}", "config.json: needs \"upstreams\", a list of at least one upstream"},
    {"{" UPS ", \"route\": {}}",
     "config.json: route: unknown key (expected one of upstreams, routes, aliases, clients)"},
    {"{" UPS ", " UPS "}", "config.json: upstreams: given twice"},
    {"{\"upstreams\": {}}", "config.json: upstreams: must be a list of upstreams"},
    {"{\"upstreams\": []}", "config.json: upstreams: is empty; name at least one upstream"},
    /* one upstream */
    {"{\"upstreams\": [\"a\"]}", "config.json: upstreams[0]: must be an object"},
    {"{\"upstreams\": [{\"url\": \"http://h\"}]}", "config.json: upstreams[0]: needs a \"name\""},
    {"{\"upstreams\": [{\"name\": \"a\"}]}", "config.json: upstreams[0]: needs a \"url\""},
    {"{\"upstreams\": [{\"name\": \"a b\", \"url\": \"http://h\"}]}",
     "config.json: upstreams[0].name: may only hold letters, digits and - _ ."},
    {"{\"upstreams\": [{\"name\": \"\", \"url\": \"http://h\"}]}",
     "config.json: upstreams[0].name: must be 1 to 64 characters"},
    {"{\"upstreams\": [{\"name\": 7, \"url\": \"http://h\"}]}", "config.json: upstreams[0].name: must be a string"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"ftp://h\"}]}",
     "config.json: upstreams[0].url: upstream URL must start with http:// or https://"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"\"}]}", "config.json: upstreams[0].url: is empty"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\\ud800\"}]}",
     "config.json: upstreams[0].url: holds an invalid \\u escape (a lone surrogate)"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\\u0000\"}]}",
     "config.json: upstreams[0].url: must not hold a NUL character"},
    {"{\"upstreams\": [" U1 ", {\"name\": \"c\", \"url\": \"http://h\", \"weight\": 0}]}",
     "config.json: upstreams[1].weight: must be a positive integer"},
    {"{\"upstreams\": [" U1 ", {\"name\": \"c\", \"url\": \"http://h\", \"weight\": \"3\"}]}",
     "config.json: upstreams[1].weight: must be a positive integer"},
    {"{\"upstreams\": [" U1 ", {\"name\": \"c\", \"url\": \"http://h\", \"weight\": 1.5}]}",
     "config.json: upstreams[1].weight: must be a positive integer"},
    {"{\"upstreams\": [" U1 ", {\"name\": \"c\", \"url\": \"http://h\", \"weight\": -2}]}",
     "config.json: upstreams[1].weight: must be a positive integer"},
    {"{\"upstreams\": [" U1 ", {\"name\": \"c\", \"url\": \"http://h\", \"weight\": 1000001}]}",
     "config.json: upstreams[1].weight: must be at most 1000000"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"weight\": 123456789012345678901234}]}",
     "config.json: upstreams[0].weight: must be at most 1000000"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"max_conns\": 0}]}",
     "config.json: upstreams[0].max_conns: must be a positive integer"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key\": \"k\", \"key_env\": \"OPENAI_API_KEY\"}]}",
     "config.json: upstreams[0]: give one of key, key_file, key_env, not two"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key\": \"k\", \"key_env\": \"X\", \"key_file\": "
     "\"/f\"}]}",
     "config.json: upstreams[0]: give one of key, key_file, key_env, not three"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\"}]}",
     "config.json: upstreams[0]: an https:// upstream needs one of key, key_file, key_env"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key_env\": \"NOPE\"}]}",
     "config.json: upstreams[0].key_env: NOPE is not set"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key_env\": \"EMPTY_VAR\"}]}",
     "config.json: upstreams[0].key_env: EMPTY_VAR is not set"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key_file\": \"/nope\"}]}",
     "config.json: upstreams[0].key_file: /nope: No such file or directory"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key_file\": \"/run/secrets/empty\"}]}",
     "config.json: upstreams[0].key_file: /run/secrets/empty is empty"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key_file\": \"/run/secrets/spaced\"}]}",
     "config.json: upstreams[0].key_file: the key has a character that is not visible ASCII"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key\": \"\"}]}",
     "config.json: upstreams[0].key: the key is empty"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"https://h\", \"key\": 5}]}",
     "config.json: upstreams[0].key: must be a string"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"wieght\": 2}]}",
     "config.json: upstreams[0].wieght: unknown key (expected one of name, url, key, key_file, key_env, weight, "
     "models, max_conns, connect_timeout, first_byte_timeout, idle_timeout, org, project)"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"we ight\": 2}]}",
     "config.json: upstreams[0][\"we ight\"]: unknown key (expected one of name, url, key, key_file, key_env, "
     "weight, models, max_conns, connect_timeout, first_byte_timeout, idle_timeout, org, project)"},
    {"{\"upstreams\": [{\"name\": \"a\", \"name\": \"b\", \"url\": \"http://h\"}]}",
     "config.json: upstreams[0].name: given twice"},
    {"{\"upstreams\": [" U1 ", " U2 ", " U1 "]}",
     "config.json: upstreams[2].name: \"a\" is already the name of upstreams[0]"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"idle_timeout\": \"soon\"}]}",
     "config.json: upstreams[0].idle_timeout: must be a duration such as \"3s\", \"250ms\" or \"2m\""},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"connect_timeout\": 3}]}",
     "config.json: upstreams[0].connect_timeout: must be a duration string such as \"3s\", \"250ms\" or \"2m\""},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"first_byte_timeout\": \"0s\"}]}",
     "config.json: upstreams[0].first_byte_timeout: must be longer than 0"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"models\": []}]}",
     "config.json: upstreams[0].models: is empty (leave it out to serve any model)"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"models\": \"m\"}]}",
     "config.json: upstreams[0].models: must be a list of model names"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"models\": [\"m\", 2]}]}",
     "config.json: upstreams[0].models[1]: must be a string (a model name)"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"models\": [\"m\", \"n\", \"m\"]}]}",
     "config.json: upstreams[0].models: \"m\" is listed twice"},
    {"{\"upstreams\": [{\"name\": \"a\", \"url\": \"http://h\", \"org\": \"a\\nb\"}]}",
     "config.json: upstreams[0].org: must be printable ASCII (it is sent as a header)"},
    /* routes */
    {"{" UPS ", \"routes\": []}",
     "config.json: routes: must be an object mapping models (or \"*\") to lists of upstreams"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": \"a\"}}",
     "config.json: routes[\"gpt-4o\"]: must be a list of upstream names or groups (lists of names)"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": []}}", "config.json: routes[\"gpt-4o\"]: is empty"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": [[]]}}", "config.json: routes[\"gpt-4o\"][0]: is an empty group"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": [[\"a\", \"openai-eu2\"]]}}",
     "config.json: routes[\"gpt-4o\"][0][1]: no upstream named \"openai-eu2\""},
    {"{" UPS ", \"routes\": {\"gpt-4o\": [[[\"a\"]]]}}",
     "config.json: routes[\"gpt-4o\"][0][0]: a group holds upstream names only"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": [7]}}",
     "config.json: routes[\"gpt-4o\"][0]: must be an upstream name or a list of them (a group sharing load by "
     "weight)"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": [[\"a\"], \"a\"]}}",
     "config.json: routes[\"gpt-4o\"][1]: \"a\" is already in this route"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": [\"a\", \"b\"]}}",
     "config.json: routes[\"gpt-4o\"][1]: upstream \"b\" does not serve \"gpt-4o\" (its models leave it out)"},
    {"{" UPS ", \"routes\": {\"gpt-4o\": [\"a\"], \"gpt-4o\": [\"b\"]}}",
     "config.json: routes[\"gpt-4o\"]: given twice"},
    {"{" UPS ", \"routes\": {\"gpt\\u002d4o\": [\"a\"]}}",
     "config.json: routes[\"gpt?u002d4o\"]: a model name must be 1 to 256 bytes without escapes"},
    {"{" UPS ", \"routes\": {\"\": [\"a\"]}}",
     "config.json: routes[\"\"]: a model name must be 1 to 256 bytes without escapes"},
    /* aliases */
    {"{" UPS ", \"aliases\": {\"fast\": \"a\"}}",
     "config.json: aliases[\"fast\"]: must be an object such as {\"upstream\": \"local\", \"model\": \"llama3.2\"}"},
    {"{" UPS ", \"aliases\": {\"fast\": {\"upstream\": \"a\"}}}", "config.json: aliases[\"fast\"]: needs a \"model\""},
    {"{" UPS ", \"aliases\": {\"fast\": {\"upstream\": \"zz\", \"model\": \"m\"}}}",
     "config.json: aliases[\"fast\"].upstream: no upstream named \"zz\""},
    {"{" UPS ", \"aliases\": {\"fast\": {\"upstream\": \"b\", \"model\": \"m2\"}}}",
     "config.json: aliases[\"fast\"].model: upstream \"b\" does not serve \"m2\" (its models leave it out)"},
    {"{" UPS ", \"aliases\": {\"fast\": {\"model\": \"m\", \"upsteam\": \"a\"}}}",
     "config.json: aliases[\"fast\"].upsteam: unknown key (expected one of upstream, model)"},
    {"{" UPS ", \"aliases\": {\"fast\": {\"model\": \"quick\"}, \"quick\": {\"model\": \"m\"}}}",
     "config.json: aliases[\"fast\"].model: \"quick\" is itself an alias; aliases do not chain"},
    {"{" UPS ", \"routes\": {\"fast\": [\"a\"]}, \"aliases\": {\"fast\": {\"model\": \"m\"}}}",
     "config.json: aliases[\"fast\"]: is also a route; a name is an alias or a route, not both"},
    {"{\"upstreams\": [" U2 "], \"aliases\": {\"fast\": {\"model\": \"m9\"}}}",
     "config.json: aliases[\"fast\"].model: no route or upstream serves \"m9\""},
    {"{" UPS ", \"aliases\": {\"*\": {\"model\": \"m\"}}}", "config.json: aliases[\"*\"]: \"*\" is not allowed here"},
    /* clients */
    {"{" UPS ", \"clients\": {}}", "config.json: clients: must be a list of clients"},
    {"{" UPS ", \"clients\": [{\"name\": \"x\"}]}", "config.json: clients[0]: needs one of key, key_file, key_env"},
    {"{" UPS ", \"clients\": [{\"key\": \"k1\"}, {\"key\": \"k2\"}, {\"key_env\": \"TEAM_B_KEY\"}, {\"key\": "
     "\"team-b-key\"}]}",
     "config.json: clients[3]: same key as clients[2]"},
    {"{" UPS ", \"clients\": [{\"key\": \"k1\", \"rpm\": 0}]}", "config.json: clients[0].rpm: must be a positive integer"},
    {"{" UPS ", \"clients\": [{\"key\": \"k1\", \"tpm\": 4294967296}]}",
     "config.json: clients[0].tpm: must be at most 4294967295"},
    {"{" UPS ", \"clients\": [{\"key\": \"k1\", \"name\": \"team a\"}]}",
     "config.json: clients[0].name: may only hold letters, digits and - _ . : @ / +"},
    {"{" UPS ", \"clients\": [{\"key\": \"k1\", \"limit\": 3}]}",
     "config.json: clients[0].limit: unknown key (expected one of key, key_file, key_env, name, rpm, tpm, streams)"},
    {"{" UPS ", \"clients\": [{\"key\": \"k1\", \"key_file\": \"/run/secrets/team-a\"}]}",
     "config.json: clients[0]: give one of key, key_file, key_env, not two"},
};

TEST(cfgfile_rejects_each_mistake_with_its_path)
{
    size_t n = sizeof bad_files / sizeof bad_files[0];
    CHECK(n >= 25);
    for (size_t i = 0; i < n; i++) {
        const char *got = rejection_of(bad_files[i].text);
        if (strcmp(got, bad_files[i].error) != 0)
            unit_fail(__FILE__, __LINE__, "file %zu:\n  got  %s\n  want %s", i, got, bad_files[i].error);
    }
    /* and they are many different mistakes, not one said many times */
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < i && strcmp(bad_files[i].error, bad_files[j].error) != 0)
            j++;
        distinct += j == i;
    }
    CHECK(distinct >= 70);
}

TEST(cfgfile_limits_on_size_and_counts)
{
    /* 65 upstreams: one more than a plan's mask holds */
    size_t cap = 65 * 64 + 64;
    char *text = malloc(cap);
    wbuf b = wbuf_over(text, cap);
    wbuf_puts(&b, "{\"upstreams\": [");
    for (unsigned i = 0; i < 65; i++) {
        wbuf_puts(&b, i ? ", {\"name\": \"u" : "{\"name\": \"u");
        wbuf_put_u64(&b, i);
        wbuf_puts(&b, "\", \"url\": \"http://h\"}");
    }
    wbuf_puts(&b, "]}");
    CHECK(!b.overflow);
    char why[256];
    config_gen *g = cfgfile_parse(text, b.len, "big.json", &fake, why, sizeof why);
    CHECK(g == NULL);
    CHECK_STR(why, "big.json: upstreams: has 65 upstreams; at most 64 are allowed");
    free(text);

    /* over 1 MiB */
    size_t big = CFGFILE_MAX_SIZE + 1;
    text = malloc(big);
    memset(text, ' ', big);
    text[0] = '{';
    text[big - 1] = '}';
    g = cfgfile_parse(text, big, "huge.json", &fake, why, sizeof why);
    CHECK(g == NULL);
    CHECK_STR(why, "huge.json: is larger than 1 MiB");
    free(text);

    /* a long model name is cut short in the message */
    char name[300];
    memset(name, 'm', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    char doc[600];
    snprintf(doc, sizeof doc, "{" UPS ", \"routes\": {\"%s\": [\"a\"]}}", name);
    const char *got = rejection_of(doc);
    CHECK(strstr(got, "...\"]: a model name must be 1 to 256 bytes without escapes") != NULL);
    CHECK(strlen(got) < 200);
}

TEST(cfgfile_loads_from_disk_with_real_secret_files)
{
    char dir[] = "/tmp/ssegate-cfg-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char secret_path[128], config_path[128];
    snprintf(secret_path, sizeof secret_path, "%s/key", dir);
    snprintf(config_path, sizeof config_path, "%s/config.json", dir);
    FILE *f = fopen(secret_path, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs("sk-from-file \t\r\nsecond line ignored\n", f);
    fclose(f);
    f = fopen(config_path, "w");
    fprintf(f, "{\"upstreams\": [{\"name\": \"o\", \"url\": \"https://api.openai.com/v1\", \"key_file\": \"%s\"}]}\n",
            secret_path);
    fclose(f);
    char why[512] = "";
    config_gen *g = cfgfile_load(config_path, why, sizeof why);
    CHECK(g != NULL);
    if (g) {
        CHECK_STR(g->upstreams[0].key, "sk-from-file");
        gen_release(g);
    } else {
        unit_fail(__FILE__, __LINE__, "%s", why);
    }

    /* an error names the file as given */
    f = fopen(config_path, "w");
    fputs("{\"upstreams\": [{\"name\": \"o\", \"url\": \"https://h\", \"key_file\": \"/nonexistent/k\"}]}", f);
    fclose(f);
    g = cfgfile_load(config_path, why, sizeof why);
    CHECK(g == NULL);
    char want[256];
    snprintf(want, sizeof want, "%s: upstreams[0].key_file: /nonexistent/k: No such file or directory", config_path);
    CHECK_STR(why, want);
    /* a secret file whose first line does not fit is refused, not cut short */
    f = fopen(secret_path, "w");
    for (int i = 0; i < 5000; i++)
        fputc('k', f);
    fclose(f);
    f = fopen(config_path, "w");
    fprintf(f, "{\"upstreams\": [{\"name\": \"o\", \"url\": \"https://h\", \"key_file\": \"%s\"}]}", secret_path);
    fclose(f);
    g = cfgfile_load(config_path, why, sizeof why);
    CHECK(g == NULL);
    CHECK(strstr(why, "upstreams[0].key_file: ") && strstr(why, ": its first line is too long"));
    unlink(config_path);
    g = cfgfile_load(config_path, why, sizeof why);
    CHECK(g == NULL);
    CHECK(strstr(why, "cannot read config file") != NULL);
    unlink(secret_path);
    rmdir(dir);
}

TEST(cfgfile_clients_merge_into_a_keyring)
{
    char why[256];
    config_gen *g = parse(example, why, sizeof why);
    CHECK(g != NULL);
    if (!g)
        return;
    static const char file[] = "sk-file-one one 10\nsk-file-two two\n";
    keyring *base = keyring_parse(file, sizeof file - 1, "keys.txt", why, sizeof why);
    CHECK(base != NULL);
    keyring *k = keyring_with(base, g->clients, g->client_count, why, sizeof why);
    CHECK(k != NULL);
    if (k) {
        CHECK_EQ_SIZE(keyring_count(k), 5);
        const client_key *ck = keyring_find(k, SLICE_LIT("team-a-key"));
        CHECK(ck && strcmp(ck->name, "team-a") == 0 && ck->spec.rpm == 600);
        ck = keyring_find(k, SLICE_LIT("sk-file-one"));
        CHECK(ck && strcmp(ck->name, "one") == 0 && ck->spec.rpm == 10);
        CHECK(keyring_find(k, SLICE_LIT("team-b-key")) != NULL);
        CHECK(keyring_find(k, SLICE_LIT("team-b-kez")) == NULL);
        keyring_free(k);
    }
    /* no base: the config's clients alone */
    k = keyring_with(NULL, g->clients, g->client_count, why, sizeof why);
    CHECK(k && keyring_count(k) == 3);
    keyring_free(k);
    /* a key in both is refused, naming both clients */
    static const char clash[] = "team-a-key old-team-a\n";
    keyring *other = keyring_parse(clash, sizeof clash - 1, "keys.txt", why, sizeof why);
    CHECK(other != NULL);
    k = keyring_with(other, g->clients, g->client_count, why, sizeof why);
    CHECK(k == NULL);
    CHECK_STR(why, "client \"team-a\" has the same key as client \"old-team-a\"");
    keyring_free(other);
    keyring_free(base);
    gen_release(g);
}

TEST(cfgfile_config_flag_names_the_file)
{
    config c;
    char *argv[] = {"ssegate", "--config", "/etc/ssegate/config.json", NULL};
    CHECK(config_load(&c, 3, argv) == 0);
    CHECK_STR(c.config_file, "/etc/ssegate/config.json");
    config_free(&c);
    char *argv2[] = {"ssegate", "--config=/tmp/x.json", NULL};
    CHECK(config_load(&c, 2, argv2) == 0);
    CHECK_STR(c.config_file, "/tmp/x.json");
    config_free(&c);
}
