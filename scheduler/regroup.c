/* Token regrouping: greedy clustering on routing-path overlap, refined by
 * pairwise swaps, then a greedy chain ordering of the micro-batches. */
#include "regroup.h"

#include <stdlib.h>
#include <string.h>

int moe_regroup_union_size(const struct moe_regroup_shape *sh, const uint64_t *paths,
                           const int *items, int n)
{
    int total = 0, lw = sh->n_moe * sh->words;
    for (int w = 0; w < lw; w++) {
        uint64_t u = 0;
        for (int i = 0; i < n; i++)
            u |= paths[(size_t)items[i] * (size_t)lw + (size_t)w];
        total += __builtin_popcountll(u);
    }
    return total;
}

/* Change in one micro-batch's distinct experts when the path `out` leaves it and
 * `in` joins it; cnt [n_moe * n_experts] counts the members routed to each expert. */
static int swap_delta(const struct moe_regroup_shape *sh, const uint16_t *cnt, const uint64_t *out,
                      const uint64_t *in)
{
    int d = 0;
    for (int l = 0; l < sh->n_moe; l++) {
        for (int w = 0; w < sh->words; w++) {
            size_t at = (size_t)l * (size_t)sh->words + (size_t)w;
            uint64_t x = out[at] | in[at];
            while (x) {
                int b = __builtin_ctzll(x);
                int e = w * 64 + b;
                int c = cnt[(size_t)l * (size_t)sh->n_experts + (size_t)e];
                int c2 = c - (int)((out[at] >> b) & 1u) + (int)((in[at] >> b) & 1u);
                d += (c2 > 0) - (c > 0);
                x &= x - 1;
            }
        }
    }
    return d;
}

static void count_add(const struct moe_regroup_shape *sh, uint16_t *cnt, const uint64_t *p, int sign)
{
    for (int l = 0; l < sh->n_moe; l++)
        for (int w = 0; w < sh->words; w++) {
            uint64_t x = p[(size_t)l * (size_t)sh->words + (size_t)w];
            while (x) {
                int e = w * 64 + __builtin_ctzll(x);
                cnt[(size_t)l * (size_t)sh->n_experts + (size_t)e] =
                    (uint16_t)(cnt[(size_t)l * (size_t)sh->n_experts + (size_t)e] + sign);
                x &= x - 1;
            }
        }
}

/* Overlap (shared experts summed over layers) of path p with a union bitset u. */
static int overlap(int lw, const uint64_t *p, const uint64_t *u)
{
    int o = 0;
    for (int w = 0; w < lw; w++)
        o += __builtin_popcountll(p[w] & u[w]);
    return o;
}

/* Path p's experts added to the union bitset u. */
static void add_path(int lw, const uint64_t *p, uint64_t *u)
{
    for (int w = 0; w < lw; w++)
        u[w] |= p[w];
}

bool moe_regroup_plan(const struct moe_regroup_shape *sh, int n, const uint64_t *paths, int mb,
                      const uint64_t *prev, int *order)
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    int ng = moe_regroup_count(n, mb);
    if (ng <= 1 && !prev)
        return true;
    size_t lw = (size_t)sh->n_moe * (size_t)sh->words;
    size_t cnt_len = (size_t)sh->n_moe * (size_t)sh->n_experts;
    int *grp = malloc(sizeof(int) * (size_t)n);           /* item -> micro-batch */
    int *start = malloc(sizeof(int) * (size_t)(ng + 1));  /* micro-batch -> first slot in members */
    int *members = malloc(sizeof(int) * (size_t)n);
    uint16_t *cnt = calloc((size_t)ng * cnt_len, sizeof(uint16_t));
    uint64_t *uni = calloc((size_t)ng * lw, sizeof(uint64_t));
    int *chain = malloc(sizeof(int) * (size_t)ng);
    bool *used = calloc((size_t)(n > ng ? n : ng), sizeof(bool));
    bool ok = grp && start && members && cnt && uni && chain && used;
    if (!ok)
        goto out;

    /* Greedy construction: each micro-batch starts from the oldest unassigned
     * item and takes, one by one, the item that shares most experts with it. */
    start[0] = 0;
    for (int g = 0; g < ng; g++) {
        int size = moe_regroup_size(n, mb, g);
        uint64_t *u = uni + (size_t)g * lw;
        start[g + 1] = start[g] + size;
        for (int m = 0; m < size; m++) {
            int best = -1, best_o = -1;
            for (int i = 0; i < n; i++) {
                if (used[i])
                    continue;
                int o = m == 0 ? 0 : overlap((int)lw, paths + (size_t)i * lw, u);
                if (o > best_o) {
                    best_o = o;
                    best = i;
                }
                if (m == 0)
                    break;
            }
            used[best] = true;
            grp[best] = g;
            members[start[g] + m] = best;
            add_path((int)lw, paths + (size_t)best * lw, u);
            count_add(sh, cnt + (size_t)g * cnt_len, paths + (size_t)best * lw, 1);
        }
    }

    /* Local search: swap two items of different micro-batches while that
     * lowers the total of distinct experts. */
    for (int pass = 0; pass < 16; pass++) {
        bool improved = false;
        for (int i = 0; i < n; i++) {
            for (int j = i + 1; j < n; j++) {
                int a = grp[i], b = grp[j];
                if (a == b)
                    continue;
                const uint64_t *pi = paths + (size_t)i * lw, *pj = paths + (size_t)j * lw;
                int d = swap_delta(sh, cnt + (size_t)a * cnt_len, pi, pj) +
                        swap_delta(sh, cnt + (size_t)b * cnt_len, pj, pi);
                if (d >= 0)
                    continue;
                count_add(sh, cnt + (size_t)a * cnt_len, pi, -1);
                count_add(sh, cnt + (size_t)a * cnt_len, pj, 1);
                count_add(sh, cnt + (size_t)b * cnt_len, pj, -1);
                count_add(sh, cnt + (size_t)b * cnt_len, pi, 1);
                grp[i] = b;
                grp[j] = a;
                improved = true;
            }
        }
        if (!improved)
            break;
    }

    /* Members and unions from the final assignment (items in index order). */
    memset(uni, 0, (size_t)ng * lw * sizeof(uint64_t));
    {
        int *fill = chain; /* reused as a per-group fill cursor */
        for (int g = 0; g < ng; g++)
            fill[g] = start[g];
        for (int i = 0; i < n; i++) {
            int g = grp[i];
            members[fill[g]++] = i;
            add_path((int)lw, paths + (size_t)i * lw, uni + (size_t)g * lw);
        }
    }

    /* Order: start from the micro-batch closest to prev, then chain by overlap. */
    memset(used, 0, sizeof(bool) * (size_t)ng);
    const uint64_t *cur = prev;
    int short_last = moe_regroup_size(n, mb, ng - 1) < mb ? ng - 1 : -1;
    for (int c = 0; c < ng; c++) {
        int best = -1, best_o = -1;
        for (int g = 0; g < ng; g++) {
            if (used[g] || (g == short_last && c < ng - 1))
                continue;
            int o = cur ? overlap((int)lw, uni + (size_t)g * lw, cur) : 0;
            if (o > best_o) {
                best_o = o;
                best = g;
            }
        }
        used[best] = true;
        chain[c] = best;
        cur = uni + (size_t)best * lw;
    }
    /* A short micro-batch stays last, so cutting order by the FCFS sizes
     * gives back exactly these micro-batches. */
    {
        int at = 0;
        for (int c = 0; c < ng; c++) {
            int g = chain[c];
            for (int m = start[g]; m < start[g + 1]; m++)
                order[at++] = members[m];
        }
    }
out:
    free(grp);
    free(start);
    free(members);
    free(cnt);
    free(uni);
    free(chain);
    free(used);
    return ok;
}

/* Gain of adding path p to a micro-batch with union u: experts shared minus
 * experts it adds. */
static int fill_gain(int lw, const uint64_t *p, const uint64_t *u)
{
    int g = 0;
    for (int w = 0; w < lw; w++)
        g += __builtin_popcountll(p[w] & u[w]) - __builtin_popcountll(p[w] & ~u[w]);
    return g;
}

int moe_regroup_select(const struct moe_regroup_shape *sh, int n, const uint64_t *paths, const double *credit,
                       int size, double lag, double lead, const uint64_t *prev, int *out)
{
    if (size > n)
        size = n;
    if (size <= 0)
        return 0;
    int lw = sh->n_moe * sh->words;
    bool *taken = calloc((size_t)n, sizeof(bool));
    uint64_t *u = calloc((size_t)(lw > 0 ? lw : 1), sizeof(uint64_t));
    if (!taken || !u) {
        /* no scratch: the most-owed items, most owed first (out[0..m) marks those taken) */
        free(taken);
        free(u);
        int m = 0;
        for (; m < size; m++) {
            int best = -1;
            for (int i = 0; i < n; i++) {
                bool in = false;
                for (int j = 0; j < m && !in; j++)
                    in = out[j] == i;
                if (!in && (best < 0 || credit[i] > credit[best]))
                    best = i;
            }
            out[m] = best;
        }
        return m;
    }
    int m = 0;
    /* owed: credit >= 1 + lag, most owed first */
    while (m < size) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!taken[i] && credit[i] >= 1.0 + lag && (best < 0 || credit[i] > credit[best]))
                best = i;
        if (best < 0)
            break;
        taken[best] = true;
        out[m++] = best;
        add_path(lw, paths + (size_t)best * (size_t)lw, u);
    }
    /* seed when nothing is owed: the most-owed item; among equals (new
     * sequences all start owed one token), the one sharing most with prev */
    if (m == 0) {
        int best = -1, best_o = -1;
        for (int i = 0; i < n; i++) {
            if (credit[i] < 1.0 - lead)
                continue;
            int o = prev ? overlap(lw, paths + (size_t)i * (size_t)lw, prev) : 0;
            if (best < 0 || credit[i] > credit[best] || (credit[i] == credit[best] && o > best_o)) {
                best = i;
                best_o = o;
            }
        }
        if (best >= 0) {
            taken[best] = true;
            out[m++] = best;
            add_path(lw, paths + (size_t)best * (size_t)lw, u);
        }
    }
    /* greedy fill among items not too far ahead */
    while (m < size) {
        int best = -1, best_g = 0;
        for (int i = 0; i < n; i++) {
            if (taken[i] || credit[i] < 1.0 - lead)
                continue;
            int g = fill_gain(lw, paths + (size_t)i * (size_t)lw, u);
            if (best < 0 || g > best_g || (g == best_g && credit[i] > credit[best])) {
                best = i;
                best_g = g;
            }
        }
        if (best < 0)
            break;
        taken[best] = true;
        out[m++] = best;
        add_path(lw, paths + (size_t)best * (size_t)lw, u);
    }
    /* still short: the most-owed of the rest */
    while (m < size) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!taken[i] && (best < 0 || credit[i] > credit[best]))
                best = i;
        taken[best] = true;
        out[m++] = best;
    }
    free(taken);
    free(u);
    return m;
}
