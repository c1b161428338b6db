/* moe_read_file reads a file to its end, whatever size stat gives it: a /proc file, which says 0
 * bytes, is read whole (where it read as empty text: tokenize --file /proc/self/status printed []),
 * and is refused past the limit as a file of a known size is; a regular file is read byte for byte. */
#include "../test_util.h"
#include "common/moe.h"

#include <errno.h>
#include <unistd.h>

int main(void)
{
    char *buf = NULL;
    size_t len = 0;
    if (access("/proc/self/status", R_OK) != 0) {
        printf("test_common_read_file: no /proc here, skipped\n");
        return T_SKIP;
    }
    REQUIRE(moe_read_file("/proc/self/status", &buf, &len, 1 << 20) == MOE_OK, "%s", moe_last_error());
    CHECK(len > 0 && len == strlen(buf) && !strncmp(buf, "Name:", 5) && strstr(buf, "\nPid:"),
          "/proc/self/status read as %zu bytes: %.40s", len, buf);
    free(buf);
    buf = NULL;
    CHECK(moe_read_file("/proc/self/status", &buf, &len, 8) == MOE_EFORMAT && !buf &&
              strstr(moe_last_error(), "/proc/self/status") && strstr(moe_last_error(), "8-byte limit"),
          "a /proc file over the limit: %s", moe_last_error());

    char dir[] = "/tmp/moe-read-XXXXXX", path[64];
    REQUIRE(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof(path), "%s/f", dir);
    static char data[10000];
    for (size_t i = 0; i < sizeof(data); i++) data[i] = (char)(i * 7 + 1);
    FILE *f = fopen(path, "wb");
    REQUIRE(f && fwrite(data, 1, sizeof(data), f) == sizeof(data) && fclose(f) == 0, "write %s", path);
    REQUIRE(moe_read_file(path, &buf, &len, sizeof(data)) == MOE_OK, "%s", moe_last_error());
    CHECK(len == sizeof(data) && !memcmp(buf, data, len) && buf[len] == 0, "regular file: %zu bytes", len);
    free(buf);
    buf = NULL;
    CHECK(moe_read_file(path, &buf, &len, sizeof(data) - 1) == MOE_EFORMAT && !buf &&
              strstr(moe_last_error(), "10000 bytes is larger than the 9999-byte limit"),
          "regular file over the limit: %s", moe_last_error());
    unlink(path);
    rmdir(dir);
    return t_result("test_common_read_file");
}
