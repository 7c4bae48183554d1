/* When batched access lines leave: not at once, but 20 ms after the first
 * line of a batch, as soon as the next line would take a batch past
 * PIPE_BUF, and on detaching. A SOCK_SEQPACKET pair stands in for stderr:
 * one write, one packet. */
#include <limits.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "unit.h"

static size_t last_bytes, last_packets; /* of the latest pending_lines */

static size_t pending_lines(int fd)
{
    static char packet[8192];
    size_t lines = 0;
    ssize_t n;
    last_bytes = last_packets = 0;
    while ((n = recv(fd, packet, sizeof packet, MSG_DONTWAIT)) > 0) {
        last_packets++;
        last_bytes += (size_t)n;
        for (ssize_t i = 0; i < n; i++)
            lines += packet[i] == '\n';
    }
    return lines;
}

static void one_line(int i)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/chat/completions/%d", i);
    access_record r = {.req_id = slice_of("0123456789abcdef0123456789abcdef"), .method = slice_of("POST"),
                       .path = slice_of(path), .client = slice_of("anonymous"), .status = 200};
    log_access(&r);
}

static void stop_loop(void *ctx) { loop_stop(ctx); }

TEST(log_batch_leaves_after_a_short_wait_or_when_full)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
    int saved = dup(STDERR_FILENO);
    dup2(sv[0], STDERR_FILENO);
    loop *l = loop_new();
    log_set_format(LOG_JSON);
    log_attach(l);

    one_line(0);
    one_line(1);
    size_t at_once = pending_lines(sv[1]);
    loop_timer stop = {0};
    loop_timer_arm(l, &stop, 100, stop_loop, l); /* past the flush timer */
    loop_run(l);
    size_t after_wait = pending_lines(sv[1]);

    size_t written = 0, before_full = 0;
    for (int i = 0; i < 100 && !written; i++) { /* ~250 bytes each: PIPE_BUF is ~16 */
        one_line(i);
        written = pending_lines(sv[1]);
        before_full += !written;
    }
    size_t full_bytes = last_bytes, full_packets = last_packets;
    one_line(1000);
    log_attach(NULL); /* detaching writes what is left */
    size_t at_detach = pending_lines(sv[1]);

    dup2(saved, STDERR_FILENO);
    close(saved);
    close(sv[0]);
    close(sv[1]);
    loop_free(l);
    CHECK_EQ_SIZE(at_once, 0);
    CHECK_EQ_SIZE(after_wait, 2);
    CHECK(written == before_full && written > 1); /* the lines before the one that would not fit */
    CHECK(full_packets == 1 && full_bytes <= PIPE_BUF && full_bytes + full_bytes / written > PIPE_BUF);
    CHECK_EQ_SIZE(at_detach, 2); /* the line that started the next batch, and the last */
}
