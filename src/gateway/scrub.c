#include "gateway/scrub.h"

#include <string.h>

void secrets_add(secrets *s, slice secret)
{
    if (secret.len >= SCRUB_MIN_SECRET && s->count < SCRUB_MAX_SECRETS)
        s->item[s->count++] = secret;
}

size_t scrub(char *buf, size_t len, const secrets *s)
{
    size_t found = 0;
    for (size_t i = 0; i < s->count; i++) {
        slice k = s->item[i];
        if (k.len < SCRUB_MIN_SECRET)
            continue; /* an empty slot, or too short to mask without hurting ordinary text */
        char *p = buf;
        size_t left = len;
        char *hit;
        while (left >= k.len && (hit = memmem(p, left, k.ptr, k.len)) != NULL) {
            memset(hit, '*', k.len);
            found++;
            left -= (size_t)(hit - p) + k.len;
            p = hit + k.len;
        }
    }
    return found;
}
