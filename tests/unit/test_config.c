/* Durations and sizes as the flags and environment give them. */
#include <stdint.h>
#include <stdlib.h>

#include "core/config.h"
#include "unit.h"

static void check_duration(const char *text, uint64_t want)
{
    uint64_t got = 12345;
    if (parse_duration_ms(text, &got) != 0)
        unit_fail(__FILE__, __LINE__, "duration \"%s\" rejected", text);
    else if (got != want)
        unit_fail(__FILE__, __LINE__, "duration \"%s\": %llu, want %llu", text, (unsigned long long)got,
                  (unsigned long long)want);
}

static void check_bad_duration(const char *text)
{
    uint64_t got = 12345;
    if (parse_duration_ms(text, &got) == 0)
        unit_fail(__FILE__, __LINE__, "duration \"%s\" accepted as %llu", text, (unsigned long long)got);
}

static void check_size(const char *text, uint64_t want)
{
    uint64_t got = 12345;
    if (parse_size(text, &got) != 0)
        unit_fail(__FILE__, __LINE__, "size \"%s\" rejected", text);
    else if (got != want)
        unit_fail(__FILE__, __LINE__, "size \"%s\": %llu, want %llu", text, (unsigned long long)got,
                  (unsigned long long)want);
}

static void check_bad_size(const char *text)
{
    uint64_t got = 12345;
    if (parse_size(text, &got) == 0)
        unit_fail(__FILE__, __LINE__, "size \"%s\" accepted as %llu", text, (unsigned long long)got);
}

TEST(config_durations)
{
    check_duration("250ms", 250);
    check_duration("0ms", 0);
    check_duration("3s", 3000);
    check_duration("2m", 120000);
    check_duration("10", 10000);
    check_duration("0", 0);
    check_duration("007s", 7000);
    check_duration("86400s", 86400000);
    check_duration("600s", 600000);
}

TEST(config_bad_durations)
{
    static const char *const bad[] = {"",    "ms",  "s",    "m",   "-1",   "-1s",  "1.5s", "5 s", " 5s",
                                      "+5s", "5sec", "5h",  "5S",  "5MS",  "abc",  "1e3",  "5ms ", "5\n",
                                      "0x10", "99999999999999999999", "18446744073709551615ms",
                                      "9223372036854775807m", " -1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        check_bad_duration(bad[i]);
}

TEST(config_sizes)
{
    check_size("1024", 1024);
    check_size("0", 0);
    check_size("10B", 10);
    check_size("1k", 1024);
    check_size("1K", 1024);
    check_size("512KiB", 524288);
    check_size("1KB", 1000);
    check_size("2M", 2097152);
    check_size("4MiB", 4194304);
    check_size("3MB", 3000000);
    check_size("1G", 1073741824);
    check_size("2GiB", 2147483648u);
    check_size("17179869183G", 17179869183ull << 30);
}

TEST(config_bad_sizes)
{
    static const char *const bad[] = {"",      "MiB",   "k",    "-1",   "-1k", " -1",  " -5",  "+5",
                                      " 5",    "1.5M",  "1 MiB", "1mib", "1m",  "1kib", "1KiBs", "1T",
                                      "0x10",  "99999999999999999999", "17179869184G", "18446744073709551616",
                                      "5\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        check_bad_size(bad[i]);
}

TEST(config_resolver_files)
{
    /* Defaults, then the environment, then flags. */
    unsetenv("SSEGATE_RESOLV_CONF");
    unsetenv("SSEGATE_HOSTS_FILE");
    char prog[] = "ssegate", f1[] = "--resolv-conf", v1[] = "/tmp/r.conf", f2[] = "--hosts-file=/tmp/h";
    char *plain[] = {prog, NULL};
    config c;
    CHECK(config_load(&c, 1, plain) == 0);
    CHECK_STR(c.resolv_conf, "/etc/resolv.conf");
    CHECK_STR(c.hosts_file, "/etc/hosts");
    config_free(&c);
    setenv("SSEGATE_RESOLV_CONF", "/env/resolv.conf", 1);
    setenv("SSEGATE_HOSTS_FILE", "/env/hosts", 1);
    CHECK(config_load(&c, 1, plain) == 0);
    CHECK_STR(c.resolv_conf, "/env/resolv.conf");
    CHECK_STR(c.hosts_file, "/env/hosts");
    config_free(&c);
    char *flags[] = {prog, f1, v1, f2, NULL};
    CHECK(config_load(&c, 4, flags) == 0);
    CHECK_STR(c.resolv_conf, "/tmp/r.conf");
    CHECK_STR(c.hosts_file, "/tmp/h");
    config_free(&c);
    unsetenv("SSEGATE_RESOLV_CONF");
    unsetenv("SSEGATE_HOSTS_FILE");
}
