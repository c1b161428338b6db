/* Expert-provider seam: the only way the engine reaches an expert's weights.
 *
 * acquire(layer, n, ids) returns compute-visible pointers for n experts of one
 * layer, waiting only for experts not yet resident; the experts stay pinned
 * (never evicted) until release(layer).  prefetch() is a hint: start moving
 * these experts towards the compute tier; distance = how many MoE layers ahead
 * of the one now computing they are needed (0 = needed now, top priority).
 *
 * The all-resident provider (moe_provider_resident) exists from day one; the
 * tiered cache manager implements the same ops. */
#ifndef MOE_PROVIDER_H
#define MOE_PROVIDER_H

#include "../common/moe.h"
#include "../model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Compute-visible weights of one expert, in the backend's memory.  CPU
 * backend: F32 row-major, gate/up [inter, hidden], down [hidden, inter]. */
struct moe_expert_ref {
    const void *gate, *up, *down;
    enum moe_dtype dtype;
};

struct moe_provider_ops {
    /* Fill out[0..n-1].  On failure (I/O, checksum) returns the status with
     * moe_last_error() naming layer and expert; nothing is pinned then.  A
     * request refused whole changes nothing (no access counted, no load):
     * MOE_EINVAL for a layer outside the model or an id that is not an expert
     * of the layer, MOE_ENOENT for a dense layer (it has no routed experts),
     * MOE_EBUSY for more experts than fit at once. */
    enum moe_status (*acquire)(void *self, int layer, int n, const int *ids,
                               struct moe_expert_ref *out);
    void (*release)(void *self, int layer);
    /* Optional (may be NULL). scores: predictor confidence per id or NULL. */
    void (*prefetch)(void *self, int layer, int n, const int *ids, const float *scores,
                     int distance);
    /* Optional: a forward step of n_tokens begins / ends (stats, timelines). */
    void (*step_begin)(void *self, int n_tokens);
    void (*step_end)(void *self);
    void (*destroy)(void *self);
    /* Optional: most experts that can be pinned at once (device-tier slots);
     * NULL or 0 = unlimited.  The engine acquires a layer's experts in chunks
     * of at most this many, and its result must not depend on the chunking. */
    int (*max_pinned)(void *self);
    /* Optional: rank-only predictions, every expert's score for `layer` at
     * `distance` MoE layers ahead (possibly beyond this step: the next tokens'
     * routing), for a policy that orders evictions by predicted next use.  The
     * provider moves nothing for them; NULL scores are ignored. */
    void (*hint)(void *self, int layer, int n, const int *ids, const float *scores, int distance);
};

struct moe_provider {
    const struct moe_provider_ops *ops;
    void *self;
};

/* An acquire's refusal of a layer without routed experts, as acquire() has it: MOE_EINVAL for a layer
 * outside the model, MOE_ENOENT for a dense layer, each naming the layer; MOE_OK for a MoE layer. */
enum moe_status moe_provider_check_layer(const struct moe_model *m, int layer);

/* Every expert in RAM.  dt MOE_DT_BF16: when the model stores every routed
 * expert in BF16, the experts are used as the model holds them, copied once
 * into transparent huge pages when the kernel has them and they take at most
 * half the available memory (the checkpoint's pages of them then handed back,
 * moe_model_release_experts), else read in place; FP8 experts are widened to BF16 once;
 * otherwise (or dt MOE_DT_F32) each is converted to F32 once at creation.
 * The model must outlive the provider. */
struct moe_provider *moe_provider_resident_create(const struct moe_model *m, enum moe_dtype dt);
void moe_provider_destroy(struct moe_provider *p);

#ifdef __cplusplus
}
#endif
#endif
