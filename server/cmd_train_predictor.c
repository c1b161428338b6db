/* moeflow train-predictor: trains the routing-path predictor (an MLP from the
 * token's embedding and the previous token's routing to every MoE layer's
 * experts) on a routing trace, with a held-out split and early stopping, and
 * writes it as safetensors. */
#include "cli.h"

#include "../model/tokenizer.h"
#include "../model/utf8.h"
#include "../offload/trace.h"
#include "../predictor/drive.h"
#include "../predictor/path_model.h"

#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
        "usage: moeflow train-predictor [--model DIR] (--trace F.jsonl | --text FILE) --out P.safetensors\n"
        "                               [options]\n"
        "\n"
        "Trains the path predictor: input = the token's embedding and the previous token's routing,\n"
        "output = one sigmoid per (MoE layer, expert); multi-label cross-entropy, Adam, the last\n"
        "--val-frac of the samples held out, the best held-out epoch kept (early stopping).\n"
        "\n"
        "  --model DIR           model the trace was recorded with (default: the bundled model)\n"
        "  --trace FILE          routing trace (moeflow trace) recorded with the model: its decoder\n"
        "                        and MoE layers, experts and top_k must be the model's\n"
        "  --text FILE           or: route this text with the engine first (prefill, --seq-len)\n"
        "  --seq-len N           tokens per sequence with --text (default 512, or the\n"
        "                        model's context if shorter)\n"
        "  --out FILE            predictor file to write (safetensors)\n"
        "  --width N             hidden units (default 384)\n"
        "  --horizon H           1: heads for this token's routing; 2..8: also those of the next\n"
        "                        H-1 tokens, which rank evictions steps ahead (default 2)\n"
        "  --hist-decay D        0 <= D <= 0.999; above 0, also input the sequence's recent routing, a\n"
        "                        moving average of the earlier tokens' experts decayed by D per token\n"
        "                        (default 0: no such input)\n"
        "  --context             also input the previous token's final hidden state (the model's state\n"
        "                        its logits came from); needs --text (traces hold no hidden states)\n"
        "  --epochs N            at most N epochs (default 40)\n"
        "  --batch N             samples per Adam step (default 128)\n"
        "  --lr X                Adam step size (default 0.002)\n"
        "  --weight-decay X      decoupled weight decay (default 0.0001)\n"
        "  --val-frac X          held-out fraction, from the end, 0 < X <= 0.5 (default 0.1)\n"
        "  --patience N          stop after N epochs without held-out improvement (default 3)\n"
        "  --seed N              initialisation and shuffling seed (default 1)\n"
        "  --threads N           threads of the training (OpenBLAS) and of the routing pass (default 2)\n"
        "  --quiet               no progress lines (routing the text, epochs)\n"
        "  -h, --help            this help\n");
}

enum { O_MODEL = 256, O_TRACE, O_TEXT, O_SEQ, O_OUT, O_WIDTH, O_EPOCHS, O_BATCH, O_LR, O_WD, O_VAL, O_PAT,
       O_SEED, O_THREADS, O_QUIET, O_HORIZON, O_HIST, O_CONTEXT };

int moe_cmd_train_predictor(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, O_MODEL },
        { "trace", required_argument, NULL, O_TRACE },
        { "text", required_argument, NULL, O_TEXT },
        { "seq-len", required_argument, NULL, O_SEQ },
        { "out", required_argument, NULL, O_OUT },
        { "width", required_argument, NULL, O_WIDTH },
        { "epochs", required_argument, NULL, O_EPOCHS },
        { "batch", required_argument, NULL, O_BATCH },
        { "lr", required_argument, NULL, O_LR },
        { "weight-decay", required_argument, NULL, O_WD },
        { "val-frac", required_argument, NULL, O_VAL },
        { "patience", required_argument, NULL, O_PAT },
        { "seed", required_argument, NULL, O_SEED },
        { "threads", required_argument, NULL, O_THREADS },
        { "quiet", no_argument, NULL, O_QUIET },
        { "horizon", required_argument, NULL, O_HORIZON },
        { "hist-decay", required_argument, NULL, O_HIST },
        { "context", no_argument, NULL, O_CONTEXT },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct moe_cli_text_opts to = { .model_dir = moe_default_model_dir(), .seq_len = 512, .threads = 2 };
    const char *trace_path = NULL, *out_path = NULL;
    long width = 384, horizon = 2, epochs = 40, batch = 128, patience = 3, seed = 1;
    double lr = 2e-3, wd = 1e-4, val = 0.1, hist_decay = 0;
    bool quiet = false, context = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL:
        case O_TEXT:
        case O_SEQ:
        case O_THREADS:
            if (!moe_cli_text_opt("train-predictor", opts[c - O_MODEL].name, optarg, &to)) return 2;
            break;
        case O_TRACE:
            if (!moe_cli_check_in("train-predictor", "--trace", optarg)) return 2;
            trace_path = optarg;
            break;
        case O_OUT: out_path = optarg; break;
        case O_WIDTH:
            if (!moe_cli_opt_long("train-predictor", opts[c - O_MODEL].name, optarg, 1, 16384, &width)) return 2;
            break;
        case O_HORIZON:
            if (!moe_cli_opt_long("train-predictor", opts[c - O_MODEL].name, optarg, 1, MOE_PATH_MAX_HORIZON,
                                  &horizon))
                return 2;
            break;
        case O_EPOCHS:
            if (!moe_cli_opt_long("train-predictor", opts[c - O_MODEL].name, optarg, 1, 100000, &epochs)) return 2;
            break;
        case O_BATCH:
            if (!moe_cli_opt_long("train-predictor", opts[c - O_MODEL].name, optarg, 1, 65536, &batch)) return 2;
            break;
        case O_LR:
            if (!moe_cli_opt_double("train-predictor", opts[c - O_MODEL].name, optarg, 1e-9, 10, false, &lr)) return 2;
            break;
        case O_WD:
            if (!moe_cli_opt_double("train-predictor", opts[c - O_MODEL].name, optarg, 0, 1, false, &wd)) return 2;
            break;
        case O_VAL:
            if (!moe_cli_opt_double("train-predictor", opts[c - O_MODEL].name, optarg, 0, 0.5, true, &val)) return 2;
            break;
        case O_HIST:
            if (!moe_cli_opt_double("train-predictor", opts[c - O_MODEL].name, optarg, 0, 0.999, false, &hist_decay))
                return 2;
            break;
        case O_PAT:
            if (!moe_cli_opt_long("train-predictor", opts[c - O_MODEL].name, optarg, 1, 1000, &patience)) return 2;
            break;
        case O_SEED:
            if (!moe_cli_opt_long("train-predictor", opts[c - O_MODEL].name, optarg, 0, 1L << 62, &seed)) return 2;
            break;
        case O_QUIET: quiet = true; break;
        case O_CONTEXT: context = true; break;
        case 'h': return moe_cli_help("train-predictor", argc, argv, ":h", opts, usage);
        default: return moe_cli_bad_option("train-predictor", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("train-predictor", argc, argv, NULL)) return 2;
    if (out_path && !moe_cli_check_out("train-predictor", "--out", out_path, false)) return 2;
    if (!out_path || (!trace_path) == (!to.text)) {
        fprintf(stderr, "moeflow train-predictor: needs --out and exactly one of --trace or --text (see --help)\n");
        return 2;
    }
    if (!moe_cli_check_not_input("train-predictor", "--out", out_path, "--trace", trace_path, "--text", to.text, NULL))
        return 2;
    if (to.have_seq_len && !to.text) {
        fprintf(stderr, "moeflow train-predictor: --seq-len cuts --text into sequences; a --trace keeps its own\n");
        return 2;
    }
    if (context && !to.text) {
        fprintf(stderr, "moeflow train-predictor: --context needs --text (a routing trace holds no hidden states)\n");
        return 2;
    }

    int rc = 1;
    struct moe_trace *tr = NULL;
    int *toks = NULL, *seqs = NULL, *poss = NULL, *experts = NULL, *prev = NULL, *next = NULL;
    float *emb = NULL, *hist = NULL, *fin = NULL, *ctx = NULL;
    char *source = NULL; /* the "source" metadata, as UTF-8 */
    struct moe_path_model *pm = NULL;
    size_t n = 0;
    struct moe_tokenizer *tok = NULL;
    struct moe_model *m = NULL;
    int open_rc = moe_cli_open_for_text("train-predictor", &to, &m, to.text ? &tok : NULL);
    if (open_rc) return open_rc;
    const struct moe_config *cfg = &m->cfg;
    int n_moe = moe_config_n_moe(cfg);
    openblas_set_num_threads(to.threads);
    if (trace_path) {
        if (!moe_cli_check_readable("train-predictor", "--trace", trace_path, false, "a routing trace, as moeflow "
                                    "trace writes"))
            goto out;
        if (moe_trace_load(trace_path, &tr)) {
            moe_cli_file_error("train-predictor", "--trace", trace_path);
            goto out;
        }
        if (tr->info.experts != cfg->n_experts || tr->info.top_k != cfg->top_k || tr->info.n_moe != n_moe) {
            fprintf(stderr,
                    "moeflow train-predictor: %s has %d MoE layers x %d experts, top-%d; the model %s has %d x %d, "
                    "top-%d (record the trace with this model)\n",
                    trace_path, tr->info.n_moe, tr->info.experts, tr->info.top_k, to.model_dir, n_moe, cfg->n_experts,
                    cfg->top_k);
            goto out;
        }
        if (!moe_trace_layers_match(&tr->info, cfg)) {
            /* the same counts, other layers: the heads of MoE layer i would learn another decoder layer's
             * routing (a model with dense layers first numbers its MoE layers from there) */
            int ml[MOE_MAX_LAYERS], nm = 0;
            for (int l = 0; l < cfg->n_layers; l++)
                if (cfg->is_moe[l]) ml[nm++] = l;
            char tl[256], mlist[256];
            moe_trace_layers_str(tr->info.moe_layers, tr->info.n_moe, tl, sizeof tl);
            moe_trace_layers_str(ml, nm, mlist, sizeof mlist);
            fprintf(stderr,
                    "moeflow train-predictor: %s was recorded with MoE layers at decoder layers %s of %d (model "
                    "%s); the model %s has them at %s of %d: give --model the model the trace was recorded with, "
                    "or record the trace with this one (moeflow trace --model %s)\n",
                    trace_path, tl, tr->info.layers, tr->info.model, to.model_dir, mlist, cfg->n_layers, to.model_dir);
            goto out;
        }
        if (moe_path_model_other_model(tr->info.model, to.model_dir)) {
            char name[4096];
            moe_model_dir_name(to.model_dir, name, sizeof name);
            fprintf(stderr, "moeflow train-predictor: warning: trace %s was recorded with %s; the model is %s "
                            "(the shapes match; --model names the model the trace was recorded with)\n",
                    trace_path, tr->info.model, name);
        }
        n = tr->n_tokens;
        toks = tr->token;
        seqs = tr->seq;
        poss = tr->pos;
        experts = tr->experts;
    } else {
        if (!moe_cli_read_text("train-predictor", tok, to.text, 0, &toks, &n)) goto out;
        if (moe_drive_route(m, toks, n, (int)to.seq_len, 256, to.threads, quiet ? 0 : 5, &experts, &seqs, &poss,
                            context ? &fin : NULL)) {
            fprintf(stderr, "moeflow train-predictor: %s\n", moe_last_error());
            goto out;
        }
    }
    if (n > (size_t)1 << 30) { /* before the per-sample arrays are allocated for them */
        fprintf(stderr, "moeflow train-predictor: %zu samples, more than 2^30: train on a shorter trace or text\n", n);
        goto out;
    }
    size_t row = (size_t)n_moe * (size_t)cfg->top_k;
    prev = malloc(sizeof(int) * (n ? n : 1) * row);
    next = malloc(sizeof(int) * (n ? n : 1) * row);
    emb = malloc(sizeof(float) * (size_t)cfg->vocab * (size_t)cfg->hidden);
    if (!prev || !next || !emb) {
        fprintf(stderr, "moeflow train-predictor: out of memory for %zu samples\n", n);
        goto out;
    }
    /* a token continues its sequence when its previous token is known: prev[i * row] >= 0 */
    moe_path_neighbours(experts, seqs, poss, n, row, prev, next);
    moe_wview_to_f32(&m->embed, emb);
    struct moe_path_opts po = { .horizon = (int)horizon, .hist_decay = (float)hist_decay, .context = context };
    pm = moe_path_model_create_ex(n_moe, cfg->n_experts, cfg->top_k, cfg->hidden, (int)width, &po, (uint64_t)seed);
    if (!pm) {
        fprintf(stderr, "moeflow train-predictor: %s\n", moe_last_error());
        goto out;
    }
    moe_model_dir_name(m->dir, pm->model_name, sizeof pm->model_name); /* as the load compares it */
    if (hist_decay > 0) {
        /* each sample's history block: the moving average of its sequence's earlier routing */
        size_t ne = (size_t)n_moe * (size_t)cfg->n_experts;
        hist = calloc((n ? n : 1) * ne, sizeof(float));
        if (!hist) {
            fprintf(stderr, "moeflow train-predictor: out of memory for %zu history rows\n", n);
            goto out;
        }
        for (size_t i = 1; i < n; i++)
            if (prev[i * row] >= 0) {
                memcpy(hist + i * ne, hist + (i - 1) * ne, sizeof(float) * ne);
                moe_path_model_hist_update(pm, hist + i * ne, prev + i * row);
            }
    }
    if (context) {
        /* each sample's context block: the final hidden state of its sequence's previous token */
        size_t H = (size_t)cfg->hidden;
        ctx = calloc((n ? n : 1) * H, sizeof(float));
        if (!ctx) {
            fprintf(stderr, "moeflow train-predictor: out of memory for %zu context rows\n", n);
            goto out;
        }
        for (size_t i = 1; i < n; i++)
            if (prev[i * row] >= 0) memcpy(ctx + i * H, fin + (i - 1) * H, sizeof(float) * H);
    }
    struct moe_path_data d = { .n = (int)n, .hist = hist, .ctx = ctx, .token = toks, .prev = prev, .target = experts, .next = next, .emb = emb,
                               .vocab = cfg->vocab };
    struct moe_path_train_params tp = { .max_epochs = (int)epochs, .batch = (int)batch, .lr = (float)lr,
                                        .weight_decay = (float)wd, .val_frac = (float)val,
                                        .patience = (int)patience, .seed = (uint64_t)seed, .verbose = !quiet };
    struct moe_path_train_report rep;
    if (moe_path_model_train(pm, &d, &tp, &rep)) {
        fprintf(stderr, "moeflow train-predictor: %s\n", moe_last_error());
        goto out;
    }
    char s_n[32], s_ep[32], s_vr[32];
    snprintf(s_n, sizeof s_n, "%d", rep.n_train);
    snprintf(s_ep, sizeof s_ep, "%d", rep.best_epoch);
    snprintf(s_vr, sizeof s_vr, "%.4f", rep.val_recall);
    /* the file names the source it was trained from; a path that is not UTF-8 is written with
     * U+FFFD for its other bytes, as the file's header is JSON text */
    const char *src = trace_path ? trace_path : to.text;
    source = malloc(3 * strlen(src) + 1);
    if (!source) {
        fprintf(stderr, "moeflow train-predictor: out of memory\n");
        goto out;
    }
    source[moe_utf8_lossy(src, strlen(src), source, false, NULL)] = 0;
    const char *meta[] = { "train_samples", s_n, "best_epoch", s_ep, "val_recall_at_top_k", s_vr,
                           "source", source, NULL };
    if (moe_path_model_save(pm, out_path, meta)) {
        fprintf(stderr, "moeflow train-predictor: %s\n", moe_last_error());
        goto out;
    }
    printf("trained on %d samples (%d held out): %d epochs, best %d, held-out loss %.5f, recall@%d %.4f, %.1f s\n",
           rep.n_train, rep.n_val, rep.epochs, rep.best_epoch, rep.val_loss, cfg->top_k, rep.val_recall, rep.seconds);
    printf("wrote %s\n", out_path);
    rc = 0;
out:
    if (tr) {
        moe_trace_free(tr);
    } else {
        free(toks);
        free(seqs);
        free(poss);
        free(experts);
    }
    free(source);
    free(prev);
    free(next);
    free(hist);
    free(fin);
    free(ctx);
    free(emb);
    moe_path_model_free(pm);
    moe_tokenizer_free(tok);
    moe_model_close(m);
    return rc;
}
