/* The moeflow command-line tool: one binary, one function per subcommand.
 * Each subcommand lives in server/cmd_<name>.c, parses its own options with
 * getopt_long, prints --help, and returns the process exit status
 * (0 ok, 1 runtime failure, 2 usage error). */
#ifndef MOE_CLI_H
#define MOE_CLI_H

/* --expert-ms default of sim and replay: one Mixtral-8x7B expert at 1 token on the H100 (docs/hw) */
#define MOE_CLI_EXPERT_MS 0.153

int moe_cmd_generate(int argc, char **argv);
int moe_cmd_tokenize(int argc, char **argv);
int moe_cmd_logits(int argc, char **argv);
int moe_cmd_pack(int argc, char **argv);
int moe_cmd_info(int argc, char **argv);
int moe_cmd_trace(int argc, char **argv);
int moe_cmd_sim(int argc, char **argv);
int moe_cmd_train_predictor(int argc, char **argv);
int moe_cmd_eval_predictor(int argc, char **argv);
int moe_cmd_replay(int argc, char **argv);
int moe_cmd_bench(int argc, char **argv);
int moe_cmd_serve(int argc, char **argv);

/* Shared by the subcommands (server/cli_util.c, library moe_cli). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "../common/moe.h"

struct moe_model;
struct moe_tokenizer;
struct moe_tok_stream;
struct moe_pred_spec;

/* The exit status of a command whose setup failed with st: MOE_EINVAL is an
 * option the model cannot take (a tier size, a trace for another model), a
 * usage error (2); anything else is a runtime failure (1). */
static inline int moe_cli_failure_exit(enum moe_status st) { return st == MOE_EINVAL ? 2 : 1; }

/* After getopt_long: false, with "moeflow CMD: unexpected argument 'X' (HINT)" on stderr, when an
 * operand is left (hint NULL: "see --help"); the caller exits 2. */
bool moe_cli_no_operands(const char *cmd, int argc, char **argv, const char *hint);

/* getopt_long (opterr 0, optstring beginning with ':') returned '?' or ':' for argv[optind - 1]: prints
 * one line, "moeflow CMD: unknown option 'X' (see --help)", "... X needs a value", "... --X takes no value"
 * or "... '--X' is ambiguous (--a, --b): spell it out", and returns 2, the exit status. */
struct option;
int moe_cli_bad_option(const char *cmd, int c, char **argv, const struct option *opts);

/* -h or --help seen by getopt_long(argc, argv, shortopts, opts): the rest of argv read through (options, and
 * their values, are let be), then usage(stdout) and 0, or, for a word that is no option's value, a line that names
 * it and 2, as moeflow help CMD WORD and moeflow --help WORD are refused. */
int moe_cli_help(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *opts,
                 void (*usage)(FILE *));

/* --predictor SPEC (moe_pred_spec_parse with the model directory dir): 0 when it parses, else the
 * exit status after printing "moeflow CMD: <why>": 2 for a malformed spec, 1 for a predictor file
 * that is missing or a directory (the same as a file that cannot be loaded later). */
int moe_cli_pred_spec(const char *cmd, const char *spec_s, const char *dir, struct moe_pred_spec *spec);

/* moe_parse_long and moe_parse_double_in (common/moe.h) for the value s of option --name of command cmd, or false after "moeflow CMD: --NAME 'S':
 * expected an integer in [LO, HI]" (a number in [LO, HI], or (LO, HI] when above_lo) on stderr. */
bool moe_cli_opt_long(const char *cmd, const char *name, const char *s, long lo, long hi, long *out);
bool moe_cli_opt_double(const char *cmd, const char *name, const char *s, double lo, double hi, bool above_lo,
                        double *out);
/* As moe_cli_opt_long, into an int. */
bool moe_cli_opt_int(const char *cmd, const char *name, const char *s, int lo, int hi, int *out);
/* --threads S, the CPU backend's pool: 1..MOE_CPU_MAX_THREADS on every command, with moe_cli_opt_long's
 * message. */
bool moe_cli_opt_threads(const char *cmd, const char *s, int *out);

/* --threads N (threads) with --backend (o): false after "moeflow CMD: --threads N sizes the cpu backend's pool
 * and --backend cuda computes on the GPU: ..." when N is above 1 (the default) with --backend cuda, where no
 * pool runs; a usage error. */
struct moe_offload_opts;
bool moe_cli_check_threads(const char *cmd, int threads, const struct moe_offload_opts *o);

/* " (set --model DIR)", what a message about a model directory dir that is none ends with; when dir is the one
 * $MOEFLOW_MODEL names (no --model given), the hint names that variable too. */
const char *moe_cli_model_hint(const char *dir);

/* Open the model in dir and, when tok is not NULL, dir/tokenizer.json.  On
 * failure prints "moeflow CMD: <reason> (set --model DIR ...)" to stderr and
 * returns false with nothing left open. */
bool moe_cli_open_model(const char *cmd, const char *dir, struct moe_model **m, struct moe_tokenizer **tok);

/* --seq-len against the model's context (max_position_embeddings): a default
 * (given false) longer than the context becomes the context; a value given
 * that exceeds it is false after printing "moeflow CMD: --seq-len N exceeds
 * ..." (a usage error). */
bool moe_cli_check_seq_len(const char *cmd, long *seq_len, bool given, const struct moe_model *m);

/* The device-tier slots of --capacity N or --capacity-frac F (frac > 0: F of slots, the MoE layers' experts, rounded
 * down), into *cap, at most slots (more change nothing): false after "moeflow CMD: --capacity-frac gives N expert
 * slots, fewer than the K experts one token needs per layer (top_k): raise --capacity or --capacity-frac" when it
 * is below top_k, a usage error (sim, replay and bench batch). */
bool moe_cli_capacity(const char *cmd, double frac, long slots, int top_k, long *cap);

/* The options of the commands that decode a text through the engine (eval-predictor, replay and
 * train-predictor), read alike on each: --model DIR, --text FILE, --seq-len N in [1, 2^20], --max-tokens N in
 * [1, 2^30] and --threads N.  A command sets the defaults and passes the others on to its own switch. */
struct moe_cli_text_opts {
    const char *model_dir; /* --model; moe_default_model_dir() as the command sets it */
    const char *text;      /* --text; NULL when not given */
    long seq_len, max_tokens;
    int threads;
    bool have_seq_len;     /* --seq-len was given */
};
/* The option of struct option name name (as "seq-len") with value arg into o when it is one of those, as
 * it is read: false after the option's message (moe_cli_check_model, moe_cli_check_in, moe_cli_opt_long,
 * moe_cli_opt_threads), a usage error. */
bool moe_cli_text_opt(const char *cmd, const char *name, const char *arg, struct moe_cli_text_opts *o);
/* moe_cli_open_model on o->model_dir (tok NULL: no tokenizer), then, when --text is given (--seq-len cuts it
 * into sequences; train-predictor's --trace keeps its own), moe_cli_check_seq_len with o->seq_len, which a
 * default longer than the model's context becomes: 0, or the exit status with nothing left open: 1 when the model did not open, 2 when --seq-len exceeds its context. */
int moe_cli_open_for_text(const char *cmd, struct moe_cli_text_opts *o, struct moe_model **m,
                          struct moe_tokenizer **tok);

/* The token ids of the text file path (--text), encoded by tok without
 * special tokens, cut to the first max_tokens (0: all); *ids malloc'd.  False
 * after printing "moeflow CMD: --text ..." when the file cannot be read or
 * encoded or holds no token. */
bool moe_cli_read_text(const char *cmd, const struct moe_tokenizer *tok, const char *path, size_t max_tokens,
                       int **ids, size_t *n);

/* An input file's path, as its option is read: false after printing "moeflow CMD: FLAG is empty: name the
 * file to read" when it is empty (a usage error, as an empty output path is); whether the file can be read
 * is found when it is read. */
bool moe_cli_check_in(const char *cmd, const char *flag, const char *path);
/* An input file, just before it is read: false after printing "moeflow CMD: FLAG PATH: WHY (give a readable
 * file holding WHAT)" when it is missing, a directory or cannot be opened, or, with regular, is not a regular
 * file (a pipe or a device): a failure at run time, exit 1, as the read would be.  Whether it holds what it
 * should is found by the read. */
bool moe_cli_check_readable(const char *cmd, const char *flag, const char *path, bool regular, const char *what);
/* What reading the file path of option flag left in moe_last_error(), as "moeflow CMD: FLAG PATH...: WHY" when the
 * message begins with the path (a file's messages name it), else "moeflow CMD: MESSAGE": the option is named as a
 * usage error names it. */
void moe_cli_file_error(const char *cmd, const char *flag, const char *path);

/* The same for the files of the expert tiers' options: --store and --belady-trace. */
bool moe_cli_check_tier_files(const char *cmd, const struct moe_offload_opts *o);

/* --model DIR, as the option is read: false after printing "moeflow CMD: --model is empty: name the model
 * directory" when it is empty (a usage error, as an empty file name is).  $MOEFLOW_MODEL set but empty is
 * taken as unset, the bundled model (moe_default_model_dir). */
bool moe_cli_check_model(const char *cmd, const char *dir);

/* An output file's path, before any work: false after printing "moeflow CMD:
 * FLAG ..." when it is empty, names a directory, or no file can be created
 * beside it (a usage error).  An existing pipe or device is accepted only when
 * the command writes it in place (in_place); otherwise the rename that puts the
 * output into place would replace it. */
bool moe_cli_check_out(const char *cmd, const char *flag, const char *path, bool in_place);

/* Two outputs of one run, a (of option flag_a) and b (of flag_b), either NULL when not given: false after "moeflow
 * CMD: FLAG_B B names the file of FLAG_A: give each output its own file" when they name one file that is not a
 * pipe or a device (the one renamed into place last would replace the other), a usage error. */
bool moe_cli_check_distinct(const char *cmd, const char *flag_a, const char *a, const char *flag_b, const char *b);

/* An output of a run (out, of option out_flag; NULL when not given) against the files the run reads, given as
 * pairs FLAG, PATH (a PATH NULL when its option is not given) that a NULL FLAG ends: false after "moeflow CMD:
 * OUT_FLAG OUT names the file of FLAG, which the output would replace: name another file" when it names one of
 * them (as moe_cli_check_distinct compares two outputs) and is no pipe or device, a usage error. */
bool moe_cli_check_not_input(const char *cmd, const char *out_flag, const char *out, ...);

/* s as a JSON string literal: quotes, backslashes and control bytes escaped, UTF-8 as it is, and what is not
 * UTF-8 (a file name's bytes) as U+FFFD, as moe_utf8_lossy reads it: the JSON stays valid UTF-8. */
void moe_cli_json_string(FILE *f, const char *s);

/* Generated text to f as valid UTF-8, token by token, as the server sends it (moe_tokenizer_stream:
 * a character split between tokens, and a run of byte-fallback tokens, wait in x for the next token;
 * what is not UTF-8 becomes U+FFFD); moe_cli_write_end writes what is left held and frees x.  False
 * for a bad id, out of memory or a write error. */
bool moe_cli_write_token(FILE *f, const struct moe_tokenizer *t, int id, struct moe_tok_stream *x);
bool moe_cli_write_end(FILE *f, struct moe_tok_stream *x);

#endif
