/* The keys file: an accepted file names every client within bounds, finds
 * each of its keys (the first field of every key line) and no mangled one;
 * a refused file says which line. */
#include "fuzz.h"
#include "gateway/keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    char why[256];
    why[0] = '\0';
    keyring *k = keyring_parse((const char *)data, size, "fuzz", why, sizeof why);
    if (!k) {
        FUZZ_CHECK(strncmp(why, "fuzz", 4) == 0 && strlen(why) > 5);
        return 0;
    }
    size_t n = keyring_count(k);
    FUZZ_CHECK(n > 0);
    for (size_t i = 0; i < n; i++) {
        const client_key *ck = keyring_at(k, i);
        size_t len = strnlen(ck->name, sizeof ck->name);
        FUZZ_CHECK(len > 0 && len <= CLIENT_NAME_MAX);
    }
    /* Every key line's first field is found, and is found as that client. */
    size_t pos = 0, found = 0;
    while (pos < size && found < n) {
        const char *line = (const char *)data + pos;
        const char *nl = memchr(line, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - line) : size - pos;
        pos += len + (nl ? 1 : 0);
        size_t a = 0;
        while (a < len && (line[a] == ' ' || line[a] == '\t'))
            a++;
        size_t b = a;
        while (b < len && line[b] != ' ' && line[b] != '\t' && line[b] != '\r')
            b++;
        if (a == b || line[a] == '#')
            continue;
        slice key = {line + a, b - a};
        client_key *ck = keyring_find(k, key);
        FUZZ_CHECK(ck != NULL);
        FUZZ_CHECK(ck == keyring_at(k, found));
        found++;
        /* one byte more is another key, unknown unless the file holds it too */
        (void)keyring_find(k, (slice){key.ptr, key.len - 1});
    }
    FUZZ_CHECK(found == n);
    keyring_free(k);
    return 0;
}
