/* The --config file (env SSEGATE_CONFIG): one JSON object naming the
 * upstreams, the routes from models to them, model aliases and clients,
 * read into a routes generation (upstream/routes.h).
 *
 *   upstreams  list, required: {name, url, one of key|key_file|key_env
 *              (none: keyless, http:// only), weight, models, max_conns,
 *              connect_timeout, first_byte_timeout, idle_timeout, org, project}
 *   routes     {model or "*": [entry, ...]}, an entry an upstream name or a
 *              list of names sharing load by weight; entries are fallbacks
 *   aliases    {name: {"upstream": u, "model": m}} or {name: {"model": m}}
 *   clients    list: {one of key|key_file|key_env, name, rpm, tpm, streams}
 *
 * Nothing unknown passes: an unknown or repeated key, a wrong type, a name
 * that is not there are errors, each naming the file and the key path, as
 * `config.json: upstreams[1].weight: must be a positive integer`. */
#ifndef SSEGATE_CFGFILE_H
#define SSEGATE_CFGFILE_H

#include <stddef.h>

#include "upstream/routes.h"

enum { CFGFILE_MAX_SIZE = 1 << 20, CFGFILE_SECRET_MAX = 4096 };

/* Where key_file and key_env secrets come from; injectable so tests and the
 * fuzzer need no files and no environment. */
typedef struct cfgfile_env {
    /* The first line of the file at path, without its line end and trailing
     * blanks, into out[cap] NUL-terminated (an empty file gives ""; the
     * loader refuses it). 0, or -1 with *why, e.g. the strerror text. */
    int (*read_secret)(void *ctx, const char *path, char *out, size_t cap, const char **why);
    /* The variable's value, or NULL when it is not set. */
    const char *(*get_env)(void *ctx, const char *name);
    void *ctx;
} cfgfile_env;

/* Real files and getenv. */
extern const cfgfile_env cfgfile_system_env;

/* Parses a config text; `source` names it in errors. Returns a generation
 * holding one reference, or NULL with "SOURCE: PATH: what is wrong" in why.
 * Reads nothing but what env reads. */
config_gen *cfgfile_parse(const char *text, size_t len, const char *source, const cfgfile_env *env, char *why,
                          size_t why_cap);
/* Reads the file at path (at most CFGFILE_MAX_SIZE) and parses it with the
 * system env. */
config_gen *cfgfile_load(const char *path, char *why, size_t why_cap);

#endif
