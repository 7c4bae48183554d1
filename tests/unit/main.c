/* Runs every registered unit test, optionally only those whose name
 * contains argv[1]. Exit status 1 when any test failed. */
#include "unit.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} unit_test;

static unit_test *tests;
static size_t ntests, cap;
static const char *current;
static bool current_failed;

void unit_register(const char *name, void (*fn)(void))
{
    if (ntests == cap) {
        cap = cap ? cap * 2 : 64;
        unit_test *nt = realloc(tests, cap * sizeof *nt);
        if (nt == NULL) {
            fprintf(stderr, "unit: out of memory\n");
            exit(2);
        }
        tests = nt;
    }
    tests[ntests++] = (unit_test){ name, fn };
}

void unit_fail(const char *file, int line, const char *fmt, ...)
{
    current_failed = true;
    printf("FAIL %s: %s:%d: ", current ? current : "?", file, line);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const unit_test *)a)->name, ((const unit_test *)b)->name);
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    size_t passed = 0, failed = 0;
    /* Constructor order is unspecified; sort for stable output. */
    if (ntests > 1)
        qsort(tests, ntests, sizeof *tests, by_name);
    for (size_t i = 0; i < ntests; i++) {
        if (filter != NULL && strstr(tests[i].name, filter) == NULL)
            continue;
        current = tests[i].name;
        current_failed = false;
        tests[i].fn();
        if (current_failed)
            failed++;
        else
            passed++;
    }
    free(tests);
    printf("%zu passed, %zu failed\n", passed, failed);
    return failed ? 1 : 0;
}
