/* moeflow serve: load a model, warm it up, serve gRPC and OpenAI-compatible
 * HTTP until SIGTERM, then drain.  Every option is one row of the table in
 * serve_config.c, settable as a flag or in --config FILE. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MOEFLOW_HAVE_SERVER
#include "server.h"
#include "serve_config.h"
#include "../predictor/predictor.h"

/* path is not there and present_only lets that pass */
static bool absent(bool present_only, const char *path)
{
    struct stat sb;
    return present_only && path && stat(path, &sb) != 0 && errno == ENOENT;
}

/* The files serve reads before the model: the store, the belady trace and a chat template file, each as
 * moe_cli_check_readable checks it (a message naming the option).  With present_only (--check-config, run where
 * the deployment's files may not be), a path that does not exist passes: only one that is there and cannot be
 * read as a file (a directory, a device) is refused. */
static bool check_files(const struct moe_serve_config *cfg, bool present_only)
{
    struct moe_offload_opts o = cfg->offload;
    if (absent(present_only, o.store)) o.store = NULL;
    if (absent(present_only, o.belady_trace)) o.belady_trace = NULL;
    const char *tpl = cfg->chat_template;
    return moe_cli_check_tier_files("serve", &o) &&
           (!strcmp(tpl, "auto") || !strcmp(tpl, "markers") || absent(present_only, tpl) ||
            moe_cli_check_readable("serve", "--chat-template", tpl, true, "a Jinja chat template"));
}

static void serve_usage(FILE *f)
{
    fprintf(f,
            "usage: moeflow serve [--config FILE] [options]\n\n"
            "Serves the model over gRPC (moeflow.v1.Generation, KServe v2 inference.GRPCInferenceService,\n"
            "grpc.health.v1.Health) and HTTP (/v1/completions, /v1/chat/completions, /v1/responses,\n"
            "/v1/responses/{id} (GET, HEAD, DELETE), /v1/models, /v1/models/{model}, /tokenize,\n"
            "/detokenize, /health, /ready, /metrics).  Prints 'ready' on stderr once loaded and warm.\n"
            "SIGTERM (or SIGINT, or SIGHUP: its terminal closing) stops admission, turns /ready off,\n"
            "finishes in-flight requests within --drain-timeout, exits 0.\n\n"
            "  --config FILE                    'key = value' lines; keys are the option names below\n"
            "                                   (command-line flags override the file)\n"
            "  --check-config                   check the options and the config file, print 'configuration ok'\n"
            "                                   and exit 0 (2 with the error); opens no model, store or port\n"
            "                                   (a store or template file named that exists must be a file)\n"
            "  -h, --help                       this help\n");
    moe_serve_config_help(f);
    fprintf(f, "\nSee docs/api.md for the APIs and examples.\n");
}

int moe_cmd_serve(int argc, char **argv)
{
    const struct moe_serve_opt *opts = moe_serve_opts();
    int n_opts = 0;
    while (opts[n_opts].name)
        n_opts++;
    struct option *lo = calloc((size_t)n_opts + 4, sizeof(*lo));
    if (!lo)
        return 1;
    for (int i = 0; i < n_opts; i++)
        lo[i] = (struct option){ opts[i].name,
                                 opts[i].type == MOE_OPT_OFFLOAD_FLAG ? no_argument : required_argument,
                                 NULL, 1000 + i };
    lo[n_opts] = (struct option){ "config", required_argument, NULL, 'c' };
    lo[n_opts + 1] = (struct option){ "help", no_argument, NULL, 'h' };
    lo[n_opts + 2] = (struct option){ "check-config", no_argument, NULL, 'k' };

    struct moe_serve_config cfg;
    moe_serve_config_defaults(&cfg);
    int rc = 0;
    bool check_only = false;
    bool *given = calloc((size_t)n_opts, sizeof(bool)); /* the flags on the command line */
    if (!given) {
        free(lo);
        return 1;
    }
    /* Pass 1: --help and --config; pass 2: the flags, which override the file. */
    for (int pass = 0; pass < 2 && !rc; pass++) {
        optind = 0;
        opterr = 0;
        int c;
        while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
            if (c == 'h') {
                rc = moe_cli_help("serve", argc, argv, ":h", lo, serve_usage);
                free(lo);
                free(given);
                return rc;
            }
            if (c == '?' || c == ':') {
                if (pass == 0) rc = moe_cli_bad_option("serve", c, argv, lo);
                break;
            }
            if (c == 'k') {
                check_only = true;
            } else if (c == 'c' && pass == 0) {
                if (moe_serve_config_load(&cfg, optarg) != MOE_OK) {
                    fprintf(stderr, "moeflow serve: %s\n", moe_last_error());
                    rc = 2;
                    break;
                }
            } else if (c >= 1000 && pass == 0) {
                given[c - 1000] = true;
            } else if (c >= 1000 && pass == 1) {
                /* a flag takes the place of the file's alternative to it (not of one also given here) */
                const char *alt = moe_serve_config_alternative(opts[c - 1000].name);
                bool alt_given = false;
                for (int i = 0; alt && i < n_opts; i++)
                    alt_given |= given[i] && !strcmp(opts[i].name, alt);
                if (alt && !alt_given)
                    moe_serve_config_unset_alternative(&cfg, opts[c - 1000].name);
                if (moe_serve_config_set(&cfg, opts[c - 1000].name, optarg ? optarg : "true") != MOE_OK) {
                    const char *m = moe_last_error(); /* "name: why", or the tier's "--name ..." */
                    fprintf(stderr, "moeflow serve: %s%s\n", strncmp(m, "--", 2) ? "--" : "", m);
                    rc = 2;
                    break;
                }
            }
        }
        if (!rc && pass == 1 && !moe_cli_no_operands("serve", argc, argv, NULL)) rc = 2;
    }
    free(lo);
    free(given);
    if (rc)
        return rc;
    struct moe_pred_spec spec; /* a spec that cannot name a predictor is a usage error too */
    if (moe_serve_config_check(&cfg) != MOE_OK ||
        moe_pred_spec_parse(cfg.predictor, cfg.model[0] ? cfg.model : moe_default_model_dir(), &spec) != MOE_OK) {
        fprintf(stderr, "moeflow serve: %s\n", moe_last_error());
        return 2;
    }
    if (check_only) { /* a file named that is there but no file to read is an error of the configuration */
        if (!check_files(&cfg, true)) return 2;
        printf("moeflow serve: configuration ok\n");
        return 0;
    }
    /* the files named, before the model loads: a failure, as when they are read */
    if (!check_files(&cfg, false)) return 1;
    /* every connection takes a descriptor: use all the hard limit allows (1024 soft is common) */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            MOE_WARN("serve: cannot raise the open-file limit to %llu", (unsigned long long)rl.rlim_max);
    }
    moe_server_block_signals();
    struct moe_server *s = moe_server_create(&cfg, &spec);
    if (!s) {
        fprintf(stderr, "moeflow serve: %s\n", moe_last_error());
        return 1;
    }
    enum moe_status st = moe_server_run(s);
    if (st != MOE_OK)
        fprintf(stderr, "moeflow serve: %s\n", moe_last_error());
    moe_server_destroy(s);
    return st == MOE_OK ? 0 : moe_cli_failure_exit(st);
}

#else

int moe_cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow serve: this build has no server (configure with -DMOEFLOW_SERVER=ON and "
                    "the scheduler, engine and tokenizer built)\n");
    return 1;
}

#endif
