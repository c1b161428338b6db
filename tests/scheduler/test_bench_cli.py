#!/usr/bin/python3
"""moeflow bench batch: usage errors (also a capacity below top_k, a prompt +
--max-tokens beyond the model's context) exit 2 with a message naming the flag,
--help exits 0, and a small run prints the JSON figures, identical (except
timings) across two runs and across both prompt file formats' loaders, and
--policy needs no cache flag beyond the device tier's size."""
import json
import os
import subprocess
import sys

BIN = os.path.join(os.environ.get("MOEFLOW_BINARY_DIR", "."), "server", "moeflow")
SRC = os.environ.get("MOEFLOW_SOURCE_DIR", ".")
HERE = os.path.join(SRC, "tests", "scheduler")
fails = 0


def check(cond, msg):
    global fails
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        fails += 1


def run(*args, env=None):
    p = subprocess.run([BIN, "bench", "batch", *args], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, **(env or {})))
    return p.returncode, p.stdout, p.stderr


base = ["--prompts", os.path.join(HERE, "prompts-small.json"), "--concurrency", "8", "--micro-batch", "4",
        "--max-tokens", "6", "--prompt-tokens", "24", "--capacity-frac", "0.25"]

rc, out, err = run("--help")
check(rc == 0 and "--grouping" in out, f"--help: rc {rc}")
# the help lists -h, --help as every command's does, and the line format's escapes
check("-h, --help" in out and "\\n, \\t\n" in out and "and \\r stand for" in out, f"--help: {out!r}")
for args, needle in [
    (["--prompts", "x"], "--concurrency"),
    (base, "--grouping"),
    (base + ["--grouping", "lifo"], "--grouping 'lifo'"),
    (base + ["--grouping", "fcfs", "--capacity", "10"], "exactly one of --capacity"),
    (base[:-2] + ["--grouping", "fcfs", "--capacity-frac", "1.5"], "--capacity-frac '1.5'"),
    (base + ["--grouping", "fcfs", "--micro-batch", "9"], "--micro-batch 9"),
    (base + ["--grouping", "fcfs", "--predictor", "crystal-ball"], "crystal-ball"),
    (base[:-2] + ["--grouping", "fcfs", "--capacity", "1"], "--capacity"),
    (base[:6] + ["--max-tokens", "1000000"] + base[8:] + ["--grouping", "fcfs"], "--max-tokens"),
    (base + ["--grouping", "fcfs", "--no-prefetch", "--no-predictor-prefetch"], "not both"),
    (base + ["--grouping", "fcfs", "--policy", "belady"], "--belady-trace"),
    (base + ["--grouping", "fcfs", "--no-prefetch", "--lookahead", "2"], "--lookahead 2"),
]:
    rc, out, err = run(*args)
    check(rc == 2 and needle in err, f"{args}: rc {rc}, stderr {err.strip()!r} lacks {needle!r}")

rc, out, err = run("--prompts", "/nonexistent/prompts.txt", *base[2:], "--grouping", "fcfs")
check(rc == 1 and "/nonexistent/prompts.txt" in err, f"missing prompts file: rc {rc} {err.strip()!r}")

results = {}
for g in ("fcfs", "regroup"):
    runs = []
    for _ in range(2):
        rc, out, err = run(*base, "--grouping", g, "--json")
        check(rc == 0, f"{g}: rc {rc} {err.strip()!r}")
        if rc != 0:
            continue
        j = json.loads(out)
        for k in ("experts_per_layer_step", "transfers_per_token", "hit_rate", "tokens_per_s"):
            check(isinstance(j.get(k), (int, float)), f"{g}: key {k} missing or not a number")
        check(j["generated_tokens"] == 8 * 6, f"{g}: generated {j['generated_tokens']}")
        check(j["requests"] == 8 and j["capacity"] == 64, f"{g}: requests {j['requests']} capacity {j['capacity']}")
        check(0 <= j["hit_rate"] <= 1 and j["experts_per_layer_step"] > 0, f"{g}: {j}")
        runs.append(j)
    if len(runs) == 2:
        for k in ("experts_per_layer_step", "transfers", "hits", "misses", "steps", "forwards"):
            check(runs[0][k] == runs[1][k], f"{g}: {k} differs across runs: {runs[0][k]} vs {runs[1][k]}")
        results[g] = runs[0]

# --no-prefetch: predictions rank evictions and move nothing; --stats-json is written; a capacity
# above the number of experts is every expert
stats = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_cli_stats_{os.getpid()}.json")
rc, out, err = run(*base[:-2], "--capacity", "100000", "--grouping", "fcfs", "--predictor", "path+gate",
                   "--policy", "predicted", "--no-prefetch", "--stats-json", stats, "--json")
check(rc == 0, f"--no-prefetch: rc {rc} {err.strip()!r}")
if rc == 0:
    j = json.loads(out)
    check(j["capacity"] == 256 and j["prefetches"] == 0 and j["predictor_rank_only"] is True
          and j["predictor_prefetch"] is False, f"--no-prefetch: {j}")
    with open(stats) as f:
        sj = json.load(f)
    check(sj["device"]["misses"] == j["misses"], f"--stats-json device misses {sj['device']} vs {j['misses']}")
if os.path.exists(stats):
    os.unlink(stats)

# --predictor none: --no-predictor-prefetch changes nothing (the none predictor publishes no prediction) and
# says so, as replay says of --no-prefetch; --lookahead and --no-prefetch do change the figures (the scheduler
# prefetches the experts each sequence used last, which they turn off) and are taken without a word
def figures(*extra):
    rc, out, err = run(*base, "--grouping", "fcfs", "--predictor", "none", "--json", *extra)
    check(rc == 0, f"--predictor none {extra}: rc {rc} {err.strip()!r}")
    j = json.loads(out or "{}")
    return {k: v for k, v in j.items() if k not in ("wall_s", "tokens_per_s")}, err  # all but the timings


plain, err = figures()
check("warning" not in err and plain.get("prefetches", 0) > 0, f"--predictor none: {plain} {err!r}")
same, err = figures("--no-predictor-prefetch")
check("warning: --no-predictor-prefetch changes nothing with --predictor none (nothing is predicted)" in err,
      f"--predictor none --no-predictor-prefetch: no warning: {err!r}")
same.pop("predictor_prefetch", None)
check(same == {k: v for k, v in plain.items() if k != "predictor_prefetch"},
      f"--no-predictor-prefetch changed the figures: {same} vs {plain}")
for extra in (("--lookahead", "0"), ("--no-prefetch",)):
    j, err = figures(*extra)
    check("warning" not in err and j.get("prefetches") == 0 and j.get("transfers") != plain.get("transfers"),
          f"--predictor none {extra}: {j} vs {plain}, {err!r}")

# --policy alone: the device tier of --capacity-frac is offloading enough (no other cache flag needed)
rc, out, err = run(*base, "--grouping", "fcfs", "--policy", "lfu", "--json")
check(rc == 0 and json.loads(out or "{}").get("policy") == "lfu", f"--policy lfu: rc {rc} {err.strip()!r}")

rc, out, err = run("--prompts", os.path.join(HERE, "prompts-small.txt"), *base[2:], "--grouping", "fcfs")
check(rc == 0 and "experts per layer-step" in out and "3 requests" in out, f"text prompts: rc {rc} {out!r} {err!r}")

# a line file whose first prompt begins with '[' is read as lines (JSON only from a .json file)
import tempfile
with tempfile.NamedTemporaryFile("w", suffix=".txt") as pf:
    pf.write("[x for x in range(3)]\ndef g():\n")
    pf.flush()
    rc, out, err = run("--prompts", pf.name, *base[2:], "--grouping", "fcfs")
    check(rc == 0 and "2 requests" in out, f"line prompts beginning with '[': rc {rc} {out!r} {err!r}")
# the line format as --help gives it: CRLF ends a line, an empty line is skipped, \n \t \r stand for a newline, a
# tab and a carriage return, \X for X, and a backslash that ends a line stays; the same prompts as a .json file
# give the same figures
with tempfile.NamedTemporaryFile("wb", suffix=".txt") as pf, tempfile.NamedTemporaryFile("w", suffix=".json") as jf:
    pf.write(b"def f(a):\\n\\treturn a\\r\\\\ \\q\\\r\n\r\n\nimport sys")
    pf.flush()
    json.dump(["def f(a):\n\treturn a\r\\ q\\", "import sys"], jf)
    jf.flush()
    figs = []
    for f in (pf.name, jf.name):
        rc, out, err = run("--prompts", f, *base[2:8], "--prompt-tokens", "0", *base[10:], "--grouping", "fcfs",
                           "--json")
        check(rc == 0, f"{f}: rc {rc} {err!r}")
        j = json.loads(out or "{}")
        figs.append([j.get(k) for k in ("requests", "prompt_tokens", "experts_per_layer_step", "transfers", "hits")])
    check(figs[0] == figs[1] and figs[0][0] == 2, f"line file vs .json: {figs}")
# a prompt that cannot be encoded is named as the file's other faults are: the file, and the line of a line file
# (counted from 1, blank lines too) or the element of a .json one (counted from 0), where it was 'prompt N' counted
# among the prompts from 1
for suffix, text, want in ((".json", '["a", ""]', ": element 1 encodes to no tokens\n"),
                           (".txt", 'a\r\n\nb\n\xff\n', ": line 4: text is not valid UTF-8")):
    with tempfile.NamedTemporaryFile("wb", suffix=suffix) as pf:
        pf.write(text.encode("latin-1"))
        pf.flush()
        rc, out, err = run("--prompts", pf.name, *base[2:], "--grouping", "fcfs")
        check(rc == 1 and err.startswith(f"moeflow bench batch: --prompts {pf.name}{want}"),
              f"{text!r}: rc {rc} {err!r}")
# a .json prompts file that is not an array of strings: exit 1, the file named, and a line only where one is at fault
for text, want in (('{"prompts": ["a"]}', ": an object, not a JSON array of strings\n"),
                   ('["a",\n "b\\u0000c"]', ": line 2: a string holds \\u0000, which a prompt cannot hold\n"),
                   ('["a",\n', ": line 2: ")):
    with tempfile.NamedTemporaryFile("w", suffix=".json") as jf:
        jf.write(text)
        jf.flush()
        rc, out, err = run("--prompts", jf.name, *base[2:], "--grouping", "fcfs")
        check(rc == 1 and err.startswith(f"moeflow bench batch: --prompts {jf.name}{want}"),
              f"{text!r}: rc {rc} {err!r}")
# the regroup bounds with fcfs: refused, not ignored
rc, out, err = run(*base, "--grouping", "fcfs", "--regroup-lag", "5")
check(rc == 2 and "--grouping regroup" in err, f"--regroup-lag with fcfs: rc {rc} {err!r}")
# --regroup-lead with strict steps, where no sequence runs ahead: refused too
rc, out, err = run(*base, "--grouping", "regroup", "--regroup-lag", "-1", "--regroup-lead", "2")
check(rc == 2 and "--regroup-lead" in err and "strict" in err, f"--regroup-lead with --regroup-lag -1: rc {rc} {err!r}")

# a lost device (test hook: the 2nd forward and every later one fail, the 2nd being the second prompt's
# prefill): the prompt whose forward failed is named where it is in --prompts (its line, counted with the
# empty ones skipped; its element in a .json file), as the file's other messages name it, with the
# device's error; the others end with the drain's reason, not as "ended never"
for suffix, text, where in [(".txt", "def f(x):\n\nimport os\nclass A:\nwhile True:\n", "line 3"),
                            (".json", '["def f(x):", "import os", "class A:", "while True:"]', "element 1")]:
    with tempfile.NamedTemporaryFile("w", suffix=suffix) as pf:
        pf.write(text)
        pf.flush()
        rc, out, err = run("--prompts", pf.name, "--concurrency", "2", "--micro-batch", "1", "--max-tokens", "8",
                           "--capacity-frac", "0.5", "--grouping", "fcfs", env={"MOEFLOW_TEST_FAULT_DEVICE_AT": "2"})
        check(rc == 1 and err.startswith(f"moeflow bench batch: --prompts {pf.name}: {where} ended error: ")
              and "injected at forward 2" in err and "4 of 4 requests did not complete" in err
              and "never" not in err, f"lost device, {suffix}: rc {rc} {err!r}")

print("test_bench_cli:", "ok" if not fails else f"{fails} check(s) failed")
sys.exit(1 if fails else 0)
