/* moeflow pack / trace / sim as the CLI runs them (exit codes, --help, usage
 * errors, --json keys), and the trace reader's errors on malformed traces. */
#include "../../offload/trace.h"
#include "../../server/cli.h"
#include "offload_test_common.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <jansson.h>

static char err_path[600];   /* stderr of run_cmd goes here, then into errbuf and back to stderr */
static char errbuf[1 << 14];

static int run_cmd(int (*fn)(int, char **), const char *out_path, int n, ...)
{
    char *argv[32];
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) argv[i] = va_arg(ap, char *);
    va_end(ap);
    argv[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    int saved = dup(1), saved_err = dup(2);
    if (out_path) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        close(fd);
    }
    int efd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (efd >= 0) {
        dup2(efd, 2);
        close(efd);
    }
    int rc = fn(n, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved, 1);
    close(saved);
    dup2(saved_err, 2);
    close(saved_err);
    errbuf[0] = 0;
    FILE *f = fopen(err_path, "r");
    if (f) {
        size_t got = fread(errbuf, 1, sizeof(errbuf) - 1, f);
        errbuf[got] = 0;
        fclose(f);
    }
    fputs(errbuf, stderr);
    return rc;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f, "create %s", path);
    fputs(text, f);
    fclose(f);
}

static void expect_trace_error(const char *dir, const char *body, const char *needle)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/bad.jsonl", dir);
    write_text(path, body);
    struct moe_trace *t = NULL;
    CHECK(moe_trace_load(path, &t) != MOE_OK && !t, "malformed trace accepted: %s", body);
    CHECK(strstr(moe_last_error(), needle), "error '%s' lacks '%s'", moe_last_error(), needle);
}

/* Whether a PATH.tmp* file (what the writer writes until a successful close)
 * is left beside path. */
static bool tmp_left(const char *path)
{
    char dir[700];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : path;
    size_t blen = strlen(base);
    if (slash) *slash = 0;
    DIR *d = opendir(slash ? dir : ".");
    bool found = false;
    for (struct dirent *e; d && !found && (e = readdir(d));)
        found = !strncmp(e->d_name, base, blen) && !strncmp(e->d_name + blen, ".tmp", 4);
    if (d) closedir(d);
    return found;
}

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* JSON integer key of a sim --json output file, or -1. */
static long long json_key(const char *path, const char *key)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    long long v = json_is_integer(json_object_get(j, key)) ? json_integer_value(json_object_get(j, key)) : -1;
    json_decref(j);
    return v;
}

static void copy_file(const char *from, const char *to)
{
    char *buf = NULL;
    size_t len = 0;
    REQUIRE(moe_read_file(from, &buf, &len, (size_t)1 << 30) == MOE_OK, "%s", moe_last_error());
    FILE *f = fopen(to, "wb");
    REQUIRE(f && fwrite(buf, 1, len, f) == len && fclose(f) == 0, "copy to %s", to);
    free(buf);
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    unsigned char b = 0;
    REQUIRE(fd >= 0 && pread(fd, &b, 1, (off_t)off) == 1, "read %s", path);
    b ^= 0x5a;
    REQUIRE(pwrite(fd, &b, 1, (off_t)off) == 1, "write %s", path);
    close(fd);
}

/* A trace matches a model's layers only with as many decoder layers and its MoE layers at the same
 * indices (a model with dense layers first has them further on); the layers print as ranges. */
static void check_layers_match(void)
{
    static struct moe_config c; /* 3 decoder layers, the first dense */
    c.n_layers = 3;
    c.is_moe[1] = c.is_moe[2] = true;
    struct moe_trace_info in = { .layers = 3, .n_moe = 2, .moe_layers = { 1, 2 } };
    CHECK(moe_trace_layers_match(&in, &c), "MoE layers 1-2 of 3 refused");
    in.moe_layers[0] = 0;
    in.moe_layers[1] = 1;
    CHECK(!moe_trace_layers_match(&in, &c), "MoE layers 0-1 of 3 taken for 1-2");
    in = (struct moe_trace_info){ .layers = 4, .n_moe = 2, .moe_layers = { 1, 2 } };
    CHECK(!moe_trace_layers_match(&in, &c), "4 decoder layers taken for 3");
    in = (struct moe_trace_info){ .layers = 3, .n_moe = 1, .moe_layers = { 1 } };
    CHECK(!moe_trace_layers_match(&in, &c), "one MoE layer taken for two");
    const int l[] = { 0, 1, 2, 5, 7, 8, 9 };
    char b[64];
    moe_trace_layers_str(l, 7, b, sizeof b);
    CHECK(!strcmp(b, "0-2,5,7-9"), "layers as ranges: '%s'", b);
    moe_trace_layers_str(l, 7, b, 8);
    CHECK(!strcmp(b, "0-2,..."), "layers cut to 8 bytes: '%s'", b);
    moe_trace_layers_str(l, 0, b, sizeof b);
    CHECK(!strcmp(b, ""), "no layers: '%s'", b);
}

#define HDR "{\"format\":\"moeflow-trace\",\"version\":1,\"model\":\"x\",\"layers\":2,\"experts\":4,\"top_k\":2,\"moe_layers\":[0,1]}\n"

int main(void)
{
    char p[512], model[512], store[600], ids[600], tr[600], out[600], txt[600];
    const char *dir = t_tmp_make("/tmp");
    REQUIRE(dir, "mkdtemp");
    t_path(model, sizeof(model), "tests/fixtures/hf-tiny/mixtral");
    snprintf(store, sizeof(store), "%s/x.moestore", dir);
    snprintf(ids, sizeof(ids), "%s/ids.json", dir);
    snprintf(tr, sizeof(tr), "%s/t.jsonl", dir);
    snprintf(out, sizeof(out), "%s/out.txt", dir);
    snprintf(txt, sizeof(txt), "%s/t.txt", dir);
    snprintf(err_path, sizeof(err_path), "%s/stderr.txt", dir);

    /* pack */
    CHECK(run_cmd(moe_cmd_pack, out, 2, "pack", "--help") == 0, "pack --help");
    CHECK(run_cmd(moe_cmd_pack, NULL, 2, "pack", "--bogus") == 2, "pack usage error");
    CHECK(run_cmd(moe_cmd_pack, NULL, 4, "pack", "--model", "/nonexistent/model", "--quiet") == 1,
          "pack of a missing model");
    CHECK(run_cmd(moe_cmd_pack, NULL, 6, "pack", "--model", model, "--out", store, "--quiet") == 0,
          "pack: %s", moe_last_error());
    CHECK(access(store, R_OK) == 0, "store written");
    /* --out naming one of the model's own files (directly or through a link): refused, the file kept */
    {
        char copy[700], cmd[4000], conf[800], link[800];
        snprintf(copy, sizeof(copy), "%s/m", dir);
        snprintf(cmd, sizeof(cmd), "mkdir '%s' && cp '%s/config.json' '%s/model.safetensors' '%s/'", copy, model,
                 model, copy);
        REQUIRE(system(cmd) == 0, "%s", cmd);
        snprintf(conf, sizeof(conf), "%s/config.json", copy);
        snprintf(link, sizeof(link), "%s/weights-link", dir);
        snprintf(cmd, sizeof(cmd), "%s/model.safetensors", copy);
        REQUIRE(symlink(cmd, link) == 0, "symlink");
        struct stat before, after;
        REQUIRE(stat(conf, &before) == 0, "stat");
        CHECK(run_cmd(moe_cmd_pack, NULL, 6, "pack", "--model", copy, "--out", conf, "--quiet") == 2 &&
                  stat(conf, &after) == 0 && after.st_size == before.st_size,
              "pack --out the model's config.json");
        CHECK(run_cmd(moe_cmd_pack, NULL, 6, "pack", "--model", copy, "--out", link, "--quiet") == 2 &&
                  strstr(errbuf, "model.safetensors"),
              "pack --out a link to the model's weights: %s", errbuf);
        unlink(link);
    }

    /* trace --ids (through the tiered provider reading the store), then sim */
    write_text(ids, "[[1, 5, 9, 2, 7, 3], [4, 4, 8, 1]]");
    /* a model without experts and an offload flag: it says so, not to raise --gpu-experts */
    t_path(p, sizeof(p), "tests/fixtures/deepseek-v3-variants/all_dense");
    CHECK(run_cmd(moe_cmd_trace, NULL, 8, "trace", "--model", p, "--ids", ids, "--out", tr, "--stats") == 2 &&
              strstr(errbuf, "no MoE layer") && !strstr(errbuf, "raise --gpu-experts"),
          "trace --stats of a dense model: %s", errbuf);
    /* sized in bytes, where one expert takes none */
    CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", p, "--ids", ids, "--out", tr, "--host-cache-bytes",
                  "1M") == 2 && strstr(errbuf, "no MoE layer"),
          "trace --host-cache-bytes of a dense model: %s", errbuf);
    CHECK(run_cmd(moe_cmd_trace, NULL, 2, "trace", "--help") == 0, "trace --help");
    CHECK(run_cmd(moe_cmd_trace, NULL, 4, "trace", "--model", model, "--ids") == 2, "trace missing arg");
    CHECK(run_cmd(moe_cmd_trace, NULL, 4, "trace", "--model", model, "--out") == 2, "trace no input");
    CHECK(run_cmd(moe_cmd_trace, NULL, 10, "trace", "--model", model, "--ids", ids, "--out", tr,
                  "--store", store, "--weights") == 0, "trace --ids");
    struct moe_trace *t = NULL;
    REQUIRE(moe_trace_load(tr, &t) == MOE_OK, "load trace: %s", moe_last_error());
    CHECK(t->n_tokens == 10 && t->weights && t->info.top_k == 2 && t->info.expert_bytes > 0,
          "trace: %zu tokens", t->n_tokens);
    CHECK(t->seq[6] == 1 && t->pos[6] == 0 && t->token[6] == 4, "second sequence");
    CHECK(!tmp_left(tr), "trace left its .tmp behind");
    {   /* a file named like the writer's work file is someone else's: left alone */
        char decoy[700], *body = NULL;
        size_t n = 0;
        snprintf(decoy, sizeof(decoy), "%s.tmp", tr);
        write_text(decoy, "not the trace's");
        CHECK(run_cmd(moe_cmd_trace, NULL, 10, "trace", "--model", model, "--ids", ids, "--out", tr,
                      "--store", store, "--weights") == 0, "trace beside a .tmp file");
        CHECK(moe_read_file(decoy, &body, &n, 100) == MOE_OK && !strcmp(body, "not the trace's"),
              "trace overwrote %s", decoy);
        free(body);
        unlink(decoy);
    }

    /* A trace that fails part-way (a record of an expert only the second sequence
     * routes to fails its checksum) leaves neither a trace nor its .tmp, and an
     * existing --out as it was. */
    {
        char bad[600], part[600];
        snprintf(bad, sizeof(bad), "%s/bad.moestore", dir);
        snprintf(part, sizeof(part), "%s/part.jsonl", dir);
        copy_file(store, bad);
        int layer = -1, expert = -1;
        for (int li = 0; li < t->info.n_moe && layer < 0; li++)
            for (size_t i = 6; i < t->n_tokens && layer < 0; i++)
                for (int j = 0; j < t->info.top_k && layer < 0; j++) {
                    int e = moe_trace_experts(t, i, li)[j];
                    bool in_first = false;
                    for (size_t q = 0; q < 6; q++)
                        for (int r = 0; r < t->info.top_k; r++)
                            in_first |= moe_trace_experts(t, q, li)[r] == e;
                    if (!in_first) {
                        layer = t->info.moe_layers[li];
                        expert = e;
                    }
                }
        if (layer < 0) { /* every expert of sequence 1 also in sequence 0: fail in sequence 0 */
            layer = t->info.moe_layers[0];
            expert = moe_trace_experts(t, 0, 0)[0];
        }
        struct moe_store *ms = moe_store_open(bad, NULL);
        REQUIRE(ms, "%s", moe_last_error());
        const struct moe_store_record *rec = moe_store_find(ms, layer, expert);
        REQUIRE(rec, "record of layer %d expert %d", layer, expert);
        flip_byte(bad, rec->offset + rec->size / 2);
        moe_store_close(ms);
        char sj[700];
        snprintf(sj, sizeof(sj), "%s.stats.json", part);
        CHECK(run_cmd(moe_cmd_trace, NULL, 11, "trace", "--model", model, "--ids", ids, "--out", part,
                      "--store", bad, "--stats-json", sj) == 1, "trace over a corrupt store must fail");
        CHECK(strstr(errbuf, "checksum"), "failure reason: %s", errbuf);
        {   /* --stats-json still tells what the tiers did, the checksum failure included */
            char *js = NULL;
            CHECK(moe_read_file(sj, &js, NULL, 1 << 20) == MOE_OK && strstr(js, "\"checksum_failures\":1"),
                  "stats of the failed run: %s", js ? js : moe_last_error());
            free(js);
            unlink(sj);
        }
        CHECK(!file_exists(part), "a failed trace left %s", part);
        CHECK(!tmp_left(part), "a failed trace left %s.tmp*", part);
        write_text(part, "keep me\n");
        CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", model, "--ids", ids, "--out", part,
                      "--store", bad) == 1, "trace over a corrupt store must fail");
        char *kept = NULL;
        REQUIRE(moe_read_file(part, &kept, NULL, 1 << 20) == MOE_OK, "%s", moe_last_error());
        CHECK(!strcmp(kept, "keep me\n"), "a failed trace overwrote %s: %s", part, kept);
        free(kept);
        CHECK(!tmp_left(part), "a failed trace left %s.tmp*", part);
        unlink(bad);
        unlink(part);
    }
    moe_trace_free(t);

    /* --seq-len means nothing with --ids; --threads is checked when parsed */
    CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", model, "--ids", ids, "--out", tr,
                  "--seq-len", "4") == 2 && strstr(errbuf, "--seq-len"), "--ids with --seq-len: %s", errbuf);
    CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", model, "--ids", ids, "--out", tr,
                  "--threads", "100000") == 2 && strstr(errbuf, "[1, 1024]"), "--threads 100000: %s", errbuf);
    write_text(ids, "[[1, 99999]]");
    CHECK(run_cmd(moe_cmd_trace, NULL, 7, "trace", "--model", model, "--ids", ids, "--out", tr) == 1,
          "out-of-range id must fail");
    /* a missing file or one that is not JSON: the message names --ids, the file and what it must hold */
    char no_ids[700];
    snprintf(no_ids, sizeof(no_ids), "%s/no-such-ids.json", dir);
    CHECK(run_cmd(moe_cmd_trace, NULL, 7, "trace", "--model", model, "--ids", no_ids, "--out", tr) == 1 &&
          strstr(errbuf, "--ids ") && strstr(errbuf, "no-such-ids.json: No such file") &&
              strstr(errbuf, "(give a readable file holding a JSON array of token-id arrays") && !strstr(errbuf, ":-1:"),
          "--ids missing file: %s", errbuf);
    write_text(ids, "[[1, 2]]\n[[3]]\n");
    CHECK(run_cmd(moe_cmd_trace, NULL, 7, "trace", "--model", model, "--ids", ids, "--out", tr) == 1 &&
          strstr(errbuf, "ids.json: not valid JSON at line 2 column 1") && strstr(errbuf, "--ids "),
          "--ids not JSON: %s", errbuf);

    /* trace --text on the bundled model */
    write_text(txt, "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n");
    char bundled[512];
    t_path(bundled, sizeof(bundled), "models/pycode-moe-18m");
    snprintf(p, sizeof(p), "%s/text.jsonl", dir);
    CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", bundled, "--text", txt, "--seq-len",
                  "8", "--out", p) == 0, "trace --text");
    REQUIRE(moe_trace_load(p, &t) == MOE_OK, "%s", moe_last_error());
    CHECK(t->n_tokens > 8 && t->seq[8] == 1 && t->pos[8] == 0, "cut into 8-token sequences");
    moe_trace_free(t);
    CHECK(run_cmd(moe_cmd_trace, NULL, 9, "trace", "--model", bundled, "--text", txt, "--seq-len",
                  "1000000", "--out", p) == 2, "--seq-len beyond the context is a usage error");
    REQUIRE(moe_trace_load(p, &t) == MOE_OK, "the refused run spoiled %s: %s", p, moe_last_error());
    moe_trace_free(t);
    {   /* text that is not UTF-8: the message names the option and the file */
        char bad_txt[600], o2[600];
        snprintf(bad_txt, sizeof(bad_txt), "%s/bad.txt", dir);
        snprintf(o2, sizeof(o2), "%s/bad-text.jsonl", dir);
        write_text(bad_txt, "def f():\n    return '\xff\xfe'\n");
        CHECK(run_cmd(moe_cmd_trace, NULL, 7, "trace", "--model", bundled, "--text", bad_txt, "--out", o2) == 1,
              "invalid UTF-8 must fail");
        char want[700];
        snprintf(want, sizeof(want), "--text %s", bad_txt);
        CHECK(strstr(errbuf, want), "UTF-8 error does not name the file: %s", errbuf);
        CHECK(!file_exists(o2) && !tmp_left(o2), "failed trace left a file");
        unlink(bad_txt);
    }

    /* a longer trace, sequences of 64: several sequences, experts not in id order */
    char py[512], pyt[600];
    t_path(py, sizeof(py), "bench/data/pycode/eval.txt");
    snprintf(pyt, sizeof(pyt), "%s/py.jsonl", dir);
    CHECK(run_cmd(moe_cmd_trace, NULL, 11, "trace", "--model", bundled, "--text", py, "--seq-len", "64",
                  "--max-tokens", "300", "--out", pyt) == 0, "trace of eval.txt");
    REQUIRE(moe_trace_load(pyt, &t) == MOE_OK, "%s", moe_last_error());
    {
        bool unsorted = false;
        for (size_t i = 0; i < t->n_tokens && !unsorted; i++)
            for (int li = 0; li < t->info.n_moe && !unsorted; li++) {
                const int *e = moe_trace_experts(t, i, li);
                for (int j = 1; j < t->info.top_k; j++) unsorted |= e[j] < e[j - 1];
            }
        CHECK(t->n_tokens == 300 && t->seq[299] == 4 && t->pos[299] == 299 - 256, "300 tokens in 5 sequences");
        CHECK(unsorted, "every layer's experts already in id order: the check below would prove nothing");
    }
    moe_trace_free(t);

    /* sim */
    CHECK(run_cmd(moe_cmd_sim, NULL, 2, "sim", "--help") == 0, "sim --help");
    CHECK(run_cmd(moe_cmd_sim, NULL, 5, "sim", "--trace", p, "--policy", "lru") == 2, "no capacity");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", p, "--policy", "lru", "--capacity-frac",
                  "1.5") == 2, "bad frac");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", p, "--policy", "mru", "--capacity", "8") == 2,
          "bad policy");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", p, "--policy", "lru", "--capacity", "2") == 2,
          "capacity below top_k is a usage error");
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", "/nonexistent.jsonl", "--policy", "lru",
                  "--capacity", "8") == 1, "missing trace");
    CHECK(run_cmd(moe_cmd_sim, out, 12, "sim", "--trace", p, "--policy", "belady", "--capacity-frac",
                  "0.25", "--json", "--link-gbps", "55", "--expert-ms", "0.153") == 0, "sim --json");
    json_error_t je;
    json_t *j = json_load_file(out, 0, &je);
    REQUIRE(j, "sim --json output is not JSON: %s", je.text);
    static const char *keys[] = { "hits", "misses", "hit_rate", "transfers_per_token",
                                  "bytes_moved", "stall_s", "tokens_per_s" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(keys); i++)
        CHECK(json_object_get(j, keys[i]), "sim --json lacks %s", keys[i]);
    CHECK(json_integer_value(json_object_get(j, "capacity")) == 64, "floor(0.25 x 8 x 32) = 64");
    json_decref(j);

    /* --predictor none replays the same accesses in the same order as plain sim:
     * identical figures, for LFU (order-sensitive ties) and LRU, at several capacities */
    {
        static const char *const pols[] = { "lfu", "lru" };
        static const char *const caps[] = { "16", "33", "64", "128" };
        static const char *const fig[] = { "hits", "misses", "evictions", "bytes_moved" };
        char out2[600];
        snprintf(out2, sizeof(out2), "%s/out2.txt", dir);
        for (size_t a = 0; a < MOE_ARRAY_LEN(pols); a++)
            for (size_t b = 0; b < MOE_ARRAY_LEN(caps); b++) {
                CHECK(run_cmd(moe_cmd_sim, out, 8, "sim", "--trace", pyt, "--policy", pols[a], "--capacity",
                              caps[b], "--json") == 0, "sim %s", pols[a]);
                CHECK(run_cmd(moe_cmd_sim, out2, 10, "sim", "--trace", pyt, "--policy", pols[a], "--capacity",
                              caps[b], "--json", "--predictor", "none") == 0, "sim %s --predictor none", pols[a]);
                for (size_t k = 0; k < MOE_ARRAY_LEN(fig); k++) {
                    long long x = json_key(out, fig[k]), y = json_key(out2, fig[k]);
                    CHECK(x >= 0 && x == y, "--policy %s --capacity %s: %s %lld, with --predictor none %lld",
                          pols[a], caps[b], fig[k], x, y);
                }
            }
    }

    /* bytes moved: --expert-bytes bounded to 1 TiB, no wrap-around at the bound */
    CHECK(run_cmd(moe_cmd_sim, NULL, 9, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16",
                  "--expert-bytes", "18446744073709551615") == 2 && strstr(errbuf, "1099511627776"),
          "--expert-bytes 2^64-1: %s", errbuf);
    CHECK(run_cmd(moe_cmd_sim, NULL, 9, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16",
                  "--expert-bytes", "1099511627777") == 2, "--expert-bytes 1 TiB + 1");
    for (int pred = 0; pred < 2; pred++) {
        CHECK(run_cmd(moe_cmd_sim, out, pred ? 12 : 10, "sim", "--trace", pyt, "--policy", "lru", "--capacity",
                      "16", "--expert-bytes", "1099511627776", "--json", "--predictor", "none") == 0,
              "--expert-bytes 1 TiB");
        long long mv = json_key(out, "bytes_moved"), miss = json_key(out, "misses");
        CHECK(miss > 0 && mv == miss * (1LL << 40), "bytes_moved %lld for %lld misses of 1 TiB", mv, miss);
    }

    /* timeline-only options need --link-gbps; an empty --predictor; a directory */
    CHECK(run_cmd(moe_cmd_sim, NULL, 9, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16",
                  "--layer-ms", "5") == 2 && strstr(errbuf, "--layer-ms needs --link-gbps"),
          "--layer-ms without --link-gbps: %s", errbuf);
    CHECK(run_cmd(moe_cmd_sim, NULL, 9, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16",
                  "--expert-ms", "0.1") == 2 && strstr(errbuf, "--expert-ms needs --link-gbps"),
          "--expert-ms without --link-gbps: %s", errbuf);
    CHECK(run_cmd(moe_cmd_sim, out, 12, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16",
                  "--layer-ms", "5", "--link-gbps", "10", "--json") == 0 && json_key(out, "tokens") == 300,
          "--layer-ms with --link-gbps");
    /* --min-score without --predictor, which it shapes the hints of, is refused, where it was let be unused; with
     * --predictor none it is said to change nothing, as replay says it */
    for (int k = 0; k < 2; k++)
        CHECK(run_cmd(moe_cmd_sim, NULL, 9, "sim", "--trace", pyt, "--policy", k ? "predicted" : "lru",
                      "--capacity", "16", "--min-score", "0.5") == 2 &&
                  !strcmp(errbuf, "moeflow sim: --min-score sets the score from which --predictor history's hints "
                                  "move experts: give --predictor history too\n"),
              "--min-score without --predictor: %s", errbuf);
    CHECK(run_cmd(moe_cmd_sim, out, 11, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16", "--min-score",
                  "0.5", "--predictor", "none") == 0 && strstr(errbuf, "warning: --min-score changes nothing with "
                  "--predictor none"), "--min-score with --predictor none: %s", errbuf);
    CHECK(run_cmd(moe_cmd_sim, out, 11, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16", "--min-score",
                  "0.5", "--predictor", "history") == 0 && !strstr(errbuf, "warning"),
          "--min-score with --predictor history: %s", errbuf);
    CHECK(run_cmd(moe_cmd_sim, NULL, 9, "sim", "--trace", pyt, "--policy", "lru", "--capacity", "16",
                  "--predictor", "") == 2 && strstr(errbuf, "--predictor '' is empty"),
          "--predictor '': %s", errbuf);
    CHECK(run_cmd(moe_cmd_sim, NULL, 7, "sim", "--trace", dir, "--policy", "lru", "--capacity", "16") == 1 &&
              strstr(errbuf, "is a directory"), "--trace DIR: %s", errbuf);

    /* trace reader errors name the line and the field */
    expect_trace_error(dir, "", "empty");
    expect_trace_error(dir, "{\"format\":\"other\"}\n", "format");
    expect_trace_error(dir, "{\"format\":\"moeflow-trace\",\"version\":2}\n", "version 2");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[[0,1]]}\n", ":2:");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[[0,1],[2,2]]}\n", "twice");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[[0,1],[2,9]]}\n", "experts[1][1]");
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"experts\":[[0,1],[2,3]]}\n", "token");
    expect_trace_error(dir, HDR "not json\n", ":2:");
    /* expert_bytes, when present, is an integer in [1, 1 TiB] */
#define HDR_EB(v) "{\"format\":\"moeflow-trace\",\"version\":1,\"model\":\"x\",\"layers\":2,\"experts\":4," \
                  "\"top_k\":2,\"moe_layers\":[0,1],\"expert_bytes\":" v "}\n"
    static const char *const bad_eb[] = { HDR_EB("-1"), HDR_EB("1.5"), HDR_EB("0"), HDR_EB("\"100\""),
                                          HDR_EB("null"), HDR_EB("9223372036854775807"),
                                          HDR_EB("1099511627777") };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad_eb); i++) expect_trace_error(dir, bad_eb[i], ":1: field \"expert_bytes\"");
    {
        char path[600];
        snprintf(path, sizeof(path), "%s/eb.jsonl", dir);
        write_text(path, HDR_EB("1099511627776") "{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[[0,1],[2,3]]}\n");
        REQUIRE(moe_trace_load(path, &t) == MOE_OK, "expert_bytes 1 TiB refused: %s", moe_last_error());
        CHECK(t->info.expert_bytes == 1ull << 40, "expert_bytes %llu", (unsigned long long)t->info.expert_bytes);
        moe_trace_free(t);
    }
    /* seq 0, 1, ... in file order; pos 0, 1, ... within a seq */
#define TOK(s, p) "{\"seq\":" #s ",\"pos\":" #p ",\"token\":1,\"experts\":[[0,1],[2,3]]}\n"
    expect_trace_error(dir, HDR TOK(0, 0) TOK(5, 0), ":3: \"seq\" = 5 after sequence 0");
    expect_trace_error(dir, HDR TOK(0, 0) TOK(1, 0) TOK(0, 0), ":4: \"seq\" = 0 after sequence 1");
    expect_trace_error(dir, HDR TOK(1, 0), ":2: \"seq\" = 1 on the first token");
    expect_trace_error(dir, HDR TOK(0, 1), ":2: \"pos\" = 1 at the start of sequence 0");
    expect_trace_error(dir, HDR TOK(0, 0) TOK(0, 1) TOK(0, 0), ":4: \"pos\" = 0");
    expect_trace_error(dir, HDR TOK(0, 0) TOK(0, 2), ":3: \"pos\" = 2");
    expect_trace_error(dir, HDR TOK(0, 0) TOK(1, 3), ":3: \"pos\" = 3 at the start of sequence 1");
    {
        char path[600];
        snprintf(path, sizeof(path), "%s/order.jsonl", dir);
        write_text(path, HDR TOK(0, 0) TOK(0, 1) TOK(1, 0) TOK(2, 0) TOK(2, 1) "\n");
        REQUIRE(moe_trace_load(path, &t) == MOE_OK, "a well-ordered trace refused: %s", moe_last_error());
        CHECK(t->n_tokens == 5 && t->seq[4] == 2 && t->pos[4] == 1, "order.jsonl");
        moe_trace_free(t);
        /* blank lines are skipped, before the header too: its first non-blank line is the header */
        write_text(path, "\n\n" HDR "\n" TOK(0, 0) TOK(0, 1));
        CHECK(moe_trace_load(path, &t) == MOE_OK && t->n_tokens == 2 && t->info.top_k == 2,
              "blank lines before the header: %s", moe_last_error());
        moe_trace_free(t);
        t = NULL;
    }
    expect_trace_error(dir, "\n\n", "empty");
    /* a header alone is a trace cut short, not one of no tokens (sim would report a hit rate of 0) */
    expect_trace_error(dir, HDR, "a header and no token");
    expect_trace_error(dir, HDR "\n\n", "a header and no token");
    expect_trace_error(dir, "\n{\"seq\":0,\"pos\":0,\"token\":1,\"experts\":[]}\n", "format");
    /* a line whose string holds \u0000: the reason in plain words, not the name of jansson's flag */
    expect_trace_error(dir, HDR "{\"seq\":0,\"pos\":0,\"token\":1,\"x\":\"a\\u0000\"}\n",
                       ":2: not a JSON object (a string holds \\u0000 (NUL): give text without NUL)");
    /* the fuzz corpus holds these malformed cases; each is refused with its line */
    static const char *const bad_seed[][2] = {
        { "seq_jump.jsonl", ":3: \"seq\" = 5" }, { "pos_reset.jsonl", ":4: \"pos\" = 0" },
        { "expert_bytes_neg.jsonl", ":1: field \"expert_bytes\"" },
        { "expert_bytes_frac.jsonl", ":1: field \"expert_bytes\"" },
        { "expert_bytes_huge.jsonl", ":1: field \"expert_bytes\"" },
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(bad_seed); i++) {
        char rel[128], path[600];
        snprintf(rel, sizeof(rel), "tests/offload/corpus_trace/%s", bad_seed[i][0]);
        t_path(path, sizeof(path), rel);
        CHECK(moe_trace_load(path, &t) != MOE_OK && strstr(moe_last_error(), bad_seed[i][1]),
              "%s: '%s' lacks '%s'", rel, moe_last_error(), bad_seed[i][1]);
        moe_trace_free(t);
        t = NULL;
    }
    /* the committed corpus traces that are valid still load */
    static const char *const good[] = { "valid.jsonl", "pycode.jsonl" };
    for (size_t i = 0; i < MOE_ARRAY_LEN(good); i++) {
        char rel[128], path[600];
        snprintf(rel, sizeof(rel), "tests/offload/corpus_trace/%s", good[i]);
        t_path(path, sizeof(path), rel);
        CHECK(moe_trace_load(path, &t) == MOE_OK, "%s: %s", rel, moe_last_error());
        moe_trace_free(t);
    }

    check_layers_match();
    t_tmp_remove(dir);
    return t_result("test_cli");
}
