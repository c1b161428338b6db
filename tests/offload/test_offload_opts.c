/* moe_offload_opts_parse's counts (--gpu-experts, --host-experts, --queue-depth): the whole value, base
 * 10, in range, or refused with a message that names the flag, the value and the range; a refused value
 * leaves the option as it was.  Its byte counts (--gpu-cache-bytes, --host-cache-bytes, and serve's
 * kv-cache-bytes through moe_offload_parse_bytes): digits, then K, M, G or T (any case, powers of 1024)
 * and "i", "iB" or "B" after it, or "B" alone; >= 1 and no more than 64 bits hold. */
#include "offload/runtime.h"
#include "tests/test_util.h"

struct count_case {
    const char *arg;
    long want; /* the value taken; -1: refused */
};

static void check_count(int opt, const char *flag, long hi, const struct count_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct moe_offload_opts o;
        moe_offload_opts_init(&o);
        moe_error_clear();
        int r = moe_offload_opts_parse(&o, opt, cases[i].arg);
        long got = opt == MOE_OPT_GPU_EXPERTS ? o.gpu_experts : opt == MOE_OPT_HOST_EXPERTS ? o.host_experts
                                                                                             : o.queue_depth;
        if (cases[i].want >= 0) {
            CHECK(r == 1 && got == cases[i].want, "--%s '%s': r %d, value %ld, want %ld", flag, cases[i].arg, r,
                  got, cases[i].want);
            continue;
        }
        char msg[256];
        snprintf(msg, sizeof msg, "--%s '%s' must be an integer in [1, %ld]", flag, cases[i].arg, hi);
        CHECK(r == -1 && got == 0 && moe_last_status() == MOE_EINVAL && !strcmp(moe_last_error(), msg),
              "--%s '%s': r %d, value %ld, message '%s', want '%s'", flag, cases[i].arg, r, got, moe_last_error(),
              msg);
    }
}

struct bytes_case {
    const char *arg;
    uint64_t want; /* the value taken; 0: refused */
};

static void check_bytes(int opt, const char *flag, const struct bytes_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct moe_offload_opts o;
        moe_offload_opts_init(&o);
        moe_error_clear();
        int r = moe_offload_opts_parse(&o, opt, cases[i].arg);
        uint64_t got = opt == MOE_OPT_GPU_BYTES ? o.gpu_cache_bytes : o.host_cache_bytes;
        if (cases[i].want) {
            CHECK(r == 1 && got == cases[i].want, "--%s '%s': r %d, value %llu, want %llu", flag, cases[i].arg, r,
                  (unsigned long long)got, (unsigned long long)cases[i].want);
            continue;
        }
        char msg[256];
        snprintf(msg, sizeof msg, "--%s '%s' must be a byte count >= 1 (suffix K, M, G or T allowed)", flag,
                 cases[i].arg);
        CHECK(r == -1 && got == 0 && moe_last_status() == MOE_EINVAL && !strcmp(moe_last_error(), msg),
              "--%s '%s': r %d, value %llu, message '%s', want '%s'", flag, cases[i].arg, r, (unsigned long long)got,
              moe_last_error(), msg);
    }
}

int main(void)
{
    static const struct count_case experts[] = {
        { "1", 1 },           { "64", 64 },         { "0064", 64 },       { "16777216", 1 << 24 },
        { "0", -1 },          { "-0", -1 },         { "-1", -1 },         { "+5", -1 },
        { " 5", -1 },         { "5 ", -1 },         { "5\n", -1 },        { "", -1 },
        { "16777217", -1 },   { "1.5", -1 },        { ".5", -1 },         { "1e3", -1 },
        { "0x10", -1 },       { "12k", -1 },        { "abc", -1 },        { "99999999999999999999", -1 },
        { "-99999999999999999999", -1 },
    };
    static const struct count_case depth[] = {
        { "1", 1 },   { "32", 32 },  { "4096", 4096 }, { "04096", 4096 }, { "4097", -1 }, { "0", -1 },
        { "-32", -1 }, { "+32", -1 }, { "32x", -1 },   { "3.0", -1 },     { "", -1 },     { "\t1", -1 },
    };
    size_t ne = sizeof experts / sizeof experts[0], nd = sizeof depth / sizeof depth[0];
    check_count(MOE_OPT_GPU_EXPERTS, "gpu-experts", 1L << 24, experts, ne);
    check_count(MOE_OPT_HOST_EXPERTS, "host-experts", 1L << 24, experts, ne);
    check_count(MOE_OPT_QUEUE_DEPTH, "queue-depth", 4096, depth, nd);
    static const struct bytes_case bytes[] = {
        { "1", 1 },
        { "0064", 64 },
        { "1K", 1 << 10 },
        { "1k", 1 << 10 },
        { "1Ki", 1 << 10 },
        { "1KiB", 1 << 10 },
        { "1KB", 1 << 10 },
        { "512M", 512ull << 20 },
        { "64MiB", 64ull << 20 },
        { "3g", 3ull << 30 },
        { "2GB", 2ull << 30 },
        { "4T", 4ull << 40 },
        { "7B", 7 },
        { "16777215T", 16777215ull << 40 },
        { "18446744073709551615", UINT64_MAX },
        /* refused: no byte, a sign or blank, trailing or unknown text, a fraction, hexadecimal, overflow */
        { "0", 0 },
        { "0K", 0 },
        { "00", 0 },
        { "-1", 0 },
        { "-0", 0 },
        { "+1", 0 },
        { "+1K", 0 },
        { " 1", 0 },
        { "\t1K", 0 },
        { "1 ", 0 },
        { "1K ", 0 },
        { "1 K", 0 },
        { "1\n", 0 },
        { "", 0 },
        { "K", 0 },
        { "KiB", 0 },
        { "1.5K", 0 },
        { ".5M", 0 },
        { "1e3", 0 },
        { "0x10", 0 },
        { "1Kb", 0 },
        { "1kib", 0 },
        { "4tib", 0 },
        { "1KiBB", 0 },
        { "1KK", 0 },
        { "1P", 0 },
        { "1bytes", 0 },
        /* "i" (or "iB") names the binary unit it follows: alone it is no unit */
        { "1i", 0 },
        { "1iB", 0 },
        { "64iB", 0 },
        { "99999999999999999999X", 0 },
        { "99999999999999999999 ", 0 },
        { "-18446744073709551615", 0 },
    };
    size_t nb = sizeof bytes / sizeof bytes[0];
    check_bytes(MOE_OPT_GPU_BYTES, "gpu-cache-bytes", bytes, nb);
    check_bytes(MOE_OPT_HOST_BYTES, "host-cache-bytes", bytes, nb);
    /* a size past 64 bits is refused as that, not as no byte count */
    static const char *const big[] = { "16777216T", "18446744073709551616", "99999999999999999999K" };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        uint64_t v = 0;
        char msg[256];
        snprintf(msg, sizeof msg, "--gpu-cache-bytes '%s' is more bytes than 64 bits count (2^64 - 1, 16 EiB): give "
                 "a smaller size", big[i]);
        int r = moe_offload_parse_bytes("gpu-cache-bytes", big[i], &v);
        CHECK(r == -1 && moe_last_status() == MOE_EINVAL && !strcmp(moe_last_error(), msg),
              "--gpu-cache-bytes '%s': r %d, message '%s', want '%s'", big[i], r, moe_last_error(), msg);
    }
    /* serve's kv-cache-bytes takes the same values, named as its own */
    uint64_t kv = 0;
    CHECK(moe_offload_parse_bytes("kv-cache-bytes", "8GiB", &kv) == 1 && kv == 8ull << 30, "kv-cache-bytes 8GiB");
    CHECK(moe_offload_parse_bytes("kv-cache-bytes", "8 GiB", &kv) == -1 &&
              !strcmp(moe_last_error(), "--kv-cache-bytes '8 GiB' must be a byte count >= 1 (suffix K, M, G or T "
                      "allowed)"),
          "kv-cache-bytes '8 GiB': %s", moe_last_error());
    return t_result("test_offload_opts");
}
