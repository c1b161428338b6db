/* moe_offload_opts_parse's counts (--gpu-experts, --host-experts, --queue-depth): the whole value, base
 * 10, in range, or refused with a message that names the flag, the value and the range; a refused value
 * leaves the option as it was. */
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
    return t_result("test_offload_opts");
}
