/* Masking secrets in what the upstream echoes: every occurrence, in place,
 * length kept; short secrets ignored. */
#include <string.h>

#include "gateway/scrub.h"
#include "unit.h"

TEST(scrub_masks_every_occurrence_in_place)
{
    secrets s = {0};
    secrets_add(&s, SLICE_LIT("sk-upstream-1"));
    secrets_add(&s, SLICE_LIT("client-key"));
    char text[] = "Incorrect key sk-upstream-1; also sk-upstream-1sk-upstream-1 and client-key.";
    size_t len = strlen(text);
    CHECK_EQ_SIZE(scrub(text, len, &s), 4);
    CHECK_STR(text, "Incorrect key *************; also ************************** and **********.");
    CHECK_EQ_SIZE(strlen(text), len);
    CHECK_EQ_SIZE(scrub(text, len, &s), 0);
}

TEST(scrub_ignores_short_and_extra_secrets)
{
    secrets s = {0};
    secrets_add(&s, SLICE_LIT("abc")); /* too short to mask without hurting ordinary text */
    secrets_add(&s, (slice){NULL, 0});
    CHECK_EQ_SIZE(s.count, 0);
    secrets_add(&s, SLICE_LIT("key-one"));
    secrets_add(&s, SLICE_LIT("key-two"));
    secrets_add(&s, SLICE_LIT("key-three"));
    CHECK_EQ_SIZE(s.count, 2);
    char text[] = "abc key-three key-one";
    CHECK_EQ_SIZE(scrub(text, strlen(text), &s), 1);
    CHECK_STR(text, "abc key-three *******");
    char edge[] = "key-o";
    CHECK_EQ_SIZE(scrub(edge, strlen(edge), &s), 0);
}
