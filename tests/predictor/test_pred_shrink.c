/* A path predictor file cut short while it is being loaded (rewritten in place, truncated) is refused
 * naming the file, where its weights past the cut were read as zeros and the load succeeded.  The
 * cut is made by mmap, wrapped at link time (-Wl,--wrap=mmap): right after the file is mapped, before
 * its tensors are read through the mapping.  A copy of the bundled model's predictor-h2.safetensors
 * is used; the same copy, whole, loads. */
#include "predictor/path_model.h"
#include "tests/test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static char cut_path[4200]; /* the file to cut when it is mapped; "" when none */
static off_t cut_at;        /* its length after the cut */

void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    void *p = __real_mmap(addr, len, prot, flags, fd, off);
    struct stat a, b;
    if (p != MAP_FAILED && cut_path[0] && fd >= 0 && fstat(fd, &a) == 0 && stat(cut_path, &b) == 0 &&
        a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
        if (truncate(cut_path, cut_at) != 0) fprintf(stderr, "truncate %s: %s\n", cut_path, strerror(errno));
        cut_path[0] = 0;
    }
    return p;
}

static void copy(const char *from, const char *to)
{
    char cmd[9000], out[256];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    REQUIRE(t_run(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
}

int main(void)
{
    char src[4096], dir[] = "/tmp/moeflow-pred-shrink-XXXXXX", p[4200];
    t_path(src, sizeof src, "models/pycode-moe-18m/predictor-h2.safetensors");
    REQUIRE(mkdtemp(dir), "mkdtemp");
    snprintf(p, sizeof p, "%s/predictor.safetensors", dir);

    copy(src, p);
    struct moe_path_model *m = moe_path_model_load(p, 0, 0, 0, 0);
    CHECK(m != NULL, "the whole copy: %s", moe_last_error());
    moe_path_model_free(m);

    /* cut to half its length (past its header) once mapped: the weights of the second half are gone */
    struct stat sb;
    REQUIRE(stat(p, &sb) == 0 && sb.st_size > 3 * 4096, "stat %s", p);
    cut_at = sb.st_size / 2;
    snprintf(cut_path, sizeof cut_path, "%s", p);
    m = moe_path_model_load(p, 0, 0, 0, 0);
    REQUIRE(!cut_path[0], "the file was not mapped");
    CHECK(!m && strstr(moe_last_error(), "path predictor: ") && strstr(moe_last_error(), p) &&
              strstr(moe_last_error(), "shrank"),
          "a predictor cut while loaded: %s", m ? "loaded" : moe_last_error());
    moe_path_model_free(m);

    /* opened again as it is now: too short for its header's tensors */
    CHECK(!moe_path_model_load(p, 0, 0, 0, 0) && strstr(moe_last_error(), "truncated"), "reopened: %s",
          moe_last_error());

    unlink(p);
    rmdir(dir);
    return t_result("test_pred_shrink");
}
