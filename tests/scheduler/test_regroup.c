/* Token regrouping plan: recovers clusters of identical paths, never does
 * worse than the FCFS cut on them, keeps the FCFS micro-batch sizes, and is a
 * permutation. */
#include "scheduler/regroup.h"
#include "../test_util.h"

#include <stdint.h>
#include <stdlib.h>

#define NL 3
#define NE 96  /* two words per layer */
#define W 2

static void set(uint64_t *p, int l, int e) { p[l * W + e / 64] |= 1ull << (e % 64); }

int main(void)
{
    struct moe_regroup_shape sh = { NL, NE, W };
    enum { N = 30, MB = 8 };
    static uint64_t paths[N][NL * W];
    int order[N], fcfs[N];
    /* 4 clusters (paths identical within a cluster), items interleaved */
    for (int i = 0; i < N; i++) {
        int c = (i * 7) % 4;
        for (int l = 0; l < NL; l++)
            for (int j = 0; j < 4; j++)
                set(paths[i], l, c * 24 + 5 * j + l);
        fcfs[i] = i;
    }
    REQUIRE(moe_regroup_plan(&sh, N, &paths[0][0], MB, NULL, order), "plan failed");
    int seen[N] = { 0 };
    for (int i = 0; i < N; i++) {
        REQUIRE(order[i] >= 0 && order[i] < N, "order[%d] = %d", i, order[i]);
        seen[order[i]]++;
    }
    for (int i = 0; i < N; i++)
        CHECK(seen[i] == 1, "item %d appears %d times", i, seen[i]);
    int ng = moe_regroup_count(N, MB), tot_plan = 0, tot_fcfs = 0;
    CHECK(ng == 4, "micro-batches %d", ng);
    for (int g = 0, at = 0; g < ng; g++) {
        int sz = moe_regroup_size(N, MB, g);
        tot_plan += moe_regroup_union_size(&sh, &paths[0][0], order + at, sz);
        tot_fcfs += moe_regroup_union_size(&sh, &paths[0][0], fcfs + at, sz);
        at += sz;
    }
    /* cluster sizes 8,8,7,7: the best cut has at most 2 clusters in any micro-batch */
    printf("distinct experts summed over micro-batches: fcfs %d regroup %d\n", tot_fcfs, tot_plan);
    CHECK(tot_plan < tot_fcfs, "regroup %d not below fcfs %d", tot_plan, tot_fcfs);
    CHECK(tot_plan <= 12 * 6, "regroup %d: more than the %d of the best cut", tot_plan, 12 * 6);

    /* ordering: with prev equal to the path of a whole cluster (8 items, one
     * full micro-batch in the best cut), the first micro-batch is that cluster */
    for (int pv = 0; pv < 2; pv++) {
        REQUIRE(moe_regroup_plan(&sh, N, &paths[0][0], MB, paths[pv], order), "plan failed");
        int c = (pv * 7) % 4, first_has = 0;
        for (int i = 0; i < MB; i++)
            first_has += (order[i] * 7) % 4 == c;
        CHECK(first_has == MB, "prev = item %d: first micro-batch holds %d items of its cluster", pv, first_has);
    }

    /* random paths: never worse than fcfs */
    uint64_t x = 99;
    for (int trial = 0; trial < 20; trial++) {
        static uint64_t rp[N][NL * W];
        memset(rp, 0, sizeof(rp));
        for (int i = 0; i < N; i++)
            for (int l = 0; l < NL; l++)
                for (int j = 0; j < 4; j++) {
                    x = x * 6364136223846793005ull + 1442695040888963407ull;
                    set(rp[i], l, (int)((x >> 33) % NE));
                }
        REQUIRE(moe_regroup_plan(&sh, N, &rp[0][0], MB, NULL, order), "plan failed");
        int a = 0, b = 0;
        for (int g = 0, at = 0; g < ng; g++) {
            int sz = moe_regroup_size(N, MB, g);
            a += moe_regroup_union_size(&sh, &rp[0][0], order + at, sz);
            b += moe_regroup_union_size(&sh, &rp[0][0], fcfs + at, sz);
            at += sz;
        }
        CHECK(a <= b, "trial %d: regroup %d > fcfs %d", trial, a, b);
    }
    /* rolling selection: owed items first, then the items sharing most with them */
    {
        double credit[N];
        for (int i = 0; i < N; i++)
            credit[i] = 1.0;
        credit[5] = 3.5;  /* 2.5 tokens behind: owed with lag 2 */
        credit[6] = 0.2;  /* ahead, but within lead 1 */
        credit[10] = -0.5; /* 1.5 tokens ahead: not chosen while others can run */
        int sel[N];
        int m = moe_regroup_select(&sh, N, &paths[0][0], credit, MB, 2.0, 1.0, NULL, sel);
        CHECK(m == MB && sel[0] == 5, "first chosen %d of %d, want the owed item 5", sel[0], m);
        int c5 = (5 * 7) % 4, same = 0;
        for (int j = 0; j < m; j++) {
            same += (sel[j] * 7) % 4 == c5;
            CHECK(sel[j] != 10, "item 10 (too far ahead) chosen");
        }
        CHECK(same == MB, "%d of %d chosen share item 5's cluster (it has 8 items)", same, m);
        /* nothing owed: start from the item sharing most with prev */
        credit[5] = 1.0;
        m = moe_regroup_select(&sh, N, &paths[0][0], credit, 4, 2.0, 1.0, paths[2], sel);
        CHECK(m == 4 && (sel[0] * 7) % 4 == (2 * 7) % 4, "seed %d not in prev's cluster", sel[0]);
        /* fewer eligible than size: the rest by credit, never more than n */
        m = moe_regroup_select(&sh, 3, &paths[0][0], credit, 8, 2.0, 1.0, NULL, sel);
        CHECK(m == 3, "selected %d of 3 items", m);
    }
    return t_result("test_regroup");
}
