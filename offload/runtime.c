/* Offload options, backend and provider factory, stats reporting (see runtime.h). */
#include "runtime.h"

#include "../kernels/backend.h"
#include "trace.h"

#ifdef MOEFLOW_HAVE_CUDA
#include "../kernels/cuda/cuda_backend.h"
#include "cuda_tier.h"
#endif

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void moe_offload_opts_init(struct moe_offload_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->policy = MOE_POLICY_PREDICTED;
}

/* A count in [lo, hi] (moe_parse_long), or -1 with the message. */
static int parse_count(const char *flag, const char *arg, long lo, long hi, long *out)
{
    if (moe_parse_long(arg, lo, hi, out)) return 1;
    moe_errorf(MOE_EINVAL, "--%s '%s' must be an integer in [%ld, %ld]", flag, arg, lo, hi);
    return -1;
}

int moe_offload_parse_bytes(const char *flag, const char *arg, uint64_t *out)
{
    static const char units[] = "KMGT"; /* 2^10, 2^20, 2^30, 2^40 */
    uint64_t v;
    const char *end, *unit;
    /* digits that strtoull cannot hold: as a count that a unit carries past 64 bits */
    bool big = *arg >= '0' && *arg <= '9' && !moe_parse_u64_prefix(arg, &v, &end);
    if (big) {
        v = 1;
        end = arg + strspn(arg, "0123456789");
    } else if (!moe_parse_u64_prefix(arg, &v, &end)) {
        goto bad;
    }
    unsigned shift = 0;
    if (*end && (unit = strchr(units, toupper((unsigned char)*end)))) {
        shift = 10 * (unsigned)(unit - units + 1);
        end++;
        if (*end == 'i') end++; /* Ki, KiB */
    }
    if (*end == 'B') end++;
    if (*end || v == 0) goto bad;
    if (big || !moe_mul_u64(v, (uint64_t)1 << shift, out)) {
        moe_errorf(MOE_EINVAL, "--%s '%s' is more bytes than 64 bits count (2^64 - 1, 16 EiB): give a smaller size",
                   flag, arg);
        return -1;
    }
    return 1;
bad:
    moe_errorf(MOE_EINVAL, "--%s '%s' must be a byte count >= 1 (suffix K, M, G or T allowed)",
               flag, arg);
    return -1;
}

/* An input file's path into *out, or -1 with "FLAG is empty: name the file to read" (a variable left unset). */
static int file_arg(const char *flag, const char *arg, const char **out)
{
    if (!*arg) {
        moe_errorf(MOE_EINVAL, "%s is empty: name the file to read", flag);
        return -1;
    }
    *out = arg;
    return 1;
}

int moe_offload_opts_parse(struct moe_offload_opts *o, int opt, const char *arg)
{
    long v;
    int r;
    switch (opt) {
    case MOE_OPT_STORE: return file_arg("--store", arg, &o->store);
    case MOE_OPT_GPU_EXPERTS:
        if ((r = parse_count("gpu-experts", arg, 1, 1 << 24, &v)) > 0) o->gpu_experts = (int)v;
        return r;
    case MOE_OPT_GPU_BYTES: return moe_offload_parse_bytes("gpu-cache-bytes", arg, &o->gpu_cache_bytes);
    case MOE_OPT_HOST_EXPERTS:
        if ((r = parse_count("host-experts", arg, 1, 1 << 24, &v)) > 0) o->host_experts = (int)v;
        return r;
    case MOE_OPT_HOST_BYTES: return moe_offload_parse_bytes("host-cache-bytes", arg, &o->host_cache_bytes);
    case MOE_OPT_POLICY:
        if (!moe_policy_parse(arg, &o->policy)) {
            moe_errorf(MOE_EINVAL, "--policy '%s' unknown (use predicted, lru, lfu or belady)", arg);
            return -1;
        }
        o->policy_given = true;
        return 1;
    case MOE_OPT_QUEUE_DEPTH:
        if ((r = parse_count("queue-depth", arg, 1, 4096, &v)) > 0) o->queue_depth = (int)v;
        return r;
    case MOE_OPT_NO_IO_URING: o->no_io_uring = true; return 1;
    case MOE_OPT_STATS: o->stats = true; return 1;
    case MOE_OPT_STATS_JSON: o->stats_json = arg; return 1;
    case MOE_OPT_BELADY_TRACE: return file_arg("--belady-trace", arg, &o->belady_trace);
    case MOE_OPT_BACKEND:
        if (!strcmp(arg, "cpu")) {
            o->backend = MOE_COMPUTE_CPU;
        } else if (!strcmp(arg, "cuda")) {
            o->backend = MOE_COMPUTE_CUDA;
        } else {
            moe_errorf(MOE_EINVAL, "--backend '%s' unknown (use cpu or cuda)", arg);
            return -1;
        }
        return 1;
    case MOE_OPT_PREDICTOR:
        if (!*arg) {
            moe_errorf(MOE_EINVAL, "--predictor '' is empty (use none, gate[:D], path[:FILE], history, "
                       "path+gate[:FILE] or auto)");
            return -1;
        }
        o->predictor = arg;
        return 1;
    case MOE_OPT_NO_PREFETCH:
        o->no_prefetch = true;
        return 1;
    default: return 0;
    }
}

enum moe_status moe_offload_opts_check(const struct moe_offload_opts *o)
{
    if (o->gpu_experts && o->gpu_cache_bytes)
        return moe_errorf(MOE_EINVAL, "give --gpu-experts or --gpu-cache-bytes, not both");
    if (o->host_experts && o->host_cache_bytes)
        return moe_errorf(MOE_EINVAL, "give --host-experts or --host-cache-bytes, not both");
    if (o->policy == MOE_POLICY_BELADY && !o->belady_trace)
        return moe_errorf(MOE_EINVAL, "--policy belady needs --belady-trace F.jsonl (the routing of this "
                          "very run, recorded with moeflow trace)");
    if (o->belady_trace && o->policy != MOE_POLICY_BELADY)
        return moe_errorf(MOE_EINVAL, "--belady-trace is read only by --policy belady; add it or drop the trace");
    bool predicts = o->predictor && strcmp(o->predictor, "none");
    if (predicts && o->no_prefetch && o->policy != MOE_POLICY_PREDICTED)
        return moe_errorf(MOE_EINVAL, "--predictor %s with --no-prefetch under --policy %s: that policy uses "
                          "the predictions only to prefetch, so they would not be used; use --policy "
                          "predicted (which ranks evictions with them) or drop one of the two",
                          o->predictor, moe_policy_name(o->policy));
    if (o->policy_given && o->backend != MOE_COMPUTE_CUDA && !moe_offload_opts_tiered(o))
        return moe_errorf(MOE_EINVAL, "--policy %s with every expert resident: nothing is evicted; offload "
                          "experts (--gpu-experts N, --store FILE, ...) or drop it", moe_policy_name(o->policy));
    if ((o->predictor || o->no_prefetch) && o->backend != MOE_COMPUTE_CUDA && !moe_offload_opts_tiered(o))
        return moe_errorf(MOE_EINVAL, "%s with every expert resident: nothing to predict or prefetch; offload "
                          "experts (--gpu-experts N, --store FILE, ...) or drop it",
                          o->predictor ? "--predictor" : "--no-prefetch");
    return MOE_OK;
}

bool moe_offload_opts_tiered(const struct moe_offload_opts *o)
{
    return o->store || o->gpu_experts || o->gpu_cache_bytes || o->host_experts ||
           o->host_cache_bytes || o->no_io_uring || o->queue_depth ||
           o->stats || o->stats_json;
}

#define BACKEND_HELP                                                                              \
    "  --backend B             compute backend: cpu (default) or cuda (the engine on GPU 0, routed\n" \
    "                          experts in a GPU tier over the host tier; needs a build with CUDA\n" \
    "                          and a visible device)\n"

bool moe_offload_have_cuda(void)
{
#ifdef MOEFLOW_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

const char *moe_offload_backend_help(void) { return BACKEND_HELP; }

const char *moe_offload_predictor_spec(const struct moe_offload_opts *o)
{
    if (o->predictor) return o->predictor;
    /* Belady follows its trace; prefetches would put experts in the tier that the trace's
     * decisions do not account for */
    if (o->policy == MOE_POLICY_BELADY) return "none";
    /* with prefetching off only the predicted policy reads predictions (to rank evictions) */
    if (o->no_prefetch && o->policy != MOE_POLICY_PREDICTED) return "none";
    return o->backend == MOE_COMPUTE_CUDA || moe_offload_opts_tiered(o) ? "auto" : "none";
}

const char *moe_offload_predictor_help(void)
{
    return
        "  --predictor SPEC        routing predictor whose predictions prefetch experts in order of\n"
        "                          need and feed --policy predicted: none, gate[:D], path[:FILE],\n"
        "                          history, path+gate[:FILE], auto (path+gate when the model has\n"
        "                          predictor.safetensors, else gate); default auto when experts are\n"
        "                          offloaded (any offload flag or --backend cuda), else none (with\n"
        "                          every expert resident there is nothing to prefetch; with --policy\n"
        "                          belady, which follows its trace, and with --no-prefetch under a\n"
        "                          policy other than predicted, none too)\n"
        "  --no-prefetch           predictions move nothing ahead of need; they only rank the\n"
        "                          device tier's evictions (--policy predicted): fewer transfers\n"
        "                          where the link, not latency, is the limit\n";
}

#define STORE_HELP                                                                                \
    "  --store FILE            packed expert store (moeflow pack) as the NVMe tier; without it\n"      \
    "                          the lowest tier is the model's safetensors files (mmap)\n"
#define BELOW_DEVICE_HELP                                                                         \
    "  --host-experts N        host-tier (RAM) expert records (default: as many as device slots)\n"    \
    "  --host-cache-bytes B    host tier size in bytes instead\n"                                       \
    "  --policy P              device-tier eviction: predicted (default: farthest predicted next\n"     \
    "                          use, from the predictor's hints and the routing seen), lru, lfu,\n"     \
    "                          belady\n"                                                                \
    "  --belady-trace F        routing trace of exactly this run (needed by --policy belady)\n"         \
    "  --queue-depth N         store reads in flight (default 32)\n"                                    \
    "  --no-io-uring           read the store with buffered pread instead of io_uring+O_DIRECT\n"       \
    "  --stats                 print per-tier cache stats to stderr at the end\n"                       \
    "  --stats-json FILE       write them as JSON\n"

const char *moe_offload_help_below_device(void)
{
    return BACKEND_HELP "expert offloading:\n" STORE_HELP BELOW_DEVICE_HELP;
}

const char *moe_offload_help(void)
{
    return
        BACKEND_HELP
        "expert offloading (any of these turns on the tiered expert cache; with --backend cuda\n"
        "the device tier is the GPU's memory):\n"
        STORE_HELP
        "  --gpu-experts N         device-tier expert slots (>= top_k; default: every expert)\n"
        "  --gpu-cache-bytes B     device tier size in bytes instead (K/M/G/T suffix; an expert takes\n"
        "                          its BF16 size when stored in BF16 or FP8, else its F32 size on the\n"
        "                          cpu backend; moeflow info shows it)\n"
        BELOW_DEVICE_HELP;
}
#undef STORE_HELP
#undef BELOW_DEVICE_HELP

/* Tier sizes from the flags and the future of --policy belady (malloc'd
 * keys, caller frees).  dev_b: bytes of one device-tier expert (BF16 as
 * stored or F32 on the CPU backend, a BF16 slot on CUDA), for --gpu-cache-bytes. */
struct tier_plan {
    int dev_slots, host_slots;
    int *future;
    size_t n_future;
};

static enum moe_status plan_tiers(const struct moe_model *m, const struct moe_offload_opts *o, uint64_t dev_b,
                                  struct tier_plan *pl)
{
    const struct moe_config *c = &m->cfg;
    uint64_t host_b = moe_tiered_host_expert_bytes(m);
    int n_moe = moe_config_n_moe(c);
    memset(pl, 0, sizeof(*pl));
    enum moe_status st = moe_offload_opts_check(o);
    if (st) return st;
    /* no expert to size a tier by (host_b is 0): moe_provider_tiered_create refuses such a model */
    if (n_moe == 0) return MOE_OK;
    if (o->gpu_cache_bytes && o->gpu_cache_bytes / dev_b < (uint64_t)c->top_k)
        return moe_errorf(MOE_EINVAL, "--gpu-cache-bytes %llu holds %llu experts of %llu bytes; "
                          "top_k %d need at least %llu bytes", (unsigned long long)o->gpu_cache_bytes,
                          (unsigned long long)(o->gpu_cache_bytes / dev_b), (unsigned long long)dev_b,
                          c->top_k, (unsigned long long)dev_b * (uint64_t)c->top_k);
    if (o->host_cache_bytes && o->host_cache_bytes < host_b)
        return moe_errorf(MOE_EINVAL, "--host-cache-bytes %llu is below one expert record (%llu "
                          "bytes)", (unsigned long long)o->host_cache_bytes, (unsigned long long)host_b);
    uint64_t dev_fit = o->gpu_cache_bytes ? o->gpu_cache_bytes / dev_b : 0;
    uint64_t host_fit = o->host_cache_bytes ? o->host_cache_bytes / host_b : 0;
    pl->dev_slots = o->gpu_experts ? o->gpu_experts
                    : o->gpu_cache_bytes ? (int)(dev_fit < (1u << 24) ? dev_fit : (1u << 24))
                    : n_moe * c->n_experts;
    pl->host_slots = o->host_experts ? o->host_experts
                     : o->host_cache_bytes ? (int)(host_fit < (1u << 24) ? host_fit : (1u << 24))
                     : pl->dev_slots;
    if (o->policy == MOE_POLICY_BELADY) {
        struct moe_trace *tr;
        st = moe_trace_load(o->belady_trace, &tr);
        if (st) return st;
        /* the future of this very run: the model's shape, top_k and MoE layers (every access of a
         * trace of another shape is one the run never makes, and the run's are missing from it) */
        bool same_moe = moe_trace_layers_match(&tr->info, c);
        if (tr->info.experts != c->n_experts || tr->info.layers != c->n_layers || tr->info.top_k != c->top_k ||
            !same_moe) {
            st = moe_errorf(MOE_EINVAL, "%s: trace is for %d layers (%d MoE) x %d experts, top-%d; the model has "
                            "%d (%d MoE) x %d, top-%d%s: record this run's trace with moeflow trace",
                            o->belady_trace, tr->info.layers, tr->info.n_moe, tr->info.experts, tr->info.top_k,
                            c->n_layers, n_moe, c->n_experts, c->top_k,
                            same_moe || tr->info.n_moe != n_moe ? "" : ", other MoE layers");
            moe_trace_free(tr);
            return st;
        }
        st = moe_trace_keys(tr, &pl->future, &pl->n_future);
        moe_trace_free(tr);
        if (st) return st;
    }
    return MOE_OK;
}

/* The status a constructor that returned NULL recorded (after moe_error_clear()), else dflt. */
static enum moe_status failure_status(enum moe_status dflt)
{
    return moe_last_status() != MOE_OK ? moe_last_status() : dflt;
}

enum moe_status moe_offload_provider_create(const struct moe_model *m,
                                            const struct moe_offload_opts *o,
                                            struct moe_provider **out)
{
    *out = NULL;
    if (!moe_offload_opts_tiered(o)) return MOE_OK;
    struct tier_plan pl;
    enum moe_status st = plan_tiers(m, o, moe_tiered_dev_expert_bytes(m), &pl);
    if (st) return st;
    struct moe_tiered_params tp = {
        .store_path = o->store,
        .dev_slots = pl.dev_slots,
        .host_slots = pl.host_slots,
        .policy = o->policy,
        .future = pl.future,
        .n_future = pl.n_future,
        .numa_node = -1,
        .io = { .queue_depth = o->queue_depth, .no_io_uring = o->no_io_uring },
    };
    moe_error_clear();
    *out = moe_provider_tiered_create(m, &tp);
    free(pl.future);
    if (*out) return MOE_OK;
    return failure_status(MOE_ENOMEM); /* EINVAL: sizes; store errors */
}

#ifdef MOEFLOW_HAVE_CUDA
/* The CUDA backend on device 0 into *be; the message of a failure says what to do. */
static enum moe_status cuda_backend_create(struct moe_backend **be)
{
    struct moe_backend_cuda_params bp = { .device = 0 };
    moe_error_clear();
    *be = moe_backend_cuda_create(&bp);
    if (*be) return MOE_OK;
    char msg[1024];
    enum moe_status st = failure_status(MOE_EDEVICE);
    snprintf(msg, sizeof(msg), "%s", moe_last_error());
    if (st == MOE_ENOMEM)
        return moe_errorf(MOE_ENOMEM, "--backend cuda: %s (the GPU tier is not allocated yet: other "
                          "processes hold the device's memory, see nvidia-smi)", msg);
    return moe_errorf(st, "--backend cuda: %s", msg);
}

/* The CUDA backend on device 0 and the GPU tier over the tiered provider; for a
 * model without MoE layers the backend alone (*prov NULL: the engine's own
 * provider, with nothing routed to hold). */
static enum moe_status cuda_runtime_create(const struct moe_model *m, const struct moe_offload_opts *o,
                                           struct moe_backend **be, struct moe_provider **prov)
{
    const struct moe_config *c = &m->cfg;
    struct tier_plan pl;
    enum moe_status st;
    struct moe_provider *lower = NULL;
    if (moe_cuda_device_count() == 0)
        return moe_errorf(MOE_ENOTSUP, "--backend cuda: no CUDA device is visible (driver missing, no "
                          "GPU, or CUDA_VISIBLE_DEVICES empty): run with --backend cpu");
    if (!moe_config_n_moe(c)) return cuda_backend_create(be);
    if ((st = plan_tiers(m, o, moe_provider_cuda_slot_bytes(m), &pl))) return st;
    if ((st = cuda_backend_create(be))) goto fail;
    /* The host side: records read from the store or the safetensors into a
     * host tier; its own (RAM) device tier only stages one expert at a time
     * on the way to the GPU, so top_k slots do.  The host tier is not pinned:
     * the GPU tier copies from its own pinned staging ring, never from it,
     * and page-locking tens of GB would cost seconds at start-up for nothing. */
    struct moe_tiered_params tp = {
        .store_path = o->store,
        .dev_slots = c->top_k,
        .host_slots = pl.host_slots,
        .policy = MOE_POLICY_LRU,
        .numa_node = -1,
        .io = { .queue_depth = o->queue_depth, .no_io_uring = o->no_io_uring },
        .fp8_records = true, /* FP8 experts go up as records, turned into BF16 on the GPU */
    };
    moe_error_clear();
    lower = moe_provider_tiered_create(m, &tp);
    if (!lower) { /* the cause's status (a store it cannot read is no shortage of memory) */
        st = moe_error_prefix(failure_status(MOE_ENOMEM), "--backend cuda: host tier");
        goto fail;
    }
    struct moe_provider_cuda_params pp = {
        .slots = pl.dev_slots,
        .policy = o->policy,
        .future = pl.future,
        .n_future = pl.n_future,
        .fp8_records = true,
    };
    *prov = moe_provider_cuda_stack_create(m, *be, lower, &pp); /* owns lower, even on failure */
    lower = NULL;
    if (!*prov) { /* the tier's status: out of memory, a device error, a size it refuses */
        st = moe_error_prefix(failure_status(MOE_EDEVICE), "--backend cuda");
        goto fail;
    }
    free(pl.future);
    return MOE_OK;
fail:
    moe_provider_destroy(lower);
    moe_backend_destroy(*be);
    *be = NULL;
    free(pl.future);
    return st;
}
#endif

enum moe_status moe_offload_runtime_create(const struct moe_model *m,
                                           const struct moe_offload_opts *o,
                                           struct moe_backend **be, struct moe_provider **prov)
{
    *be = NULL;
    *prov = NULL;
    if (o->backend == MOE_COMPUTE_CPU) return moe_offload_provider_create(m, o, prov);
    /* without MoE layers --backend cuda runs the model with no expert tier: a flag that sizes, feeds or
     * reports one is a usage error, whether or not this build or machine has a device */
    if (!moe_config_n_moe(&m->cfg) && (moe_offload_opts_tiered(o) || o->policy_given || o->belady_trace ||
                                       o->predictor || o->no_prefetch))
        return moe_errorf(MOE_EINVAL, "%s: model has no MoE layer: there are no experts to offload (drop the "
                          "offload flags; --backend cuda alone runs it on the GPU)", m->dir);
#ifdef MOEFLOW_HAVE_CUDA
    return cuda_runtime_create(m, o, be, prov);
#else
    return moe_errorf(MOE_ENOTSUP, "--backend cuda: this build has no CUDA backend: rebuild with -DMOEFLOW_CUDA=ON "
                      "on a machine with nvcc (or use --backend cpu)");
#endif
}

bool moe_offload_backend_poisoned(const struct moe_backend *be)
{
#ifdef MOEFLOW_HAVE_CUDA
    return be && moe_backend_cuda_poisoned(be);
#else
    (void)be;
    return false;
#endif
}

enum moe_status moe_offload_explain(enum moe_status st, const struct moe_backend *be,
                                    const struct moe_provider *prov)
{
#ifdef MOEFLOW_HAVE_CUDA
    if (!be || !moe_backend_cuda_ctx(be)) return st;
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", moe_last_error());
    if (st == MOE_EDEVLOST || moe_backend_cuda_poisoned(be))
        return moe_errorf(MOE_EDEVLOST, "device error: %s; the CUDA context is unusable: restart the "
                          "process (or run with --backend cpu)", msg);
    struct moe_cuda_tier_stats cs;
    if ((st == MOE_ENOMEM || strstr(msg, "allocate") || strstr(msg, "out of memory")) &&
        moe_provider_cuda_stats(prov, &cs)) {
        uint64_t mib = ((uint64_t)cs.slots * cs.slot_bytes) >> 20;
        return moe_errorf(MOE_ENOMEM, "%s (the GPU expert tier already holds %d slots x %llu KiB = "
                          "%llu MiB: lower --gpu-experts to leave room)", msg, cs.slots,
                          (unsigned long long)(cs.slot_bytes >> 10), (unsigned long long)mib);
    }
    return st;
#else
    (void)be;
    (void)prov;
    return st;
#endif
}

bool moe_offload_stats_get(const struct moe_provider *p, struct moe_offload_stats *out)
{
    if (moe_provider_tiered_stats(p, out)) return true;
#ifdef MOEFLOW_HAVE_CUDA
    struct moe_cuda_tier_stats cs;
    const struct moe_provider *lower = moe_provider_cuda_lower(p);
    if (!lower || !moe_provider_cuda_stats(p, &cs) || !moe_provider_tiered_stats(lower, out)) return false;
    /* device = the GPU tier (the tiered provider's own device tier only stages) */
    memset(&out->device, 0, sizeof(out->device));
    out->device.hits = cs.hits;
    out->device.misses = cs.misses;
    out->device.bytes = cs.bytes_h2d;
    out->device.evictions = cs.evictions;
    out->device.prefetches = cs.prefetches;
    out->device.prefetch_hits = cs.prefetch_hits;
    out->dev_slots = cs.slots;
    out->dev_bytes = (uint64_t)cs.slots * cs.slot_bytes;
    /* occupancy of the GPU tier; its copies complete inside acquire/prefetch,
     * so only the staging provider below can have transfers in flight */
    out->dev_pinned = cs.pinned;
    out->dev_resident = cs.resident;
    return true;
#else
    return false;
#endif
}

static void tier_json(FILE *f, const char *name, const struct moe_tier_stats *t)
{
    uint64_t acc = t->hits + t->misses;
    fprintf(f, "\"%s\":{\"hits\":%llu,\"misses\":%llu,\"hit_rate\":%.6f,\"bytes_moved\":%llu,"
            "\"evictions\":%llu,\"prefetches\":%llu,\"prefetch_hits\":%llu,\"stall_s\":%.6f}",
            name, (unsigned long long)t->hits, (unsigned long long)t->misses,
            acc ? (double)t->hits / (double)acc : 0.0, (unsigned long long)t->bytes,
            (unsigned long long)t->evictions, (unsigned long long)t->prefetches,
            (unsigned long long)t->prefetch_hits, t->stall_s);
}

enum moe_status moe_offload_stats_write_json(const struct moe_offload_stats *s, const char *path)
{
    struct moe_out o;
    enum moe_status st = moe_out_open(&o, "--stats-json", path);
    if (st) return st;
    FILE *f = o.f;
    fputc('{', f);
    tier_json(f, "device", &s->device);
    fputc(',', f);
    tier_json(f, "host", &s->host);
    fprintf(f, ",\"disk\":{\"reads\":%llu,\"bytes_moved\":%llu,\"source\":\"%s\",\"io_uring\":%s,"
            "\"direct\":%s,\"registered\":%s,\"continuations\":%llu},"
            "\"fallbacks\":%llu,\"checksum_failures\":%llu,\"device_slots\":%d,\"host_slots\":%d,"
            "\"device_bytes\":%llu,\"host_bytes\":%llu,\"numa_bound\":%s,\"host_pinned\":%s}\n",
            (unsigned long long)s->disk_reads, (unsigned long long)s->host.bytes,
            s->from_store ? "store" : "safetensors", s->io_uring ? "true" : "false",
            s->direct ? "true" : "false", s->registered ? "true" : "false",
            (unsigned long long)s->io_continuations, (unsigned long long)s->fallbacks,
            (unsigned long long)s->checksum_failures, s->dev_slots, s->host_slots,
            (unsigned long long)s->dev_bytes, (unsigned long long)s->host_bytes,
            s->numa_bound ? "true" : "false", s->host_pinned ? "true" : "false");
    return moe_out_close(&o, "--stats-json");
}

void moe_offload_stats_print(const struct moe_offload_stats *s, FILE *f)
{
    const struct moe_tier_stats *t[2] = { &s->device, &s->host };
    const char *name[2] = { "device", "host" };
    int slots[2] = { s->dev_slots, s->host_slots };
    fprintf(f, "%-8s %6s %10s %10s %8s %14s %10s %10s %9s\n", "tier", "slots", "hits", "misses",
            "hit%", "bytes_moved", "evictions", "prefetches", "stall_s");
    for (int i = 0; i < 2; i++) {
        uint64_t acc = t[i]->hits + t[i]->misses;
        fprintf(f, "%-8s %6d %10llu %10llu %8.2f %14llu %10llu %10llu %9.4f\n", name[i], slots[i],
                (unsigned long long)t[i]->hits, (unsigned long long)t[i]->misses,
                acc ? 100.0 * (double)t[i]->hits / (double)acc : 0.0,
                (unsigned long long)t[i]->bytes, (unsigned long long)t[i]->evictions,
                (unsigned long long)t[i]->prefetches, t[i]->stall_s);
    }
    fprintf(f, "%-8s reads %llu from %s (%s%s%s), fallbacks %llu, checksum failures %llu\n", "disk",
            (unsigned long long)s->disk_reads, s->from_store ? "store" : "safetensors mmap",
            s->io_uring ? "io_uring" : "pread", s->direct ? ", O_DIRECT" : "",
            s->registered ? ", registered buffers" : "", (unsigned long long)s->fallbacks,
            (unsigned long long)s->checksum_failures);
}

enum moe_status moe_offload_report(const struct moe_provider *p, const struct moe_offload_opts *o)
{
    struct moe_offload_stats s;
    if (!(o->stats || o->stats_json)) return MOE_OK;
    /* the loads still queued (prefetches for a token the run did not make) finish first: their host
     * misses are counted, their reads and bytes would be missing, or not, as the thread ran */
    moe_provider_tiered_drain(p);
#ifdef MOEFLOW_HAVE_CUDA
    moe_provider_tiered_drain(moe_provider_cuda_lower(p)); /* the GPU tier's copies end in its calls */
#endif
    if (!moe_offload_stats_get(p, &s)) return MOE_OK;
    if (o->stats) moe_offload_stats_print(&s, stderr);
    return o->stats_json ? moe_offload_stats_write_json(&s, o->stats_json) : MOE_OK;
}
