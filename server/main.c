/* moeflow: entry point and subcommand dispatch. */
#include "cli.h"

#include "../common/moe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
    bool subcommands; /* takes a subcommand first (bench batch), so help CMD SUB names one */
} commands[] = {
    { "generate", moe_cmd_generate, "generate a continuation of a prompt, streamed to stdout", false },
    { "tokenize", moe_cmd_tokenize, "text to token ids (or --decode ids to text)", false },
    { "logits", moe_cmd_logits, "write the logits of every position to a safetensors file", false },
    { "info", moe_cmd_info, "a model's shape and what its experts, other weights and KV cache take", false },
    { "pack", moe_cmd_pack, "write the packed expert store of a model", false },
    { "trace", moe_cmd_trace, "record the routing trace of a text (JSON Lines)", false },
    { "sim", moe_cmd_sim, "replay a routing trace through the expert cache", false },
    { "train-predictor", moe_cmd_train_predictor, "train a routing-path predictor from a trace", false },
    { "eval-predictor", moe_cmd_eval_predictor, "measure a predictor's recall and precision", false },
    { "replay", moe_cmd_replay, "decode a text through engine, predictor and cache; print cache figures", false },
    { "bench", moe_cmd_bench, "benchmarks (bench batch: the scheduler under load)", true },
    { "serve", moe_cmd_serve, "serve gRPC and OpenAI-compatible HTTP", false },
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moeflow <command> [options]   (moeflow <command> --help or moeflow help <command>: its options)\n"
               "       moeflow --version\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nenvironment: MOEFLOW_MODEL (default model directory; empty: unset), MOEFLOW_LOG (error|warn|info|debug)\n");
}

/* rc, or 1 after "moeflow[ CMD]: writing to stdout failed: WHY" when what was printed did not reach its reader
 * (a full disk, a closed pipe) and rc was 0.  WHY is the first failure's: a write that failed while the command
 * printed left the stream's buffer empty, so the flush here succeeds and only errno as the command left it (0
 * before it ran) tells why; one that write(2) cannot fail with is another call's and is not shown. */
static int stdout_checked(const char *cmd, int rc)
{
    int before = ferror(stdout) ? errno : 0;
    if (before != ENOSPC && before != EDQUOT && before != EFBIG && before != EIO && before != EPIPE && before != EBADF)
        before = 0;
    errno = 0;
    if ((fflush(stdout) != 0 || ferror(stdout)) && rc == 0) {
        int why = errno ? errno : before;
        fprintf(stderr, "moeflow%s%s: writing to stdout failed%s%s\n", cmd ? " " : "", cmd ? cmd : "",
                why ? ": " : "", why ? strerror(why) : "");
        rc = 1;
    }
    return rc;
}

/* Descriptors 0-2 that were closed when moeflow started read and write /dev/null: otherwise the first file opened
 * takes the number, and `--file -` reads it or what is printed on stdout or stderr goes into it.  It runs from
 * .preinit_array, before the shared libraries' initializers, as they open descriptors too (gRPC an eventfd). */
static void reserve_std_fds(int argc, char **argv, char **envp)
{
    (void)argc, (void)argv, (void)envp; /* what a .preinit_array function is given */
    /* 0-2 in order: each open takes the lowest free number, the one closed (without /dev/null: left as it is) */
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
}
__attribute__((section(".preinit_array"), used)) static void (*const preinit_std_fds)(int, char **, char **) =
    reserve_std_fds;

int main(int argc, char **argv)
{
    moe_tmp_remove_on_signals(); /* no half-written output left behind (serve installs its own) */
    moe_log_init();
    /* moeflow help CMD [SUB] (help bench batch; SUB only for a CMD with subcommands): CMD's own help, as moeflow
     * CMD --help prints it; help of one of the words below, or a word past CMD [SUB], is refused below naming the
     * word given */
    char *help_argv[5] = { argv[0] };
    int extra = 2; /* the first argument past what --version, --help, -h, help or help CMD [SUB] take */
    if (argc >= 3 && !strcmp(argv[1], "help") && strcmp(argv[2], "--version") && strcmp(argv[2], "--help") &&
        strcmp(argv[2], "-h") && strcmp(argv[2], "help")) {
        /* a word past CMD is SUB only where CMD has subcommands (an unknown CMD is named unknown below) */
        int words = 4;
        for (size_t i = 0; i < MOE_ARRAY_LEN(commands); i++)
            if (!strcmp(argv[2], commands[i].name) && !commands[i].subcommands)
                words = 3;
        if (argc > words) {
            extra = words;
        } else {
            for (int i = 2; i < argc; i++) help_argv[i - 1] = argv[i];
            help_argv[argc - 1] = "--help"; /* argc stays: the program, CMD, [SUB], --help */
            argv = help_argv;
        }
    }
    /* moeflow --version, --help, -h and help take nothing after them (help CMD was made CMD --help above) */
    if (argc > 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
                     !strcmp(argv[1], "help"))) {
        fprintf(stderr, "moeflow: unexpected argument '%s' after %s%s%s%s%s (%s)\n", argv[extra], argv[1],
                extra > 2 ? " " : "", extra > 2 ? argv[2] : "", extra > 3 ? " " : "", extra > 3 ? argv[3] : "",
                strcmp(argv[1], "--version") ? "moeflow help CMD prints a command's options" : "see moeflow --help");
        return 2;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        errno = 0;
        usage(argc < 2 ? stderr : stdout);
        return stdout_checked(NULL, argc < 2 ? 2 : 0);
    }
    if (!strcmp(argv[1], "--version")) {
        errno = 0;
        printf("moeflow " MOEFLOW_VERSION "\n");
        return stdout_checked(NULL, 0);
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name)) {
            /* what a command printed must have reached its reader: a full disk or a closed pipe fails the
             * command, whatever it returned */
            errno = 0;
            return stdout_checked(argv[1], commands[i].fn(argc - 1, argv + 1));
        }
    fprintf(stderr, "moeflow: unknown command '%s' (moeflow --help lists the commands)\n", argv[1]);
    return 2;
}
