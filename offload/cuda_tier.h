/* The GPU expert tier: a pool of device slots, each holding one expert's three
 * BF16 matrices, filled from pinned host memory on a dedicated copy stream.
 *
 * Residency and eviction decisions come from the cache manager (cache.h) with
 * the configured policy, the same code `moeflow sim` replays.  Ordering is
 * kept on the GPU with events, never by blocking the host:
 *   - a slot's copy waits for the compute stream's "free" event of that slot
 *     (recorded at release), so an expert is never overwritten while a kernel
 *     still reads it;
 *   - acquire makes the compute stream wait on a slot's "ready" event only
 *     when that expert's copy is still in flight (cudaEventQuery says so),
 *     so nothing is computed on an expert before its bytes have landed.
 * A CUDA failure returns MOE_EDEVICE naming layer and expert; a sticky error
 * returns MOE_EDEVLOST, poisons the tier and the backend context it shares
 * (every later call fails fast with MOE_EDEVLOST) and is reported by
 * moe_cuda_tier_poisoned() and moe_backend_cuda_poisoned() so the server can
 * turn readiness off and exit. */
#ifndef MOE_CUDA_TIER_H
#define MOE_CUDA_TIER_H

#include "../kernels/cuda/cuda_ops.h"
#include "../kernels/backend.h"
#include "policy.h"
#include "provider.h"
#include "tiered.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_cuda_tier_params {
    int n_layers, n_experts;        /* key space: key = layer * n_experts + expert */
    int slots;                      /* device slots (experts resident at once), >= 1; at most one per
                                       expert of the MoE layers are allocated */
    size_t mat_bytes[3];            /* bytes of gate, up, down of one expert */
    enum moe_policy_kind policy;    /* lru, lfu, belady (with future), predicted (prefetch hints) */
    const int *future;              /* belady only: demand keys in order */
    size_t n_future;
    const bool *is_moe;             /* [n_layers] MoE layers (predicted policy), NULL = every layer */
    /* Host source: the bytes of matrix `which` (0 gate, 1 up, 2 down) of an
     * expert, in pinned host memory for overlap (pageable works, slower);
     * NULL when the expert does not exist (dense layer).  Pointers may alias
     * (benchmarks replay a few payloads under many keys). */
    const void *(*host_mat)(void *ud, int layer, int expert, int which);
    /* Or (host_mat NULL): fill pinned staging memory with the expert's three
     * matrices (dst[0..2], mat_bytes[w] each) and return MOE_OK, or an error
     * naming layer and expert.  The tier keeps a ring of a few staging
     * buffers (one expert each) and calls this only after the previous copy
     * out of the buffer it hands over has left it. */
    enum moe_status (*host_fill)(void *ud, int layer, int expert, void *const dst[3]);
    void *ud;
    /* FP8 experts (fp8_block[0] > 0): host_mat or host_fill give FP8 records (model.h),
     * rec_bytes[w] each, of matrices mat_rows[w] x mat_cols[w] with blocks of fp8_block[0] x
     * fp8_block[1]; the tier copies the records to a device staging ring and turns them there into
     * the slot's BF16 matrices (mat_bytes[w] = rows x cols x 2), so each load moves about half the
     * bytes. */
    int fp8_block[2];
    int64_t mat_rows[3], mat_cols[3];
    size_t rec_bytes[3];
    bool time_copies;               /* benchmarks: time every copy with CUDA events (copy_s) */
};

struct moe_cuda_tier_stats {
    uint64_t hits, misses;          /* demand acquires served from / not from the slots */
    uint64_t prefetches;            /* loads started by prefetch */
    uint64_t prefetch_hits;         /* demand hits on prefetched experts */
    uint64_t evictions;
    uint64_t loads;                 /* experts copied host -> device */
    uint64_t bytes_h2d;             /* bytes copied host -> device by those loads (FP8 experts: their
                                       records); a load that failed counts in neither */
    uint64_t waits;                 /* acquires that had to wait on an in-flight copy */
    double copy_s;                  /* time_copies: seconds the copy engine spent on the loads
                                       completed by the last drain (bytes_h2d / copy_s = GB/s
                                       while transferring) */
    int slots;
    size_t slot_bytes;              /* bytes per slot */
    int pinned;                     /* experts acquired and not yet released (now) */
    int resident;                   /* slots holding an expert (now) */
};

struct moe_cuda_tier;

/* Allocates slots * slot_bytes of device memory: on failure the message names
 * the slot count to lower.  NULL with moe_last_error() set. */
struct moe_cuda_tier *moe_cuda_tier_create(struct moe_cuda_ctx *c, const struct moe_cuda_tier_params *p);
void moe_cuda_tier_destroy(struct moe_cuda_tier *t);

/* Device pointers of n experts of one layer; pinned until release(layer).  A request refused whole (an
 * id outside the layer's experts or a layer outside the model: MOE_EINVAL; a layer that is_moe marks
 * dense: MOE_ENOENT; more distinct experts than the slots hold beside those pinned, or pins beyond
 * what the tier records without a release: MOE_EBUSY) changes nothing: no hit or miss counted, no
 * copy, no pin. */
enum moe_status moe_cuda_tier_acquire(struct moe_cuda_tier *t, int layer, int n, const int *ids,
                                      struct moe_expert_ref *out);
void moe_cuda_tier_release(struct moe_cuda_tier *t, int layer);
/* Start copies for these experts if they are absent (hint; drops when every slot is pinned).  Dense
 * layers (is_moe), layers outside the model and ids outside 0..n_experts-1 are skipped. */
void moe_cuda_tier_prefetch(struct moe_cuda_tier *t, int layer, int n, const int *ids, const float *scores,
                            int distance);
/* Rank-only predictions (the provider's hint op): scores of these experts
 * `distance` MoE layers ahead go to the policy (--policy predicted orders
 * evictions by them); nothing moves, no CUDA call.  Dense layers and ids
 * outside 0..n_experts-1 are skipped. */
void moe_cuda_tier_hint(struct moe_cuda_tier *t, int layer, int n, const int *ids, const float *scores,
                        int distance);
/* Wait until every copy issued so far has landed. */
enum moe_status moe_cuda_tier_drain(struct moe_cuda_tier *t);
void moe_cuda_tier_get_stats(const struct moe_cuda_tier *t, struct moe_cuda_tier_stats *out);
bool moe_cuda_tier_poisoned(const struct moe_cuda_tier *t);

/* Expert provider over a model: every routed expert converted once to BF16
 * (an FP8 checkpoint's kept as its FP8 records, turned into BF16 on the device)
 * into one pinned host pool (cudaHostAlloc), the GPU tier above it holding
 * `slots` experts (0 = all).  The backend must be the CUDA backend
 * (moe_backend_cuda_create); compute is ordered on its stream. */
struct moe_provider_cuda_params {
    int slots;                      /* device slots; 0 = every routed expert; >= top_k otherwise */
    enum moe_policy_kind policy;
    const int *future;              /* belady */
    size_t n_future;
    /* _stack_create, an FP8 checkpoint: `lower` hands out FP8 records (moe_tiered_params.fp8_records),
     * which the GPU tier copies up as they are and turns into BF16 on the device */
    bool fp8_records;
};
struct moe_provider *moe_provider_cuda_create(const struct moe_model *m, struct moe_backend *be,
                                              const struct moe_provider_cuda_params *p);
/* The GPU tier stacked on any host-side provider (the tiered NVMe -> RAM
 * provider, or the resident one): a GPU miss acquires the expert from
 * `lower` (one at a time, released right after), converts it to BF16 into a
 * pinned staging buffer and copies it up (FP8 records with fp8_records: copied
 * up as they are and decoded on the device).  prefetch() is forwarded to
 * `lower` one layer further out (its own worker moves NVMe -> RAM); GPU
 * copies start on demand, and the prefetches' scores reach the GPU tier's
 * policy (--policy predicted).  hint() feeds the GPU tier's policy and is
 * forwarded to `lower` one layer further out.  `lower` is owned by the new
 * provider. */
struct moe_provider *moe_provider_cuda_stack_create(const struct moe_model *m, struct moe_backend *be,
                                                    struct moe_provider *lower,
                                                    const struct moe_provider_cuda_params *p);
/* Tier stats of a provider made by moe_provider_cuda_create or _stack_create (false otherwise). */
bool moe_provider_cuda_stats(const struct moe_provider *p, struct moe_cuda_tier_stats *out);
/* Bytes of the host copy of a provider made by moe_provider_cuda_create: the experts of its MoE
 * layers (BF16, or an FP8 checkpoint's records); 0 for any other provider. */
uint64_t moe_provider_cuda_host_bytes(const struct moe_provider *p);
/* The host-side provider under a provider made by _stack_create (NULL otherwise). */
const struct moe_provider *moe_provider_cuda_lower(const struct moe_provider *p);
/* Bytes of one GPU-tier slot for this model's routed experts (gate|up|down in
 * BF16, each 256-byte aligned): --gpu-cache-bytes / this = slots. */
uint64_t moe_provider_cuda_slot_bytes(const struct moe_model *m);

/* Hooks for the tiered provider (tiered.h): pin its host tier for DMA with
 * cudaHostRegister (portable), so copies from it overlap compute. */
struct moe_offload_hooks moe_cuda_offload_hooks(void);

#ifdef __cplusplus
}
#endif
#endif
