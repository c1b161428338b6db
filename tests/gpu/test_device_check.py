#!/usr/bin/python3
"""bench/device/check.sh over a fake bundle, on the CPU: every binary it runs is a stub that prints
its arguments and exits with the code the test gives it (MOEFLOW_STUB_RC_<name>), compute-sanitizer is
a stub that runs the program it is given (or refuses the device as gVisor machines do), and moeflow a
stub whose --backend cpu and cuda texts are equal.  The device run happens once, so its script is
checked here as its header says it behaves: exit 0 when every step passed, 1 when one failed (a test
missing from the bundle too; the failing log's tail printed), 2 without the binaries (summary.json
naming prepare.sh), 3 when the time budget cut a step short or skipped it, or when a program found no
CUDA device (its exit 77: a skip, and no pass, since on the device machine the check did not run; under
compute-sanitizer a skip alone);
summary.json valid JSON with "finished" true and every step, the CLI step's cases, logs.tar.gz with
a log per step, at most 8 files under $OUT named as the device tool brings them back; and the bundle
unpacked from dist.tar.xz with tar, or with python3's tarfile where tar cannot."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

SRC = os.environ.get("MOEFLOW_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BINARIES = ["test_gpu_ops", "test_gpu_grouped", "test_gpu_tier", "test_gpu_e2e_pycode", "test_gpu_variants",
            "test_gpu_runtime", "test_gpu_sticky", "gpu_model_decode", "gpu_moe_decode", "store_read_bench"]
STEPS = ["test_gpu_ops", "test_gpu_grouped", "test_gpu_tier"] + \
    ["test_gpu_e2e_" + m for m in ("pycode", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3")] + \
    ["test_gpu_variants", "test_gpu_runtime", "test_gpu_sticky", "cli_generate_cuda_vs_cpu", "gpu_model_decode",
     "gpu_model_decode_kv_bf16", "gpu_moe_decode", "gpu_moe_decode_invariant", "memcheck_gpu_ops",
     "memcheck_gpu_tier", "store_read_bench"]
failures = []  # the messages of the checks that failed


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg, file=sys.stderr)


def write_exe(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


STUB = """#!/bin/sh
# a GPU program of the bundle: its name's MOEFLOW_STUB_RC_<name>, else 0; store_read_bench's JSON line
n=$(basename "$0")
echo "$n $*"
while [ $# -gt 0 ]; do [ "$1" = --json ] && echo '{}' > "$2"; shift; done  # a benchmark's JSON file
[ "$n" = store_read_bench ] && printf '%s\\n' 'reading 1 GiB' '{"bench":"store_read","gbs":1.0}' '{"bench":"store_read","gbs":2.0}'
[ "$n" = test_gpu_ops ] && [ -n "${MOEFLOW_STUB_SLEEP:-}" ] && exec sleep "$MOEFLOW_STUB_SLEEP"
eval "rc=\\${MOEFLOW_STUB_RC_$n:-0}"
exit $rc
"""

MOEFLOW = """#!/bin/sh
# moeflow generate: the same text on every backend, or with MOEFLOW_STUB_CUDA_TEXT another on cuda
case "$*" in *--help*) echo "  --predictor P"; exit 0;; esac
case "$*" in *"--backend cuda"*) [ -n "${MOEFLOW_STUB_CUDA_TEXT:-}" ] && { printf '%s\\n' "$MOEFLOW_STUB_CUDA_TEXT"; exit 0; };; esac
echo "def f(): return 1"
"""

SANITIZER = """#!/bin/sh
# compute-sanitizer: runs the program it is given (its last argument), or refuses the device
if [ -n "${MOEFLOW_STUB_SAN_REFUSE:-}" ]; then echo "========= Device not supported"; exit 1; fi
for a; do last=$a; done
exec "$last"
"""


def make_dist(root, missing=()):
    """root/tree/bench/device: the scripts, in a tree of their own (check.sh looks for
    build-device/dist beside them); root/dist/bin: the stubs (less `missing`), root/dist/data: the
    model's config.json, as the bundle holds it; root/stubs/compute-sanitizer."""
    scripts = os.path.join(root, "tree", "bench", "device")
    os.makedirs(scripts)
    for f in ("check.sh", "cli_generate.sh"):
        shutil.copy(os.path.join(SRC, "bench", "device", f), scripts)
    model = os.path.join(root, "dist", "data", "models", "pycode-moe-18m")
    os.makedirs(model)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump({"num_hidden_layers": 8, "num_local_experts": 32}, f)
    bindir = os.path.join(root, "dist", "bin")
    os.makedirs(bindir)
    os.makedirs(os.path.join(root, "dist", "lib"))
    for b in BINARIES:
        if b not in missing:
            write_exe(os.path.join(bindir, b), STUB)
    write_exe(os.path.join(bindir, "moeflow"), MOEFLOW)
    stubs = os.path.join(root, "stubs")
    os.makedirs(stubs)
    write_exe(os.path.join(stubs, "compute-sanitizer"), SANITIZER)
    return os.path.join(root, "dist")


def run_check(root, env_extra, dist=True):
    out = os.path.join(root, "out")
    env = dict(os.environ)
    env.pop("MOEFLOW_DIST", None)
    env.pop("MOEFLOW_BUNDLE", None)
    env.update({"OUT": out, "PATH": os.path.join(root, "stubs") + ":" + env["PATH"], "MOEFLOW_TEST_SEED": "7"})
    if dist:
        env["MOEFLOW_DIST"] = os.path.join(root, "dist")
    env.update(env_extra)
    check_sh = os.path.join(root, "tree", "bench", "device", "check.sh")
    p = subprocess.run(["bash", check_sh], capture_output=True, text=True, env=env, timeout=120)
    summary = None
    try:
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        check(False, "summary.json missing or not JSON: %s" % e)
    return p, summary, out


def steps_of(summary):
    return {s["step"]: s for s in (summary or {}).get("steps", [])}


def out_files_ok(out, case, want=None):
    """What the device tool brings back: at most 8 files, named in letters, digits, '.', '_', '-'."""
    files = []
    for d, _, fs in os.walk(out):
        files += [os.path.relpath(os.path.join(d, f), out) for f in fs]
    check(len(files) <= 8, "%s: %d files under $OUT (the device tool brings back 8): %s" % (case, len(files), files))
    check(want is None or sorted(files) == sorted(want), "%s: files under $OUT %s, want %s" % (case, files, want))
    for f in files:
        check(all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in f.split("/")) and f.count("/") <= 2,
              "%s: $OUT/%s would not come back" % (case, f))


def case_all_pass():
    with tempfile.TemporaryDirectory() as root:
        make_dist(root)
        p, s, out = run_check(root, {})
        check(p.returncode == 0, "all pass: exit %d, want 0\n%s%s" % (p.returncode, p.stdout, p.stderr))
        st = steps_of(s)
        check(s and s.get("finished") is True and s.get("failures") == 0 and s.get("seed") == 7,
              "all pass: summary %s" % s)
        for name in STEPS:
            check(name in st and st[name]["status"] == "pass", "all pass: step %s: %s" % (name, st.get(name)))
        cases = st.get("cli_generate_cuda_vs_cpu", {}).get("cases", {})
        check(len(cases) == 9 and set(cases.values()) == {"pass"}, "all pass: CLI cases %s" % cases)
        check(st.get("test_gpu_e2e_olmoe", {}).get("rc") == 0, "all pass: e2e step %s" % st.get("test_gpu_e2e_olmoe"))
        with tarfile.open(os.path.join(out, "logs.tar.gz")) as t:
            logs = set(t.getnames())
        for name in STEPS:
            check(name + ".log" in logs, "all pass: logs.tar.gz lacks %s.log (%s)" % (name, sorted(logs)))
        with open(os.path.join(out, "store_read_bench.json")) as f:  # JSON Lines, the log's other lines left out
            rows = [json.loads(line) for line in f]
        check([r.get("gbs") for r in rows] == [1.0, 2.0], "store_read_bench.json: %s" % rows)
        out_files_ok(out, "all pass", ["summary.json", "logs.tar.gz", "nvidia-smi.txt", "gpu_model_decode.json",
                                       "gpu_model_decode_kv_bf16.json", "gpu_moe_decode.json",
                                       "gpu_moe_decode_invariant.json", "store_read_bench.json"])


def case_fail_and_skip():
    with tempfile.TemporaryDirectory() as root:
        make_dist(root, missing=("test_gpu_variants",))
        p, s, out = run_check(root, {"MOEFLOW_STUB_RC_test_gpu_tier": "1", "MOEFLOW_STUB_RC_test_gpu_sticky": "77",
                                     "MOEFLOW_STUB_SAN_REFUSE": "1"})
        st = steps_of(s)
        check(p.returncode == 1, "a failing step: exit %d, want 1" % p.returncode)
        check(s and s.get("failures") == 2 and s.get("finished") is True, "a failing step: summary %s" % s)
        check(st.get("test_gpu_tier", {}).get("status") == "fail" and st["test_gpu_tier"].get("rc") == 1,
              "test_gpu_tier: %s" % st.get("test_gpu_tier"))
        check(st.get("test_gpu_sticky", {}).get("status") == "skip" and
              "no CUDA device" in st["test_gpu_sticky"].get("reason", ""), "a 77 is a skip: %s" % st.get("test_gpu_sticky"))
        check(st.get("test_gpu_variants", {}).get("status") == "fail" and
              "not in the bundle" in st["test_gpu_variants"].get("reason", ""),
              "a test missing from the bundle: %s" % st.get("test_gpu_variants"))
        check("=== test_gpu_tier.log" in p.stdout, "the failing step's log tail is not printed:\n" + p.stdout)
        for n in ("memcheck_gpu_ops", "memcheck_gpu_tier"):
            check(st.get(n, {}).get("status") == "skip" and "Device not supported" in st[n].get("reason", ""),
                  "a sanitizer refusing the device: %s" % st.get(n))
        out_files_ok(out, "a failing step")


def case_cli_differs():
    """The CLI's GPU text differs from the CPU's, and holds lines that look like check.sh's case lines
    (Python's match statement): the step fails, its 9 cases are fail, summary.json stays JSON."""
    with tempfile.TemporaryDirectory() as root:
        make_dist(root)
        p, s, out = run_check(root, {"MOEFLOW_STUB_CUDA_TEXT": 'match x:\ncase "a" pass\ncase 1: pass'})
        st = steps_of(s).get("cli_generate_cuda_vs_cpu", {})
        check(p.returncode == 1, "CLI texts differ: exit %d, want 1" % p.returncode)
        cases = st.get("cases", {})
        check(st.get("status") == "fail" and len(cases) == 9 and set(cases.values()) == {"fail"},
              "CLI texts differ: step %s" % st)


def case_no_device():
    """Every program finds no device (a driver the runtime cannot use, no GPU in the container): a skip
    each, exit 3, not a pass."""
    with tempfile.TemporaryDirectory() as root:
        make_dist(root)
        env = {"MOEFLOW_STUB_RC_" + b: "77" for b in BINARIES}
        p, s, out = run_check(root, env)
        st = steps_of(s)
        check(p.returncode == 3, "no device: exit %d, want 3\n%s" % (p.returncode, p.stderr))
        check(s and s.get("failures") == 0 and s.get("finished") is True, "no device: summary %s" % s)
        check(st.get("test_gpu_ops", {}).get("status") == "skip" and
              st["test_gpu_ops"].get("reason") == "no CUDA device (exit 77)", "no device: %s" % st.get("test_gpu_ops"))
        check("found no CUDA device" in p.stderr, "no device: stderr says nothing of it:\n" + p.stderr)
    with tempfile.TemporaryDirectory() as root:  # one program alone
        make_dist(root)
        p, s, out = run_check(root, {"MOEFLOW_STUB_RC_test_gpu_runtime": "77"})
        check(p.returncode == 3, "one program without a device: exit %d, want 3" % p.returncode)
    with tempfile.TemporaryDirectory() as root:  # the device hidden by compute-sanitizer alone: a pass
        make_dist(root)
        write_exe(os.path.join(root, "stubs", "compute-sanitizer"), "#!/bin/sh\nexit 77\n")
        p, s, out = run_check(root, {})
        st = steps_of(s)
        check(p.returncode == 0, "no device under compute-sanitizer: exit %d, want 0" % p.returncode)
        check(st.get("memcheck_gpu_ops", {}).get("status") == "skip" and
              "compute-sanitizer" in st["memcheck_gpu_ops"].get("reason", ""),
              "no device under compute-sanitizer: %s" % st.get("memcheck_gpu_ops"))


def case_no_binaries():
    with tempfile.TemporaryDirectory() as root:
        make_dist(root)
        shutil.rmtree(os.path.join(root, "dist"))
        nowhere = os.path.join(root, 'no "dist" \\ here')  # summary.json stays JSON whatever the path holds
        p, s, out = run_check(root, {"MOEFLOW_DIST": nowhere,
                                     "MOEFLOW_BUNDLE": os.path.join(root, "none.tar.xz")}, dist=False)
        check(p.returncode == 2, "no binaries: exit %d, want 2" % p.returncode)
        check(s and s.get("failures") == 1 and "prepare.sh" in s.get("error", "") and nowhere in s.get("error", ""),
              "no binaries: summary %s" % s)


def case_hex_seed():
    """The tests take a hex seed; summary.json then holds it as a string, still JSON."""
    with tempfile.TemporaryDirectory() as root:
        make_dist(root)
        p, s, out = run_check(root, {"MOEFLOW_TEST_SEED": "0x1f"})
        check(p.returncode == 0 and s and s.get("seed") == "0x1f", "hex seed: exit %d, summary %s" % (p.returncode, s))


def case_budget():
    with tempfile.TemporaryDirectory() as root:
        make_dist(root)
        p, s, out = run_check(root, {"CHECK_BUDGET_S": "7", "MOEFLOW_STUB_SLEEP": "60"})
        st = steps_of(s)
        check(p.returncode == 3, "budget spent: exit %d, want 3\n%s" % (p.returncode, p.stderr))
        check(s and s.get("failures") == 0 and s.get("finished") is True, "budget spent: summary %s" % s)
        first = st.get("test_gpu_ops", {})
        check(first.get("status") == "skip" and first.get("reason") == "time budget" and first.get("rc") in (124, 137),
              "a step the budget cut short: %s" % first)
        for name in STEPS[1:]:
            check(st.get(name, {}).get("status") == "skip", "budget spent: step %s: %s" % (name, st.get(name)))
        out_files_ok(out, "budget spent")


def case_bundle(tar_works):
    """Binaries from build-device/dist.tar.xz (MOEFLOW_BUNDLE), unpacked by tar or by python3's tarfile."""
    with tempfile.TemporaryDirectory() as root:
        make_dist(root)
        bundle = os.path.join(root, "dist.tar.xz")
        with tarfile.open(bundle, "w:xz") as t:
            t.add(os.path.join(root, "dist"), arcname="dist")
        shutil.rmtree(os.path.join(root, "dist"))
        if not tar_works:
            write_exe(os.path.join(root, "stubs", "tar"), "#!/bin/sh\necho 'tar: xz: Cannot exec' >&2\nexit 2\n")
        p, s, out = run_check(root, {"MOEFLOW_BUNDLE": bundle}, dist=False)
        what = "bundle (%s)" % ("tar" if tar_works else "python3's tarfile")
        check(p.returncode == 0, "%s: exit %d, want 0\n%s%s" % (what, p.returncode, p.stdout, p.stderr))
        check(steps_of(s).get("test_gpu_ops", {}).get("status") == "pass", "%s: summary %s" % (what, s))


if not os.access("/usr/bin/python3", os.X_OK) or not shutil.which("bash") or not shutil.which("timeout"):
    print("skip: bash or timeout missing")
    sys.exit(77)
case_all_pass()
case_fail_and_skip()
case_cli_differs()
case_no_device()
case_no_binaries()
case_hex_seed()
case_budget()
case_bundle(True)
case_bundle(False)
print("test_device_check: %s" % ("ok" if not failures else "%d failure(s)" % len(failures)))
sys.exit(1 if failures else 0)
