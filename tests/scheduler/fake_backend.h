/* A fake engine for scheduler tests: deterministic "logits" that depend only
 * on a sequence's own tokens (so any batching must give the same tokens), a
 * routing that depends only on the token (4 clusters of 8 experts), strict
 * checks of slots and positions, injectable failures, and freed slots that
 * keep their rows for the prefix cache (fb_claim). */
#ifndef TEST_FAKE_BACKEND_H
#define TEST_FAKE_BACKEND_H

#include "scheduler/scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FB_VOCAB 64
#define FB_LAYERS 4
#define FB_EXPERTS 32
#define FB_TOPK 4
#define FB_SEQS 32
#define FB_CTX 256

struct fake_backend {
    bool used[FB_SEQS];
    int len[FB_SEQS];
    int toks[FB_SEQS][FB_CTX];
    bool is_moe[FB_LAYERS];
    int n_used, max_used;         /* slots in use now / at most */
    int forwards, fail_at;        /* fail_at: forward number that fails (0 = never) */
    enum moe_status fail_status;  /* ... with this status (0: MOE_EIO) */
    bool fail_poisons;            /* ... and poisons the device: lost() says so from then on, and every
                                     later forward fails with that status too */
    bool poisoned;
    int fail_seq, fail_from;      /* every forward from number fail_from on that has a row of slot
                                     fail_seq - 1 fails (0 = never) ... */
    enum moe_status seq_status;   /* ... with this status (0: MOE_ECHECKSUM, a bad expert record) */
    int fail_routed;              /* a forward that fails reports the routing of its first fail_routed
                                     layers first, as the engine reports a layer's routing before it
                                     reads the layer's experts (0: it fails before any) */
    int first_seq_fail;           /* the first forward that failed so (0 = none yet) */
    int max_rows;                 /* most rows seen in one forward */
    int errors;                   /* protocol violations seen (bad slot, position, ...) */
    char err[256];
    double delay_s;               /* sleep in each forward (threaded tests) */
};

static int fb_alloc(void *self)
{
    struct fake_backend *f = self;
    for (int i = 0; i < FB_SEQS; i++)
        if (!f->used[i]) {
            f->used[i] = true;
            f->len[i] = 0;
            if (++f->n_used > f->max_used)
                f->max_used = f->n_used;
            return i;
        }
    return -1;
}

static void fb_free(void *self, int seq)
{
    struct fake_backend *f = self;
    if (seq < 0 || seq >= FB_SEQS || !f->used[seq]) {
        f->errors++;
        snprintf(f->err, sizeof(f->err), "free of unused slot %d", seq);
        return;
    }
    f->used[seq] = false;
    f->n_used--;
}

/* seq_claim (prefix_cache; not in fb_backend's ops unless a test sets it): free slot seq, keeping the
 * first keep of the tokens its last sequence left (no more than it holds). */
static inline int fb_claim(void *self, int seq, int keep)
{
    struct fake_backend *f = self;
    if (seq < 0 || seq >= FB_SEQS || f->used[seq] || keep < 0 || keep > f->len[seq])
        return -1;
    f->used[seq] = true;
    f->len[seq] = keep;
    if (++f->n_used > f->max_used)
        f->max_used = f->n_used;
    return seq;
}

/* seq_fork (prefix_cache; set by a test as fb_claim is): copy the first n tokens slot src holds into the
 * claimed, empty slot dst. */
static inline enum moe_status fb_fork(void *self, int dst, int src, int n)
{
    struct fake_backend *f = self;
    if (dst < 0 || dst >= FB_SEQS || src < 0 || src >= FB_SEQS || !f->used[dst] || !f->used[src] || f->len[dst] ||
        n < 0 || n > f->len[src]) {
        f->errors++;
        snprintf(f->err, sizeof(f->err), "fork of %d tokens from slot %d (len %d) into slot %d", n, src,
                 src >= 0 && src < FB_SEQS ? f->len[src] : -1, dst);
        return MOE_EINVAL;
    }
    memcpy(f->toks[dst], f->toks[src], sizeof(int) * (size_t)n);
    f->len[dst] = n;
    return MOE_OK;
}

/* Next token of a sequence: a hash of all its tokens. */
static int fb_next(const int *t, int n)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++)
        h = (h ^ (uint64_t)t[i]) * 1099511628211ull;
    return (int)((h >> 17) % FB_VOCAB);
}

/* A token is routed to 4 of the 8 experts of its sequence's cluster (the
 * first token of the sequence mod 4), which ones depending on the token:
 * sequences keep to their experts, as real ones partly do. */
static void fb_route_of(int first, int t, int layer, int *ids)
{
    int c = first % 4;
    for (int j = 0; j < FB_TOPK; j++)
        ids[j] = c * 8 + (t / 4 + layer + 2 * j) % 8;
}

static enum moe_status fb_forward(void *self, const struct moe_batch *b, float *logits,
                                  void (*on_route)(void *ud, int layer, int n, const int *ids), void *ud)
{
    struct fake_backend *f = self;
    f->forwards++;
    if (f->delay_s > 0) {
        struct timespec ts = { 0, (long)(f->delay_s * 1e9) };
        nanosleep(&ts, NULL);
    }
    enum moe_status fail = MOE_OK;
    if (f->fail_at && f->forwards == f->fail_at) {
        fail = moe_errorf(f->fail_status ? f->fail_status : MOE_EIO, "fake: injected failure at forward %d",
                          f->forwards);
        f->poisoned = f->fail_poisons;
    } else if (f->poisoned) {
        fail = moe_errorf(f->fail_status ? f->fail_status : MOE_EIO, "fake: forward %d on a poisoned device",
                          f->forwards);
    }
    for (int i = 0; fail == MOE_OK && f->fail_seq && f->forwards >= f->fail_from && i < b->n; i++)
        if (b->seq[i] == f->fail_seq - 1) {
            if (!f->first_seq_fail)
                f->first_seq_fail = f->forwards;
            fail = moe_errorf(f->seq_status ? f->seq_status : MOE_ECHECKSUM,
                              "fake: injected failure of slot %d at forward %d", b->seq[i], f->forwards);
        }
    if (fail != MOE_OK && f->fail_routed <= 0)
        return fail;
    if (fail == MOE_OK && b->n > f->max_rows)
        f->max_rows = b->n;
    int add[FB_SEQS] = { 0 };
    for (int i = 0; i < b->n; i++) {
        int s = b->seq[i];
        if (s < 0 || s >= FB_SEQS || !f->used[s] || b->pos[i] != f->len[s] + add[s] || b->pos[i] >= FB_CTX ||
            b->tokens[i] < 0 || b->tokens[i] >= FB_VOCAB) {
            f->errors++;
            snprintf(f->err, sizeof(f->err), "row %d: slot %d pos %d (len %d) token %d", i, s, b->pos[i],
                     s >= 0 && s < FB_SEQS ? f->len[s] : -1, b->tokens[i]);
            return MOE_EINVAL;
        }
        add[s]++;
    }
    int *ids = malloc(sizeof(int) * (size_t)b->n * FB_TOPK);
    for (int l = 0; l < FB_LAYERS; l++) {
        if (fail != MOE_OK && l == f->fail_routed)
            break;
        for (int i = 0; i < b->n; i++) {
            int s = b->seq[i];
            int first = b->pos[i] == 0 ? b->tokens[i] : f->toks[s][0];
            fb_route_of(first, b->tokens[i], l, ids + i * FB_TOPK);
        }
        on_route(ud, l, b->n, ids);
    }
    free(ids);
    if (fail != MOE_OK)
        return fail;
    int row = 0;
    for (int i = 0; i < b->n; i++) {
        int s = b->seq[i];
        f->toks[s][f->len[s]++] = b->tokens[i];
        if (b->want_logits && !b->want_logits[i])
            continue;
        float *lg = logits + (size_t)row++ * FB_VOCAB;
        int nx = fb_next(f->toks[s], f->len[s]);
        for (int v = 0; v < FB_VOCAB; v++)
            lg[v] = v == nx ? 1.0f : 0.0f;
    }
    return MOE_OK;
}

static bool fb_lost(void *self)
{
    return ((struct fake_backend *)self)->poisoned;
}

static struct moe_sched_backend fb_backend(struct fake_backend *f)
{
    memset(f, 0, sizeof(*f));
    for (int l = 0; l < FB_LAYERS; l++)
        f->is_moe[l] = true;
    struct moe_sched_backend be = {
        .self = f, .vocab = FB_VOCAB, .n_layers = FB_LAYERS, .n_experts = FB_EXPERTS, .top_k = FB_TOPK,
        .is_moe = f->is_moe, .eos_id = 0, .max_seqs = FB_SEQS, .max_ctx = FB_CTX, .max_batch_tokens = 64,
        .seq_alloc = fb_alloc, .seq_free = fb_free, .forward = fb_forward, .lost = fb_lost,
    };
    return be;
}

static inline bool fb_in(const int *ids, int n, int tok)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == tok)
            return true;
    return false;
}

/* Greedy reference: the tokens a sequence must produce, without any scheduler, with stop_token_ids
 * stops[0..n_stops) and min_tokens: while fewer than min_tokens were generated, EOS (0, ignore_eos or
 * not) and the stop ids cannot come, and a banned next token gives way to the next best (the other
 * logits tie at 0: the lowest id not banned); then EOS (unless ignore_eos) or a stop id ends it. */
static inline int fb_reference_stops(const int *prompt, int n_prompt, int max_tokens, bool ignore_eos,
                                     int min_tokens, const int *stops, int n_stops, int *out)
{
    int t[FB_CTX];
    memcpy(t, prompt, sizeof(int) * (size_t)n_prompt);
    int n = n_prompt, g = 0;
    while (g < max_tokens) {
        int nx = fb_next(t, n);
        for (int v = 1; g < min_tokens && (nx == 0 || fb_in(stops, n_stops, nx)); v++)
            nx = v; /* 0 is EOS, banned: the lowest id that is not */
        if ((!ignore_eos && nx == 0) || fb_in(stops, n_stops, nx))
            break;
        out[g++] = nx;
        t[n++] = nx;
    }
    return g;
}

static inline int fb_reference(const int *prompt, int n_prompt, int max_tokens, bool ignore_eos, int *out)
{
    return fb_reference_stops(prompt, n_prompt, max_tokens, ignore_eos, 0, NULL, 0, out);
}

#endif
