"""Integration: a live server over model files that cannot give the model's output.
- NaN weights (the final norm's, so every logit is NaN): a guided request fails, as nothing the guide
  allows can be drawn, and that is the server's fault, not the request's: HTTP 500 (whole or as the
  stream's error event) and gRPC INTERNAL, while a guide that no token of the vocabulary can continue
  is still the request's own (400 / INVALID_ARGUMENT).
- A shard cut short while served (truncated in place): the request whose forward reads past the cut
  fails (500, naming the file), and from then on the server is neither ready nor alive and says why
  (/ready and /health 503 naming the file; gRPC health NOT_SERVING, ServerReady, ModelReady and ServerLive
  false; moeflow:server_ready 0), and every new generation is refused at once (HTTP 503, gRPC UNAVAILABLE,
  naming the file; counted as request_rejected_total{reason="damaged"}), where it stayed ready and
  scheduled each request to fail.  Tokenizing, which reads no weights, goes on.
usage: test_serve_model_files.py MOEFLOW_BINARY SOURCE_DIR"""
import json
import os
import shutil
import struct
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import Server, gen_stubs, Checks, post, require_grpc, scaled  # noqa: E402

grpc = require_grpc()
check = Checks()
NAME = "pycode-moe-18m"


def model_copy(src, tmp, copied):
    """The bundled model in tmp/NAME: links to its files, but real copies of those named in copied."""
    base = os.path.join(os.path.abspath(src), "models", NAME)
    d = os.path.join(tempfile.mkdtemp(dir=tmp), NAME)  # named as the model is served
    os.mkdir(d)
    for f in os.listdir(base):
        if f in copied:
            shutil.copyfile(os.path.join(base, f), os.path.join(d, f))
        else:
            os.symlink(os.path.join(base, f), os.path.join(d, f))
    return d


def tensor_at(path, name):
    """(file offset, byte length) of tensor name's data in a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    a, b = hdr[name]["data_offsets"]
    return 8 + n + a, b - a


def sse(srv, path, body):
    """The parsed data events of a streamed request ([DONE] left out)."""
    req = urllib.request.Request(srv.url(path), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=scaled(60)) as r:
        raw = r.read().decode()
    return [json.loads(e[6:]) for e in raw.split("\n\n") if e.startswith("data: ") and e[6:] != "[DONE]"]


def error_of(js):
    e = js.get("error") if isinstance(js, dict) else None
    return e if isinstance(e, dict) else {}


def nan_logits(moeflow, src, pb, tmp):
    shard = "model-00004-of-00004.safetensors"
    d = model_copy(src, tmp, [shard])
    at, n = tensor_at(os.path.join(d, shard), "model.norm.weight")
    with open(os.path.join(d, shard), "r+b") as f:  # BF16 NaN in every element
        f.seek(at)
        f.write(b"\xc0\x7f" * (n // 2))
    srv = Server(moeflow, "--model", d, "--warmup-tokens", "0")
    try:
        guided = {"prompt": "def f():", "max_tokens": 4, "response_format": {"type": "json_object"}}
        code, js = post(srv, "/v1/completions", guided)
        e = error_of(js)
        check(code == 500 and e.get("code") == 500 and "NaN or -inf" in e.get("message", ""),
              "NaN logits, guided: %d %r" % (code, js))
        events = sse(srv, "/v1/completions", dict(guided, stream=True))
        errs = [error_of(ev) for ev in events if "error" in ev]
        check(len(errs) == 1 and errs[0].get("code") == 500 and "NaN or -inf" in errs[0].get("message", ""),
              "NaN logits, guided, streamed: %r" % events)
        # the request's own guide that no token continues stays the request's error
        bad = dict(guided, response_format=None,
                   guided_grammar='root ::= "x" y\ny ::= ' + " | ".join(['"a"'] * 1100))
        code, js = post(srv, "/v1/completions", bad)
        check(code == 400 and "no token of the vocabulary" in error_of(js).get("message", ""),
              "a guide no token continues: %d %r" % (code, js))
        ch = grpc.insecure_channel(srv.target)
        stub = pb["mg"].GenerationStub(ch)
        for req, want, word in ((pb["m"].GenerateRequest(prompt="def f():", max_tokens=4, json_object=True),
                                 grpc.StatusCode.INTERNAL, "NaN or -inf"),
                                (pb["m"].GenerateRequest(prompt="def f():", max_tokens=4,
                                                         grammar=bad["guided_grammar"]),
                                 grpc.StatusCode.INVALID_ARGUMENT, "no token of the vocabulary")):
            try:
                list(stub.Generate(req, timeout=scaled(60)))
                got = (grpc.StatusCode.OK, "")
            except grpc.RpcError as err:
                got = (err.code(), err.details())
            check(got[0] == want and word in got[1], "gRPC Generate %r: %r, want %r" % (word, got, want))
        ch.close()
        check(srv.stop() == 0, "NaN logits: exit status")
    finally:
        srv.kill()
        if check.failures:
            print(srv.output()[-3000:])


def grpc_code(fn):
    """(status code, details) of a unary or server-streaming call."""
    try:
        r = fn()
        if not hasattr(r, "ByteSize"):
            r = list(r)
        return grpc.StatusCode.OK, r
    except grpc.RpcError as err:
        return err.code(), err.details()


def damaged_shard(moeflow, src, pb, tmp):
    from serve_util import metric
    shard = "model-00002-of-00004.safetensors"
    d = model_copy(src, tmp, [shard])
    path = os.path.join(d, shard)
    # a small expert cache whose lowest tier is the checkpoint's mapping: a miss reads the file
    srv = Server(moeflow, "--model", d, "--warmup-tokens", "0", "--gpu-experts", "16", "--host-experts", "32")
    try:
        body = {"prompt": "def f():", "max_tokens": 4, "ignore_eos": True}
        code, js = post(srv, "/v1/completions", body)
        check(code == 200, "before the cut: %d %r" % (code, js))
        os.truncate(path, 4096)  # the experts it holds are past its end now
        for i in range(8):  # prompts of other experts, until one misses the cache on an expert of the file
            code, js = post(srv, "/v1/completions", dict(body, prompt="class C%d:\n    x = [%d]" % (i, i),
                                                         max_tokens=16))
            if code != 200:
                break
        check(code == 500 and path in error_of(js).get("message", ""), "the forward past the cut: %d %r" % (code, js))
        for p in ("/ready", "/health"):
            code, out = srv.http(p)
            check(code == 503 and out.startswith(b"model files damaged: ") and path.encode() in out,
                  "%s after the cut: %d %r" % (p, code, out))
        check(metric(srv.metrics(), "moeflow:server_ready") == 0, "server_ready gauge after the cut")
        for extra in ({}, {"stream": True}):
            code, js = post(srv, "/v1/completions", dict(body, **extra))
            check(code == 503 and path in error_of(js).get("message", "") and "damaged" in error_of(js)["message"],
                  "a completion %r after the cut: %d %r" % (extra, code, js))
        code, js = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        check(code == 503 and path in error_of(js).get("message", ""), "a chat after the cut: %d %r" % (code, js))
        code, js = post(srv, "/tokenize", {"prompt": "def f():"})
        check(code == 200 and js.get("tokens"), "/tokenize after the cut: %d %r" % (code, js))
        ch = grpc.insecure_channel(srv.target)
        m, k = pb["m"], pb["k"]
        gen, kserve = pb["mg"].GenerationStub(ch), pb["kg"].GRPCInferenceServiceStub(ch)
        health = pb["hg"].HealthStub(ch)
        got = grpc_code(lambda: gen.Generate(m.GenerateRequest(prompt="def f():", max_tokens=2), timeout=scaled(30)))
        check(got[0] == grpc.StatusCode.UNAVAILABLE and path in got[1], "gRPC Generate after the cut: %r" % (got,))
        got = grpc_code(lambda: health.Check(pb["h"].HealthCheckRequest(service=""), timeout=scaled(30)))
        check(got[0] == grpc.StatusCode.OK and got[1].status == pb["h"].HealthCheckResponse.NOT_SERVING,
              "gRPC health after the cut: %r" % (got,))
        for what, fn, field in (
                ("ServerReady", lambda: kserve.ServerReady(k.ServerReadyRequest(), timeout=scaled(30)), "ready"),
                ("ModelReady", lambda: kserve.ModelReady(k.ModelReadyRequest(name=NAME), timeout=scaled(30)), "ready"),
                ("ServerLive", lambda: kserve.ServerLive(k.ServerLiveRequest(), timeout=scaled(30)), "live")):
            got = grpc_code(fn)
            check(got[0] == grpc.StatusCode.OK and getattr(got[1], field) is False, "%s after the cut: %r" % (what, got))
        ch.close()
        check(metric(srv.metrics(), "moeflow:request_rejected_total", reason="damaged") == 4,
              "refusals counted: %r" % metric(srv.metrics(), "moeflow:request_rejected_total", reason="damaged"))
        check("the model's files are damaged" in srv.output() and path in srv.output(), "the log says why")
        check(srv.stop() == 0, "damaged shard: exit status")
    finally:
        srv.kill()
        if check.failures:
            print(srv.output()[-3000:])


def main():
    moeflow, src = sys.argv[1], sys.argv[2]
    pb = gen_stubs(src)
    tmp = tempfile.mkdtemp(prefix="moeflow_files_")
    try:
        nan_logits(moeflow, src, pb, tmp)
        damaged_shard(moeflow, src, pb, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("test_serve_model_files: %s" % ("ok" if not check.failures else "%d failure(s)" % check.failures))
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
