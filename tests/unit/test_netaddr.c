/* --listen addresses, and sockets that share a port for --workers. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/netaddr.h"
#include "unit.h"

static void check_round_trip(const char *spec, int family, const char *want)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    const char *why = NULL;
    if (netaddr_parse(spec, &ss, &len, &why) != 0) {
        unit_fail(__FILE__, __LINE__, "\"%s\" rejected: %s", spec, why ? why : "?");
        return;
    }
    if (ss.ss_family != family)
        unit_fail(__FILE__, __LINE__, "\"%s\": family %d, want %d", spec, (int)ss.ss_family, family);
    if (len != (family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)))
        unit_fail(__FILE__, __LINE__, "\"%s\": length %u", spec, (unsigned)len);
    char text[80];
    netaddr_format(&ss, text, sizeof text);
    if (strcmp(text, want) != 0)
        unit_fail(__FILE__, __LINE__, "\"%s\" formats as \"%s\", want \"%s\"", spec, text, want);
}

TEST(netaddr_parse_and_format)
{
    check_round_trip("127.0.0.1:8080", AF_INET, "127.0.0.1:8080");
    check_round_trip("localhost:80", AF_INET, "127.0.0.1:80");
    check_round_trip("*:443", AF_INET, "0.0.0.0:443");
    check_round_trip(":9", AF_INET, "0.0.0.0:9");
    check_round_trip("0.0.0.0:0", AF_INET, "0.0.0.0:0");
    check_round_trip("[::1]:65535", AF_INET6, "[::1]:65535");
    check_round_trip("[::]:1", AF_INET6, "[::]:1");
    check_round_trip("[2001:db8::7]:8080", AF_INET6, "[2001:db8::7]:8080");
}

TEST(netaddr_parse_rejects)
{
    static const char *const bad[] = {"",          "8080",        "127.0.0.1",      "127.0.0.1:",  "127.0.0.1:x",
                                      "1.2.3.4:-1", "1.2.3.4:65536", "1.2.3.4:80 ",  "300.1.1.1:80", "[::1:80",
                                      "[zz]:80",   "example.com:80", "::1:80",       "[::1]80",
                                      "a-host-name-that-is-longer-than-the-sixty-four-bytes-of-the-host-buffer:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        const char *why = NULL;
        if (netaddr_parse(bad[i], &ss, &len, &why) == 0)
            unit_fail(__FILE__, __LINE__, "\"%s\" accepted", bad[i]);
        else if (!why || !why[0])
            unit_fail(__FILE__, __LINE__, "\"%s\" rejected without a reason", bad[i]);
    }
}

static unsigned port_of(const char *address)
{
    const char *colon = strrchr(address, ':');
    return colon ? (unsigned)atoi(colon + 1) : 0;
}

static bool connects(const char *address)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port_of(address))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* The --workers layout: a reserving socket that never listens, then
 * listeners that share its port. */
TEST(netaddr_shared_port)
{
    const char *why = NULL;
    int reserve = netaddr_bind("127.0.0.1:0", true, false, &why);
    CHECK(reserve >= 0);
    if (reserve < 0)
        return;
    char address[80];
    netaddr_local(reserve, address, sizeof address);
    CHECK(port_of(address) != 0);
    CHECK(!connects(address)); /* bound, not listening: refuses */

    int a = netaddr_bind(address, true, true, &why);
    int b = netaddr_bind(address, true, true, &why);
    CHECK(a >= 0);
    CHECK(b >= 0);
    char got[80];
    netaddr_local(a, got, sizeof got);
    CHECK_STR(got, address);
    CHECK(connects(address));

    int lone = netaddr_bind(address, false, true, &why);
    CHECK(lone < 0);
    CHECK(why && strstr(why, "cannot listen on") != NULL);
    if (lone >= 0)
        close(lone);
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    close(reserve);
}
