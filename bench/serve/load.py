#!/usr/bin/python3
"""Serving load benchmark: concurrent streaming gRPC Generate clients against a
live `moeflow serve` (started here on loopback unless --target is given).

Arrivals and lengths come from a request trace (Azure LLM inference trace 2023,
bench/data/requests/*.csv: arrival gaps scaled by --time-scale, prompt and output
lengths capped) or, without --trace, a closed loop of --concurrency clients.
Prompts are token ids cut from Python source (bench/data/scheduler/prompts-py64.txt).

Prints one line per figure and a final JSON object: generated tokens/s, request
throughput (requests that finished), time to first token, inter-token latency and
end-to-end latency percentiles, finish reasons.  A benchmark, not a test: it never
fails on timings, but exits 1 when a request did not finish (an RPC error, or a
stream that ended without its finished message; "failed" counts them).

  /usr/bin/python3 bench/serve/load.py --moeflow build/server/moeflow --requests 64 \
      --concurrency 16 --max-tokens 64 [-- serve flags...]
"""
import argparse
import csv
import datetime
import json
import os
import re
import sys
import threading
import time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SRC, "tests", "server"))
import serve_util  # noqa: E402  (stubs, server process)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def unescape(line):
    """A line of the prompts file as its text: make_prompts.py's escapes (\\n, \\t, \\\\) undone, as
    `moeflow bench batch` reads them."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), line)


def load_trace(path, n, time_scale, max_prompt, max_tokens):
    out = []
    with open(path) as f:
        rows = csv.DictReader(f)
        t0 = None
        for r in rows:
            ts = datetime.datetime.strptime(r["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            t0 = ts if t0 is None else t0
            out.append(((ts - t0) * time_scale, min(int(r["ContextTokens"]), max_prompt),
                        max(1, min(int(r["GeneratedTokens"]), max_tokens))))
            if len(out) == n:
                break
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeflow", default=os.path.join(SRC, "build", "server", "moeflow"))
    ap.add_argument("--target", help="host:port of a running server (default: start one)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (no --trace)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (no --trace)")
    ap.add_argument("--shared-prefix", type=int, default=0,
                    help="tokens every prompt begins with (a common system prompt), before its own")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling (0 = off)")
    ap.add_argument("--trace", help="Azure-format CSV: TIMESTAMP,ContextTokens,GeneratedTokens")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply trace arrival gaps")
    ap.add_argument("--max-prompt", type=int, default=512, help="cap on trace prompt lengths")
    ap.add_argument("serve_args", nargs="*", help="extra flags for moeflow serve (after --)")
    a = ap.parse_args()

    pb = serve_util.gen_stubs(SRC)
    import grpc
    server = None
    if a.target:
        target = a.target
    else:
        server = serve_util.Server(a.moeflow, "--max-queued", str(max(64, a.requests)), *a.serve_args)
        target = server.target
    chan = grpc.insecure_channel(target)
    stub = pb["mg"].GenerationStub(chan)

    with open(os.path.join(SRC, "bench", "data", "scheduler", "prompts-py64.txt")) as f:
        texts = [unescape(ln.rstrip("\n")) for ln in f if ln.strip()]
    pool = []
    for t in texts:
        pool.extend(stub.Tokenize(pb["m"].TokenizeRequest(text=t)).token_ids)

    if a.trace:
        plan = load_trace(a.trace, a.requests, a.time_scale, a.max_prompt, a.max_tokens)
    else:
        plan = [(None, a.prompt_tokens, a.max_tokens)] * a.requests

    lock = threading.Lock()
    ttft, itl, e2e, gen, reasons, failed = [], [], [], [0], {}, []

    def one(i, plen, ntok):
        start = a.shared_prefix + (i * 997) % max(1, len(pool) - plen - a.shared_prefix)
        req = pb["m"].GenerateRequest(prompt_ids=pool[:a.shared_prefix] + pool[start:start + plen], max_tokens=ntok,
                                      temperature=a.temperature, top_p=a.top_p, seed=i + 1,
                                      ignore_eos=True)
        t0 = time.monotonic()
        last, first, n, reason, done = t0, None, 0, "?", False
        gaps = []
        try:
            for msg in stub.Generate(req, timeout=600):
                now = time.monotonic()
                if msg.token_ids:
                    if first is None:
                        first = now - t0
                    else:
                        gaps.append((now - last) / len(msg.token_ids))
                    last = now
                    n += len(msg.token_ids)
                if msg.finished:
                    reason, done = msg.finish_reason, True
        except grpc.RpcError as ex:
            reason = ex.code().name
        with lock:
            if not done:
                failed.append((i, reason))
            if first is not None:
                ttft.append(first)
            itl.extend(gaps)
            if done:  # a failed request's time is not a latency
                e2e.append(time.monotonic() - t0)
            gen[0] += n
            reasons[reason] = reasons.get(reason, 0) + 1

    threads = []
    t_start = time.monotonic()
    if a.trace:
        for i, (at, plen, ntok) in enumerate(plan):
            delay = at - (time.monotonic() - t_start)
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=one, args=(i, max(1, plen), ntok))
            th.start()
            threads.append(th)
    else:
        nxt = [0]

        def worker():
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(plan):
                    return
                one(i, plan[i][1], plan[i][2])
        threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
        for th in threads:
            th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t_start
    if server:
        server.stop()

    ms = lambda x: None if x is None else round(x * 1000.0, 2)  # noqa: E731
    res = {
        "requests": len(plan), "failed": len(failed), "wall_s": round(wall, 3), "generated_tokens": gen[0],
        "tokens_per_s": round(gen[0] / wall, 1), "requests_per_s": round((len(plan) - len(failed)) / wall, 2),
        "ttft_ms_p50": ms(pct(ttft, 50)), "ttft_ms_p99": ms(pct(ttft, 99)),
        "itl_ms_p50": ms(pct(itl, 50)), "itl_ms_p99": ms(pct(itl, 99)),
        "e2e_ms_p50": ms(pct(e2e, 50)), "e2e_ms_p99": ms(pct(e2e, 99)),
        "finish_reasons": reasons, "mode": "trace" if a.trace else "closed-loop",
        "concurrency": None if a.trace else a.concurrency, "shared_prefix": a.shared_prefix,
        "temperature": a.temperature, "top_p": a.top_p,
    }
    for k in ("tokens_per_s", "requests_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50",
              "itl_ms_p99", "e2e_ms_p50", "e2e_ms_p99"):
        print("%-16s %s" % (k, res[k]))
    print(json.dumps(res))
    if failed:
        print("load.py: %d of %d requests did not finish (first: request %d, %s)" % (
            len(failed), len(plan), *min(failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
