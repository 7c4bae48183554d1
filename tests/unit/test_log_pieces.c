/* Batched access lines leave in writes of at most PIPE_BUF bytes that end on
 * a line end, so workers sharing a pipe for stderr never mix their lines. A
 * SOCK_SEQPACKET pair stands in for stderr: one write, one packet. */
#include <limits.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "unit.h"

TEST(log_batch_leaves_in_whole_line_pieces)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    int saved = dup(STDERR_FILENO);
    dup2(sv[0], STDERR_FILENO);
    loop *l = loop_new();
    log_set_format(LOG_JSON);
    log_attach(l);
    char path[64];
    enum { LINES = 120 };
    for (int i = 0; i < LINES; i++) {
        snprintf(path, sizeof path, "/v1/chat/completions/%d", i);
        access_record r = {.req_id = slice_of("0123456789abcdef0123456789abcdef"), .method = slice_of("POST"),
                           .path = slice_of(path), .client = slice_of("team-a"), .model = slice_of("gpt-4o-mini"),
                           .status = 200, .ttfb_ms = 12, .dur_ms = 340};
        log_access(&r);
    }
    log_flush();
    log_attach(NULL);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(sv[0]);

    static char packet[2 * PIPE_BUF];
    size_t packets = 0, lines = 0, total = 0;
    ssize_t n;
    while ((n = recv(sv[1], packet, sizeof packet, MSG_DONTWAIT)) > 0) {
        packets++;
        total += (size_t)n;
        if ((size_t)n > PIPE_BUF)
            unit_fail(__FILE__, __LINE__, "a write of %zd bytes, more than PIPE_BUF", n);
        if (packet[n - 1] != '\n')
            unit_fail(__FILE__, __LINE__, "a write of %zd bytes does not end a line", n);
        for (ssize_t i = 0; i < n; i++)
            lines += packet[i] == '\n';
    }
    close(sv[1]);
    loop_free(l);
    CHECK_EQ_SIZE(lines, LINES);
    CHECK(total > 4 * PIPE_BUF); /* the batch was big enough to need pieces */
    CHECK(packets >= total / PIPE_BUF);
}
