/* Offload options, provider factory and stats reporting (see runtime.h). */
#include "runtime.h"

#include "trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void moe_offload_opts_init(struct moe_offload_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->policy = MOE_POLICY_LRU;
}

static int parse_count(const char *flag, const char *arg, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < lo || v > hi) {
        moe_errorf(MOE_EINVAL, "--%s '%s' must be an integer in [%ld, %ld]", flag, arg, lo, hi);
        return -1;
    }
    *out = v;
    return 1;
}

/* Bytes with an optional K/M/G/T suffix (powers of 1024). */
static int parse_bytes(const char *flag, const char *arg, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*arg == '-') goto bad;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || end == arg) goto bad;
    uint64_t mul = 1;
    switch (*end) {
    case 'K': case 'k': mul = 1ull << 10; end++; break;
    case 'M': case 'm': mul = 1ull << 20; end++; break;
    case 'G': case 'g': mul = 1ull << 30; end++; break;
    case 'T': case 't': mul = 1ull << 40; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B') end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
    if (*end || v == 0 || !moe_mul_u64(v, mul, out)) goto bad;
    return 1;
bad:
    moe_errorf(MOE_EINVAL, "--%s '%s' must be a byte count >= 1 (suffix K, M, G or T allowed)",
               flag, arg);
    return -1;
}

int moe_offload_opts_parse(struct moe_offload_opts *o, int opt, const char *arg)
{
    long v;
    int r;
    switch (opt) {
    case MOE_OPT_STORE: o->store = arg; return 1;
    case MOE_OPT_GPU_EXPERTS:
        if ((r = parse_count("gpu-experts", arg, 1, 1 << 24, &v)) > 0) o->gpu_experts = (int)v;
        return r;
    case MOE_OPT_GPU_BYTES: return parse_bytes("gpu-cache-bytes", arg, &o->gpu_cache_bytes);
    case MOE_OPT_HOST_EXPERTS:
        if ((r = parse_count("host-experts", arg, 1, 1 << 24, &v)) > 0) o->host_experts = (int)v;
        return r;
    case MOE_OPT_HOST_BYTES: return parse_bytes("host-cache-bytes", arg, &o->host_cache_bytes);
    case MOE_OPT_POLICY:
        if (!moe_policy_parse(arg, &o->policy)) {
            moe_errorf(MOE_EINVAL, "--policy '%s' unknown (use lru, lfu or belady)", arg);
            return -1;
        }
        return 1;
    case MOE_OPT_QUEUE_DEPTH:
        if ((r = parse_count("queue-depth", arg, 1, 4096, &v)) > 0) o->queue_depth = (int)v;
        return r;
    case MOE_OPT_NO_IO_URING: o->no_io_uring = true; return 1;
    case MOE_OPT_STATS: o->stats = true; return 1;
    case MOE_OPT_STATS_JSON: o->stats_json = arg; return 1;
    case MOE_OPT_BELADY_TRACE: o->belady_trace = arg; return 1;
    default: return 0;
    }
}

bool moe_offload_opts_tiered(const struct moe_offload_opts *o)
{
    return o->store || o->gpu_experts || o->gpu_cache_bytes || o->host_experts ||
           o->host_cache_bytes || o->policy != MOE_POLICY_LRU || o->no_io_uring || o->queue_depth ||
           o->stats || o->stats_json;
}

const char *moe_offload_help(void)
{
    return
        "expert offloading (any of these turns on the tiered expert cache):\n"
        "  --store FILE            packed expert store (moeflow pack) as the NVMe tier; without it\n"
        "                          the lowest tier is the model's safetensors files (mmap)\n"
        "  --gpu-experts N         device-tier expert slots (>= top_k; default: every expert)\n"
        "  --gpu-cache-bytes B     device tier size in bytes instead (K/M/G suffix)\n"
        "  --host-experts N        host-tier (RAM) expert records (default: as many as device slots)\n"
        "  --host-cache-bytes B    host tier size in bytes instead\n"
        "  --policy P              device-tier eviction: lru (default), lfu, belady\n"
        "  --belady-trace F        routing trace of exactly this run (needed by --policy belady)\n"
        "  --queue-depth N         store reads in flight (default 32)\n"
        "  --no-io-uring           read the store with buffered pread instead of io_uring+O_DIRECT\n"
        "  --stats                 print per-tier cache stats to stderr at the end\n"
        "  --stats-json FILE       write them as JSON\n";
}

enum moe_status moe_offload_provider_create(const struct moe_model *m,
                                            const struct moe_offload_opts *o,
                                            struct moe_provider **out)
{
    *out = NULL;
    if (!moe_offload_opts_tiered(o)) return MOE_OK;
    const struct moe_config *c = &m->cfg;
    struct moe_tiered_params tp = {
        .store_path = o->store,
        .policy = o->policy,
        .numa_node = -1,
        .io = { .queue_depth = o->queue_depth, .no_io_uring = o->no_io_uring },
    };
    uint64_t dev_b = moe_tiered_dev_expert_bytes(m), host_b = moe_tiered_host_expert_bytes(m);
    int n_moe = 0;
    for (int l = 0; l < c->n_layers; l++) n_moe += c->is_moe[l];
    if (o->gpu_experts && o->gpu_cache_bytes)
        return moe_errorf(MOE_EINVAL, "give --gpu-experts or --gpu-cache-bytes, not both");
    if (o->host_experts && o->host_cache_bytes)
        return moe_errorf(MOE_EINVAL, "give --host-experts or --host-cache-bytes, not both");
    tp.dev_slots = o->gpu_experts ? o->gpu_experts
                   : o->gpu_cache_bytes ? (int)(o->gpu_cache_bytes / dev_b) : n_moe * c->n_experts;
    if (o->gpu_cache_bytes && o->gpu_cache_bytes / dev_b < (uint64_t)c->top_k)
        return moe_errorf(MOE_EINVAL, "--gpu-cache-bytes %llu holds %llu experts of %llu bytes; "
                          "top_k %d need at least %llu bytes", (unsigned long long)o->gpu_cache_bytes,
                          (unsigned long long)(o->gpu_cache_bytes / dev_b), (unsigned long long)dev_b,
                          c->top_k, (unsigned long long)dev_b * (uint64_t)c->top_k);
    tp.host_slots = o->host_experts ? o->host_experts
                    : o->host_cache_bytes ? (int)(o->host_cache_bytes / host_b) : tp.dev_slots;
    if (o->host_cache_bytes && o->host_cache_bytes < host_b)
        return moe_errorf(MOE_EINVAL, "--host-cache-bytes %llu is below one expert record (%llu "
                          "bytes)", (unsigned long long)o->host_cache_bytes, (unsigned long long)host_b);
    int *future = NULL;
    size_t n_future = 0;
    if (o->policy == MOE_POLICY_BELADY) {
        if (!o->belady_trace)
            return moe_errorf(MOE_EINVAL, "--policy belady needs --belady-trace F.jsonl (the "
                              "routing of this very run, recorded with moeflow trace)");
        struct moe_trace *tr;
        enum moe_status st = moe_trace_load(o->belady_trace, &tr);
        if (st) return st;
        if (tr->info.experts != c->n_experts || tr->info.layers != c->n_layers) {
            moe_trace_free(tr);
            return moe_errorf(MOE_EINVAL, "%s: trace is for %d layers x %d experts, the model has "
                              "%d x %d", o->belady_trace, tr->info.layers, tr->info.experts,
                              c->n_layers, c->n_experts);
        }
        st = moe_trace_keys(tr, &future, &n_future);
        moe_trace_free(tr);
        if (st) return st;
    }
    tp.future = future;
    tp.n_future = n_future;
    *out = moe_provider_tiered_create(m, &tp);
    free(future);
    return *out ? MOE_OK : (moe_last_error()[0] ? MOE_EINVAL : MOE_ENOMEM);
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
    FILE *f = fopen(path, "w");
    if (!f) return moe_errorf(MOE_EIO, "--stats-json %s: cannot create: %s", path, strerror(errno));
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
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0) bad = true;
    return bad ? moe_errorf(MOE_EIO, "--stats-json %s: write failed", path) : MOE_OK;
}

void moe_offload_stats_print(const struct moe_offload_stats *s, FILE *f)
{
    const struct moe_tier_stats *t[2] = { &s->device, &s->host };
    const char *name[2] = { "device", "host" };
    int slots[2] = { s->dev_slots, s->host_slots };
    fprintf(f, "%-8s %6s %10s %10s %8s %14s %10s %9s\n", "tier", "slots", "hits", "misses",
            "hit%", "bytes_moved", "evictions", "stall_s");
    for (int i = 0; i < 2; i++) {
        uint64_t acc = t[i]->hits + t[i]->misses;
        fprintf(f, "%-8s %6d %10llu %10llu %8.2f %14llu %10llu %9.4f\n", name[i], slots[i],
                (unsigned long long)t[i]->hits, (unsigned long long)t[i]->misses,
                acc ? 100.0 * (double)t[i]->hits / (double)acc : 0.0,
                (unsigned long long)t[i]->bytes, (unsigned long long)t[i]->evictions, t[i]->stall_s);
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
    if (!(o->stats || o->stats_json) || !moe_provider_tiered_stats(p, &s)) return MOE_OK;
    if (o->stats) moe_offload_stats_print(&s, stderr);
    return o->stats_json ? moe_offload_stats_write_json(&s, o->stats_json) : MOE_OK;
}
