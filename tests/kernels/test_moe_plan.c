/* moe_moe_plan (kernels/moe_plan.c: the engine's MoE step uses it on either backend) against a
 * reference written here from its contract: experts in ascending id, within an expert the (token,
 * slot) pairs in order; counts, offsets, rows and inv all compared.  Random
 * routings (distinct experts per token as routers give, and repeats), experts left empty, every token
 * on one expert, top_k = experts, one expert, no tokens (nothing written past counts and offsets);
 * refusals: bad sizes (MOE_EINVAL), an id outside 0..E-1 (MOE_ERANGE naming token and slot). */
#include "kernels/moe_plan.h"
#include "tests/test_util.h"

enum { SENTINEL = -7 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static int below(int n) { return (int)(t_xorshift(&rng) % (uint64_t)n); }

/* The plan by its definition: for each expert in turn, scan the pairs in (token, slot) order. */
static void ref_plan(const int *ids, int n, int k, int E, int *counts, int *offsets, int *rows, int *inv)
{
    int r = 0;
    for (int e = 0; e < E; e++) {
        offsets[e] = r;
        counts[e] = 0;
        for (int t = 0; t < n; t++)
            for (int s = 0; s < k; s++)
                if (ids[t * k + s] == e) {
                    rows[r] = t;
                    inv[t * k + s] = r++;
                    counts[e]++;
                }
    }
    offsets[E] = r;
}

static int first_diff(const int *a, const int *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return i;
    return -1;
}

/* Plan ids [n, k] over E experts and compare with the reference; what names the case. */
static void check_plan(const char *what, const int *ids, int n, int k, int E)
{
    int nk = n * k;
    int *buf = malloc(sizeof(int) * (size_t)(2 * (2 * E + 1) + 4 * nk + 2));
    REQUIRE(buf, "out of memory");
    int *counts = buf, *offsets = counts + E, *rows = offsets + E + 1, *inv = rows + nk + 1;
    int *rc = inv + nk + 1, *ro = rc + E, *rr = ro + E + 1, *ri = rr + nk;
    for (int i = 0; i < 2 * (2 * E + 1) + 4 * nk + 2; i++) buf[i] = SENTINEL;
    ref_plan(ids, n, k, E, rc, ro, rr, ri);
    enum moe_status st = moe_moe_plan(ids, n, k, E, counts, offsets, rows, inv);
    CHECK(st == MOE_OK, "%s: plan failed: %s", what, moe_last_error());
    int d;
    if ((d = first_diff(counts, rc, E)) >= 0)
        CHECK(false, "%s: counts[%d] %d, want %d", what, d, counts[d], rc[d]);
    if ((d = first_diff(offsets, ro, E + 1)) >= 0)
        CHECK(false, "%s: offsets[%d] %d, want %d", what, d, offsets[d], ro[d]);
    if ((d = first_diff(rows, rr, nk)) >= 0) CHECK(false, "%s: rows[%d] %d, want %d", what, d, rows[d], rr[d]);
    if ((d = first_diff(inv, ri, nk)) >= 0) CHECK(false, "%s: inv[%d] %d, want %d", what, d, inv[d], ri[d]);
    /* nothing written past the n*k entries of rows and inv */
    CHECK(rows[nk] == SENTINEL && inv[nk] == SENTINEL, "%s: plan wrote past rows or inv", what);
    free(buf);
}

static void random_routing(int *ids, int n, int k, int E, bool distinct)
{
    for (int t = 0; t < n; t++)
        for (int s = 0; s < k; s++) {
            int e;
            bool again;
            do {
                e = below(E);
                again = false;
                for (int p = 0; distinct && p < s; p++) again |= ids[t * k + p] == e;
            } while (again);
            ids[t * k + s] = e;
        }
}

int main(void)
{
    enum { NMAX = 200, KMAX = 16 };
    static int ids[NMAX * KMAX];
    char what[128];

    /* random routings, with and without repeats within a token */
    for (int trial = 0; trial < 300; trial++) {
        int E = 1 + below(64), k = 1 + below(E < KMAX ? E : KMAX), n = below(NMAX + 1);
        bool distinct = trial % 2 == 0;
        random_routing(ids, n, k, E, distinct);
        snprintf(what, sizeof(what), "random %s routing: n %d, top_k %d, experts %d",
                 distinct ? "distinct" : "repeating", n, k, E);
        check_plan(what, ids, n, k, E);
    }

    /* some experts left empty: tokens only on the odd ones of 16 */
    random_routing(ids, 50, 2, 8, true);
    for (int i = 0; i < 100; i++) ids[i] = 2 * ids[i] + 1;
    check_plan("even experts empty", ids, 50, 2, 16);
    /* the first and last experts empty, the middle one alone */
    for (int i = 0; i < 40; i++) ids[i] = 3;
    check_plan("every token on expert 3 of 7, top_k 1", ids, 40, 1, 7);
    /* every token's slot 0 on one expert, the other slot elsewhere */
    for (int t = 0; t < 30; t++) {
        ids[2 * t] = 5;
        ids[2 * t + 1] = below(5);
    }
    check_plan("every token's first slot on expert 5", ids, 30, 2, 6);
    /* top_k = experts: every token on every expert, slots in a shuffled order */
    for (int t = 0; t < 25; t++) {
        for (int s = 0; s < 8; s++) ids[t * 8 + s] = s;
        for (int s = 7; s > 0; s--) {
            int j = below(s + 1), x = ids[t * 8 + s];
            ids[t * 8 + s] = ids[t * 8 + j];
            ids[t * 8 + j] = x;
        }
    }
    check_plan("top_k = experts = 8", ids, 25, 8, 8);
    /* one expert */
    for (int i = 0; i < 9; i++) ids[i] = 0;
    check_plan("one expert", ids, 9, 1, 1);
    /* no tokens: every count and offset 0, rows and inv untouched */
    check_plan("no tokens", ids, 0, 2, 5);

    /* refusals */
    int counts[4], offsets[5], rows[8], inv[8];
    int bad[8] = { 0, 1, 2, 3, 1, 2, 3, 0 };
    CHECK(moe_moe_plan(bad, -1, 2, 4, counts, offsets, rows, inv) == MOE_EINVAL, "n = -1 accepted");
    CHECK(moe_moe_plan(bad, 4, 0, 4, counts, offsets, rows, inv) == MOE_EINVAL, "top_k 0 accepted");
    CHECK(moe_moe_plan(bad, 4, 2, 0, counts, offsets, rows, inv) == MOE_EINVAL, "0 experts accepted");
    CHECK(strstr(moe_last_error(), "experts 0") != NULL, "message: %s", moe_last_error());
    bad[5] = 4;
    CHECK(moe_moe_plan(bad, 4, 2, 4, counts, offsets, rows, inv) == MOE_ERANGE, "expert 4 of 4 accepted");
    CHECK(strstr(moe_last_error(), "token 2 slot 1") && strstr(moe_last_error(), "expert 4"), "message: %s",
          moe_last_error());
    bad[5] = 2;
    bad[0] = -1;
    CHECK(moe_moe_plan(bad, 4, 2, 4, counts, offsets, rows, inv) == MOE_ERANGE, "expert -1 accepted");
    CHECK(strstr(moe_last_error(), "token 0 slot 0") && strstr(moe_last_error(), "0..3"), "message: %s",
          moe_last_error());
    return t_result("test_kernels_moe_plan");
}
