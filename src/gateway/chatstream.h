/* The events of `/chat/stream`, the simplified stream the web page reads
 * with EventSource:
 *
 *     retry: 1000                      (before the first event only)
 *     event: message
 *     data: {"content":"..."}
 *
 *     event: done
 *     data: [DONE]
 *
 *     event: error
 *     data: {"error":{"message":..,"type":..,"param":null,"code":..}}
 *
 * Strings are written as JSON that is also safe inside HTML: besides what
 * JSON requires, '<', '>' and '&' are written \u003c, \u003e, \u0026, and
 * U+2028 / U+2029 as \u2028 / \u2029, so no content can close a <script>
 * or start markup wherever a page puts it. Bytes that are not UTF-8 become
 * U+FFFD (one per maximal ill-formed subsequence, as browsers decode), so
 * every data line is valid JSON in valid UTF-8 on a single line.
 *
 * Each writer appends one complete event (the retry writer one line) to b;
 * like every wbuf write, check b->overflow once at the end. */
#ifndef SSEGATE_CHATSTREAM_H
#define SSEGATE_CHATSTREAM_H

#include <stdbool.h>

#include "core/slice.h"
#include "core/wbuf.h"

/* "retry: 1000\n": how long EventSource waits before reconnecting. */
void chatstream_write_retry(wbuf *b);

/* A message event whose content is the text `content` (raw bytes). */
void chatstream_write_message(wbuf *b, slice content);

/* A message event from the contents of a JSON string as they stand in the
 * upstream chunk (quotes excluded, escapes still in place, e.g. a jsmn
 * token). Well-formed escapes and UTF-8 are copied as they are, not decoded
 * and encoded again; what JSON does not allow there (a raw quote or control
 * character, a bad or truncated escape, a lone surrogate escape, bytes that
 * are not UTF-8) is repaired: a stray backslash is written as a literal
 * backslash, a lone surrogate or bad UTF-8 as U+FFFD. Returns true when the
 * input needed no repair. */
bool chatstream_write_message_json(wbuf *b, slice escaped);

/* "event: done\ndata: [DONE]\n\n" */
void chatstream_write_done(wbuf *b);

/* An error event with the §6 error object; code may be NULL (JSON null). */
void chatstream_write_error(wbuf *b, const char *message, const char *type, const char *code);

#endif
