/* moeflow tokenize: text to token ids (a JSON array on stdout), or with
 * --decode a JSON array of ids back to the raw text bytes. */
#include "cli.h"

#include "common/moe.h"
#include "model/json_error.h"
#include "model/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKENIZE_MAX_INPUT (1u << 30)   /* largest --file read, bytes */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moeflow tokenize [--model DIR | --tokenizer FILE] [--prompt] (--text T | --file F)\n"
            "       moeflow tokenize [--model DIR | --tokenizer FILE] --decode (--ids JSON | --file F)\n"
            "\n"
            "Encode UTF-8 text to token ids, printed as a JSON array; with --decode, turn a JSON\n"
            "array of ids back into text (the exact bytes, written to stdout).  Special tokens such\n"
            "as <|endoftext|> in the text are recognised; nothing is added unless --prompt.\n"
            "\n"
            "  --model DIR       model directory holding tokenizer.json (default %s)\n"
            "  --tokenizer FILE  a tokenizer.json to use instead of the model's\n"
            "  --text T          the text to encode\n"
            "  --file F          read the text (or, with --decode, the JSON array of ids) from F; - is stdin\n"
            "  --prompt          encode as generate and serve encode a prompt: with the ids that the\n"
            "                    tokenizer's post_processor template puts around a text (the BOS of\n"
            "                    Llama/Mixtral tokenizers; none for the bundled model)\n"
            "  --decode          decode ids to text\n"
            "  --ids JSON        the ids to decode, e.g. '[31, 1066, 0]'\n"
            "  -h, --help        this help\n",
            moe_default_model_dir());
}

static enum moe_status read_input(const char *path, const char *what, char **buf, size_t *len)
{
    if (strcmp(path, "-"))
        return moe_read_file(path, buf, len, TOKENIZE_MAX_INPUT);
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    if (!p)
        return moe_errorf(MOE_ENOMEM, "stdin: out of memory");
    for (;;) {
        if (n + 1 == cap) {
            if (cap >= TOKENIZE_MAX_INPUT) {
                free(p);
                return moe_errorf(MOE_ENOMEM, "stdin: input larger than %u bytes", TOKENIZE_MAX_INPUT);
            }
            char *q = realloc(p, cap * 2);
            if (!q) {
                free(p);
                return moe_errorf(MOE_ENOMEM, "stdin: out of memory");
            }
            p = q;
            cap *= 2;
        }
        errno = 0;
        size_t r = fread(p + n, 1, cap - 1 - n, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin)) {
                int err = errno;
                free(p);
                return moe_errorf(MOE_EIO, "--file -: reading stdin failed%s%s (give the %s on stdin)",
                                  err ? ": " : "", err ? strerror(err) : "", what);
            }
            break;
        }
    }
    p[n] = 0;
    *buf = p;
    *len = n;
    return MOE_OK;
}

/* Parse a JSON array of token ids, each in [0, vocab): one outside it, past an int or not, is MOE_EINVAL naming
 * what (the option or file), the element and the range. */
static enum moe_status parse_ids(const char *json, size_t len, const char *what, int vocab, int **ids, size_t *n)
{
    json_error_t jerr;
    json_t *arr = json_loadb(json, len, JSON_DECODE_ANY, &jerr);
    if (!arr)
        return moe_errorf(MOE_EINVAL, "%s: not valid JSON at line %d column %d: %s (want an array of ids like [1, 2, 3])",
                          what, jerr.line, jerr.column, moe_json_error_text(&jerr));
    enum moe_status st = MOE_OK;
    if (!json_is_array(arr)) {
        st = moe_errorf(MOE_EINVAL, "%s: want a JSON array of token ids like [1, 2, 3]", what);
        goto out;
    }
    size_t m = json_array_size(arr);
    int *v = malloc((m ? m : 1) * sizeof(int));
    if (!v) {
        st = moe_errorf(MOE_ENOMEM, "%s: no memory for %zu ids", what, m);
        goto out;
    }
    for (size_t i = 0; i < m; i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= vocab) {
            free(v);
            st = json_is_integer(e) ? moe_errorf(MOE_EINVAL, "%s: element %zu, %" JSON_INTEGER_FORMAT ", is outside "
                                                 "the vocabulary [0, %d)", what, i, json_integer_value(e),
                                                 vocab)
                                    : moe_errorf(MOE_EINVAL, "%s: element %zu is not an integer token id", what, i);
            goto out;
        }
        v[i] = (int)json_integer_value(e);
    }
    *ids = v;
    *n = m;
out:
    json_decref(arr);
    return st;
}

/* ids as a JSON array on stdout; a write that fails is reported, with its reason, once the command returns (main) */
static void print_ids(const int *ids, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%d" : "%d", ids[i]);
    putchar(']');
    putchar('\n');
}

int moe_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "tokenizer", required_argument, NULL, 'k' },
        { "text", required_argument, NULL, 't' },
        { "file", required_argument, NULL, 'f' },
        { "decode", no_argument, NULL, 'd' },
        { "prompt", no_argument, NULL, 'p' },
        { "ids", required_argument, NULL, 'i' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *model = NULL, *tok_path = NULL, *text = NULL, *file = NULL, *ids_arg = NULL;
    bool decode = false, prompt = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!moe_cli_check_model("tokenize", optarg)) return 2;
            model = optarg;
            break;
        case 'k':
        case 'f':
            if (!moe_cli_check_in("tokenize", c == 'k' ? "--tokenizer" : "--file", optarg)) return 2;
            *(c == 'k' ? &tok_path : &file) = optarg;
            break;
        case 't': text = optarg; break;
        case 'd': decode = true; break;
        case 'p': prompt = true; break;
        case 'i': ids_arg = optarg; break;
        case 'h': return moe_cli_help("tokenize", argc, argv, ":h", opts, usage);
        default: return moe_cli_bad_option("tokenize", c, argv, opts);
        }
    }
    if (!moe_cli_no_operands("tokenize", argc, argv, "quote the text and pass it with --text")) return 2;
    const char *why = NULL;
    if (model && tok_path)
        why = "give --model or --tokenizer, not both";
    else if (decode && text)
        why = "--text is for encoding; with --decode give --ids or --file";
    else if (!decode && ids_arg)
        why = "--ids needs --decode";
    else if (decode && prompt)
        why = "--prompt is for encoding, not with --decode";
    else if (!!file + !!(decode ? ids_arg : text) != 1)
        why = decode ? "give exactly one of --ids and --file" : "give exactly one of --text and --file";
    if (why) {
        fprintf(stderr, "moeflow tokenize: %s (see --help)\n", why);
        return 2;
    }

    if (tok_path && !moe_cli_check_readable("tokenize", "--tokenizer", tok_path, true, "a tokenizer.json"))
        return 1;
    const char *dir = model ? model : moe_default_model_dir();
    struct moe_tokenizer *t = tok_path ? moe_tokenizer_load(tok_path) : moe_tokenizer_load_dir(dir);
    if (!t) {
        if (tok_path)
            moe_cli_file_error("tokenize", "--tokenizer", tok_path);
        else
            fprintf(stderr, "moeflow tokenize: %s%s\n", moe_last_error(), moe_cli_model_hint(dir));
        return 1;
    }
    int rc = 1;
    char *buf = NULL;
    size_t len = 0;
    if (file && strcmp(file, "-") &&
        !moe_cli_check_readable("tokenize", "--file", file, true, decode ? "a JSON array of ids" : "the text to encode"))
        goto out;
    if (file && read_input(file, decode ? "JSON array of ids" : "text to encode", &buf, &len)) {
        fprintf(stderr, "moeflow tokenize: %s\n", moe_last_error());
        goto out;
    }
    if (!decode) {
        int *ids = NULL;
        size_t n = 0;
        const char *src = file ? buf : text;
        size_t slen = file ? len : strlen(text);
        enum moe_status st = prompt ? moe_tokenizer_encode_prompt(t, src, slen, &ids, &n)
                                    : moe_tokenizer_encode(t, src, slen, &ids, &n);
        if (st) {
            fprintf(stderr, "moeflow tokenize: %s: %s\n", file ? file : "--text", moe_last_error());
            rc = file || st == MOE_ENOMEM ? 1 : 2; /* a bad --text is a usage error */
            goto out;
        }
        print_ids(ids, n);
        rc = 0;
        free(ids);
    } else {
        int *ids = NULL;
        size_t n = 0;
        if (parse_ids(file ? buf : ids_arg, file ? len : strlen(ids_arg), file ? file : "--ids",
                      moe_tokenizer_vocab_size(t), &ids, &n)) {
            if (file)
                moe_cli_file_error("tokenize", "--file", file);
            else
                fprintf(stderr, "moeflow tokenize: %s\n", moe_last_error());
            rc = file ? 1 : 2;
            goto out;
        }
        char *out = NULL;
        size_t olen = 0;
        enum moe_status st = moe_tokenizer_decode(t, ids, n, &out, &olen);
        if (st) {
            fprintf(stderr, "moeflow tokenize: %s\n", moe_last_error());
            rc = 1; /* the ids are checked above: out of memory */
            free(ids);
            goto out;
        }
        fwrite(out, 1, olen, stdout); /* a failed write: reported with its reason once the command returns (main) */
        rc = 0;
        free(out);
        free(ids);
    }
out:
    free(buf);
    moe_tokenizer_free(t);
    return rc;
}
