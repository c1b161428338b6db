/* Pieces shared by the moeflow subcommands: option values parsed (common/parse.c) with the message that
 * gives the range, opening a model directory with its tokenizer, and streaming a token's bytes. */
#include "cli.h"

#include "../common/moe.h"
#include "../kernels/backend.h"
#include "../model/model.h"
#include "../model/tokenizer.h"
#include "../model/utf8.h"
#include "../offload/runtime.h"
#include "../predictor/predictor.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool moe_cli_opt_long(const char *cmd, const char *name, const char *s, long lo, long hi, long *out)
{
    if (moe_parse_long(s, lo, hi, out)) return true;
    fprintf(stderr, "moeflow %s: --%s '%s': expected an integer in [%ld, %ld]\n", cmd, name, s, lo, hi);
    return false;
}

bool moe_cli_opt_int(const char *cmd, const char *name, const char *s, int lo, int hi, int *out)
{
    long v;
    if (!moe_cli_opt_long(cmd, name, s, lo, hi, &v)) return false;
    *out = (int)v;
    return true;
}

bool moe_cli_opt_threads(const char *cmd, const char *s, int *out)
{
    return moe_cli_opt_int(cmd, "threads", s, 1, MOE_CPU_MAX_THREADS, out);
}

bool moe_cli_check_threads(const char *cmd, int threads, const struct moe_offload_opts *o)
{
    if (threads <= 1 || o->backend != MOE_COMPUTE_CUDA) return true;
    fprintf(stderr, "moeflow %s: --threads %d sizes the cpu backend's pool and --backend cuda computes on the GPU, "
            "where no pool runs: drop --threads (or use --backend cpu)\n", cmd, threads);
    return false;
}

bool moe_cli_opt_double(const char *cmd, const char *name, const char *s, double lo, double hi, bool above_lo,
                        double *out)
{
    double v;
    if (moe_parse_double_in(s, lo, hi, &v) && (!above_lo || v > lo)) {
        *out = v;
        return true;
    }
    fprintf(stderr, "moeflow %s: --%s '%s': expected a number in %c%g, %g]\n", cmd, name, s, above_lo ? '(' : '[',
            lo, hi);
    return false;
}

bool moe_cli_no_operands(const char *cmd, int argc, char **argv, const char *hint)
{
    if (optind >= argc) return true;
    fprintf(stderr, "moeflow %s: unexpected argument '%s' (%s)\n", cmd, argv[optind], hint ? hint : "see --help");
    return false;
}

int moe_cli_help(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *opts,
                 void (*usage)(FILE *))
{
    while (getopt_long(argc, argv, shortopts, opts, NULL) != -1) {
    }
    if (optind < argc) {
        fprintf(stderr, "moeflow %s: unexpected argument '%s' with --help (moeflow help CMD prints a command's "
                "options)\n", cmd, argv[optind]);
        return 2;
    }
    usage(stdout);
    return 0;
}

int moe_cli_bad_option(const char *cmd, int c, char **argv, const struct option *opts)
{
    const char *arg = argv[optind - 1];
    /* a short option's letter is optopt (argv[optind - 1] may be the cluster before it); a long option that
     * takes no value but was given one comes back with optopt set and an '=' in its word */
    if (strncmp(arg, "--", 2) || (c == '?' && optopt && !strchr(arg, '='))) {
        if (c == ':') fprintf(stderr, "moeflow %s: -%c needs a value (see --help)\n", cmd, optopt);
        else fprintf(stderr, "moeflow %s: unknown option '-%c' (see --help)\n", cmd, optopt);
        return 2;
    }
    const char *name = arg + 2;
    int n = (int)strcspn(name, "=");
    if (c == ':') {
        fprintf(stderr, "moeflow %s: --%.*s needs a value (see --help)\n", cmd, n, name);
        return 2;
    }
    if (optopt) {
        fprintf(stderr, "moeflow %s: --%.*s takes no value\n", cmd, n, name);
        return 2;
    }
    int matches = 0;
    for (const struct option *o = opts; o->name; o++)
        matches += !strncmp(o->name, name, (size_t)n);
    if (n == 0 || matches < 2) {
        fprintf(stderr, "moeflow %s: unknown option '--%.*s' (see --help)\n", cmd, n, name);
        return 2;
    }
    fprintf(stderr, "moeflow %s: '--%.*s' is ambiguous (", cmd, n, name);
    const char *sep = "";
    for (const struct option *o = opts; o->name; o++)
        if (!strncmp(o->name, name, (size_t)n)) {
            fprintf(stderr, "%s--%s", sep, o->name);
            sep = ", ";
        }
    fprintf(stderr, "): spell it out\n");
    return 2;
}

int moe_cli_pred_spec(const char *cmd, const char *spec_s, const char *dir, struct moe_pred_spec *spec)
{
    enum moe_status st = moe_pred_spec_parse(spec_s, dir, spec);
    if (st == MOE_OK) return 0;
    fprintf(stderr, "moeflow %s: %s\n", cmd, moe_last_error());
    return moe_cli_failure_exit(st);
}

const char *moe_cli_model_hint(const char *dir)
{
    const char *env = getenv("MOEFLOW_MODEL");
    return env && *env && !strcmp(env, dir) ? " (set --model DIR, or $MOEFLOW_MODEL, which names this directory)"
                                             : " (set --model DIR)";
}

bool moe_cli_open_model(const char *cmd, const char *dir, struct moe_model **m, struct moe_tokenizer **tok)
{
    *m = moe_model_open(dir);
    if (!*m) {
        /* point at --model only when dir is not a model directory at all */
        char cfg[4200];
        snprintf(cfg, sizeof(cfg), "%s/config.json", dir);
        fprintf(stderr, "moeflow %s: %s%s\n", cmd, moe_last_error(), access(cfg, F_OK) == 0 ? "" : moe_cli_model_hint(dir));
        return false;
    }
    if (!tok) return true;
    *tok = moe_tokenizer_load_dir(dir);
    if (!*tok) {
        fprintf(stderr, "moeflow %s: %s (set --model DIR to a model with its tokenizer.json)\n", cmd,
                moe_last_error());
    } else if (moe_tokenizer_vocab_size(*tok) > (*m)->cfg.vocab) {
        fprintf(stderr, "moeflow %s: %s/tokenizer.json has %d tokens, more than the model's vocabulary of %d "
                "(vocab_size in %s/config.json): the two files are not of the same model\n", cmd, dir,
                moe_tokenizer_vocab_size(*tok), (*m)->cfg.vocab, dir);
        moe_tokenizer_free(*tok);
        *tok = NULL;
    } else {
        return true;
    }
    moe_model_close(*m);
    *m = NULL;
    return false;
}

bool moe_cli_write_token(FILE *f, const struct moe_tokenizer *t, int id, struct moe_tok_stream *x)
{
    size_t n;
    const char *s = moe_tokenizer_token_bytes(t, id, NULL, 0) < 0 ? NULL : moe_tokenizer_stream(t, x, id, &n);
    return s && fwrite(s, 1, n, f) == n;
}

bool moe_cli_write_end(FILE *f, struct moe_tok_stream *x)
{
    size_t n;
    const char *s = moe_tokenizer_stream_end(x, &n);
    bool ok = s && fwrite(s, 1, n, f) == n;
    moe_tok_stream_free(x);
    return ok;
}

bool moe_cli_check_seq_len(const char *cmd, long *seq_len, bool given, const struct moe_model *m)
{
    if (*seq_len <= m->cfg.max_pos) return true;
    if (!given) {
        *seq_len = m->cfg.max_pos;
        return true;
    }
    fprintf(stderr, "moeflow %s: --seq-len %ld exceeds the model's context of %d tokens; lower it\n", cmd, *seq_len,
            m->cfg.max_pos);
    return false;
}

bool moe_cli_capacity(const char *cmd, double frac, long slots, int top_k, long *cap)
{
    if (frac > 0) *cap = (long)floor(frac * (double)slots);
    if (*cap > slots) *cap = slots; /* room for every expert: more slots change nothing */
    if (*cap >= top_k) return true;
    fprintf(stderr, "moeflow %s: %s gives %ld expert slots, fewer than the %d experts one token needs per layer "
            "(top_k): raise --capacity or --capacity-frac\n", cmd, frac > 0 ? "--capacity-frac" : "--capacity", *cap,
            top_k);
    return false;
}

bool moe_cli_text_opt(const char *cmd, const char *name, const char *arg, struct moe_cli_text_opts *o)
{
    if (!strcmp(name, "model")) {
        if (!moe_cli_check_model(cmd, arg)) return false;
        o->model_dir = arg;
    } else if (!strcmp(name, "text")) {
        if (!moe_cli_check_in(cmd, "--text", arg)) return false;
        o->text = arg;
    } else if (!strcmp(name, "seq-len")) {
        if (!moe_cli_opt_long(cmd, name, arg, 1, 1 << 20, &o->seq_len)) return false;
        o->have_seq_len = true;
    } else if (!strcmp(name, "max-tokens")) {
        return moe_cli_opt_long(cmd, name, arg, 1, 1L << 30, &o->max_tokens);
    } else if (!strcmp(name, "threads")) {
        return moe_cli_opt_threads(cmd, arg, &o->threads);
    }
    return true;
}

int moe_cli_open_for_text(const char *cmd, struct moe_cli_text_opts *o, struct moe_model **m,
                          struct moe_tokenizer **tok)
{
    if (!moe_cli_open_model(cmd, o->model_dir, m, tok)) return 1;
    /* --seq-len cuts --text alone */
    if (!o->text || moe_cli_check_seq_len(cmd, &o->seq_len, o->have_seq_len, *m)) return 0;
    if (tok) {
        moe_tokenizer_free(*tok);
        *tok = NULL;
    }
    moe_model_close(*m);
    *m = NULL;
    return 2;
}

bool moe_cli_read_text(const char *cmd, const struct moe_tokenizer *tok, const char *path, size_t max_tokens,
                       int **ids, size_t *n)
{
    char *text = NULL;
    size_t len = 0;
    *ids = NULL;
    *n = 0;
    if (!moe_cli_check_readable(cmd, "--text", path, true, "UTF-8 text")) return false;
    if (moe_read_file(path, &text, &len, (size_t)1 << 30)) { /* the message names the file */
        fprintf(stderr, "moeflow %s: --text %s\n", cmd, moe_last_error());
        return false;
    }
    enum moe_status st = moe_tokenizer_encode(tok, text, len, ids, n);
    free(text);
    if (st) {
        fprintf(stderr, "moeflow %s: --text %s: %s\n", cmd, path, moe_last_error());
        return false;
    }
    if (*n == 0) {
        fprintf(stderr, "moeflow %s: --text %s holds no token\n", cmd, path);
        free(*ids);
        *ids = NULL;
        return false;
    }
    if (max_tokens && *n > max_tokens) *n = max_tokens;
    return true;
}

/* path is not empty, or false after "moeflow CMD: FLAG is empty: name the WHAT". */
static bool named(const char *cmd, const char *flag, const char *path, const char *what)
{
    if (*path) return true;
    fprintf(stderr, "moeflow %s: %s is empty: name the %s\n", cmd, flag, what);
    return false;
}

bool moe_cli_check_in(const char *cmd, const char *flag, const char *path)
{
    return named(cmd, flag, path, "file to read");
}

bool moe_cli_check_model(const char *cmd, const char *dir)
{
    return named(cmd, "--model", dir, "model directory");
}

bool moe_cli_check_readable(const char *cmd, const char *flag, const char *path, bool regular, const char *what)
{
    struct stat sb;
    const char *why = NULL;
    int fd = -1;
    if (stat(path, &sb) != 0)
        why = strerror(errno);
    else if (S_ISDIR(sb.st_mode))
        why = "is a directory";
    else if (regular && !S_ISREG(sb.st_mode))
        why = "not a regular file";
    else if (S_ISREG(sb.st_mode) && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) /* a pipe is not opened here */
        why = strerror(errno);
    if (fd >= 0) close(fd);
    if (!why) return true;
    fprintf(stderr, "moeflow %s: %s %s: %s (give a readable file holding %s)\n", cmd, flag, path, why, what);
    return false;
}

void moe_cli_file_error(const char *cmd, const char *flag, const char *path)
{
    const char *e = moe_last_error();
    bool named = !strncmp(e, path, strlen(path));
    fprintf(stderr, "moeflow %s: %s%s%s\n", cmd, named ? flag : "", named ? " " : "", e);
}

bool moe_cli_check_tier_files(const char *cmd, const struct moe_offload_opts *o)
{
    return (!o->store || moe_cli_check_readable(cmd, "--store", o->store, true, "an expert store, as moeflow pack "
                                                "writes")) &&
           (!o->belady_trace || moe_cli_check_readable(cmd, "--belady-trace", o->belady_trace, false,
                                                       "a routing trace, as moeflow trace writes"));
}

bool moe_cli_check_out(const char *cmd, const char *flag, const char *path, bool in_place)
{
    if (!*path) {
        fprintf(stderr, "moeflow %s: %s is empty: name the file to write\n", cmd, flag);
        return false;
    }
    struct stat sb;
    bool exists = stat(path, &sb) == 0;
    if (exists && S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "moeflow %s: %s %s is a directory: name a file in it\n", cmd, flag, path);
        return false;
    }
    if (exists && !S_ISREG(sb.st_mode)) {
        if (in_place) return true; /* a pipe or a device, written in place */
        fprintf(stderr, "moeflow %s: %s %s is not a regular file (the output is written beside it and renamed "
                "over it): name a regular file\n", cmd, flag, path);
        return false;
    }
    /* the output is written beside path and renamed: try that now, not after the work */
    char tmp[4200], target[PATH_MAX];
    int fd = moe_create_tmp(path, tmp, sizeof(tmp), target, sizeof(target));
    if (fd < 0) {
        fprintf(stderr, "moeflow %s: %s %s: cannot create a file there: %s\n", cmd, flag, path, strerror(errno));
        return false;
    }
    close(fd);
    moe_tmp_discard(tmp);
    return true;
}

/* The directory of path (into dir, cap bytes) and its last name. */
static const char *split_path(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, cap, ".");
    else
        snprintf(dir, cap, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    return slash ? slash + 1 : path;
}

/* Whether paths a and b name one file: the same file when both exist, else the same name in the same directory,
 * each with its symbolic links followed as its output's rename follows them (a link to a file not made yet names
 * that file). */
static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    char ta[PATH_MAX], tb[PATH_MAX];
    a = moe_out_target(a, ta, sizeof(ta));
    b = moe_out_target(b, tb, sizeof(tb));
    bool ea = stat(a, &sa) == 0, eb = stat(b, &sb) == 0;
    if (ea || eb) return ea && eb && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    char da[4200], db[4200];
    const char *na = split_path(a, da, sizeof(da)), *nb = split_path(b, db, sizeof(db));
    return !strcmp(na, nb) && stat(da, &sa) == 0 && stat(db, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Whether a and b, either NULL (not given), name one file that is not a pipe or a device (which a reader and a
 * writer, or two writers in place, share). */
static bool one_regular_file(const char *a, const char *b)
{
    struct stat sb;
    return a && b && same_file(a, b) && !(stat(b, &sb) == 0 && !S_ISREG(sb.st_mode));
}

bool moe_cli_check_distinct(const char *cmd, const char *flag_a, const char *a, const char *flag_b, const char *b)
{
    if (!one_regular_file(a, b)) return true;
    fprintf(stderr, "moeflow %s: %s %s names the file of %s: give each output its own file\n", cmd, flag_b, b, flag_a);
    return false;
}

bool moe_cli_check_not_input(const char *cmd, const char *out_flag, const char *out, ...)
{
    va_list ap;
    va_start(ap, out);
    const char *flag = NULL;
    while ((flag = va_arg(ap, const char *)) && !one_regular_file(va_arg(ap, const char *), out)) {
    }
    va_end(ap);
    if (!flag) return true;
    fprintf(stderr, "moeflow %s: %s %s names the file of %s, which the output would replace: name another file\n",
            cmd, out_flag, out, flag);
    return false;
}

void moe_cli_json_string(FILE *f, const char *s)
{
    enum { CHUNK = 256 };
    char u[3 * CHUNK]; /* a chunk as moe_utf8_lossy writes it */
    size_t n = strlen(s);
    fputc('"', f);
    while (n) {
        /* a sequence the chunk's end cuts is read with the next chunk */
        size_t used, take = n < CHUNK ? n : CHUNK, w = moe_utf8_lossy(s, take, u, take < n, &used);
        for (size_t i = 0; i < w; i++) {
            unsigned char c = (unsigned char)u[i];
            if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
            else if (c < 0x20) fprintf(f, "\\u%04x", c);
            else fputc(c, f);
        }
        s += used;
        n -= used;
    }
    fputc('"', f);
}
