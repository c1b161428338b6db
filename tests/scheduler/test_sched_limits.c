/* Admission bounds, cancellation, deadlines, failures, priorities and drain
 * over a fake engine: every rejection is immediate and names its bound; every
 * accepted request ends exactly once; slots are freed at once. */
#include "fake_backend.h"
#include "sched_collect.h"
#include "../test_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int prompt_buf[FB_CTX];

static const int *prompt_of(int n, int seed)
{
    for (int i = 0; i < n; i++)
        prompt_buf[i] = 1 + (seed * 31 + i * 7) % (FB_VOCAB - 1);
    return prompt_buf;
}

static struct moe_gen_params gen(int max_tokens)
{
    struct moe_gen_params g = { .max_tokens = max_tokens, .ignore_eos = true };
    g.sampling.top_p = 1.0f;
    return g;
}

static void check_accounting(struct moe_sched *s, const char *what)
{
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(st.accepted == st.completed + st.cancelled + st.failed,
          "%s: accepted %llu != completed %llu + cancelled %llu + failed %llu", what,
          (unsigned long long)st.accepted, (unsigned long long)st.completed,
          (unsigned long long)st.cancelled, (unsigned long long)st.failed);
    CHECK(st.tokens_in_flight == 0 && st.running == 0 && st.waiting == 0, "%s: tif %lld running %d waiting %d",
          what, (long long)st.tokens_in_flight, st.running, st.waiting);
}

static void expect_reject(struct moe_sched *s, const int *p, int n, int max_tokens, enum moe_status want,
                          const char *needle, const char *what)
{
    struct moe_gen_params g = gen(max_tokens);
    struct sc_req r = { 0 };
    uint64_t id = 0;
    enum moe_status st = moe_sched_submit(s, p, n, &g, &sc_events, &r, &id);
    CHECK(st == want, "%s: status %d (%s), want %d", what, st, moe_last_error(), want);
    CHECK(strstr(moe_last_error(), needle) != NULL, "%s: reason '%s' does not name '%s'", what,
          moe_last_error(), needle);
    CHECK(r.n_done == 0, "%s: a rejected request got on_done", what);
}

static void test_bounds(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    be.max_ctx = 64;
    struct moe_sched_params p = { .max_running = 4, .max_queued = 4, .max_tokens_in_flight = 100,
                                  .max_prompt = 30, .max_output = 40, .micro_batch = 2, .prefill_chunk = 8 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    expect_reject(s, prompt_of(1, 0), 0, 5, MOE_EINVAL, "empty prompt", "empty prompt");
    expect_reject(s, prompt_of(3, 0), 3, 0, MOE_EINVAL, "max_tokens", "max_tokens 0");
    expect_reject(s, prompt_of(31, 0), 31, 5, MOE_ERANGE, "max-prompt = 30", "long prompt");
    expect_reject(s, prompt_of(3, 0), 3, 41, MOE_ERANGE, "max-output = 40", "long output");
    expect_reject(s, prompt_of(30, 0), 30, 40, MOE_ERANGE, "context of 64", "past the context");
    int bad[3] = { 1, FB_VOCAB, 2 };
    expect_reject(s, bad, 3, 5, MOE_ERANGE, "index 1", "token outside vocab");
    {
        struct moe_gen_params g = gen(5);
        g.sampling.temperature = -1.0f;
        CHECK(moe_sched_submit(s, prompt_of(3, 0), 3, &g, NULL, NULL, NULL) == MOE_EINVAL,
              "negative temperature accepted");
    }
    { /* stop_token_ids and min_tokens: bounded, each rejection naming what to fix */
        static const struct {
            int n_stop, stop0, min_tokens;
            enum moe_status want;
            const char *needle;
        } bad_stop[] = {
            { MOE_MAX_STOP_TOKEN_IDS + 1, 1, 0, MOE_EINVAL, "stop_token_ids has 65 ids, at most 64" },
            { 1, FB_VOCAB, 0, MOE_ERANGE, "stop_token_ids[0] = 64 is outside the vocabulary [0, 64)" },
            { 0, 0, 6, MOE_EINVAL, "min_tokens = 6 must be in [0, max_tokens = 5]" },
            { 0, 0, -1, MOE_EINVAL, "min_tokens = -1" },
        };
        for (size_t i = 0; i < MOE_ARRAY_LEN(bad_stop); i++) {
            struct moe_gen_params g = gen(5);
            g.n_stop_ids = bad_stop[i].n_stop;
            g.stop_ids[0] = bad_stop[i].stop0;
            g.min_tokens = bad_stop[i].min_tokens;
            enum moe_status st = moe_sched_submit(s, prompt_of(3, 0), 3, &g, NULL, NULL, NULL);
            CHECK(st == bad_stop[i].want && strstr(moe_last_error(), bad_stop[i].needle),
                  "stop case %zu: status %d, '%s'", i, st, moe_last_error());
        }
    }
    /* tokens in flight: 3 x (10 + 20) = 90 accepted, a 4th (30) would make 120 > 100 */
    static struct sc_req ok[3];
    memset(ok, 0, sizeof(ok));
    for (int i = 0; i < 3; i++) {
        struct moe_gen_params g = gen(20);
        CHECK(moe_sched_submit(s, prompt_of(10, i), 10, &g, &sc_events, &ok[i], &ok[i].id) == MOE_OK,
              "submit %d: %s", i, moe_last_error());
    }
    expect_reject(s, prompt_of(2, 9), 2, 9, MOE_EBUSY, "max-tokens-in-flight = 100", "tokens in flight");
    /* exactly up to the bound is fine: 90 + 10 = 100 */
    {
        struct moe_gen_params g = gen(8);
        CHECK(moe_sched_submit(s, prompt_of(2, 9), 2, &g, NULL, NULL, NULL) == MOE_OK, "up to the bound: %s",
              moe_last_error());
    }
    /* queue: 4 waiting = max_queued; the next is refused for the queue */
    expect_reject(s, prompt_of(1, 9), 1, 1, MOE_EBUSY, "max-queued = 4", "queue full");
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(st.rejected == 13 && st.accepted == 4, "rejected %llu accepted %llu", (unsigned long long)st.rejected,
          (unsigned long long)st.accepted);
    CHECK(st.tokens_in_flight == 100, "tokens in flight %lld", (long long)st.tokens_in_flight);
    while (moe_sched_step(s) == MOE_OK) {
    }
    for (int i = 0; i < 3; i++)
        CHECK(ok[i].n_done == 1 && ok[i].why == MOE_FINISH_LENGTH && ok[i].n_tokens == 20,
              "req %d: done %d why %s tokens %d", i, ok[i].n_done, moe_finish_str(ok[i].why), ok[i].n_tokens);
    check_accounting(s, "bounds");
    /* once the tokens are released, the same request fits again */
    {
        struct moe_gen_params g = gen(20);
        CHECK(moe_sched_submit(s, prompt_of(10, 5), 10, &g, NULL, NULL, NULL) == MOE_OK, "after release: %s",
              moe_last_error());
    }
    moe_sched_destroy(s);

    /* a request larger than the whole tokens-in-flight bound can never fit: ERANGE, not EBUSY */
    be = fb_backend(&fb);
    struct moe_sched_params p2 = { .max_running = 2, .max_tokens_in_flight = 40 };
    s = moe_sched_create_backend(&be, &p2);
    REQUIRE(s, "create: %s", moe_last_error());
    expect_reject(s, prompt_of(20, 0), 20, 30, MOE_ERANGE, "max-tokens-in-flight = 40", "larger than the bound");
    moe_sched_destroy(s);

    /* the n choices of one request: one place in the queue bound, room checked for all n at once */
    be = fb_backend(&fb);
    struct moe_sched_params pc = { .max_running = 2, .max_queued = 1, .max_tokens_in_flight = 100 };
    s = moe_sched_create_backend(&be, &pc);
    REQUIRE(s, "create: %s", moe_last_error());
    {
        struct moe_gen_params g = gen(20);
        g.choices = 3;
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, NULL) == MOE_ERANGE &&
                  strstr(moe_last_error(), "3 choices"),
              "3 x 30 tokens fit 100, 3 x 40 never do: %s", moe_last_error());
        g.max_tokens = 5;
        static struct sc_req ch[3];
        memset(ch, 0, sizeof(ch));
        for (int i = 0; i < 3; i++) {
            g.choices = i ? 0 : 3;
            g.more_choice = i > 0;
            g.hold = ch[0].id;
            CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, &sc_events, &ch[i], &ch[i].id) == MOE_OK,
                  "choice %d of 3 with max_queued 1: %s", i, moe_last_error());
        }
        /* the queue holds one request (its three choices): another is refused, for the queue */
        expect_reject(s, prompt_of(1, 9), 1, 1, MOE_EBUSY, "max-queued = 1", "queue full behind 3 choices");
        moe_sched_stats(s, &st);
        CHECK(st.waiting == 3 && st.tokens_in_flight == 75, "waiting %d, tokens in flight %lld", st.waiting,
              (long long)st.tokens_in_flight);
        while (moe_sched_step(s) == MOE_OK) {
        }
        for (int i = 0; i < 3; i++)
            CHECK(ch[i].n_done == 1 && ch[i].n_tokens == 5, "choice %d: done %d tokens %d", i, ch[i].n_done,
                  ch[i].n_tokens);
        /* 2 choices of 75 with nothing in flight: 150 > 100 never fits; 2 of 45 wait on 30 in flight */
        g.choices = 2;
        g.more_choice = false;
        g.max_tokens = 25;
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, &g.hold) == MOE_OK, "2 x 45: %s",
              moe_last_error());
        g.choices = 0;
        g.more_choice = true;
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, NULL) == MOE_OK, "second of 2: %s",
              moe_last_error());
        g.choices = 2;
        g.more_choice = false;
        g.max_tokens = 1;
        expect_reject(s, prompt_of(1, 9), 1, 1, MOE_EBUSY, "max-queued = 1", "queue full behind 2 choices");
        while (moe_sched_step(s) == MOE_OK) {
        }
        check_accounting(s, "choices");

        /* 3 choices of 25 fit 100; a request of 40 sent between the first and the others (another
         * front end's) must not take the room the first holds for them: tokens in flight stay <= 100 */
        pc.max_queued = 4;
        moe_sched_destroy(s);
        be = fb_backend(&fb);
        s = moe_sched_create_backend(&be, &pc);
        REQUIRE(s, "create: %s", moe_last_error());
        g.max_tokens = 5;
        g.choices = 3;
        g.more_choice = false;
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, &g.hold) == MOE_OK, "first of 3: %s",
              moe_last_error());
        expect_reject(s, prompt_of(20, 9), 20, 20, MOE_EBUSY, "max-tokens-in-flight", "between the choices");
        g.choices = 0;
        g.more_choice = true;
        for (int i = 1; i < 3; i++)
            CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, NULL) == MOE_OK, "choice %d of 3: %s", i,
                  moe_last_error());
        moe_sched_stats(s, &st);
        CHECK(st.tokens_in_flight == 75, "tokens in flight %lld with 3 choices of 25 (bound 100)",
              (long long)st.tokens_in_flight);
        /* the room is held no longer: a request of 25 fits */
        struct sc_req late = { 0 };
        g = gen(5);
        CHECK(moe_sched_submit(s, prompt_of(20, 9), 20, &g, &sc_events, &late, &late.id) == MOE_OK,
              "25 more after the choices: %s", moe_last_error());
        /* a first choice whose others never come (its call failed) holds their room, after it ended too,
         * until it is given back; a further choice submitted after that is checked as a request */
        moe_sched_cancel(s, late.id);
        while (moe_sched_step(s) == MOE_OK) {
        }
        g.choices = 2;
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, &sc_events, &late, &late.id) == MOE_OK,
              "first of 2: %s", moe_last_error());
        moe_sched_cancel(s, late.id);
        while (moe_sched_step(s) == MOE_OK) {
        }
        expect_reject(s, prompt_of(20, 0), 20, 60, MOE_EBUSY, "max-tokens-in-flight", "80 beside the held 25");
        moe_sched_hold_release(s, late.id);
        moe_sched_hold_release(s, late.id); /* once given back, nothing more */
        g = gen(80);
        uint64_t big;
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, &big) == MOE_OK,
              "100 once the first of 2 gave its room back: %s", moe_last_error());
        g = gen(5);
        g.more_choice = true;
        g.hold = late.id;
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, NULL) == MOE_EBUSY &&
                  strstr(moe_last_error(), "this choice's 25 (prompt 20 + max_tokens 5) not held for it"),
              "a second choice after its room was given back: %s", moe_last_error());
        moe_sched_cancel(s, big);
        while (moe_sched_step(s) == MOE_OK) {
        }
        CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, NULL) == MOE_OK,
              "a second choice that finds room: %s", moe_last_error());
        while (moe_sched_step(s) == MOE_OK) {
        }
        check_accounting(s, "choices with a request between them");

        /* choices of different prompts (a batch): 10, 30 and 40 tokens + 5 each hold 95 of 100 at once,
         * so a request of 10 sent between them is refused; 105 in all never fits */
        g = gen(5);
        g.choices = 3;
        g.choices_need = 105;
        CHECK(moe_sched_submit(s, prompt_of(10, 0), 10, &g, NULL, NULL, NULL) == MOE_ERANGE &&
                  strstr(moe_last_error(), "3 choices need 105"),
              "a batch of 105 tokens never fits 100: %s", moe_last_error());
        g.choices_need = 95;
        CHECK(moe_sched_submit(s, prompt_of(10, 0), 10, &g, NULL, NULL, &g.hold) == MOE_OK, "first of a batch: %s",
              moe_last_error());
        expect_reject(s, prompt_of(5, 9), 5, 5, MOE_EBUSY, "max-tokens-in-flight", "between a batch's choices");
        g.choices = 0;
        g.choices_need = 0;
        g.more_choice = true;
        CHECK(moe_sched_submit(s, prompt_of(30, 1), 30, &g, NULL, NULL, NULL) == MOE_OK &&
                  moe_sched_submit(s, prompt_of(40, 2), 40, &g, NULL, NULL, NULL) == MOE_OK,
              "the batch's other prompts: %s", moe_last_error());
        moe_sched_stats(s, &st);
        CHECK(st.tokens_in_flight == 95, "tokens in flight %lld with a batch of 95", (long long)st.tokens_in_flight);
        while (moe_sched_step(s) == MOE_OK) {
        }
        check_accounting(s, "a batch of prompts");
    }
    moe_sched_destroy(s);

    /* bad params are refused with the field named */
    be = fb_backend(&fb);
    struct moe_sched_params p3 = { .max_running = 4, .micro_batch = 8 };
    CHECK(!moe_sched_create_backend(&be, &p3) && strstr(moe_last_error(), "micro-batch"),
          "micro_batch > max_running accepted (%s)", moe_last_error());
    struct moe_sched_params p4 = { .max_running = 4, .micro_batch = 4, .prefill_chunk = 61 };
    CHECK(!moe_sched_create_backend(&be, &p4) && strstr(moe_last_error(), "prefill-chunk"),
          "micro_batch + prefill_chunk > max_batch_tokens accepted (%s)", moe_last_error());
    /* regroup_lag: -1 (strict steps), 0 (the default) or (0, 1000]; nothing between -1 and 0 */
    const float lags[] = { -0.5f, -1.5f, 1001.0f };
    for (int i = 0; i < 3; i++) {
        struct moe_sched_params p5 = { .max_running = 4, .max_queued = 4, .max_tokens_in_flight = 1000,
                                       .grouping = MOE_GROUP_REGROUP, .regroup_lag = lags[i] };
        struct moe_sched *got = moe_sched_create_backend(&be, &p5);
        CHECK(!got && strstr(moe_last_error(), "regroup-lag"), "regroup_lag %g accepted (%s)", (double)lags[i],
              got ? "" : moe_last_error());
        moe_sched_destroy(got);
    }
    struct moe_sched_params p6 = { .max_running = 4, .max_queued = 4, .max_tokens_in_flight = 1000,
                                   .grouping = MOE_GROUP_REGROUP, .regroup_lag = -1 };
    struct moe_sched *strict = moe_sched_create_backend(&be, &p6);
    CHECK(strict, "regroup_lag -1 (strict steps) refused: %s", moe_last_error());
    moe_sched_destroy(strict);
}

/* The room the first of n choices holds for the others is theirs until they are submitted, however the
 * submissions of two requests interleave and whether or not the first ended before them: tokens in flight
 * never pass max_tokens_in_flight. */
static void test_choice_holds(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 4, .max_queued = 8, .max_tokens_in_flight = 100 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    struct moe_sched_stats st;
    /* the first of 2 (20 + 5 each) ends before the second is submitted: its 25 stay held, so a request of
     * 80 is refused and the second fits */
    struct sc_req a1 = { 0 };
    struct moe_gen_params g = gen(5);
    g.choices = 2;
    CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, &sc_events, &a1, &a1.id) == MOE_OK, "first of 2: %s",
          moe_last_error());
    g.hold = a1.id;
    while (moe_sched_step(s) == MOE_OK) {
    }
    CHECK(a1.n_done == 1, "the first choice did not end");
    expect_reject(s, prompt_of(20, 9), 20, 60, MOE_EBUSY, "max-tokens-in-flight", "80 after an ended first of 2");
    g.choices = 0;
    g.more_choice = true;
    CHECK(moe_sched_submit(s, prompt_of(20, 0), 20, &g, NULL, NULL, NULL) == MOE_OK, "second of 2: %s",
          moe_last_error());
    moe_sched_stats(s, &st);
    CHECK(st.tokens_in_flight <= 100, "tokens in flight %lld > 100 (first choice ended first)",
          (long long)st.tokens_in_flight);
    while (moe_sched_step(s) == MOE_OK) {
    }
    check_accounting(s, "first choice ended first");

    /* two requests' choices interleaved, as two front-end threads submit them: A (2 x 30) and B (2 x 20)
     * hold 50 between them; A's second takes A's room, not B's, and once A's first ends a request of 45
     * still finds B's room held */
    struct sc_req ra[2], rb[2];
    memset(ra, 0, sizeof(ra));
    memset(rb, 0, sizeof(rb));
    struct moe_gen_params ga = gen(10), gb = gen(5);
    ga.choices = gb.choices = 2;
    CHECK(moe_sched_submit(s, prompt_of(20, 1), 20, &ga, &sc_events, &ra[0], &ra[0].id) == MOE_OK &&
              moe_sched_submit(s, prompt_of(15, 2), 15, &gb, &sc_events, &rb[0], &rb[0].id) == MOE_OK,
          "first choices of A and B: %s", moe_last_error());
    ga.choices = gb.choices = 0;
    ga.more_choice = gb.more_choice = true;
    ga.hold = ra[0].id;
    gb.hold = rb[0].id;
    CHECK(moe_sched_submit(s, prompt_of(20, 1), 20, &ga, &sc_events, &ra[1], &ra[1].id) == MOE_OK,
          "A's second: %s", moe_last_error());
    moe_sched_cancel(s, ra[0].id);
    CHECK(moe_sched_step(s) == MOE_OK && ra[0].n_done == 1, "A's first did not end");
    expect_reject(s, prompt_of(20, 9), 20, 25, MOE_EBUSY, "max-tokens-in-flight", "45 between B's choices");
    CHECK(moe_sched_submit(s, prompt_of(15, 2), 15, &gb, &sc_events, &rb[1], &rb[1].id) == MOE_OK,
          "B's second: %s", moe_last_error());
    moe_sched_stats(s, &st);
    CHECK(st.tokens_in_flight <= 100, "tokens in flight %lld > 100 (interleaved choices)",
          (long long)st.tokens_in_flight);
    while (moe_sched_step(s) == MOE_OK) {
    }
    check_accounting(s, "interleaved choices");

    /* further choices whose room is not held (given back, or never held) are requests of their own in the
     * max_queued bound too: of 12 such, 8 wait and the rest are refused as a full queue */
    struct sc_req rc[13];
    memset(rc, 0, sizeof(rc));
    struct moe_gen_params gc = gen(2);
    gc.choices = 2;
    CHECK(moe_sched_submit(s, prompt_of(4, 3), 4, &gc, &sc_events, &rc[0], &rc[0].id) == MOE_OK, "first of 2: %s",
          moe_last_error());
    moe_sched_hold_release(s, rc[0].id);
    gc.choices = 0;
    gc.more_choice = true;
    int queued = 1;
    for (int i = 1; i < 13; i++) {
        gc.hold = i == 1 ? rc[0].id : 999999;
        enum moe_status st_c = moe_sched_submit(s, prompt_of(4, 3), 4, &gc, &sc_events, &rc[i], &rc[i].id);
        CHECK(st_c == MOE_OK || (st_c == MOE_EBUSY && strstr(moe_last_error(), "max-queued")),
              "choice %d without room held: %s", i, moe_last_error());
        queued += st_c == MOE_OK;
    }
    moe_sched_stats(s, &st);
    CHECK(queued == 8 && st.waiting == 8, "choices without room held: %d accepted, %d waiting, want 8 (max-queued)",
          queued, st.waiting);
    while (moe_sched_step(s) == MOE_OK) {
    }
    check_accounting(s, "choices without room held");
    moe_sched_destroy(s);
}

/* A request of n choices takes one place in max_queued while any choice of it waits, also when its first
 * was admitted before the others came; a further choice whose room is held is never refused for the
 * queue. */
static void test_choice_queue_after_admit(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 1, .max_queued = 1, .max_tokens_in_flight = 100 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    struct moe_sched_stats st;
    struct sc_req ch[3];
    memset(ch, 0, sizeof(ch));
    struct moe_gen_params g = gen(5);
    g.choices = 3;
    REQUIRE(moe_sched_submit(s, prompt_of(10, 0), 10, &g, &sc_events, &ch[0], &ch[0].id) == MOE_OK,
            "first of 3: %s", moe_last_error());
    CHECK(moe_sched_step(s) == MOE_OK, "step");
    moe_sched_stats(s, &st);
    CHECK(st.running == 1 && st.waiting == 0, "the first choice is not running alone: running %d waiting %d",
          st.running, st.waiting);
    g.choices = 0;
    g.more_choice = true;
    g.hold = ch[0].id;
    CHECK(moe_sched_submit(s, prompt_of(10, 0), 10, &g, &sc_events, &ch[1], &ch[1].id) == MOE_OK,
          "second of 3: %s", moe_last_error());
    expect_reject(s, prompt_of(1, 9), 1, 1, MOE_EBUSY, "max-queued = 1", "queue full with a further choice waiting");
    CHECK(moe_sched_submit(s, prompt_of(10, 0), 10, &g, &sc_events, &ch[2], &ch[2].id) == MOE_OK,
          "third of 3, its room held, with the queue full: %s", moe_last_error());
    moe_sched_stats(s, &st);
    CHECK(st.waiting == 2, "waiting %d, want the 2 further choices", st.waiting);
    while (moe_sched_step(s) == MOE_OK) {
    }
    for (int i = 0; i < 3; i++)
        CHECK(ch[i].n_done == 1 && ch[i].n_tokens == 5, "choice %d: done %d tokens %d", i, ch[i].n_done,
              ch[i].n_tokens);
    /* none waits now: the request's place is free again */
    struct sc_req after = { 0 };
    g = gen(1);
    CHECK(moe_sched_submit(s, prompt_of(1, 9), 1, &g, &sc_events, &after, &after.id) == MOE_OK,
          "a request after the choices ended: %s", moe_last_error());
    while (moe_sched_step(s) == MOE_OK) {
    }
    CHECK(after.n_done == 1, "the request after the choices did not end");
    check_accounting(s, "choices queued after the first's admission");
    moe_sched_destroy(s);
}

/* Requests of 3 choices submitted from three threads at once, the scheduler running: every further choice
 * finds the room its first holds (none is refused), and tokens in flight never pass the bound. */
struct choice_thread {
    struct moe_sched *s;
    int seed;
    int refused_more;          /* further choices refused */
    int64_t max_tif;           /* tokens in flight seen after a submission, at most */
};

static void *choice_thread_run(void *arg)
{
    struct choice_thread *c = arg;
    int prompt[10];
    for (int i = 0; i < 10; i++)
        prompt[i] = 1 + (c->seed * 13 + i) % (FB_VOCAB - 1);
    for (int i = 0; i < 40; i++) {
        struct moe_gen_params g = gen(2);
        g.choices = 3;
        uint64_t first;
        if (moe_sched_submit(c->s, prompt, 10, &g, NULL, NULL, &first) != MOE_OK)
            continue; /* busy: no room for 3 now */
        g.choices = 0;
        g.more_choice = true;
        g.hold = first;
        for (int k = 1; k < 3; k++) {
            c->refused_more += moe_sched_submit(c->s, prompt, 10, &g, NULL, NULL, NULL) != MOE_OK;
            struct moe_sched_stats st;
            moe_sched_stats(c->s, &st);
            if (st.tokens_in_flight > c->max_tif)
                c->max_tif = st.tokens_in_flight;
        }
        moe_sched_hold_release(c->s, first);
    }
    return NULL;
}

static void test_choice_holds_threaded(void)
{
    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 8, .max_queued = 16, .max_tokens_in_flight = 60 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    REQUIRE(moe_sched_start(s) == MOE_OK, "start: %s", moe_last_error());
    struct choice_thread c[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        c[i] = (struct choice_thread){ .s = s, .seed = i };
        REQUIRE(pthread_create(&th[i], NULL, choice_thread_run, &c[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK(c[i].refused_more == 0, "thread %d: %d further choices refused", i, c[i].refused_more);
        CHECK(c[i].max_tif <= 60, "thread %d: tokens in flight %lld > 60", i, (long long)c[i].max_tif);
    }
    CHECK(moe_sched_drain(s, 30.0) == MOE_OK, "drain: %s", moe_last_error());
    check_accounting(s, "choices from three threads");
    moe_sched_destroy(s);
}

/* Long and short prompts mixed, on the scheduler thread: all complete. */
static void test_mixed_threaded(void)
{
    enum { N = 40 };
    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 8, .max_queued = N, .micro_batch = 4, .prefill_chunk = 16,
                                  .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    REQUIRE(moe_sched_start(s) == MOE_OK, "start: %s", moe_last_error());
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static struct sc_req r[N];
    memset(r, 0, sizeof(r));
    int want[N];
    for (int i = 0; i < N; i++) {
        int n = i % 2 ? 150 : 3;
        want[i] = 5 + i % 7;
        struct moe_gen_params g = gen(want[i]);
        r[i].mu = &mu;
        CHECK(moe_sched_submit(s, prompt_of(n, i), n, &g, &sc_events, &r[i], &r[i].id) == MOE_OK,
              "submit %d: %s", i, moe_last_error());
    }
    CHECK(moe_sched_drain(s, 30.0) == MOE_OK, "drain: %s", moe_last_error());
    for (int i = 0; i < N; i++) {
        pthread_mutex_lock(&mu);
        CHECK(r[i].n_done == 1 && r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == want[i],
              "req %d (prompt %d): done %d why %s tokens %d want %d (%s)", i, i % 2 ? 150 : 3, r[i].n_done,
              moe_finish_str(r[i].why), r[i].n_tokens, want[i], r[i].msg);
        pthread_mutex_unlock(&mu);
    }
    CHECK(fb.errors == 0, "engine protocol: %s", fb.err);
    CHECK(fb.max_rows <= 4 + 16, "forward of %d rows", fb.max_rows);
    check_accounting(s, "mixed");
    struct moe_gen_params g = gen(1);
    /* not MOE_EBUSY, which says "retry later" (the server's 429): this scheduler takes none again */
    CHECK(moe_sched_submit(s, prompt_of(2, 0), 2, &g, NULL, NULL, NULL) == MOE_ECANCELED &&
              strstr(moe_last_error(), "draining"), "submit after drain: %s", moe_last_error());
    moe_sched_destroy(s);
    CHECK(fb.n_used == 0, "%d slots in use after destroy", fb.n_used);
}

/* Cancel while queued, in prefill and in decode: one on_done each, slot freed at once. */
static void test_cancel(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 8 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    struct sc_req a = { 0 }, b = { 0 }, c = { 0 };
    struct moe_gen_params g = gen(100);
    REQUIRE(moe_sched_submit(s, prompt_of(40, 1), 40, &g, &sc_events, &a, &a.id) == MOE_OK, "submit a");
    REQUIRE(moe_sched_submit(s, prompt_of(4, 2), 4, &g, &sc_events, &b, &b.id) == MOE_OK, "submit b");
    REQUIRE(moe_sched_submit(s, prompt_of(4, 3), 4, &g, &sc_events, &c, &c.id) == MOE_OK, "submit c");
    moe_sched_step(s); /* a: chunk 1 of 5 */
    moe_sched_step(s); /* b: its whole prompt (round-robin), first token */
    moe_sched_step(s); /* a: chunk 2, alongside b's decode */
    CHECK(fb.n_used == 2, "slots in use %d, want 2 (a prefill, b decode)", fb.n_used);
    CHECK(b.n_tokens > 0 && a.n_tokens == 0, "a %d tokens (want 0: still in prefill), b %d", a.n_tokens, b.n_tokens);
    CHECK(moe_sched_cancel(s, c.id) == MOE_OK, "cancel queued: %s", moe_last_error());
    CHECK(moe_sched_cancel(s, a.id) == MOE_OK, "cancel prefill: %s", moe_last_error());
    moe_sched_step(s);
    CHECK(a.n_done == 1 && a.why == MOE_FINISH_CANCELLED && a.st == MOE_ECANCELED && strstr(a.msg, "prefill"),
          "a: done %d why %s msg '%s'", a.n_done, moe_finish_str(a.why), a.msg);
    CHECK(c.n_done == 1 && c.why == MOE_FINISH_CANCELLED && c.n_tokens == 0 && strstr(c.msg, "queued"),
          "c: done %d why %s tokens %d msg '%s'", c.n_done, moe_finish_str(c.why), c.n_tokens, c.msg);
    CHECK(fb.n_used == 1, "slots in use %d after cancelling a and c, want 1", fb.n_used);
    int bt = b.n_tokens;
    CHECK(moe_sched_cancel(s, b.id) == MOE_OK, "cancel decode: %s", moe_last_error());
    moe_sched_step(s);
    CHECK(b.n_done == 1 && b.why == MOE_FINISH_CANCELLED && strstr(b.msg, "decode") && b.n_tokens == bt,
          "b: done %d why %s tokens %d (was %d) msg '%s'", b.n_done, moe_finish_str(b.why), b.n_tokens, bt, b.msg);
    CHECK(fb.n_used == 0, "slots in use %d after cancelling b", fb.n_used);
    CHECK(moe_sched_cancel(s, b.id) == MOE_ENOENT, "second cancel of b not ENOENT");
    CHECK(moe_sched_cancel(s, 9999) == MOE_ENOENT && strstr(moe_last_error(), "9999"), "unknown id: %s",
          moe_last_error());
    for (int i = 0; i < 3; i++)
        moe_sched_step(s);
    CHECK(a.n_done == 1 && b.n_done == 1 && c.n_done == 1, "done counts %d %d %d", a.n_done, b.n_done, c.n_done);
    check_accounting(s, "cancel");
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(st.cancelled == 3 && st.by_finish[MOE_FINISH_CANCELLED] == 3, "cancelled %llu",
          (unsigned long long)st.cancelled);
    moe_sched_destroy(s);
}

/* finish(): a decoding request ends at once as finished by a stop sequence,
 * counted as completed; its slot is freed. */
static void test_finish(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 8 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    struct sc_req a = { 0 };
    struct moe_gen_params g = gen(100);
    REQUIRE(moe_sched_submit(s, prompt_of(4, 1), 4, &g, &sc_events, &a, &a.id) == MOE_OK, "submit a");
    moe_sched_step(s);
    moe_sched_step(s);
    int at = a.n_tokens;
    CHECK(at > 0 && fb.n_used == 1, "a decoding: %d tokens, %d slots", at, fb.n_used);
    CHECK(moe_sched_finish(s, a.id) == MOE_OK, "finish: %s", moe_last_error());
    moe_sched_step(s);
    CHECK(a.n_done == 1 && a.why == MOE_FINISH_STOP && a.st == MOE_OK && a.n_tokens == at && fb.n_used == 0,
          "a: done %d why %s st %d tokens %d (was %d), slots %d", a.n_done, moe_finish_str(a.why), (int)a.st,
          a.n_tokens, at, fb.n_used);
    CHECK(moe_sched_finish(s, a.id) == MOE_ENOENT && strstr(moe_last_error(), "finish"), "finish again: %s",
          moe_last_error());
    check_accounting(s, "finish");
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(st.completed == 1 && st.cancelled == 0 && st.by_finish[MOE_FINISH_STOP] == 1, "completed %llu cancelled %llu",
          (unsigned long long)st.completed, (unsigned long long)st.cancelled);
    moe_sched_destroy(s);
}

/* A reply its caller cannot deliver counts as failed: fail() ends a running request as failed with the
 * caller's status and message; reply_failed() moves one that completed from completed to failed. */
static void test_reply_failed(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 8 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    struct sc_req a = { 0 }, b = { 0 };
    struct moe_gen_params g = gen(100);
    REQUIRE(moe_sched_submit(s, prompt_of(4, 1), 4, &g, &sc_events, &a, &a.id) == MOE_OK, "submit a");
    g = gen(3);
    REQUIRE(moe_sched_submit(s, prompt_of(4, 2), 4, &g, &sc_events, &b, &b.id) == MOE_OK, "submit b");
    moe_sched_step(s);
    moe_sched_step(s);
    CHECK(a.n_tokens > 0 && a.n_done == 0, "a decoding: %d tokens, done %d", a.n_tokens, a.n_done);
    CHECK(moe_sched_fail(s, a.id, MOE_ENOMEM, "reply too big") == MOE_OK, "fail: %s", moe_last_error());
    while (moe_sched_step(s) == MOE_OK) {
    }
    CHECK(a.n_done == 1 && a.why == MOE_FINISH_ERROR && a.st == MOE_ENOMEM && !strcmp(a.msg, "reply too big") &&
          fb.n_used == 0, "a: done %d why %s st %d msg '%s', slots %d", a.n_done, moe_finish_str(a.why), (int)a.st,
          a.msg, fb.n_used);
    CHECK(b.n_done == 1 && b.why == MOE_FINISH_LENGTH, "b: done %d why %s", b.n_done, moe_finish_str(b.why));
    CHECK(moe_sched_fail(s, b.id, MOE_ENOMEM, "late") == MOE_ENOENT && strstr(moe_last_error(), "fail"),
          "fail after the end: %s", moe_last_error());
    moe_sched_reply_failed(s, b.why);
    moe_sched_reply_failed(s, MOE_FINISH_CANCELLED); /* not a completion: no change */
    check_accounting(s, "reply failed");
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(st.completed == 0 && st.failed == 2 && st.by_finish[MOE_FINISH_LENGTH] == 0 &&
          st.by_finish[MOE_FINISH_ERROR] == 2 && st.cancelled == 0,
          "completed %llu failed %llu (length %llu, error %llu) cancelled %llu", (unsigned long long)st.completed,
          (unsigned long long)st.failed, (unsigned long long)st.by_finish[MOE_FINISH_LENGTH],
          (unsigned long long)st.by_finish[MOE_FINISH_ERROR], (unsigned long long)st.cancelled);
    moe_sched_destroy(s);
}

/* Deadlines: already past (ends before any work), negative included, and expiring mid-decode. */
static void test_deadline(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 4, .micro_batch = 4, .prefill_chunk = 8 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    fb.delay_s = 0.005; /* 200 tokens take >= 1 s: the 0.3 s deadline ends b mid-decode */
    struct sc_req a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    struct moe_gen_params g = gen(200);
    g.deadline = moe_now() - 1.0;
    REQUIRE(moe_sched_submit(s, prompt_of(5, 1), 5, &g, &sc_events, &a, &a.id) == MOE_OK, "submit a");
    g.deadline = moe_now() + 0.3;
    REQUIRE(moe_sched_submit(s, prompt_of(5, 2), 5, &g, &sc_events, &b, &b.id) == MOE_OK, "submit b");
    g.deadline = 0;
    g.max_tokens = 10;
    REQUIRE(moe_sched_submit(s, prompt_of(5, 3), 5, &g, &sc_events, &c, &c.id) == MOE_OK, "submit c");
    g.deadline = -1.0; /* a negative moe_now() second has passed too: not "none" */
    REQUIRE(moe_sched_submit(s, prompt_of(5, 4), 5, &g, &sc_events, &d, &d.id) == MOE_OK, "submit d");
    for (int i = 0; i < 400 && moe_sched_step(s) == MOE_OK; i++) {
    }
    CHECK(a.n_done == 1 && a.why == MOE_FINISH_DEADLINE && a.st == MOE_ETIMEDOUT && a.n_tokens == 0,
          "a: done %d why %s tokens %d", a.n_done, moe_finish_str(a.why), a.n_tokens);
    CHECK(b.n_done == 1 && b.why == MOE_FINISH_DEADLINE && b.n_tokens > 0 && b.n_tokens < 200,
          "b: done %d why %s tokens %d", b.n_done, moe_finish_str(b.why), b.n_tokens);
    CHECK(c.n_done == 1 && c.why == MOE_FINISH_LENGTH && c.n_tokens == 10, "c: done %d why %s tokens %d",
          c.n_done, moe_finish_str(c.why), c.n_tokens);
    CHECK(d.n_done == 1 && d.why == MOE_FINISH_DEADLINE && d.st == MOE_ETIMEDOUT && d.n_tokens == 0,
          "d (deadline -1 s): done %d why %s tokens %d", d.n_done, moe_finish_str(d.why), d.n_tokens);
    CHECK(fb.n_used == 0, "slots in use %d", fb.n_used);
    check_accounting(s, "deadline");
    moe_sched_destroy(s);
}

/* A client's cancel at its deadline is the deadline's: cancels that come after the deadline (0), or
 * MOE_SCHED_DEADLINE_SLACK_S or less before it (1 queued, 4 decoding), end their requests as the deadline
 * does; one well before it (2 queued, 5 decoding), or of a request without one (3), is a cancel. */
static void test_cancel_at_deadline(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 2, .max_queued = 8, .micro_batch = 2, .prefill_chunk = 8 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    struct sc_req r[6] = { { 0 } };
    struct moe_gen_params g = gen(60);
    double now = moe_now(), slack = MOE_SCHED_DEADLINE_SLACK_S;
    double deadline[6] = { now - 1.0, now + slack / 2, now + 3600, 0, now + slack / 2, now + 3600 };
    for (int i = 0; i < 6; i++) {
        g.deadline = deadline[i];
        REQUIRE(moe_sched_submit(s, prompt_of(4, i + 1), 4, &g, &sc_events, &r[i], &r[i].id) == MOE_OK, "submit %d: %s", i,
                moe_last_error());
    }
    for (int i = 0; i < 4; i++) /* queued: the step reaps them before it admits 4 and 5 */
        CHECK(moe_sched_cancel(s, r[i].id) == MOE_OK, "cancel %d: %s", i, moe_last_error());
    moe_sched_step(s);
    moe_sched_step(s);
    CHECK(r[4].n_tokens > 0 && r[5].n_tokens > 0, "4 and 5 decode: %d, %d tokens", r[4].n_tokens, r[5].n_tokens);
    for (int i = 4; i < 6; i++)
        moe_sched_cancel(s, r[i].id); /* ENOENT when 4's deadline passed meanwhile: it ended as the deadline's */
    moe_sched_step(s);
    for (int i = 0; i < 6; i++) {
        bool dl = i == 0 || i == 1 || i == 4;
        CHECK(r[i].n_done == 1 && r[i].why == (dl ? MOE_FINISH_DEADLINE : MOE_FINISH_CANCELLED) &&
                  r[i].st == (dl ? MOE_ETIMEDOUT : MOE_ECANCELED),
              "request %d (deadline %+.3f s from the submission, 0: none): done %d why %s", i,
              deadline[i] ? deadline[i] - now : 0, r[i].n_done, moe_finish_str(r[i].why));
    }
    CHECK(fb.n_used == 0, "slots in use %d", fb.n_used);
    check_accounting(s, "cancel at the deadline");
    moe_sched_destroy(s);
}

/* Four requests of a 3-token prompt and 6 tokens each, recorded in r[0..4). */
static void submit_four(struct moe_sched *s, struct sc_req *r)
{
    memset(r, 0, 4 * sizeof(*r));
    for (int i = 0; i < 4; i++) {
        struct moe_gen_params g = gen(6);
        REQUIRE(moe_sched_submit(s, prompt_of(3, i), 3, &g, &sc_events, &r[i], &r[i].id) == MOE_OK, "submit");
    }
}

/* An engine failure fails exactly the requests of that forward, once; one on an expert's data
 * (checksum) fails only the request whose own forward fails when each runs alone. */
static void test_failure(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 4, .micro_batch = 2, .prefill_chunk = 8 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req r[4];
    submit_four(s, r);
    fb.fail_at = 6;
    fb.fail_status = MOE_EINVAL;
    while (moe_sched_step(s) == MOE_OK) {
    }
    int failed = 0, done = 0;
    for (int i = 0; i < 4; i++) {
        CHECK(r[i].n_done == 1, "req %d: %d on_done", i, r[i].n_done);
        if (r[i].why == MOE_FINISH_ERROR) {
            failed++;
            CHECK(r[i].st == MOE_EINVAL && strstr(r[i].msg, "injected"), "req %d: st %d msg '%s'", i, r[i].st,
                  r[i].msg);
        } else if (r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == 6) {
            done++;
        }
    }
    CHECK(failed == 2 && done == 2, "failed %d completed %d (the two of forward 6 fail)", failed, done);
    CHECK(fb.n_used == 0, "slots in use %d", fb.n_used);
    check_accounting(s, "failure");
    moe_sched_destroy(s);

    /* a bad expert of one request, met in decode batches of two: that request alone fails */
    be = fb_backend(&fb);
    s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    submit_four(s, r);
    fb.fail_seq = 1; /* slot 0: the first request's */
    fb.fail_from = 8;
    while (moe_sched_step(s) == MOE_OK) {
    }
    failed = done = 0;
    for (int i = 0; i < 4; i++) {
        CHECK(r[i].n_done == 1, "req %d: %d on_done", i, r[i].n_done);
        failed += r[i].why == MOE_FINISH_ERROR && r[i].st == MOE_ECHECKSUM && strstr(r[i].msg, "slot 0");
        done += r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == 6;
    }
    CHECK(failed == 1 && done == 3 && r[0].why == MOE_FINISH_ERROR,
          "a bad expert of one request: failed %d completed %d (want 1 and 3), request 0: %s", failed, done, r[0].msg);
    CHECK(fb.errors == 0, "engine protocol: %s", fb.err);
    CHECK(fb.n_used == 0, "slots in use %d", fb.n_used);
    check_accounting(s, "isolated failure");
    moe_sched_destroy(s);
}

/* A failed forward's routing does not count.  The routing a forward reported before it failed (the engine
 * reports a layer's routing before it reads the layer's experts) is dropped, and a micro-batch whose
 * requests ran again one by one after a failure counts as the one forward that would have run: a failure
 * that the reruns do not meet again gives the tokens and figures of a run without it (regrouping on the
 * decayed routing history, which a doubled routing would change too); a micro-batch that fails whole
 * counts no layer-step. */
/* A provider that folds every prefetch hint (layer, experts, distance) into a hash. */
static void hash_prefetch(void *self, int layer, int n, const int *ids, const float *scores, int distance)
{
    uint64_t *h = self;
    *h = (*h ^ (uint64_t)layer) * 1099511628211ull;
    *h = (*h ^ (uint64_t)distance) * 1099511628211ull;
    for (int i = 0; i < n; i++)
        *h = (*h ^ (uint64_t)ids[i]) * 1099511628211ull;
    (void)scores;
}

static void test_failure_figures(void)
{
    static const struct moe_provider_ops ops = { .prefetch = hash_prefetch };
    uint64_t hints = 0, want_hints = 0;
    struct moe_provider pv = { &ops, &hints };
    struct moe_sched_params p = { .max_running = 4, .micro_batch = 2, .prefill_chunk = 8,
                                  .grouping = MOE_GROUP_REGROUP, .path_decay = 0.9f, .provider = &pv };
    static struct sc_req ref[4], r[4];
    struct moe_sched_stats want = { 0 };
    int ref_forwards = 0;
    /* run 0: no failure; 1, 2: forward 3 (two decode rows and a prompt chunk) or 6 (two decode rows) fails
     * (MOE_EIO) after 2 layers, its reruns pass; 3: forward 6 fails whole (MOE_EINVAL) after 3 layers;
     * 4: slot 0's rows fail (MOE_ECHECKSUM) from forward 8 on after 3 layers, its request alone */
    static const struct { int fail_at, fail_routed, fail_seq; enum moe_status st; } runs[5] = {
        { 0, 0, 0, MOE_OK }, { 3, 2, 0, MOE_EIO }, { 6, 2, 0, MOE_EIO }, { 6, 3, 0, MOE_EINVAL }, { 0, 3, 1, MOE_OK },
    };
    for (int k = 0; k < 5; k++) {
        struct fake_backend fb;
        struct moe_sched_backend be = fb_backend(&fb);
        struct moe_sched *s = moe_sched_create_backend(&be, &p);
        REQUIRE(s, "create: %s", moe_last_error());
        struct sc_req *q = k ? r : ref;
        submit_four(s, q);
        fb.fail_at = runs[k].fail_at;
        fb.fail_status = runs[k].st;
        fb.fail_routed = runs[k].fail_routed;
        fb.fail_seq = runs[k].fail_seq;
        fb.fail_from = 8;
        hints = 1469598103934665603ull;
        while (moe_sched_step(s) == MOE_OK) {
        }
        struct moe_sched_stats st;
        moe_sched_stats(s, &st);
        int failed = 0;
        for (int i = 0; i < 4; i++) {
            failed += q[i].why == MOE_FINISH_ERROR;
            CHECK(q[i].n_done == 1 && (q[i].why == MOE_FINISH_ERROR ||
                                       (q[i].why == MOE_FINISH_LENGTH && q[i].n_tokens == 6 &&
                                        !memcmp(q[i].tokens, ref[i].tokens, sizeof(int) * 6))),
                  "run %d req %d: %s, %d tokens (%s)", k, i, moe_finish_str(q[i].why), q[i].n_tokens, q[i].msg);
        }
        if (k == 0) {
            want = st;
            want_hints = hints;
            ref_forwards = fb.forwards;
        }
        if (k <= 2) {
            CHECK(failed == 0 && (k == 0 || fb.forwards > ref_forwards),
                  "run %d: %d requests failed, %d forward() calls (%d without the failure)", k, failed, fb.forwards,
                  ref_forwards);
            /* the paths predicted from each request's routing history: the same prefetch hints */
            CHECK(hints == want_hints && st.prefetch_hints == want.prefetch_hints,
                  "run %d: %llu prefetch hints (hash %016llx), without the failure %llu (%016llx)", k,
                  (unsigned long long)st.prefetch_hints, (unsigned long long)hints,
                  (unsigned long long)want.prefetch_hints, (unsigned long long)want_hints);
            CHECK(st.forwards == want.forwards && st.layer_steps == want.layer_steps &&
                      st.experts_activated == want.experts_activated &&
                      st.decode_layer_steps == want.decode_layer_steps &&
                      st.decode_experts_activated == want.decode_experts_activated &&
                      st.decode_tokens == want.decode_tokens && st.prefill_chunks == want.prefill_chunks,
                  "run %d, forward %d failed after %d layers, its reruns passed: %llu forwards, layer-steps %llu "
                  "(decode %llu), experts %llu (decode %llu); without the failure %llu, %llu (%llu), %llu (%llu)",
                  k, runs[k].fail_at, runs[k].fail_routed, (unsigned long long)st.forwards,
                  (unsigned long long)st.layer_steps, (unsigned long long)st.decode_layer_steps,
                  (unsigned long long)st.experts_activated, (unsigned long long)st.decode_experts_activated,
                  (unsigned long long)want.forwards, (unsigned long long)want.layer_steps,
                  (unsigned long long)want.decode_layer_steps, (unsigned long long)want.experts_activated,
                  (unsigned long long)want.decode_experts_activated);
        } else { /* run 3: one micro-batch failed whole; run 4: one request failed, the other of its micro-batch went on */
            uint64_t whole = k == 3;
            CHECK(failed == (k == 3 ? 2 : 1) && (k == 3 || r[0].st == MOE_ECHECKSUM),
                  "run %d: %d requests failed, request 0: %s", k, failed, r[0].msg);
            CHECK(st.layer_steps == FB_LAYERS * (st.forwards - whole),
                  "run %d: %llu layer-steps in %llu micro-batches, %llu of them failed whole: want %llu", k,
                  (unsigned long long)st.layer_steps, (unsigned long long)st.forwards, (unsigned long long)whole,
                  (unsigned long long)(FB_LAYERS * (st.forwards - whole)));
        }
        /* decode rows computed: each gave one of a request's tokens after its first (none was cancelled,
         * none ends on EOS), the rows of a failed forward not counted, nor the row that failed alone */
        uint64_t rows = 0;
        for (int i = 0; i < 4; i++)
            rows += q[i].n_tokens > 0 ? (uint64_t)(q[i].n_tokens - 1) : 0;
        CHECK(st.decode_tokens == rows, "run %d: %llu decode rows counted, %llu computed", k,
              (unsigned long long)st.decode_tokens, (unsigned long long)rows);
        CHECK(fb.errors == 0, "run %d: engine protocol: %s", k, fb.err);
        check_accounting(s, "failure figures");
        moe_sched_destroy(s);
    }
}

/* Device errors: one that leaves the device usable (MOE_EDEVICE) fails, as a bad expert does, only the
 * request whose own forward fails when each runs alone; a lost device (MOE_EDEVLOST) fails the whole
 * micro-batch at once, also when it is lost while the batch's requests run again one by one, and no
 * forward runs after it: the other micro-batch's requests wait, and the drain (with its full timeout)
 * cancels them at once, saying that the device was lost and why; with the scheduler thread too, where
 * the drain, begun before the loss, ends at it.  A forward that fails with a status that would leave the
 * device usable (MOE_EDEVICE) on a device that a sticky error poisoned meanwhile is a lost device's: its
 * requests are not run again one by one on it, and none runs after. */
static void test_device_failure(void)
{
    struct fake_backend fb;
    struct moe_sched_params p = { .max_running = 4, .micro_batch = 2, .prefill_chunk = 8 };
    static struct sc_req r[4];
    int at = 0; /* the forward (a decode batch of two) that failed in mode 0 */
    for (int mode = 0; mode < 5; mode++) {
        static const char *what[5] = { "a device error", "a lost device", "a device lost while isolating",
                                       "a lost device, with the scheduler thread", "a device error, poisoned" };
        struct moe_sched_backend be = fb_backend(&fb);
        struct moe_sched *s = moe_sched_create_backend(&be, &p);
        REQUIRE(s, "create: %s", moe_last_error());
        submit_four(s, r);
        if (mode == 0) { /* slot 0's rows fail with a device error from forward 8 on */
            fb.fail_seq = 1;
            fb.fail_from = 8;
            fb.seq_status = MOE_EDEVICE;
        } else { /* the same runs again: the device is lost at that forward, or at the first that reruns
                  * one of its requests alone */
            fb.fail_at = mode == 2 ? at + 1 : at;
            fb.fail_status = mode == 4 ? MOE_EDEVICE : MOE_EDEVLOST;
            fb.fail_poisons = mode == 4;
            if (mode == 2) {
                fb.fail_seq = 1;
                fb.fail_from = 8;
                fb.seq_status = MOE_EDEVICE;
            }
        }
        if (mode == 3)
            REQUIRE(moe_sched_start(s) == MOE_OK, "start: %s", moe_last_error());
        while (mode != 3 && moe_sched_step(s) == MOE_OK) {
        }
        int ran = mode != 3 ? fb.forwards : at;
        char log[4096] = "";
        if (mode > 0) {
            /* the threaded drain's log line (info) says how long it waited: not the 3600 s it was given */
            FILE *cap = tmpfile();
            int saved = dup(2);
            REQUIRE(cap && saved >= 0, "tmpfile or dup failed");
            fflush(stderr);
            dup2(fileno(cap), 2);
            moe_log_set_level(MOE_LOG_INFO);
            moe_sched_drain(s, 3600);
            moe_log_set_level(MOE_LOG_WARN);
            fflush(stderr);
            dup2(saved, 2);
            close(saved);
            rewind(cap);
            log[fread(log, 1, sizeof(log) - 1, cap)] = 0;
            fclose(cap);
            CHECK(mode != 3 || strstr(log, "drain: cancelling 2 requests after 0.") ||
                      strstr(log, "drain: cancelling 2 requests after 1."), /* the thread's drain logs it */
                  "%s: drain log: %s", what[mode], log);
        }
        char why[256];
        snprintf(why, sizeof(why), "shutting down: the device was lost (forward failed: fake: injected failure at "
                 "forward %d); cancelled during decode; retry elsewhere", fb.fail_at);
        int dev = 0, lost = 0, done = 0, cancelled = 0;
        for (int i = 0; i < 4; i++) {
            CHECK(r[i].n_done == 1, "%s: req %d: %d on_done", what[mode], i, r[i].n_done);
            dev += r[i].why == MOE_FINISH_ERROR && r[i].st == MOE_EDEVICE && strstr(r[i].msg, "slot 0");
            lost += r[i].why == MOE_FINISH_ERROR && r[i].st == MOE_EDEVLOST && strstr(r[i].msg, "injected");
            done += r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == 6;
            cancelled += r[i].why == MOE_FINISH_CANCELLED && r[i].st == MOE_ECANCELED && !strcmp(r[i].msg, why);
        }
        if (mode == 0) {
            at = fb.first_seq_fail;
            CHECK(dev == 1 && done == 3 && r[0].why == MOE_FINISH_ERROR && at >= 8,
                  "%s: failed %d completed %d (want 1 and 3), request 0: %s", what[mode], dev, done, r[0].msg);
        } else {
            CHECK(lost == 2 && dev == 0 && cancelled == 2 && r[0].st == MOE_EDEVLOST,
                  "%s at forward %d: lost %d, device errors %d, cancelled saying why %d (want 2, 0, 2), request 0: "
                  "%s, request 3: %s", what[mode], fb.fail_at, lost, dev, cancelled, r[0].msg, r[3].msg);
            CHECK(ran == fb.fail_at && fb.forwards == fb.fail_at, "%s at forward %d: %d forwards ran, %d after the "
                  "drain", what[mode], fb.fail_at, ran, fb.forwards);
        }
        CHECK(fb.errors == 0, "%s: engine protocol: %s", what[mode], fb.err);
        CHECK(fb.n_used == 0, "%s: slots in use %d", what[mode], fb.n_used);
        check_accounting(s, what[mode]);
        moe_sched_destroy(s);
    }
}

/* A micro-batch that finds no memory for its token events fails its requests before it takes any token
 * (MOE_ENOMEM, saying so): every token counted as generated was delivered through on_token, and the
 * other requests go on. */
static void test_events_nomem(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    /* step 1: the prompts of r0 and r1 (micro-batches 1, 2); step 2: r0 and r1 decode with r2's prompt
     * (3), then r3's prompt (4): the third fails r0, r1 and r2 */
    struct moe_sched_params p = { .max_running = 4, .micro_batch = 2, .prefill_chunk = 8, .fault_events_at = 3 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req r[4];
    submit_four(s, r);
    while (moe_sched_step(s) == MOE_OK) {
    }
    int failed = 0, done = 0, delivered = 0;
    for (int i = 0; i < 4; i++) {
        CHECK(r[i].n_done == 1, "req %d: %d on_done", i, r[i].n_done);
        CHECK(r[i].n_tokens == r[i].n_generated, "req %d: %d tokens delivered, %d counted generated (%s)", i,
              r[i].n_tokens, r[i].n_generated, r[i].msg);
        failed += r[i].why == MOE_FINISH_ERROR && r[i].st == MOE_ENOMEM && strstr(r[i].msg, "token events");
        done += r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == 6;
        delivered += r[i].n_tokens;
    }
    CHECK(failed == 3 && done == 1 && r[3].why == MOE_FINISH_LENGTH,
          "failed %d completed %d (want 3 and 1, request 3 completed): request 0: %s", failed, done, r[0].msg);
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(st.generated_tokens == (uint64_t)delivered, "%llu tokens counted generated, %d delivered",
          (unsigned long long)st.generated_tokens, delivered);
    CHECK(fb.errors == 0, "engine protocol: %s", fb.err);
    CHECK(fb.n_used == 0, "slots in use %d", fb.n_used);
    check_accounting(s, "token events out of memory");
    moe_sched_destroy(s);
}

/* hold_path (testing: MOEFLOW_TEST_SCHED_GATE): while the file exists, steps admit requests (running up to
 * max_running, the rest waiting) and run no forward; once it is gone they run as ever. */
static void test_hold(void)
{
    char hold[] = "/tmp/moeflow-hold-XXXXXX";
    int fd = mkstemp(hold);
    REQUIRE(fd >= 0, "mkstemp: %s", strerror(errno));
    close(fd);
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 3, .micro_batch = 2, .prefill_chunk = 8, .hold_path = hold };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req r[4];
    submit_four(s, r);
    for (int i = 0; i < 3; i++)
        CHECK(moe_sched_step(s) == MOE_ENOENT, "held step %d ran", i);
    struct moe_sched_stats st;
    moe_sched_stats(s, &st);
    CHECK(st.running == 3 && st.waiting == 1 && fb.forwards == 0 && st.steps == 0,
          "held: %d running, %d waiting, %d forwards, %llu steps (want 3, 1, 0, 0)", st.running, st.waiting,
          fb.forwards, (unsigned long long)st.steps);
    unlink(hold);
    while (moe_sched_step(s) == MOE_OK) {
    }
    for (int i = 0; i < 4; i++)
        CHECK(r[i].n_done == 1 && r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == 6,
              "request %d after the hold: %d on_done, %d tokens (%s)", i, r[i].n_done, r[i].n_tokens, r[i].msg);
    CHECK(fb.errors == 0, "engine protocol: %s", fb.err);
    check_accounting(s, "after a hold");
    moe_sched_destroy(s);
}

/* Priorities with aging: a low-priority request is not starved by a stream
 * of high-priority ones; FCFS among equals. */
static void test_priority(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 1, .micro_batch = 1, .prefill_chunk = 8, .aging_steps = 2,
                                  .max_queued = 1000, .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req low, hi[200], eq[3];
    memset(&low, 0, sizeof(low));
    memset(hi, 0, sizeof(hi));
    memset(eq, 0, sizeof(eq));
    struct moe_gen_params g = gen(1);
    REQUIRE(moe_sched_submit(s, prompt_of(2, 0), 2, &g, &sc_events, &low, &low.id) == MOE_OK, "submit low");
    int low_done_at = -1;
    g.priority = 5;
    for (int i = 0; i < 200; i++) {
        REQUIRE(moe_sched_submit(s, prompt_of(2, i + 1), 2, &g, &sc_events, &hi[i], &hi[i].id) == MOE_OK,
                "submit hi %d: %s", i, moe_last_error());
        moe_sched_step(s);
        if (low.n_done && low_done_at < 0)
            low_done_at = i;
    }
    CHECK(low_done_at >= 5 && low_done_at < 30, "low-priority request finished at step %d (want after the "
          "first high ones, before step 30)", low_done_at);
    while (moe_sched_step(s) == MOE_OK) {
    }
    /* FCFS within a priority: equal requests finish in submission order */
    g.priority = 0;
    for (int i = 0; i < 3; i++)
        REQUIRE(moe_sched_submit(s, prompt_of(2, i), 2, &g, &sc_events, &eq[i], &eq[i].id) == MOE_OK, "submit eq");
    moe_sched_step(s);
    CHECK(eq[0].n_done == 1 && eq[1].n_done == 0 && eq[2].n_done == 0, "FCFS: first step ended %d %d %d",
          eq[0].n_done, eq[1].n_done, eq[2].n_done);
    moe_sched_step(s);
    CHECK(eq[1].n_done == 1 && eq[2].n_done == 0, "FCFS: second step ended %d %d", eq[1].n_done, eq[2].n_done);
    while (moe_sched_step(s) == MOE_OK) {
    }
    check_accounting(s, "priority");
    moe_sched_destroy(s);
}

/* Prompt chunks: a long prompt is not starved by a stream of short ones that each start with fewer chunks
 * received (one chunk per step here: max_running = micro_batch); passed over aging_steps steps in a row, it
 * goes first, and it decodes as alone. */
static void test_prefill_starvation(void)
{
    struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 4, .aging_steps = 4,
                                  .max_queued = 1000, .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req lng, shrt[200];
    memset(&lng, 0, sizeof(lng));
    memset(shrt, 0, sizeof(shrt));
    int lp[40], want[2];
    memcpy(lp, prompt_of(40, 99), sizeof(lp));
    struct moe_gen_params g = gen(2);
    REQUIRE(moe_sched_submit(s, lp, 40, &g, &sc_events, &lng, &lng.id) == MOE_OK, "submit long: %s",
            moe_last_error());
    g = gen(1);
    int done_at = -1;
    for (int i = 0; i < 200 && done_at < 0; i++) {
        REQUIRE(moe_sched_submit(s, prompt_of(4, i), 4, &g, &sc_events, &shrt[i], &shrt[i].id) == MOE_OK,
                "submit short %d: %s", i, moe_last_error());
        moe_sched_step(s);
        if (lng.n_done)
            done_at = i;
    }
    /* 10 chunks, each at most aging_steps + 1 steps apart, then one decode step */
    CHECK(done_at >= 0 && done_at < 60, "a 10-chunk prompt among 1-chunk ones finished at step %d (want < 60)",
          done_at);
    while (moe_sched_step(s) == MOE_OK) {
    }
    CHECK(lng.n_done == 1 && lng.why == MOE_FINISH_LENGTH && lng.n_tokens == 2 &&
          fb_reference(lp, 40, 2, true, want) == 2 && !memcmp(lng.tokens, want, sizeof(want)),
          "long prompt: done %d, %s, %d tokens", lng.n_done, moe_finish_str(lng.why), lng.n_tokens);
    for (int i = 0; i < 200 && shrt[i].id; i++)
        CHECK(shrt[i].n_done == 1 && shrt[i].why == MOE_FINISH_LENGTH && shrt[i].n_tokens == 1,
              "short %d: done %d, %s, %d tokens", i, shrt[i].n_done, moe_finish_str(shrt[i].why), shrt[i].n_tokens);
    check_accounting(s, "prefill starvation");
    moe_sched_destroy(s);
}

/* prefix_cache: a request that waits for a prefill under way sharing its prompt's beginning (to copy that
 * cache rather than compute it again) keeps its turn: a later request of equal priority does not take the
 * slot it is due, so it starts once that prefill is done, not once the later one ends; it takes the 40
 * tokens shared, and every request decodes as alone. */
static void test_prefix_wait_turn(void)
{
    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    be.seq_claim = fb_claim;
    be.seq_fork = fb_fork;
    struct moe_sched_params p = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 4, .aging_steps = 1000,
                                  .prefix_cache = true, .max_queued = 10, .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req r[3]; /* A (a 40-token prompt), B (A's prompt and one token more), C (unrelated) */
    memset(r, 0, sizeof(r));
    int pa[41], pc[4], want[3][60];
    memcpy(pa, prompt_of(40, 7), sizeof(int) * 40);
    pa[40] = 5;
    memcpy(pc, prompt_of(4, 50), sizeof(pc));
    struct moe_gen_params g = gen(60);
    REQUIRE(moe_sched_submit(s, pa, 40, &g, &sc_events, &r[0], &r[0].id) == MOE_OK, "submit A: %s", moe_last_error());
    REQUIRE(moe_sched_step(s) == MOE_OK, "step");
    g = gen(2);
    REQUIRE(moe_sched_submit(s, pa, 41, &g, &sc_events, &r[1], &r[1].id) == MOE_OK, "submit B: %s", moe_last_error());
    g = gen(60);
    REQUIRE(moe_sched_submit(s, pc, 4, &g, &sc_events, &r[2], &r[2].id) == MOE_OK, "submit C: %s", moe_last_error());
    int b_done_at = -1, steps = 0;
    for (; moe_sched_step(s) == MOE_OK && steps < 10000; steps++)
        if (r[1].n_done && b_done_at < 0)
            b_done_at = steps;
    /* A's 10 chunks (one came before B), then B's last prompt token and its 2 tokens */
    CHECK(b_done_at >= 0 && b_done_at < 20, "B, waiting for A's prefill, ended at step %d (want < 20: C, submitted "
          "after it, took its slot and it waited for A's or C's 60 tokens)", b_done_at);
    CHECK(r[1].n_cached == 40, "B took %d prompt tokens from A's cache, want 40", r[1].n_cached);
    fb_reference(pa, 40, 60, true, want[0]);
    fb_reference(pa, 41, 2, true, want[1]);
    fb_reference(pc, 4, 60, true, want[2]);
    int n_want[3] = { 60, 2, 60 };
    for (int i = 0; i < 3; i++)
        CHECK(r[i].n_done == 1 && r[i].why == MOE_FINISH_LENGTH && r[i].n_tokens == n_want[i] &&
                  !memcmp(r[i].tokens, want[i], sizeof(int) * (size_t)n_want[i]),
              "prefix wait, request %c: done %d, %s, %d tokens, or not those computed alone", 'A' + i, r[i].n_done,
              moe_finish_str(r[i].why), r[i].n_tokens);
    CHECK(fb.errors == 0, "engine protocol: %s", fb.err);
    check_accounting(s, "prefix wait");
    moe_sched_destroy(s);
    CHECK(fb.n_used == 0, "slots in use %d after the prefix wait", fb.n_used);
}

/* Five requests drained after timeout_s, told why (NULL: as moe_sched_drain): each is cancelled once,
 * its message beginning with want and saying where it was. */
static void drain_cancels(double timeout_s, const char *why, const char *want)
{
    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 8,
                                  .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    fb.delay_s = 0.001;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static struct sc_req r[5];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 5; i++) {
        struct moe_gen_params g = gen(200);
        r[i].mu = &mu;
        REQUIRE(moe_sched_submit(s, prompt_of(4, i), 4, &g, &sc_events, &r[i], &r[i].id) == MOE_OK, "submit");
    }
    REQUIRE(moe_sched_start(s) == MOE_OK, "start");
    CHECK(moe_sched_drain_why(s, timeout_s, why) == MOE_OK, "drain: %s", moe_last_error());
    for (int i = 0; i < 5; i++) {
        pthread_mutex_lock(&mu);
        CHECK(r[i].n_done == 1 && r[i].why == MOE_FINISH_CANCELLED && !strncmp(r[i].msg, want, strlen(want)) &&
              (strstr(r[i].msg, "while queued; retry elsewhere") || strstr(r[i].msg, "during ")),
              "drain (%s) req %d: done %d why %s (%s)", want, i, r[i].n_done, moe_finish_str(r[i].why), r[i].msg);
        pthread_mutex_unlock(&mu);
    }
    check_accounting(s, want);
    moe_sched_destroy(s);
    CHECK(fb.n_used == 0, "slots in use %d after drain (%s)", fb.n_used, want);
}

/* Drain with a short timeout cancels what is left, each once, saying so (or what the drain was told);
 * destroy ends queued requests of a never-started scheduler. */
static void test_drain_destroy(void)
{
    drain_cancels(0.03, NULL, "shutting down: the drain timeout passed ");
    drain_cancels(0, "the server is stopping", "the server is stopping; cancelled ");

    static struct fake_backend fb;
    struct moe_sched_backend be = fb_backend(&fb);
    struct moe_sched_params p = { .max_running = 2, .micro_batch = 2, .prefill_chunk = 8,
                                  .max_tokens_in_flight = 1 << 20 };
    struct moe_sched *s = moe_sched_create_backend(&be, &p);
    REQUIRE(s, "create: %s", moe_last_error());
    static struct sc_req r[3];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 3; i++) {
        struct moe_gen_params g = gen(5);
        REQUIRE(moe_sched_submit(s, prompt_of(4, i), 4, &g, &sc_events, &r[i], &r[i].id) == MOE_OK, "submit");
    }
    moe_sched_step(s);
    moe_sched_destroy(s);
    for (int i = 0; i < 3; i++)
        CHECK(r[i].n_done == 1 && r[i].why == MOE_FINISH_CANCELLED && r[i].tokens_after_done == 0,
              "destroy req %d: done %d why %s", i, r[i].n_done, moe_finish_str(r[i].why));
    CHECK(fb.n_used == 0, "slots in use %d after destroy", fb.n_used);
}

int main(void)
{
    test_bounds();
    test_choice_holds();
    test_choice_queue_after_admit();
    test_choice_holds_threaded();
    test_mixed_threaded();
    test_cancel();
    test_finish();
    test_reply_failed();
    test_deadline();
    test_cancel_at_deadline();
    test_failure();
    test_failure_figures();
    test_device_failure();
    test_events_nomem();
    test_hold();
    test_priority();
    test_prefill_starvation();
    test_prefix_wait_turn();
    test_drain_destroy();
    return t_result("test_sched_limits");
}
