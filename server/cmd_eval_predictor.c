/* moeflow eval-predictor: recall@K and precision@K of a routing predictor per
 * MoE layer and lookahead distance, on a text decoded token by token through
 * the real engine (teacher forcing). */
#include "cli.h"

#include "../model/tokenizer.h"
#include "../predictor/drive.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
        "usage: moeflow eval-predictor [--model DIR] --text FILE --predictor SPEC [options]\n"
        "\n"
        "Decodes the text token by token (batch 1, teacher forcing) with the predictor attached and\n"
        "scores every prediction against the routing that follows: recall@K = share of the actual\n"
        "top-k experts among the K best predicted, precision@K = share of the K best predicted that\n"
        "were used.  Distances: 'path' = predicted at step start (before layer 0), d = predicted\n"
        "while the MoE layer d before the target was computing, 'path+h' = predicted at step start\n"
        "for the token h steps later (path files of horizon > h).  Use text the predictor was not\n"
        "trained on.\n"
        "\n"
        "  --model DIR           model directory (default: the bundled model)\n"
        "  --text FILE           UTF-8 text\n"
        "  --predictor SPEC      gate[:D] | path[:FILE] | history | path+gate[:FILE] | auto\n"
        "  --k K                 K of recall@K (default: the model's top_k)\n"
        "  --seq-len N           tokens per sequence (default 512, or the model's context if shorter)\n"
        "  --max-tokens N        evaluate at most N tokens (default 4096)\n"
        "  --threads N           threads of the CPU backend's pool (default 1)\n"
        "  --json                one JSON object: recall_at_k and precision_at_k map a distance\n"
        "                        (\"path\", \"1\", \"2\", ..., \"path+1\", ...) to one value per MoE layer\n"
        "                        (null: none)\n"
        "  -h, --help            this help\n");
}

enum { O_MODEL = 256, O_TEXT, O_PRED, O_K, O_SEQ, O_MAXTOK, O_THREADS, O_JSON };

static void print_json_map(const struct moe_pred_eval *ev, bool recall)
{
    bool first = true;
    printf("{");
    for (int slot = 0; slot < MOE_EVAL_SLOTS; slot++) {
        bool any = false;
        double r, p;
        for (int mi = 0; mi < ev->n_moe; mi++) any |= moe_pred_eval_get(ev, slot, mi, &r, &p);
        if (!any) continue;
        char name[16];
        moe_pred_eval_slot_name(slot, name, sizeof name);
        printf("%s\"%s\":[", first ? "" : ",", name);
        first = false;
        for (int mi = 0; mi < ev->n_moe; mi++) {
            if (moe_pred_eval_get(ev, slot, mi, &r, &p))
                printf("%s%.6f", mi ? "," : "", recall ? r : p);
            else
                printf("%snull", mi ? "," : "");
        }
        printf("]");
    }
    printf("}");
}

int moe_cmd_eval_predictor(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, O_MODEL },
        { "text", required_argument, NULL, O_TEXT },
        { "predictor", required_argument, NULL, O_PRED },
        { "k", required_argument, NULL, O_K },
        { "seq-len", required_argument, NULL, O_SEQ },
        { "max-tokens", required_argument, NULL, O_MAXTOK },
        { "threads", required_argument, NULL, O_THREADS },
        { "json", no_argument, NULL, O_JSON },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct moe_cli_text_opts to = { .model_dir = moe_default_model_dir(), .seq_len = 512, .max_tokens = 4096,
                                    .threads = 1 };
    const char *pred_s = NULL;
    long K = 0;
    bool json = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL:
        case O_TEXT:
        case O_SEQ:
        case O_MAXTOK:
        case O_THREADS:
            if (!moe_cli_text_opt("eval-predictor", opts[c - O_MODEL].name, optarg, &to)) return 2;
            break;
        case O_PRED: pred_s = optarg; break;
        case O_K:
            if (!moe_cli_opt_long("eval-predictor", opts[c - O_MODEL].name, optarg, 1, 1 << 16, &K)) return 2;
            break;
        case O_JSON: json = true; break;
        case 'h': return moe_cli_help("eval-predictor", argc, argv, ":h", opts, usage);
        default: return moe_cli_bad_option("eval-predictor", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("eval-predictor", argc, argv, NULL)) return 2;
    if (!to.text || !pred_s) {
        fprintf(stderr, "moeflow eval-predictor: needs --text and --predictor (see --help)\n");
        return 2;
    }
    struct moe_pred_spec spec;
    int spec_rc = moe_cli_pred_spec("eval-predictor", pred_s, to.model_dir, &spec);
    if (spec_rc) return spec_rc;
    if (spec.kind == MOE_PRED_NONE) { /* it would decode the whole text to print a table of no row */
        fprintf(stderr, "moeflow eval-predictor: --predictor none predicts nothing, so there is nothing to measure "
                        "(give gate[:D], path[:FILE], history, path+gate[:FILE] or auto)\n");
        return 2;
    }
    int rc = 1;
    int *ids = NULL;
    size_t n = 0;
    struct moe_pred_eval ev = { 0 };
    struct moe_tokenizer *tok = NULL;
    struct moe_model *m = NULL;
    int open_rc = moe_cli_open_for_text("eval-predictor", &to, &m, &tok);
    if (open_rc) return open_rc;
    if (K == 0) K = m->cfg.top_k;
    if (K > m->cfg.n_experts) {
        fprintf(stderr, "moeflow eval-predictor: --k %ld exceeds the model's %d experts\n", K, m->cfg.n_experts);
        rc = 2;
        goto out;
    }
    if (!moe_cli_read_text("eval-predictor", tok, to.text, (size_t)to.max_tokens, &ids, &n)) goto out;
    int n_moe = moe_config_n_moe(&m->cfg);
    if (moe_pred_eval_init(&ev, n_moe, m->cfg.n_experts, m->cfg.top_k, (int)K)) {
        fprintf(stderr, "moeflow eval-predictor: %s\n", moe_last_error());
        goto out;
    }
    struct moe_drive_params dp = { .spec = &spec, .spec_arg = pred_s, .seq_len = (int)to.seq_len, .n_threads = to.threads, .eval = &ev };
    double t0 = moe_now();
    if (moe_drive_text(m, ids, n, &dp)) {
        fprintf(stderr, "moeflow eval-predictor: %s\n", moe_last_error());
        goto out;
    }
    if (json) {
        printf("{\"predictor\":");
        moe_cli_json_string(stdout, pred_s);
        printf(",\"k\":%ld,\"tokens\":%zu,\"moe_layers\":%d,\"recall_at_k\":", K, n, n_moe);
        print_json_map(&ev, true);
        printf(",\"precision_at_k\":");
        print_json_map(&ev, false);
        printf("}\n");
    } else {
        printf("predictor %s on %s: %zu tokens in %.1f s, recall@%ld / precision@%ld per MoE layer\n", pred_s,
               to.text, n, moe_now() - t0, K, K);
        printf("%-9s", "distance");
        for (int mi = 0; mi < n_moe; mi++) printf("  layer %-6d", mi);
        printf("\n");
        for (int slot = 0; slot < MOE_EVAL_SLOTS; slot++) {
            double r, p;
            bool any = false;
            for (int mi = 0; mi < n_moe; mi++) any |= moe_pred_eval_get(&ev, slot, mi, &r, &p);
            if (!any) continue;
            char name[16];
            moe_pred_eval_slot_name(slot, name, sizeof name);
            printf("%-9s", name);
            for (int mi = 0; mi < n_moe; mi++) {
                if (moe_pred_eval_get(&ev, slot, mi, &r, &p))
                    printf("  %.3f/%.3f ", r, p); /* 14 columns, as "  layer %-6d" */
                else
                    printf("  %-11s ", "-");
            }
            printf("\n");
        }
    }
    rc = 0;
out:
    moe_pred_eval_free(&ev);
    free(ids);
    moe_tokenizer_free(tok);
    moe_model_close(m);
    return rc;
}
