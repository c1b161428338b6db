#!/usr/bin/python3
"""Soak of `moeflow serve` on the bundled model: a mixed load (HTTP completions and chat, streamed and not,
n > 1, log-probabilities, guides, stop sequences, gRPC generation, invalid requests, clients that leave
mid-request or mid-stream, slow readers, oversized bodies, metric scrapes) for DURATION seconds, with
idle checkpoints every SOAK_CHECKPOINT seconds (RSS and open descriptors, the request counters adding
up, exact token accounting of known requests), then a SIGTERM drain with requests in flight.  Exit 1
if anything did not hold; the problems are listed.  Needs python3's grpc module.

usage: bench/serve/soak.py MOEFLOW DURATION OUTDIR [serve args...]
  e.g. bench/serve/soak.py build/server/moeflow 600 /tmp/soak --gpu-experts 8 --host-experts 32"""
import collections
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

if len(sys.argv) < 4 or sys.argv[1] in ("-h", "--help"):
    print(__doc__)
    sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
MOEFLOW, DURATION, OUT = sys.argv[1], float(sys.argv[2]), sys.argv[3]
EXTRA = sys.argv[4:]
SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(SRC, "tests", "server"))
import serve_util as su  # noqa: E402
import grpc  # noqa: E402

os.makedirs(OUT, exist_ok=True)
NAME = "pycode-moe-18m"
TIMEOUT = float(os.environ.get("SOAK_TIMEOUT", "120"))
lock = threading.Lock()
stats = collections.Counter()
problems = []
stop = threading.Event()
gate = threading.Event()      # set = load runs; cleared at a checkpoint
gate.set()
busy = collections.Counter()  # workers inside a request
client_tokens = collections.Counter()


def note(key, n=1):
    with lock:
        stats[key] += n


def problem(msg):
    with lock:
        problems.append("%.1f %s" % (time.time() - T0, msg))
    print("PROBLEM:", msg, flush=True)


# ---------------------------------------------------------------- raw HTTP
def read_response(f, head_only=False):
    """One HTTP/1.1 response from a buffered reader: (status, headers dict, body bytes, chunked events)."""
    line = f.readline()
    if not line:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    if not m:
        raise ValueError("bad status line %r" % line[:200])
    status = int(m.group(1))
    hdr = {}
    while True:
        ln = f.readline()
        if not ln:
            raise ValueError("eof in headers")
        if ln in (b"\r\n", b"\n"):
            break
        k, _, v = ln.decode("latin-1").partition(":")
        hdr[k.strip().lower()] = v.strip()
    if head_only:
        return status, hdr, b""
    body = b""
    if hdr.get("transfer-encoding", "").lower() == "chunked":
        while True:
            szl = f.readline()
            if not szl:
                raise ValueError("eof in chunk size")
            sz = int(szl.split(b";")[0].strip(), 16)
            if sz == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            data = f.read(sz)
            if len(data) != sz:
                raise ValueError("short chunk")
            body += data
            f.readline()
    elif "content-length" in hdr:
        n = int(hdr["content-length"])
        body = f.read(n)
        if len(body) != n:
            raise ValueError("short body %d of %d" % (len(body), n))
    else:
        body = f.read()
    return status, hdr, body


def raw(port, data, timeout=TIMEOUT, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    if data:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            note("send-cut-short")   # the server closed first (a body over the limit): its reply is still read
    return s


def req_bytes(method, path, body=None, headers=(), close=True):
    h = ["%s %s HTTP/1.1" % (method, path), "Host: x"]
    if body is not None:
        h.append("Content-Type: application/json")
        h.append("Content-Length: %d" % len(body))
    h += list(headers)
    if close:
        h.append("Connection: close")
    return ("\r\n".join(h) + "\r\n\r\n").encode() + (body or b"")


def one_exchange(port, data, what, expect, rcvbuf=None, slow=0):
    """Send one request on a fresh connection (Connection: close); the reply must be exactly one response
    with a status in expect, then EOF."""
    s = raw(port, data, rcvbuf=rcvbuf)
    try:
        f = s.makefile("rb", buffering=0 if slow else 65536)
        if slow:
            f = SlowReader(s, slow)
        r = read_response(f)
        if r is None:
            problem("%s: connection closed with no response" % what)
            note(what + ":noreply")
            return None
        rest = f.read()
        if rest:
            problem("%s: %d bytes after the response: %r" % (what, len(rest), rest[:200]))
        if r[0] not in expect:
            problem("%s: status %d (want %s): %r" % (what, r[0], expect, r[2][:300]))
        note("%s:%d" % (what, r[0]))
        return r
    except socket.timeout:
        problem("%s: no answer in %ss" % (what, TIMEOUT))
        note(what + ":timeout")
    except (ValueError, ConnectionError) as e:
        problem("%s: %r" % (what, e))
        note(what + ":broken")
    finally:
        s.close()
    return None


class SlowReader:
    """A file-like reader that reads the socket a little at a time."""

    def __init__(self, s, delay):
        self.s, self.delay, self.buf = s, delay, b""

    def _fill(self):
        time.sleep(self.delay)
        d = self.s.recv(1024)
        self.buf += d
        return bool(d)

    def readline(self):
        while b"\n" not in self.buf:
            if not self._fill():
                out, self.buf = self.buf, b""
                return out
        i = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read(self, n=-1):
        while n < 0 or len(self.buf) < n:
            if not self._fill():
                break
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def sse_events(body):
    evs = []
    for blk in body.split(b"\n\n"):
        blk = blk.strip()
        if not blk:
            continue
        if not blk.startswith(b"data: "):
            raise ValueError("bad SSE block %r" % blk[:200])
        evs.append(blk[6:])
    return evs


# ---------------------------------------------------------------- checks of generation replies
def check_completion(what, body, js, n_expected):
    ch = js.get("choices")
    if not isinstance(ch, list) or len(ch) != n_expected:
        problem("%s: %r choices, want %d" % (what, None if ch is None else len(ch), n_expected))
        return
    chat = "chat" in what
    for c in ch:
        fr = c.get("finish_reason")
        if fr not in ("length", "stop"):
            problem("%s: finish_reason %r" % (what, fr))
        text = c["message"]["content"] if chat else c["text"]
        text = text or ""
        for s in body.get("stop") or []:
            if s in text:
                problem("%s: stop %r in text %r" % (what, s, text))
        rf = body.get("response_format")
        if body.get("stop"):
            fr = "cut"   # a stop sequence may end the text anywhere
        if fr == "stop" and rf and rf.get("type") in ("json_object", "json_schema"):
            try:
                json.loads(text)
            except ValueError:
                problem("%s: guided JSON not JSON: %r" % (what, text))
        if fr == "stop" and body.get("guided_regex"):
            if not re.fullmatch(body["guided_regex"], text):
                problem("%s: text %r does not match %r" % (what, text, body["guided_regex"]))
        if body.get("guided_choice") and fr == "stop" and text not in body["guided_choice"]:
            problem("%s: text %r not a choice" % (what, text))
        if body.get("logprobs") and not chat:
            lp = c.get("logprobs")
            if not lp or len(lp["tokens"]) != len(lp["token_logprobs"]):
                problem("%s: logprobs %r" % (what, str(lp)[:200]))
    u = js.get("usage") or {}
    if u.get("total_tokens") != u.get("prompt_tokens", 0) + u.get("completion_tokens", 0):
        problem("%s: usage %r" % (what, u))
    return u


def check_stream(what, body, evs):
    if not evs or evs[-1] != b"[DONE]" or evs.count(b"[DONE]") != 1:
        problem("%s: stream does not end with one [DONE]: %r" % (what, evs[-3:]))
        return None
    fins = collections.Counter()
    usage = None
    texts = collections.defaultdict(str)
    for e in evs[:-1]:
        js = json.loads(e)
        if "error" in js:
            return "error"
        if js.get("usage"):
            usage = js["usage"]
        for c in js.get("choices", []):
            texts[c["index"]] += (c.get("text") or (c.get("delta") or {}).get("content") or "")
            if c.get("finish_reason"):
                fins[c["index"]] += 1
    n = body.get("n", 1)
    if sorted(fins) != list(range(n)) or any(v != 1 for v in fins.values()):
        problem("%s: finish reasons per choice %r, n=%d" % (what, dict(fins), n))
    for t in texts.values():
        for s in body.get("stop") or []:
            if s in t:
                problem("%s: stop %r in streamed text %r" % (what, s, t))
    return usage


PROMPTS = ["def f(x):", "import os\n", "class A:\n    def __init__(self):", "# sort a list\ndef s(a):",
           "for i in range(10):", "x = [", "def add(a, b):\n    return"]


def rand_body(rng, chat, stream):
    b = {"model": NAME, "max_tokens": rng.choice([1, 4, 8, 16, 32]), "temperature": rng.choice([0, 0.7, 1.2]),
         "seed": rng.randrange(1, 10**6)}
    if chat:
        b["messages"] = [{"role": "user", "content": rng.choice(PROMPTS)}]
    else:
        b["prompt"] = rng.choice(PROMPTS)
    if rng.random() < 0.06:   # 16 KiB or more: prepared on a preparation thread
        if chat:
            b["messages"][0]["content"] += " " * 17000
        else:
            b["prompt"] += " " * 17000
    r = rng.random()
    if r < 0.2:
        b["n"] = rng.choice([2, 3])
    if rng.random() < 0.25:
        if chat:
            b["logprobs"] = True
            b["top_logprobs"] = rng.choice([0, 2, 5])
        else:
            b["logprobs"] = rng.choice([0, 1, 5])
    if rng.random() < 0.25:
        b["stop"] = rng.sample(["\n", "(", ")", ":", "  ", "return"], rng.choice([1, 2]))
    g = rng.random()
    if g < 0.1:
        b["response_format"] = {"type": "json_object"}
        b["max_tokens"] = 48
    elif g < 0.2:
        b["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 5}},
            "required": ["a", "b"], "additionalProperties": False}}}
        b["max_tokens"] = 48
    elif g < 0.3:
        b["guided_regex"] = rng.choice([r"[a-z]{2,6}\(\d\)", r"(yes|no)", r"[0-9]+\.[0-9]{1,3}"])
        b["max_tokens"] = 24
    elif g < 0.35:
        b["guided_choice"] = ["alpha", "beta", "gamma delta"]
    if rng.random() < 0.3:
        b["ignore_eos"] = True
    if stream and rng.random() < 0.5:
        b["stream_options"] = {"include_usage": True}
    if stream:
        b["stream"] = True
    return b


def w_http_gen(port, wid):
    """Completions and chat, streamed and not, over keep-alive connections (http.client)."""
    rng = random.Random(wid)
    conn = None
    last_use = time.time()
    while not stop.is_set():
        gate.wait()
        chat = rng.random() < 0.5
        stream = rng.random() < 0.5
        body = rand_body(rng, chat, stream)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        what = "http-%s%s" % ("chat" if chat else "cmpl", "-stream" if stream else "")
        with lock:
            busy[wid] = 1
        try:
            if conn is not None and time.time() - last_use > 2.0:   # the server closes idle ones (3 s)
                conn.close()
                conn = None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            note("%s:%d" % (what, r.status))
            if r.status == 200:
                if stream:
                    u = check_stream(what, body, sse_events(data))
                    if u == "error":
                        note(what + ":error-event")
                else:
                    check_completion(what, body, json.loads(data), body.get("n", 1))
            elif r.status not in (429, 503):
                problem("%s: %d %r body=%r" % (what, r.status, data[:300], body))
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except socket.timeout:
            problem("%s: no answer in %ss: %r" % (what, TIMEOUT, body))
            note(what + ":timeout")
            conn.close()
            conn = None
        except (http.client.HTTPException, ConnectionError, ValueError) as e:
            problem("%s: %r body=%r" % (what, e, body))
            note(what + ":broken")
            if conn:
                conn.close()
            conn = None
        finally:
            last_use = time.time()
            with lock:
                busy[wid] = 0
    if conn:
        conn.close()


def w_grpc(target, pb, wid):
    rng = random.Random(1000 + wid)
    m, k = pb["m"], pb["k"]
    ch = grpc.insecure_channel(target)
    gen = pb["mg"].GenerationStub(ch)
    ks = pb["kg"].GRPCInferenceServiceStub(ch)
    while not stop.is_set():
        gate.wait()
        with lock:
            busy[wid] = 1
        kind = rng.choice(["chan-close", "h2-junk", "gen", "gen", "gen-stop", "gen-lp", "gen-regex", "gen-cancel", "gen-deadline",
                           "tokenize", "infer", "stream-infer", "gen-bad", "gen-big"])
        what = "grpc-" + kind
        try:
            if kind.startswith("gen") and kind not in ("gen-cancel", "gen-bad", "gen-big"):
                req = m.GenerateRequest(prompt=rng.choice(PROMPTS), max_tokens=rng.choice([1, 8, 24]),
                                        temperature=rng.choice([0, 0.8]), seed=rng.randrange(1, 999))
                if kind == "gen-stop":
                    req.stop.extend(["\n", ")"])
                if kind == "gen-lp":
                    req.logprobs = True
                    req.top_logprobs = 3
                if kind == "gen-regex":
                    req.regex = r"[a-z]{1,5}=[0-9]{1,3}"
                    req.max_tokens = 16
                timeout = 0.05 if kind == "gen-deadline" else TIMEOUT
                if kind == "gen-deadline":
                    req.max_tokens = 500
                    req.ignore_eos = True
                msgs = []
                try:
                    for msg in gen.Generate(req, timeout=timeout):
                        msgs.append(msg)
                except grpc.RpcError as e:
                    c = e.code()
                    note("%s:%s" % (what, c.name))
                    if not (kind == "gen-deadline" and c == grpc.StatusCode.DEADLINE_EXCEEDED) and \
                            c != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        problem("%s: %s %s" % (what, c, e.details()))
                    continue
                fin = [x for x in msgs if x.finished]
                if len(fin) != 1 or not msgs[-1].finished:
                    problem("%s: %d finished messages of %d" % (what, len(fin), len(msgs)))
                else:
                    n = sum(len(x.token_ids) for x in msgs)
                    if n != fin[0].completion_tokens:
                        problem("%s: %d token ids, completion_tokens %d" % (what, n, fin[0].completion_tokens))
                    text = b"".join(x.text.encode() if isinstance(x.text, str) else x.text for x in msgs)
                    if kind == "gen-stop" and (b"\n" in text or b")" in text):
                        problem("%s: stop in text %r" % (what, text))
                    if kind == "gen-regex" and fin[0].finish_reason == "stop" and \
                            not re.fullmatch(rb"[a-z]{1,5}=[0-9]{1,3}", text):
                        problem("%s: %r does not match" % (what, text))
                    if kind == "gen-lp" and any(len(x.logprobs) != len(x.token_ids) for x in msgs):
                        problem("%s: logprobs count" % what)
                note(what + ":OK")
            elif kind == "gen-cancel":
                call = gen.Generate(m.GenerateRequest(prompt="def g():", max_tokens=400, ignore_eos=True),
                                    timeout=TIMEOUT)
                got = 0
                try:
                    for _ in call:
                        got += 1
                        if got >= rng.choice([1, 3]):
                            call.cancel()
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.CANCELLED:
                        problem("%s: %s %s" % (what, e.code(), e.details()))
                note(what + ":done")
            elif kind == "gen-bad":
                bad = rng.choice([m.GenerateRequest(prompt="x", max_tokens=10**8),
                                  m.GenerateRequest(prompt="x", temperature=float("nan")),
                                  m.GenerateRequest(prompt="x", top_logprobs=50, logprobs=True),
                                  m.GenerateRequest(prompt="", max_tokens=1),
                                  m.GenerateRequest(prompt="x", regex="([", max_tokens=2),
                                  m.GenerateRequest(prompt="x", json_schema="{not json", max_tokens=2),
                                  m.GenerateRequest(prompt="x\x00y", max_tokens=2)])
                try:
                    list(gen.Generate(bad, timeout=TIMEOUT))
                    note(what + ":OK")
                except grpc.RpcError as e:
                    note("%s:%s" % (what, e.code().name))
                    if e.code() not in (grpc.StatusCode.INVALID_ARGUMENT,):
                        problem("%s: %s %s" % (what, e.code(), e.details()))
            elif kind == "gen-big":
                try:
                    list(gen.Generate(m.GenerateRequest(prompt="x" * (1100 * 1024), max_tokens=1), timeout=TIMEOUT))
                    problem("%s: oversized message accepted" % what)
                except grpc.RpcError as e:
                    note("%s:%s" % (what, e.code().name))
                    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        problem("%s: %s %s" % (what, e.code(), e.details()))
            elif kind == "chan-close":   # a connection closed with a stream open
                c2 = grpc.insecure_channel(target)
                call = pb["mg"].GenerationStub(c2).Generate(
                    m.GenerateRequest(prompt="def q():", max_tokens=300, ignore_eos=True), timeout=TIMEOUT)
                try:
                    next(call)
                except (grpc.RpcError, StopIteration):
                    pass
                c2.close()
                note(what + ":done")
            elif kind == "h2-junk":   # a client that leaves mid-preface or sends junk frames
                host, port = target.rsplit(":", 1)
                s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
                pre = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                s.sendall(rng.choice([pre[:rng.randrange(1, len(pre))], pre + bytes(rng.randrange(256) for _ in range(64)),
                                      b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", pre + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"]))
                time.sleep(rng.random() * 0.1)
                s.close()
                note(what + ":done")
            elif kind == "tokenize":
                r = gen.Tokenize(m.TokenizeRequest(text=rng.choice(PROMPTS)), timeout=TIMEOUT)
                if not r.token_ids:
                    problem("tokenize: empty")
                note(what + ":OK")
            elif kind == "infer":
                req = su.kserve_request(k, "r%d" % rng.randrange(10**6), rng.choice([1, 8]))
                r = ks.ModelInfer(req, timeout=TIMEOUT)
                if not r.outputs:
                    problem("infer: no outputs")
                note(what + ":OK")
            elif kind == "stream-infer":
                reqs = [su.kserve_request(k, "s%d" % i, rng.choice([1, 4, 8])) for i in range(3)]
                got = collections.Counter()
                for resp in ks.ModelStreamInfer(iter(reqs), timeout=TIMEOUT):
                    if resp.error_message:
                        problem("%s: %s" % (what, resp.error_message))
                    rid = resp.infer_response.id
                    ps = resp.infer_response.parameters
                    if "triton_final_response" not in ps or ps["triton_final_response"].bool_param:
                        got[rid] += 1
                if sorted(got) != ["s0", "s1", "s2"] or any(v != 1 for v in got.values()):
                    problem("%s: final responses %r" % (what, dict(got)))
                note(what + ":OK")
        except grpc.RpcError as e:
            note("%s:%s" % (what, e.code().name))
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                problem("%s: %s %s" % (what, e.code(), e.details()))
        except Exception as e:  # noqa
            problem("%s: %s" % (what, traceback.format_exc()))
        finally:
            with lock:
                busy[wid] = 0
    ch.close()


INVALID = [
    ("POST", "/v1/completions", b"{not json", (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": -1}', (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 99999999}', (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "temperature": "hot"}', (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "model": "nope"}', (), (404,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "n": 1000}', (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "logprobs": 99}', (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x\\u0000"}', (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "guided_regex": "(["}', (), (400,)),
    ("POST", "/v1/completions", b'{"prompt": "x", "stop": ["", "a"]}', (), (400,)),
    ("POST", "/v1/completions", b'[1,2,3]', (), (400,)),
    ("POST", "/v1/completions", b'', (), (400,)),
    ("POST", "/v1/chat/completions", b'{"messages": []}', (), (400,)),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', (), (400,)),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
     b'"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "martian"}}}}', (), (400,)),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', (), (400,)),
    ("GET", "/v1/completions", None, (), (405,)),
    ("DELETE", "/v1/chat/completions", None, (), (405,)),
    ("GET", "/v1/nothing", None, (), (404,)),
    ("GET", "/v1/models", None, (), (200,)),
    ("GET", "/v1/models/nope", None, (), (404,)),
    ("POST", "/tokenize", b'{"prompt": "def f():"}', (), (200,)),
    ("POST", "/detokenize", b'{"tokens": [1, 2, 3]}', (), (200,)),
    ("POST", "/detokenize", b'{"tokens": [-5]}', (), (400,)),
    ("GET", "/v1/responses/resp_nope", None, (), (404,)),
    ("POST", "/v1/responses", b'{"input": 5}', (), (400,)),
    ("POST", "/v1/responses", b'{"model": "pycode-moe-18m", "input": "def f():", "max_output_tokens": 4}', (), (200,)),
]


def w_invalid(port, wid):
    rng = random.Random(2000 + wid)
    while not stop.is_set():
        gate.wait()
        with lock:
            busy[wid] = 1
        try:
            kind = rng.random()
            if kind < 0.6:
                meth, path, body, hdrs, expect = rng.choice(INVALID)
                r = one_exchange(port, req_bytes(meth, path, body, hdrs), "inv %s %s" % (meth, path), expect)
                if r and r[0] >= 400 and r[0] != 413:
                    try:
                        js = json.loads(r[2])
                        if not js["error"]["message"]:
                            problem("invalid: empty error message")
                    except (ValueError, KeyError, TypeError):
                        problem("invalid %s %s: not a JSON error: %r" % (meth, path, r[2][:200]))
            elif kind < 0.67:   # oversized body, declared
                body = b'{"prompt": "' + b"x" * (1100 * 1024) + b'"}'
                one_exchange(port, req_bytes("POST", "/v1/completions", body), "oversized", (413,))
            elif kind < 0.72:   # oversized chunked body
                chunk = b"x" * 65536
                body = b'{"prompt": "' + chunk * 17 + b'"}'
                data = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                        b"Content-Type: application/json\r\nConnection: close\r\n\r\n")
                for i in range(0, len(body), 60000):
                    part = body[i:i + 60000]
                    data += b"%x\r\n" % len(part) + part + b"\r\n"
                data += b"0\r\n\r\n"
                try:
                    one_exchange(port, data, "oversized-chunked", (413,))
                except (BrokenPipeError, ConnectionResetError):
                    note("oversized-chunked:reset-while-sending")
            elif kind < 0.77:   # framing errors
                data = rng.choice([
                    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
                    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
                    b"GET /health HTTP/1.1\r\n\r\n",
                    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                    b"BLAH\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header : v\r\n\r\n",
                ])
                one_exchange(port, data, "framing", (400, 501, 505))
            elif kind < 0.85:   # pipelined keep-alive requests: three answers in order
                b1 = json.dumps({"prompt": "def f():", "max_tokens": 2}).encode()
                data = (req_bytes("POST", "/v1/completions", b1, close=False) + req_bytes("GET", "/health", close=False)
                        + req_bytes("POST", "/v1/completions", b'{bad', close=True))
                s = raw(port, data)
                try:
                    f = s.makefile("rb")
                    got = []
                    for _ in range(3):
                        r = read_response(f)
                        if r is None:
                            break
                        got.append(r[0])
                    rest = f.read()
                    if got[:2] not in ([200, 200], [429, 200], [503, 200]) or got[2:] != [400] or rest:
                        problem("pipelined: statuses %r, %d bytes more" % (got, len(rest)))
                    note("pipelined:%s" % ",".join(map(str, got)))
                except (socket.timeout, ValueError, ConnectionError) as e:
                    problem("pipelined: %r" % e)
                finally:
                    s.close()
            else:   # request cut short and left
                body = json.dumps({"prompt": "def f():", "max_tokens": 4}).encode()
                full = req_bytes("POST", "/v1/completions", body)
                cut = rng.randrange(1, len(full) - 1)
                s = raw(port, full[:cut])
                time.sleep(rng.random() * 0.2)
                s.close()
                note("cut-request")
        except Exception:
            problem("invalid worker: %s" % traceback.format_exc())
        finally:
            with lock:
                busy[wid] = 0


def w_disconnect(port, wid):
    """Streams left mid-way, non-streamed requests left before their reply, slow readers."""
    rng = random.Random(3000 + wid)
    while not stop.is_set():
        gate.wait()
        with lock:
            busy[wid] = 1
        try:
            k = rng.random()
            chat = rng.random() < 0.5
            path = "/v1/chat/completions" if chat else "/v1/completions"
            body = {"model": NAME, "max_tokens": 300, "ignore_eos": True, "n": rng.choice([1, 2])}
            pad = " " * 17000 if rng.random() < 0.3 else ""
            if chat:
                body["messages"] = [{"role": "user", "content": "hi" + pad}]
            else:
                body["prompt"] = "def f():" + pad
            if k < 0.06:   # sends on during its stream, reads nothing, leaves
                body["stream"] = True
                s = raw(port, req_bytes("POST", path, json.dumps(body).encode()), timeout=1)
                try:
                    for _ in range(8):
                        s.send(b"x" * (1 << 20))
                except OSError:
                    pass
                s.close()
                note("junk-during-stream")
            elif k < 0.12:   # goes on sending a body over max-body-bytes after its 413
                s = raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
                        timeout=5)
                try:
                    s.recv(12)
                    for _ in range(32):
                        s.send(b"x" * (1 << 20))
                    problem("sent 32 MB after a 413")
                except OSError:
                    pass
                s.close()
                note("send-after-413")
            elif k < 0.4:   # leave mid-stream
                body["stream"] = True
                s = raw(port, req_bytes("POST", path, json.dumps(body).encode()))
                got = b""
                want = rng.randrange(1, 4000)
                while len(got) < want:
                    d = s.recv(4096)
                    if not d:
                        problem("mid-stream: server closed after %d bytes" % len(got))
                        break
                    got += d
                if rng.random() < 0.5:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
                note("left-mid-stream")
            elif k < 0.7:   # leave before the non-streamed reply
                s = raw(port, req_bytes("POST", path, json.dumps(body).encode()))
                time.sleep(rng.random() * 0.5)
                if rng.random() < 0.5:
                    s.shutdown(socket.SHUT_WR)
                    time.sleep(0.05)
                s.close()
                note("left-before-reply")
            else:   # slow reader with a small receive buffer: reads the whole stream
                body.update(stream=True, max_tokens=rng.choice([32, 64]), logprobs=5 if not chat else None,
                            n=rng.choice([1, 3]))
                if chat:
                    body.update(logprobs=True, top_logprobs=5)
                r = one_exchange(port, req_bytes("POST", path, json.dumps(body).encode()), "slow-reader",
                                 (200, 429), rcvbuf=2048, slow=0.01)
                if r and r[0] == 200:
                    u = check_stream("slow-reader " + path, body, sse_events(r[2]))
                    if u == "error":
                        note("slow-reader:error-event")
        except Exception:
            problem("disconnect worker: %s" % traceback.format_exc())
        finally:
            with lock:
                busy[wid] = 0


def w_scrape(srv, pb, wid):
    ch = grpc.insecure_channel(srv.target)
    hs = pb["hg"].HealthStub(ch)
    port = srv.http_port
    while not stop.is_set():
        try:
            for path in ("/health", "/metrics", "/ready"):
                r = one_exchange(port, req_bytes("GET", path), "scrape" + path, (200,))
                if r and path == "/metrics":
                    su.parse_prometheus(r[2].decode())
            r = hs.Check(pb["h"].HealthCheckRequest(service=""), timeout=TIMEOUT)
            if r.status != 1:
                problem("grpc health %r" % r.status)
            note("scrape-grpc-health")
        except Exception:
            if not stop.is_set():
                problem("scrape: %s" % traceback.format_exc())
        time.sleep(0.05)
    ch.close()


# ---------------------------------------------------------------- process figures
def proc_figures(pid):
    d = {}
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            k, _, v = ln.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads", "RssAnon"):
                d[k] = int(v.split()[0])
    d["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    return d


def sampler(pid, path):
    with open(path, "w") as f:
        f.write("t_s,rss_kb,rss_anon_kb,hwm_kb,threads,fds\n")
        while not stop.is_set():
            try:
                d = proc_figures(pid)
            except OSError:
                return
            f.write("%.0f,%d,%d,%d,%d,%d\n" % (time.time() - T0, d["VmRSS"], d["RssAnon"], d["VmHWM"], d["Threads"],
                                               d["fds"]))
            f.flush()
            stop.wait(5)


# ---------------------------------------------------------------- checkpoints
def quiesce(srv):
    gate.clear()
    t = time.time()
    while any(busy.values()) and time.time() - t < TIMEOUT:
        time.sleep(0.05)
    if any(busy.values()):
        problem("checkpoint: workers still busy after %ss: %r" % (TIMEOUT, [k for k, v in busy.items() if v]))
    for _ in range(400):
        ms = srv.metrics()
        if all(su.metric(ms, g) == 0 for g in IDLE_ZERO):
            return ms
        time.sleep(0.05)
    problem("checkpoint: not idle: %r" % {g: su.metric(ms, g) for g in IDLE_ZERO})
    return ms


IDLE_ZERO = ("moeflow:num_requests_running", "moeflow:num_requests_waiting", "moeflow:live_generations",
             "moeflow:tokens_in_flight", "moeflow:kv_slots_used", "moeflow:kv_tokens_used",
             "moeflow:expert_pins", "moeflow:expert_transfers_in_flight")


def balance(ms, where):
    acc = su.metric(ms, "moeflow:requests_accepted_total")
    done = sum(su.metric(ms, "moeflow:requests_%s_total" % x) for x in ("completed", "cancelled", "failed"))
    fin = {r: su.metric(ms, "moeflow:request_success_total", finished_reason=r)
           for r in ("length", "stop", "cancelled", "deadline", "error")}
    if acc != done:
        problem("%s: accepted %s != completed+cancelled+failed %s" % (where, acc, done))
    if su.metric(ms, "moeflow:requests_completed_total") != fin["length"] + fin["stop"] or \
            su.metric(ms, "moeflow:requests_cancelled_total") != fin["cancelled"] + fin["deadline"] or \
            su.metric(ms, "moeflow:requests_failed_total") != fin["error"]:
        problem("%s: finish reasons %r do not add up" % (where, fin))
    if su.metric(ms, "moeflow:e2e_request_latency_seconds_count") != acc:
        problem("%s: e2e count %s != accepted %s" % (where, su.metric(ms, "moeflow:e2e_request_latency_seconds_count"),
                                                     acc))
    return acc, done


def exact_accounting(srv, pb, where):
    """Known requests on an idle server: metric deltas equal what the replies report."""
    m0 = srv.metrics()
    prompt = comp = reqs = 0
    for i in range(6):
        body = {"model": NAME, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 5 + i, "n": 1 + i % 3,
                "seed": 5 + i, "temperature": 0.5}
        code, data = srv.http("/v1/completions", json.dumps(body).encode())
        js = json.loads(data)
        if code != 200:
            problem("%s: accounting request %d %r" % (where, code, js))
            continue
        reqs += len(js["choices"])
        comp += js["usage"]["completion_tokens"]
        prompt += js["usage"]["prompt_tokens"] * len(js["choices"])   # the metric counts each choice's
    body = {"model": NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 7, "stream": True,
            "n": 2, "stream_options": {"include_usage": True}}
    code, data = srv.http("/v1/chat/completions", json.dumps(body).encode())
    u = check_stream(where + " chat", body, sse_events(data))
    reqs += 2
    comp += u["completion_tokens"]
    prompt += u["prompt_tokens"] * 2
    ch = grpc.insecure_channel(srv.target)
    gen = pb["mg"].GenerationStub(ch)
    for i in range(3):
        msgs = list(gen.Generate(pb["m"].GenerateRequest(prompt="def h():", max_tokens=3 + i), timeout=TIMEOUT))
        reqs += 1
        comp += msgs[-1].completion_tokens
        prompt += msgs[-1].prompt_tokens
    ch.close()
    ms = srv.metrics()
    d = {k: su.metric(ms, "moeflow:" + k) - su.metric(m0, "moeflow:" + k)
         for k in ("requests_accepted_total", "requests_completed_total", "generation_tokens_total",
                   "prompt_tokens_total")}
    want = {"requests_accepted_total": reqs, "requests_completed_total": reqs, "generation_tokens_total": comp,
            "prompt_tokens_total": prompt}
    if d != want:
        problem("%s: metric deltas %r, replies say %r" % (where, d, want))
    return d


def main():
    global T0
    T0 = time.time()
    pb = su.gen_stubs(SRC)
    srv = su.Server(MOEFLOW, "--http-read-timeout", "3", *EXTRA, ready_timeout=300)
    pid = srv.proc.pid
    print("server pid %d http %d grpc %d" % (pid, srv.http_port, srv.grpc_port), flush=True)
    ths = [threading.Thread(target=sampler, args=(pid, os.path.join(OUT, "proc.csv")), daemon=True)]
    wid = 0
    for fn, cnt, args in ((w_http_gen, 6, (srv.http_port,)), (w_grpc, 4, (srv.target, pb)),
                          (w_invalid, 3, (srv.http_port,)), (w_disconnect, 3, (srv.http_port,))):
        for _ in range(cnt):
            wid += 1
            ths.append(threading.Thread(target=fn, args=args + (wid,), daemon=True))
    for _ in range(2):
        wid += 1
        ths.append(threading.Thread(target=w_scrape, args=(srv, pb, wid), daemon=True))
    for t in ths:
        t.start()
    log = open(os.path.join(OUT, "checkpoints.txt"), "w")
    cp_every = float(os.environ.get("SOAK_CHECKPOINT", "120"))
    next_cp = time.time() + cp_every
    end = T0 + DURATION
    prev_stats = collections.Counter()
    t_prev = time.time()
    while time.time() < end:
        time.sleep(1)
        if time.time() >= next_cp or time.time() >= end:
            ms = quiesce(srv)
            time.sleep(0.5)
            fig = proc_figures(pid)
            acc, done = balance(ms, "checkpoint")
            d = exact_accounting(srv, pb, "checkpoint")
            with lock:
                snap = collections.Counter(stats)
            now = time.time()
            n_req = sum(snap.values()) - sum(prev_stats.values())
            line = ("t=%.0fs rss=%dkB anon=%dkB hwm=%dkB threads=%d fds=%d accepted=%d completed=%d cancelled=%d "
                    "failed=%d gen_tokens=%d client_requests=%d (%.1f/s) problems=%d exact=%r" % (
                        now - T0, fig["VmRSS"], fig["RssAnon"], fig["VmHWM"], fig["Threads"], fig["fds"], acc,
                        su.metric(ms, "moeflow:requests_completed_total"),
                        su.metric(ms, "moeflow:requests_cancelled_total"),
                        su.metric(ms, "moeflow:requests_failed_total"),
                        su.metric(ms, "moeflow:generation_tokens_total"), n_req, n_req / (now - t_prev),
                        len(problems), d))
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
            prev_stats, t_prev = snap, time.time()
            next_cp = time.time() + cp_every
            gate.set()
    stop.set()
    gate.set()
    for t in ths[1:]:
        t.join(TIMEOUT)
    drain(srv, pb)
    out = srv.output()
    with open(os.path.join(OUT, "server.log"), "w") as f:
        f.write(out)
    for pat in ("AddressSanitizer", "LeakSanitizer", "runtime error", "UndefinedBehavior", "ThreadSanitizer"):
        if pat in out:
            problem("server log has %s" % pat)
    with open(os.path.join(OUT, "stats.json"), "w") as f:
        json.dump(dict(stats), f, indent=1, sort_keys=True)
    print(json.dumps(dict(sorted(stats.items())), indent=0))
    print("PROBLEMS %d" % len(problems))
    for p in problems[:200]:
        print(" ", p)
    return 1 if problems else 0


def drain(srv, pb):
    """Requests in flight (HTTP streamed and not, gRPC), SIGTERM: each ends whole; new ones are refused."""
    res = {}
    ths = []

    def http_one(i, stream):
        body = {"model": NAME, "prompt": "def f%d():" % i, "max_tokens": 400, "ignore_eos": True, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        r = one_exchange(srv.http_port, req_bytes("POST", "/v1/completions", json.dumps(body).encode()),
                         "drain-http", (200,))
        if r and r[0] == 200:
            if stream:
                evs = sse_events(r[2])
                u = check_stream("drain-stream", body, evs)
                ok = isinstance(u, dict) and u["completion_tokens"] == 400
                res["h%d" % i] = "ok" if ok else "bad %r" % evs[-2:]
            else:
                js = json.loads(r[2])
                res["h%d" % i] = "ok" if js["usage"]["completion_tokens"] == 400 else "bad %r" % js["usage"]
        else:
            res["h%d" % i] = "no reply %r" % (r,)

    def grpc_one(i):
        ch = grpc.insecure_channel(srv.target)
        try:
            msgs = list(pb["mg"].GenerationStub(ch).Generate(
                pb["m"].GenerateRequest(prompt="def g%d():" % i, max_tokens=400, ignore_eos=True), timeout=TIMEOUT))
            res["g%d" % i] = "ok" if msgs[-1].finished and msgs[-1].completion_tokens == 400 else "bad"
        except grpc.RpcError as e:
            res["g%d" % i] = "%s %s" % (e.code(), e.details())
        ch.close()

    m0 = srv.metrics()
    a0 = su.metric(m0, "moeflow:requests_accepted_total")
    for i in range(8):
        ths.append(threading.Thread(target=http_one, args=(i, i % 2 == 0)))
    for i in range(4):
        ths.append(threading.Thread(target=grpc_one, args=(i,)))
    for t in ths:
        t.start()
    t = time.time()
    while su.metric(srv.metrics(), "moeflow:requests_accepted_total") - a0 < 12 and time.time() - t < 30:
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    try:
        code, data = srv.http("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 2}).encode())
        if code != 503:
            problem("during drain: %d %r" % (code, data[:200]))
        note("during-drain:%d" % code)
    except OSError as e:
        note("during-drain:%s" % type(e).__name__)
    for t in ths:
        t.join(TIMEOUT)
    rc = srv.proc.wait(90)
    bad = {k: v for k, v in res.items() if v != "ok"}
    if bad or len(res) != 12:
        problem("drain: %d replies, bad %r" % (len(res), bad))
    if rc != 0:
        problem("drain: exit status %d" % rc)
    m = re.search(r"drained in .*", srv.output())
    print("drain:", m.group(0) if m else "no drained line", "rc", rc, flush=True)
    if not m:
        problem("drain: no 'drained in' line")
    else:
        mm = re.search(r"accepted (\d+) = completed (\d+) \+ cancelled (\d+) \+ failed (\d+)", m.group(0))
        if mm and int(mm.group(1)) != sum(int(mm.group(i)) for i in (2, 3, 4)):
            problem("drain: line does not add up")


if __name__ == "__main__":
    sys.exit(main())
