/* PEM files to DER objects, through BearSSL's streaming PEM decoder. Used at
 * start-up for trust anchors, certificate chains and private keys. */
#ifndef SSEGATE_PEM_H
#define SSEGATE_PEM_H

#include <stdbool.h>
#include <stddef.h>

/* A growing byte buffer in the shape of BearSSL's output callbacks
 * (void (*)(void *ctx, const void *buf, size_t len)): PEM objects, DNs. */
typedef struct byte_sink {
    unsigned char *buf;
    size_t len, cap;
    bool oom; /* an allocation failed: the bytes are incomplete */
} byte_sink;

void byte_sink_append(void *ctx, const void *src, size_t len);

typedef struct pem_object {
    char *name;         /* banner name, upper case: "CERTIFICATE", "PRIVATE KEY" */
    unsigned char *der; /* decoded bytes */
    size_t len;
} pem_object;

/* Reads every PEM object of the file at `path`. `what` names the file in
 * messages ("CA file", "key file"). Returns 0 with *out and *count set (a file
 * with no object gives *count 0 and *out NULL), or -1 with a message in
 * why[0..why_cap). */
int pem_read_file(const char *path, const char *what, pem_object **out, size_t *count,
                  char *why, size_t why_cap);

/* Frees the objects and wipes their bytes (they may hold private keys). */
void pem_free(pem_object *objs, size_t count);

#endif
