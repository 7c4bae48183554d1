/* --workers and SSEGATE_WORKERS: 1 to CONFIG_MAX_WORKERS. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/config.h"
#include "unit.h"

/* config_load's result for `ssegate --workers value` (no flag when NULL),
 * its complaint kept off the runner's output; *workers when it loaded. */
static int load_workers(const char *value, unsigned *workers)
{
    char prog[] = "ssegate", flag[] = "--workers", upstream[] = "--upstream", demo[] = "demo";
    char copy[32] = "";
    char *argv[] = {prog, upstream, demo, flag, copy, NULL};
    int argc = 3;
    if (value) {
        snprintf(copy, sizeof copy, "%s", value);
        argc = 5;
    }
    int saved = dup(STDERR_FILENO);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, STDERR_FILENO);
    close(null);
    config c;
    int rc = config_load(&c, argc, argv);
    dup2(saved, STDERR_FILENO);
    close(saved);
    if (rc == 0) {
        *workers = c.workers;
        config_free(&c);
    }
    return rc;
}

TEST(config_workers_bounds)
{
    unsetenv("SSEGATE_WORKERS");
    unsigned w = 0;
    CHECK(load_workers(NULL, &w) == 0 && w == 1);
    CHECK(load_workers("1", &w) == 0 && w == 1);
    CHECK(load_workers("4", &w) == 0 && w == 4);
    CHECK(load_workers("256", &w) == 0 && w == CONFIG_MAX_WORKERS);
    CHECK(load_workers("0", &w) == -1);
    CHECK(load_workers("257", &w) == -1);
    CHECK(load_workers("-2", &w) == -1);
    CHECK(load_workers("two", &w) == -1);

    setenv("SSEGATE_WORKERS", "3", 1);
    CHECK(load_workers(NULL, &w) == 0 && w == 3);
    CHECK(load_workers("2", &w) == 0 && w == 2); /* the flag wins */
    setenv("SSEGATE_WORKERS", "300", 1);
    CHECK(load_workers(NULL, &w) == -1);
    unsetenv("SSEGATE_WORKERS");
}
