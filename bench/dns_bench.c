/* The resolver's cost, for callgrind (bench/dns.sh): resolves N distinct
 * names (n0.bench.test, n1.bench.test, ...) one after another against the
 * nameserver in RESOLV_CONF, then peeks at each name's cached answer HITS
 * times. Prints what it did.
 *     dns-bench RESOLV_CONF HOSTS N HITS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/loop.h"
#include "upstream/resolver.h"

typedef struct bench {
    loop *l;
    dns_resolver *r;
    unsigned long n, next, ok, failed;
    char name[64];
} bench;

static void start_next(bench *b);

static void on_resolved(void *ctx, const dns_result *res)
{
    bench *b = ctx;
    if (res->status == DNS_OK && res->count > 0)
        b->ok++;
    else
        b->failed++;
    start_next(b);
}

static void start_next(bench *b)
{
    if (b->next == b->n) {
        loop_stop(b->l);
        return;
    }
    snprintf(b->name, sizeof b->name, "n%lu.bench.test", b->next++);
    if (!dns_resolve(b->r, b->name, 443, on_resolved, b)) {
        fprintf(stderr, "dns-bench: out of memory\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: dns-bench RESOLV_CONF HOSTS N HITS\n");
        return 2;
    }
    bench b = {.n = strtoul(argv[3], NULL, 10)};
    unsigned long hits = strtoul(argv[4], NULL, 10);
    b.l = loop_new();
    const char *why = NULL;
    b.r = b.l ? dns_resolver_new(b.l, argv[1], argv[2], &why) : NULL;
    if (!b.r) {
        fprintf(stderr, "dns-bench: %s\n", why ? why : "no loop");
        return 1;
    }
    start_next(&b);
    if (b.n)
        loop_run(b.l);
    /* Per name: the first peek takes the answer (CHANGED), the rest find
     * it unchanged (SAME), as an upstream connect does in the steady state. */
    unsigned long same = 0;
    dns_result res;
    for (unsigned long i = 0; i < b.n && hits; i++) {
        snprintf(b.name, sizeof b.name, "n%lu.bench.test", i);
        uint64_t known = 0;
        for (unsigned long h = 0; h < hits; h++) {
            dns_peek_verdict v = dns_peek(b.r, b.name, 443, known, &res);
            if (v == DNS_PEEK_CHANGED)
                known = res.generation;
            same += v == DNS_PEEK_SAME;
        }
    }
    printf("resolved %lu, failed %lu, unchanged peeks %lu\n", b.ok, b.failed, same);
    dns_resolver_free(b.r);
    loop_free(b.l);
    return b.failed ? 1 : 0;
}
