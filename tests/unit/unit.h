/* Minimal unit-test harness: tests register themselves from constructors;
 * tests/unit/main.c runs them. A failed CHECK records file:line and the
 * expression, and the test goes on. */
#ifndef SSEGATE_UNIT_H
#define SSEGATE_UNIT_H

#include <stddef.h>
#include <string.h>

void unit_register(const char *name, void (*fn)(void));
void unit_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define TEST(name)                                                                         \
    static void name(void);                                                                \
    __attribute__((constructor)) static void name##_register(void)                         \
    {                                                                                      \
        unit_register(#name, name);                                                        \
    }                                                                                      \
    static void name(void)

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond))                                                                       \
            unit_fail(__FILE__, __LINE__, "%s", #cond);                                    \
    } while (0)

#define CHECK_EQ_SIZE(a, b)                                                                \
    do {                                                                                   \
        size_t unit_a_ = (size_t)(a), unit_b_ = (size_t)(b);                               \
        if (unit_a_ != unit_b_)                                                            \
            unit_fail(__FILE__, __LINE__, "%s == %s (%zu vs %zu)", #a, #b, unit_a_,        \
                      unit_b_);                                                            \
    } while (0)

#define CHECK_STR(a, b)                                                                    \
    do {                                                                                   \
        const char *unit_a_ = (a), *unit_b_ = (b);                                         \
        if (unit_a_ == NULL || unit_b_ == NULL || strcmp(unit_a_, unit_b_) != 0)           \
            unit_fail(__FILE__, __LINE__, "%s == %s (\"%s\" vs \"%s\")", #a, #b,           \
                      unit_a_ ? unit_a_ : "(null)", unit_b_ ? unit_b_ : "(null)");         \
    } while (0)

#endif
