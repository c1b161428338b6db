/* The tiered expert provider: device tier (expert slots in the compute
 * backend's format), host tier (raw stored records, NUMA-bound and pinned when
 * a hook is given), lowest tier the packed store on NVMe (io_uring, O_DIRECT)
 * or the model's safetensors files (mmap).  Residency and eviction decisions
 * are made by the cache manager (cache.h), the same code `moeflow sim` runs;
 * bytes move on a worker thread that overlaps the engine's compute.
 *
 * CPU build: the device tier is a bounded arena in RAM holding experts
 * converted to F32 (provider.h's format); the "host -> device copy" is that
 * conversion, so the three-tier path runs without a GPU. */
#ifndef MOE_TIERED_H
#define MOE_TIERED_H

#include "policy.h"
#include "provider.h"
#include "reader.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hooks the CUDA backend sets; all optional. */
struct moe_offload_hooks {
    void *ud;
    /* Pin host-tier memory for DMA (cudaHostRegister); return 0 on success. */
    int (*host_register)(void *ud, void *p, size_t len);
    void (*host_unregister)(void *ud, void *p);
    /* Device tier in accelerator memory.  When dev_alloc is set, the device
     * tier is one dev_alloc(slots x slot bytes) buffer (NULL = out of memory)
     * whose slots hold gate|up|down in dev_dtype (F32, the stored dtype, or
     * BF16 for FP8 records), and the transfer thread fills a slot with
     * dev_upload(dst, h_src, bytes), which must return only once the copy has
     * completed (use a copy stream of its own: it runs concurrently with the
     * engine's compute).  h_src is the host-tier record (pinned) when dev_dtype
     * is the stored dtype, else a host staging buffer in dev_dtype.  Without dev_alloc the device tier is a RAM
     * arena of F32 experts (CPU backend). */
    void *(*dev_alloc)(void *ud, size_t bytes);
    void (*dev_free)(void *ud, void *p);
    enum moe_status (*dev_upload)(void *ud, void *dst, const void *h_src, size_t bytes);
    enum moe_dtype dev_dtype;
};

struct moe_tiered_params {
    const char *store_path;       /* packed store (NVMe tier); NULL: the model's safetensors (mmap) */
    int dev_slots;                /* device tier: expert slots, >= top_k */
    int host_slots;               /* host tier: raw records, >= 1 */
    enum moe_policy_kind policy;  /* device tier policy; the host tier is LRU */
    const int *future;            /* Belady: every demand access to come (keys layer*E+e), */
    size_t n_future;              /*   in order; ignored by the other policies */
    int numa_node;                /* host tier NUMA node when numa_explicit; otherwise (and when
                                     -1) the node nearest the calling thread's CPU */
    struct moe_reader_params io;  /* queue depth, forced pread fallback */
    struct moe_offload_hooks hooks;
    bool numa_explicit;           /* bind the host tier to numa_node (e.g. the GPU's node) */
    const int *dev_layer_quota;   /* [n_layers] most device slots per layer, or NULL: one pool
                                     shared by all layers; max_pinned is then the smallest MoE
                                     layer's quota */
    bool fp8_records;             /* FP8 experts: the device tier holds and hands out their records as
                                     stored (dtype F8_E4M3, gate | up | down parts as in the store),
                                     for a GPU tier above that turns them into BF16 itself; without
                                     hooks only */
};

/* Per-tier counters. */
struct moe_tier_stats {
    uint64_t hits, misses;        /* demand accesses served from / not from this tier */
    uint64_t bytes;               /* bytes moved into this tier */
    uint64_t evictions;
    uint64_t prefetches;          /* loads started by prefetch */
    uint64_t prefetch_hits;       /* demand hits on prefetched experts */
    double stall_s;               /* seconds acquire waited on this tier's transfers */
};

struct moe_offload_stats {
    struct moe_tier_stats device; /* device slots: bytes = bytes written into slots */
    struct moe_tier_stats host;   /* host pool: bytes = the experts' bytes read from the store (record_bytes
                                     each, not the record_stride the aligned read fetches) / safetensors; a hit
                                     is a load whose record was in host memory and whole (one whose
                                     last read failed is read again: a miss) */
    uint64_t disk_reads;          /* records read from the lowest tier */
    uint64_t fallbacks;           /* 1 when the reader fell back to buffered pread */
    uint64_t checksum_failures;   /* records that failed their xxh3 check */
    uint64_t io_continuations;    /* short reads continued */
    int dev_slots, host_slots;
    uint64_t dev_bytes, host_bytes; /* memory held by each tier */
    bool io_uring, direct, registered; /* how the store is read */
    bool numa_bound, host_pinned;
    bool from_store;              /* lowest tier is the packed store */
    /* Occupancy now (gauges, unlike the totals above).  Under --backend cuda
     * these describe the tiered provider below the GPU tier (its device tier
     * only stages). */
    int dev_pinned;               /* device-tier experts pinned: acquired, not yet released */
    int dev_resident;             /* device slots holding an expert (loaded or loading) */
    int host_pinned_records;      /* host-tier records pinned by an acquire */
    int host_resident;            /* host slots holding a record */
    int transfers_in_flight;      /* loads queued for or running on the transfer thread */
};

struct moe_provider *moe_provider_tiered_create(const struct moe_model *m,
                                                const struct moe_tiered_params *p);
/* False when p is not a tiered provider. */
bool moe_provider_tiered_stats(const struct moe_provider *p, struct moe_offload_stats *out);
/* Wait until the transfer thread has finished every load queued so far (prefetches no acquire
 * waited for included), so that stats taken next count the read of every host miss (disk reads =
 * host misses) and the upload of every load still current.  No-op when p is not a tiered provider. */
void moe_provider_tiered_drain(const struct moe_provider *p);
/* Bytes one expert takes in the RAM device tier (BF16 when stored so, else F32) and in the host
 * tier (record stride). */
uint64_t moe_tiered_dev_expert_bytes(const struct moe_model *m);
uint64_t moe_tiered_host_expert_bytes(const struct moe_model *m);

#ifdef __cplusplus
}
#endif
#endif
