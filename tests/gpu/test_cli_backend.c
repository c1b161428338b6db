/* `--backend cuda` through the built moeflow binary (argv[1]) where it cannot
 * run: in a build without CUDA every model command (generate, trace, replay,
 * bench batch, serve by flag and by config file) exits 1 saying the build has
 * no CUDA backend and how to rebuild; in a CUDA build on a machine without a
 * device it exits 1 saying no device is visible (serve --check-config, which
 * checks the configuration alone, passes in both).  Nothing is written to stdout
 * or to the trace file.  A bad --backend value is a usage error (2), and
 * --backend cpu runs as the default does.  A model without MoE layers with
 * --backend cuda and an offload flag is a usage error (2) saying it has no MoE
 * layer, before the build or the device is looked at; without the flag it
 * fails as any model does here.  Skips (77) where a device exists. */
#include "common/moe.h"
#include "offload/runtime.h"
#include "tests/test_util.h"

#ifdef MOEFLOW_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];

struct run {
    int rc;          /* exit status, -1 if it did not exit normally */
    char *out, *err; /* captured stdout / stderr */
};

/* Runs argv with a 90 s alarm (serve must not be left running). */
static struct run run_cmd(char *const argv[])
{
    struct run r = { .rc = -1 };
    char op[512], ep[512];
    size_t len;
    snprintf(op, sizeof(op), "%s/stdout", tmpdir);
    snprintf(ep, sizeof(ep), "%s/stderr", tmpdir);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork failed");
    if (pid == 0) {
        int fo = open(op, O_WRONLY | O_CREAT | O_TRUNC, 0600), fe = open(ep, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0) _exit(127);
        alarm(90);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    REQUIRE(waitpid(pid, &status, 0) == pid, "waitpid failed");
    if (WIFEXITED(status)) r.rc = WEXITSTATUS(status);
    REQUIRE(moe_read_file(op, &r.out, &len, 64u << 20) == MOE_OK, "%s", moe_last_error());
    REQUIRE(moe_read_file(ep, &r.err, &len, 64u << 20) == MOE_OK, "%s", moe_last_error());
    return r;
}

static void run_free(struct run *r)
{
    free(r->out);
    free(r->err);
}

/* A TCP port on 127.0.0.1 that was free a moment ago. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
                getsockname(fd, (struct sockaddr *)&a, &len) == 0,
            "free port");
    close(fd);
    return ntohs(a.sin_port);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f && fputs(text, f) >= 0 && fclose(f) == 0, "cannot write %s", path);
}

/* argv must exit `rc` with `needle` on stderr and nothing on stdout. */
static void expect(char *const argv[], int rc, const char *needle, const char *label)
{
    struct run r = run_cmd(argv);
    CHECK(r.rc == rc, "%s: exit %d, want %d; stderr: %s", label, r.rc, rc, r.err);
    CHECK(strstr(r.err, needle), "%s: stderr lacks '%s': %s", label, needle, r.err);
    CHECK(r.out[0] == 0, "%s: wrote to stdout: %s", label, r.out);
    run_free(&r);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: %s PATH/TO/moeflow", argv[0]);
    char *bin = argv[1];
#ifdef MOEFLOW_HAVE_CUDA
    if (moe_cuda_device_count() > 0) {
        printf("test_cli_backend: a CUDA device is visible, so --backend cuda runs; skipped (the device "
               "check compares its output with the cpu backend)\n");
        return T_SKIP;
    }
#endif
    const char *want = moe_offload_have_cuda()
                           ? "--backend cuda: no CUDA device is visible"
                           : "--backend cuda: this build has no CUDA backend: rebuild with -DMOEFLOW_CUDA=ON "
                             "on a machine with nvcc";
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/moe_cli_backend_XXXXXX");
    REQUIRE(mkdtemp(tmpdir), "mkdtemp");
    char text[600], prompts[600], trace[600], conf[600], ids[600], dense[4096];
    snprintf(text, sizeof(text), "%s/text.py", tmpdir);
    snprintf(prompts, sizeof(prompts), "%s/prompts.txt", tmpdir);
    snprintf(trace, sizeof(trace), "%s/t.jsonl", tmpdir);
    snprintf(conf, sizeof(conf), "%s/serve.conf", tmpdir);
    snprintf(ids, sizeof(ids), "%s/ids.json", tmpdir);
    t_path(dense, sizeof(dense), "tests/fixtures/deepseek-v3-variants/all_dense");
    write_text(ids, "[[1, 5, 9, 2]]");
    write_text(text, "def add(a, b):\n    return a + b\n\nclass Point:\n    pass\n");
    write_text(prompts, "def f(x):\nimport os\n");
    /* serve needs a listener; the HTTP one binds a port the kernel just had free */
    char port[16], conf_text[200];
    snprintf(port, sizeof(port), "%d", free_port());
    snprintf(conf_text, sizeof(conf_text),
             "# the GPU\nbackend = cuda\ngrpc-port = 0\nhttp-port = %s\nwarmup-tokens = 0\n", port);
    write_text(conf, conf_text);

    {
        char *a[] = { bin, "generate", "--prompt", "def f(x):", "--max-tokens", "4", "--backend", "cuda", NULL };
        expect(a, 1, want, "generate --backend cuda");
    }
    {
        char *a[] = { bin, "generate", "--prompt", "def f(x):", "--max-tokens", "4", "--gpu-experts", "64",
                      "--backend", "cuda", NULL };
        expect(a, 1, want, "generate --backend cuda --gpu-experts 64");
    }
    {
        char *a[] = { bin, "trace", "--text", text, "--out", trace, "--backend", "cuda", NULL };
        expect(a, 1, want, "trace --backend cuda");
        CHECK(access(trace, F_OK) != 0, "trace --backend cuda wrote %s", trace);
    }
    {
        /* no MoE layer: nothing for an expert tier, so --gpu-experts (as --policy) is refused first */
        char *a[] = { bin, "trace", "--model", dense, "--ids", ids, "--out", trace, "--backend", "cuda",
                      "--gpu-experts", "4", NULL };
        expect(a, 2, "model has no MoE layer", "trace --backend cuda --gpu-experts 4 of a dense model");
        char *p[] = { bin, "trace", "--model", dense, "--ids", ids, "--out", trace, "--backend", "cuda",
                      "--policy", "lru", NULL };
        expect(p, 2, "model has no MoE layer", "trace --backend cuda --policy lru of a dense model");
        char *b[] = { bin, "trace", "--model", dense, "--ids", ids, "--out", trace, "--backend", "cuda", NULL };
        expect(b, 1, want, "trace --backend cuda of a dense model");
        CHECK(access(trace, F_OK) != 0, "trace --backend cuda of a dense model wrote %s", trace);
    }
    {
        char *a[] = { bin, "replay", "--text", text, "--capacity", "16", "--policy", "lru", "--predictor", "none",
                      "--backend", "cuda", NULL };
        expect(a, 1, want, "replay --backend cuda");
    }
    {
        char *a[] = { bin, "bench", "batch", "--prompts", prompts, "--concurrency", "1", "--micro-batch", "1",
                      "--max-tokens", "2", "--grouping", "fcfs", "--capacity-frac", "0.25", "--backend", "cuda",
                      NULL };
        expect(a, 1, want, "bench batch --backend cuda");
    }
    {
        char *h[] = { bin, "serve", "--help", NULL };
        struct run r = run_cmd(h);
        bool have_server = r.rc == 0;
        CHECK(!have_server || strstr(r.out, "--backend"), "serve --help does not list --backend");
        run_free(&r);
        if (have_server) {
            char *a[] = { bin, "serve", "--backend", "cuda", "--grpc-port", "0", "--http-port", port,
                          "--warmup-tokens", "0", NULL };
            expect(a, 1, want, "serve --backend cuda");
            char *c[] = { bin, "serve", "--config", conf, NULL };
            expect(c, 1, want, "serve --config (backend = cuda)");
            /* --check-config checks the configuration, not what this binary or machine can run: a
             * production file (backend = cuda) passes on any build, as deploy/ checks it */
            char *k[] = { bin, "serve", "--config", conf, "--check-config", NULL };
            struct run rk = run_cmd(k);
            CHECK(rk.rc == 0 && !strcmp(rk.out, "moeflow serve: configuration ok\n"),
                  "serve --check-config (backend = cuda): exit %d: %s%s", rk.rc, rk.out, rk.err);
            run_free(&rk);
            char *u[] = { bin, "serve", "--backend", "tpu", "--grpc-port", "0", "--http-port", port, NULL };
            expect(u, 2, "--backend 'tpu' unknown (use cpu or cuda)", "serve --backend tpu");
        }
    }
    {
        char *a[] = { bin, "generate", "--prompt", "def f(x):", "--backend", "tpu", NULL };
        expect(a, 2, "--backend 'tpu' unknown (use cpu or cuda)", "generate --backend tpu");
        char *b[] = { bin, "replay", "--text", text, "--capacity", "16", "--policy", "lru", "--predictor", "none",
                      "--backend", "", NULL };
        expect(b, 2, "--backend '' unknown (use cpu or cuda)", "replay --backend ''");
    }
    {
        /* --backend cpu is the default: same tokens */
        char *a[] = { bin, "generate", "--prompt", "def f(x):", "--max-tokens", "6", "--backend", "cpu", NULL };
        char *b[] = { bin, "generate", "--prompt", "def f(x):", "--max-tokens", "6", NULL };
        struct run ra = run_cmd(a), rb = run_cmd(b);
        CHECK(ra.rc == 0 && rb.rc == 0, "generate --backend cpu: exit %d / %d: %s", ra.rc, rb.rc, ra.err);
        CHECK(ra.out[0] && !strcmp(ra.out, rb.out), "--backend cpu printed '%s', the default '%s'", ra.out, rb.out);
        run_free(&ra);
        run_free(&rb);
    }
    char rm[600];
    const char *files[] = { "text.py", "prompts.txt", "t.jsonl", "serve.conf", "ids.json", "stdout", "stderr" };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(rm, sizeof(rm), "%s/%s", tmpdir, files[i]);
        unlink(rm);
    }
    rmdir(tmpdir);
    return t_result("test_cli_backend");
}
