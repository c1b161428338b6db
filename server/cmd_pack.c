/* moeflow pack: write the packed expert store of a model. */
#include "cli.h"

#include "../offload/store.h"

#include <dirent.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void pack_usage(FILE *f)
{
    fprintf(f,
        "usage: moeflow pack [--model DIR] [--out FILE] [--quiet]\n"
        "\n"
        "Writes the expert store: a header identifying the model and its layout, then one\n"
        "4 KiB-aligned record per (MoE layer, expert) holding gate, up and down weights in their\n"
        "stored dtype, each with an xxh3 checksum (format: docs/expert-store.md).  Use it with\n"
        "--store FILE on generate, trace, bench batch and serve.\n"
        "\n"
        "  -m, --model DIR  model directory (default: the bundled model or $MOEFLOW_MODEL)\n"
        "  -o, --out FILE   output file (default: DIR/experts.moestore)\n"
        "  -q, --quiet      no progress output\n"
        "  -h, --help       this help\n");
}

struct progress {
    double t0, last;
    bool tty;
};

static void on_progress(void *ud, uint32_t done, uint32_t total)
{
    struct progress *p = ud;
    double now = moe_now();
    if (done != total && now - p->last < 0.5) return;
    p->last = now;
    fprintf(stderr, "%spacking: %u/%u experts (%.0f %%), %.1f s%s", p->tty ? "\r" : "", done, total,
            100.0 * done / total, now - p->t0, p->tty && done != total ? "" : "\n");
    fflush(stderr);
}

/* The name of the file of model directory dir that the model is read from (weights, configuration,
 * tokenizer, template) and that path names too, or NULL: writing the store there would destroy it. */
static const char *model_input(const char *dir, const char *path)
{
    static const char *const kinds[] = { ".safetensors", ".json", ".model", ".jinja", ".txt" };
    static char name[256];
    struct stat out_st, st;
    if (stat(path, &out_st) != 0 || !S_ISREG(out_st.st_mode))
        return NULL; /* a new file (or a pipe, refused before) replaces nothing */
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    const char *found = NULL;
    char p[4200];
    for (struct dirent *de; !found && (de = readdir(d));) {
        size_t n = strlen(de->d_name);
        bool input = false;
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
            input |= n > strlen(kinds[k]) && !strcmp(de->d_name + n - strlen(kinds[k]), kinds[k]);
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        if (input && stat(p, &st) == 0 && st.st_dev == out_st.st_dev && st.st_ino == out_st.st_ino) {
            snprintf(name, sizeof(name), "%s", de->d_name);
            found = name;
        }
    }
    closedir(d);
    return found;
}

int moe_cmd_pack(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "out", required_argument, NULL, 'o' },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL, *out = NULL;
    bool quiet = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:o:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!moe_cli_check_model("pack", optarg)) return 2;
            dir = optarg;
            break;
        case 'o': out = optarg; break;
        case 'q': quiet = true; break;
        case 'h': return moe_cli_help("pack", argc, argv, ":m:o:qh", opts, pack_usage);
        default: return moe_cli_bad_option("pack", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("pack", argc, argv, NULL)) return 2;
    if (out && !moe_cli_check_out("pack", "--out", out, false)) return 2;
    if (!dir) dir = moe_default_model_dir();
    char def_out[4200];
    if (!out) {
        snprintf(def_out, sizeof(def_out), "%s/experts.moestore", dir);
        out = def_out;
    }
    const char *input = model_input(dir, out);
    if (input) {
        fprintf(stderr, "moeflow pack: --out %s is the model's own %s: name another file (default: "
                        "DIR/experts.moestore)\n", out, input);
        return 2;
    }
    struct moe_model *m = NULL;
    if (!moe_cli_open_model("pack", dir, &m, NULL)) return 1;
    /* the default output is checked as a given one is, before the work: a directory or a pipe
     * there, or a model directory that cannot be written */
    if (out == def_out && !moe_cli_check_out("pack", "default --out", out, false)) {
        moe_model_close(m);
        return 2;
    }
    struct progress pr = { .t0 = moe_now(), .tty = isatty(2) };
    enum moe_status st = moe_store_pack(m, out, quiet ? NULL : on_progress, &pr);
    if (st) {
        fprintf(stderr, "moeflow pack: %s\n", moe_last_error());
        moe_model_close(m);
        return 1;
    }
    struct moe_store_info in;
    moe_store_info_of(m, &in);
    if (!quiet)
        fprintf(stderr, "wrote %s: %u records of %llu bytes (%s), %.1f s\n", out, in.n_records,
                (unsigned long long)in.record_bytes, moe_dtype_name(in.dtype), moe_now() - pr.t0);
    moe_model_close(m);
    return 0;
}
