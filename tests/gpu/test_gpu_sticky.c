/* A device fault (an out-of-bounds read inside a kernel) is a sticky CUDA
 * error: the next CUDA call returns MOE_EDEVLOST with a message that says the
 * process must restart, the context reports itself poisoned (also when the
 * GPU expert tier is the first to see the error), and the tier fails every
 * later acquire with MOE_EDEVLOST instead of computing on anything.  Runs last
 * in its own process (the context cannot recover).  Skips (77) without a
 * CUDA device. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../../kernels/cuda/cuda_backend.h"
#include "../../offload/cuda_tier.h"
#include "../test_util.h"

static uint16_t host[3][64 * 64];

static const void *host_mat(void *ud, int layer, int e, int which)
{
    (void)ud, (void)layer, (void)e;
    return host[which];
}

int main(void)
{
    if (moe_cuda_device_count() == 0) {
        printf("test_gpu_sticky: no CUDA device, skipping\n");
        return T_SKIP;
    }
    struct moe_cuda_params cp = { .device = 0, .workspace_bytes = 1u << 20 };
    struct moe_cuda_ctx *c = moe_cuda_ctx_create(&cp);
    REQUIRE(c, "context: %s", moe_last_error());
    struct moe_cuda_tier_params tp = { .n_layers = 2, .n_experts = 4, .slots = 2,
                                       .mat_bytes = { sizeof(host[0]), sizeof(host[0]), sizeof(host[0]) },
                                       .host_mat = host_mat };
    struct moe_cuda_tier *t = moe_cuda_tier_create(c, &tp);
    REQUIRE(t, "tier: %s", moe_last_error());
    struct moe_expert_ref ref[2];
    int ids[2] = { 0, 1 };
    REQUIRE(moe_cuda_tier_acquire(t, 0, 2, ids, ref) == MOE_OK, "acquire: %s", moe_last_error());
    moe_cuda_tier_release(t, 0);
    REQUIRE(moe_cuda_ctx_sync(c) == MOE_OK, "sync: %s", moe_last_error());

    /* gather row 2^28 of a 1-row, 1024-wide buffer: 1 TiB past it */
    void *x, *rows, *out;
    int bad = 1 << 28;
    REQUIRE(moe_cuda_alloc(c, &x, 1024 * 4, "x") == MOE_OK, "alloc");
    REQUIRE(moe_cuda_alloc(c, &rows, 4, "rows") == MOE_OK, "alloc");
    REQUIRE(moe_cuda_alloc(c, &out, 1024 * 4, "out") == MOE_OK, "alloc");
    REQUIRE(moe_cuda_h2d(c, rows, &bad, 4) == MOE_OK, "h2d");
    enum moe_status st = moe_cuda_gather_rows(c, x, rows, 1, 1024, out);
    /* give the fault time to land, then let the tier see it first: its misses
     * call the device (copy stream) and get the sticky error */
    nanosleep(&(struct timespec){ .tv_sec = 0, .tv_nsec = 500 * 1000 * 1000 }, NULL);
    ids[0] = 2, ids[1] = 3;
    if (st == MOE_OK) {
        st = moe_cuda_tier_acquire(t, 1, 2, ids, ref);
        if (st == MOE_OK) {
            printf("the tier did not see the fault yet; the context's sync will\n");
            moe_cuda_tier_release(t, 1);
        } else {
            printf("the tier saw the fault first: %s\n", moe_last_error());
            CHECK(moe_cuda_tier_poisoned(t), "tier not marked poisoned");
            CHECK(moe_cuda_ctx_poisoned(c), "the tier's sticky error did not poison the backend context");
        }
    }
    if (st == MOE_OK) st = moe_cuda_ctx_sync(c);
    printf("after the fault: %s: %s\n", moe_status_str(st), moe_last_error());
    CHECK(st == MOE_EDEVLOST, "fault returned %s", moe_status_str(st));
    CHECK(strstr(moe_last_error(), "restart") != NULL, "message does not say to restart: %s", moe_last_error());
    CHECK(moe_cuda_ctx_poisoned(c), "context not marked poisoned");

    ids[0] = 0, ids[1] = 2;
    st = moe_cuda_tier_acquire(t, 1, 2, ids, ref);
    CHECK(st == MOE_EDEVLOST, "tier acquire after the fault returned %s", moe_status_str(st));
    CHECK(moe_cuda_tier_poisoned(t), "tier not marked poisoned");
    CHECK(moe_cuda_tier_acquire(t, 0, 2, ids, ref) == MOE_EDEVLOST, "poisoned tier served an acquire");
    moe_cuda_tier_destroy(t);
    moe_cuda_ctx_destroy(c);

    /* a backend created on the poisoned device refuses or reports poisoned */
    struct moe_backend_cuda_params bp = { .device = 0, .workspace_bytes = 1u << 20 };
    struct moe_backend *be = moe_backend_cuda_create(&bp);
    CHECK(!be || moe_backend_cuda_poisoned(be) || be->ops->synchronize(be->ctx) == MOE_EDEVLOST,
          "a backend on the poisoned device works");
    if (be) moe_backend_destroy(be);
    return t_result("test_gpu_sticky");
}
