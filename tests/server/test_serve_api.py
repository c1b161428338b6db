"""Integration: a live `moeflow serve` driven by python3-grpcio and curl.
usage: test_serve_api.py MOEFLOW_BINARY SOURCE_DIR [SERVE FLAGS...]
With serve flags that turn on the tiered expert cache, also checks the cache
metrics (the tokens must not change: outputs do not depend on where experts are)."""
import json
import os
import re
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import (Server, gen_stubs, curl, metric, read_reference_greedy, Checks, rejections, require_grpc,  # noqa: E402
                        free_port, run_server_test, parse_prometheus, scaled, kserve_request)

grpc = require_grpc()
check = Checks()


def metrics_while_loading(moeflow, extra):
    """/metrics scraped from the moment the listener opens until the server is ready, as Prometheus scrapes a
    server that loads for minutes: each reply a whole exposition.  Under scripts/tsan.sh, the scrapes during
    the load also show that /metrics reads none of what the load is building."""
    import subprocess
    import urllib.request
    port = free_port()
    proc = subprocess.Popen([moeflow, "serve", "--grpc-port", "0", "--http-port", str(port), "--warmup-tokens", "1"] +
                            extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scrapes, ready, t0 = 0, False, time.time()
    try:
        while not ready and proc.poll() is None and time.time() - t0 < scaled(120):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=scaled(30)) as r:
                    ms = parse_prometheus(r.read().decode())
            except OSError:
                time.sleep(0.002)
                continue
            scrapes += 1
            ready = metric(ms, "moeflow:server_ready") == 1
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(scaled(60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    check(ready and scrapes > 1 and rc == 0, "/metrics while loading: %d scrapes, ready %s, exit status %s" % (
        scrapes, ready, proc.returncode))


def main():
    moeflow, src = sys.argv[1], sys.argv[2]
    pb = gen_stubs(src)
    m, k, h = pb["m"], pb["k"], pb["h"]
    # Command-line errors: usage errors exit 2, a model that cannot load exits 1; both say what to fix.
    import subprocess
    r = subprocess.run([moeflow, "serve", "--max-queued", "-5"], capture_output=True, timeout=30)
    check(r.returncode == 2 and b"max-queued" in r.stderr and b"-5" in r.stderr, "bad flag: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([moeflow, "serve", "--model", "/nonexistent-model-dir", "--grpc-port", "0",
                        "--http-port", str(free_port())], capture_output=True, timeout=30)
    check(r.returncode == 1 and b"/nonexistent-model-dir" in r.stderr, "bad model: %d %r" % (r.returncode, r.stderr))
    # a flag takes the place of the config file's alternative to it; both on the command line are refused
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
        conf.write("gpu-experts = 8\n")
        conf.flush()
        r = subprocess.run([moeflow, "serve", "--config", conf.name, "--gpu-cache-bytes", "1M", "--model",
                            "/nonexistent-model-dir", "--grpc-port", "0", "--http-port", str(free_port())],
                           capture_output=True, timeout=30)
        check(r.returncode == 1 and b"/nonexistent-model-dir" in r.stderr,
              "--gpu-cache-bytes over the file's gpu-experts: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([moeflow, "serve", "--gpu-experts", "8", "--gpu-cache-bytes", "1M"], capture_output=True,
                       timeout=30)
    check(r.returncode == 2 and b"not both" in r.stderr, "both alternatives: %d %r" % (r.returncode, r.stderr))
    # while the model loads (here never: MOEFLOW_TEST_HOLD_LOAD holds it until a stop signal), KServe's ModelReady
    # says false and ServerMetadata answers; generation and tokenizing wait for the load (UNAVAILABLE, HTTP
    # 503), each request refused counted in request_rejected_total{reason="loading"} (the model's
    # information not)
    import os
    with tempfile.TemporaryDirectory() as d:
        gp, hp = free_port(), free_port()
        p = subprocess.Popen([moeflow, "serve", "--model", d, "--grpc-port", str(gp), "--http-port",
                              str(hp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, MOEFLOW_TEST_HOLD_LOAD="1"))
        try:
            ch = grpc.insecure_channel("127.0.0.1:%d" % gp)
            grpc.channel_ready_future(ch).result(timeout=30)
            ks = pb["kg"].GRPCInferenceServiceStub(ch)
            ready = ks.ModelReady(k.ModelReadyRequest(name="x"), timeout=10).ready
            meta = ks.ServerMetadata(k.ServerMetadataRequest(), timeout=10)
            version = subprocess.run([moeflow, "--version"], capture_output=True, text=True).stdout.split()
            check(not ready and meta.name == "moeflow" and [meta.name, meta.version] == version,
                  "while loading: ready %s, metadata %r %r, --version %r" % (ready, meta.name, meta.version, version))
            watch = pb["hg"].HealthStub(ch).Watch(h.HealthCheckRequest(), timeout=10)
            check(next(watch).status == h.HealthCheckResponse.NOT_SERVING, "health Watch while loading")
            watch.cancel()
            try:
                pb["mg"].GenerationStub(ch).ModelInfo(m.ModelInfoRequest(), timeout=10)
                check(False, "ModelInfo answered while loading")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAVAILABLE, "ModelInfo while loading: %s" % e.code())
            for name, call in (("Generate", lambda: list(pb["mg"].GenerationStub(ch).Generate(
                                   m.GenerateRequest(prompt="def f():", max_tokens=2), timeout=10))),
                               ("ModelInfer", lambda: ks.ModelInfer(kserve_request(k, "l1", 2), timeout=10)),
                               ("Tokenize", lambda: pb["mg"].GenerationStub(ch).Tokenize(
                                   m.TokenizeRequest(text="def f():"), timeout=10))):
                try:
                    call()
                    check(False, "%s answered while loading" % name)
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.UNAVAILABLE and "loading" in e.details(),
                          "%s while loading: %s %s" % (name, e.code(), e.details()))
            import urllib.request
            import urllib.error
            for path, body in (("/v1/completions", {"prompt": "def f():", "max_tokens": 2}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                               ("/tokenize", {"prompt": "def f():"}), ("/v1/models", None)):
                try:
                    with urllib.request.urlopen(urllib.request.Request(
                            "http://127.0.0.1:%d%s" % (hp, path), data=body and json.dumps(body).encode(),
                            headers={"Content-Type": "application/json"}), timeout=10) as r:
                        code, out = r.status, r.read()
                except urllib.error.HTTPError as e:
                    code, out = e.code, e.read()
                check(code == 503 and b"still loading" in out, "%s while loading: %d %r" % (path, code, out[:200]))
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % hp, timeout=10) as r:
                ms = parse_prometheus(r.read().decode())
            got = {r: metric(ms, "moeflow:request_rejected_total", reason=r) for r in ("loading", "invalid")}
            check(got == {"loading": 6, "invalid": 0},
                  "6 requests refused while loading (not ModelInfo, /v1/models) counted %r" % got)
            ch.close()
        finally:
            p.kill()
            p.wait()
    # a tokenizer with more tokens than the model's vocabulary: refused at load, naming both files
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for sub, f in (("tests/fixtures/hf-tiny/mixtral", "config.json"),
                       ("tests/fixtures/hf-tiny/mixtral", "model.safetensors"),
                       ("models/pycode-moe-18m", "tokenizer.json")):
            os.symlink(os.path.abspath(os.path.join(src, sub, f)), os.path.join(d, f))
        r = subprocess.run([moeflow, "serve", "--model", d, "--grpc-port", "0", "--http-port", str(free_port())],
                           capture_output=True, timeout=30)
        check(r.returncode == 1 and b"8192 tokens" in r.stderr and b"vocabulary of 320" in r.stderr,
              "tokenizer larger than the vocabulary: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([moeflow, "serve", "--gpu-experts", "3", "--grpc-port", "0", "--http-port", str(free_port())],
                       capture_output=True, timeout=30)
    check(r.returncode == 2 and b"--gpu-experts" in r.stderr, "tier below top_k: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([moeflow, "serve", "--default-max-tokens", "5000", "--grpc-port", "0", "--http-port",
                        str(free_port())], capture_output=True, timeout=30)
    check(r.returncode == 2 and b"max-output" in r.stderr, "default-max-tokens over the context: %d %r" % (
        r.returncode, r.stderr))
    # a context past the model's is refused as --seq-len past it is, where it was served cut to the model's
    r = subprocess.run([moeflow, "serve", "--max-ctx", "100000", "--grpc-port", "0", "--http-port", str(free_port())],
                       capture_output=True, timeout=30)
    check(r.returncode == 2 and b"max-ctx 100000 exceeds the model's context of 2048 tokens" in r.stderr,
          "max-ctx over the context: %d %r" % (r.returncode, r.stderr))
    # a limit past the context is named as it is typed (max-output), not as the scheduler's field (max_output)
    r = subprocess.run([moeflow, "serve", "--max-output", "5000", "--grpc-port", "0", "--http-port", str(free_port())],
                       capture_output=True, timeout=30)
    check(r.returncode == 2 and b"max-output = 5000: must be in [1, 2047]" in r.stderr,
          "max-output over the context: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([moeflow, "serve", "--policy", "lru", "--grpc-port", "0", "--http-port", str(free_port())],
                       capture_output=True, timeout=30)
    check(r.returncode == 2 and b"--policy lru with every expert resident" in r.stderr,
          "a policy with nothing offloaded: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([moeflow, "serve", "--predictor", "crystal-ball"], capture_output=True, timeout=30)
    check(r.returncode == 2 and b"crystal-ball" in r.stderr, "bad predictor: %d %r" % (r.returncode, r.stderr))
    r = subprocess.run([moeflow, "serve", "--help"], capture_output=True, timeout=30)
    check(r.returncode == 0 and b"--drain-timeout" in r.stdout and b"--gpu-experts" in r.stdout, "--help")

    # An end-of-sequence id that only generation_config.json lists ends a generation ("stop", no text):
    # config.json's eos here is token 5; the model answers "<|endoftext|>" (id 0) with id 0.
    with tempfile.TemporaryDirectory() as d:
        mdir = os.path.join(src, "models", "pycode-moe-18m")
        for f in os.listdir(mdir):
            if f not in ("config.json", "generation_config.json"):
                os.symlink(os.path.abspath(os.path.join(mdir, f)), os.path.join(d, f))
        cfg = json.load(open(os.path.join(mdir, "config.json")))
        cfg["eos_token_id"] = 5
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        json.dump({"eos_token_id": 0}, open(os.path.join(d, "generation_config.json"), "w"))
        eos = Server(moeflow, "--model", d)
        try:
            st, body = eos.http("/v1/completions", json.dumps({"prompt": "<|endoftext|>", "max_tokens": 5}).encode())
            js = json.loads(body) if st == 200 else {}
            ch = js.get("choices", [{}])[0]
            check(st == 200 and ch.get("finish_reason") == "stop" and ch.get("text") == "",
                  "a second eos id: %d %r" % (st, body))
            check(eos.stop() == 0, "second eos id: exit status")
        finally:
            eos.kill()

    # A model name with a quote, a backslash and a newline stays one label in the exposition format.
    odd = Server(moeflow, "--model-name", 'my"model\\x\ny')
    try:
        text = odd.http("/metrics")[1].decode()
        check('moeflow:num_requests_running{model_name="my\\"model\\\\x\\ny"} 0' in text,
              "model name label not escaped: %r" % [ln for ln in text.splitlines() if "num_requests_running" in ln])
        check(odd.stop() == 0, "odd model name: exit status")
    finally:
        odd.kill()

    extra = sys.argv[3:]
    metrics_while_loading(moeflow, extra)
    tiered = any(a in ("--gpu-experts", "--gpu-cache-bytes", "--host-experts", "--store") for a in extra)
    srv = Server(moeflow, "--max-body-bytes", "65536", "--max-message-bytes", "65536", *extra)
    def checks(srv):
        ch = grpc.insecure_channel(srv.target)
        gen = pb["mg"].GenerationStub(ch)
        kstub = pb["kg"].GRPCInferenceServiceStub(ch)
        health = pb["hg"].HealthStub(ch)

        # Health
        r = health.Check(h.HealthCheckRequest(service=""), timeout=10)
        check(r.status == h.HealthCheckResponse.SERVING, "health: %s" % r.status)
        check(kstub.ServerLive(k.ServerLiveRequest(), timeout=10).live, "ServerLive")
        check(kstub.ServerReady(k.ServerReadyRequest(), timeout=10).ready, "ServerReady")
        # a second server on the same gRPC port is refused, not given a share of its clients
        r = subprocess.run([moeflow, "serve", "--grpc-port", str(srv.grpc_port), "--http-port", str(free_port())],
                           capture_output=True, timeout=30)
        check(r.returncode == 1 and b"in use" in r.stderr,
              "gRPC port taken twice: %d %r" % (r.returncode, r.stderr[-300:]))
        info = gen.ModelInfo(m.ModelInfoRequest(), timeout=10)
        check(info.name == "pycode-moe-18m" and info.vocab_size == 8192, "ModelInfo: %s" % info)
        check(kstub.ModelReady(k.ModelReadyRequest(name=info.name), timeout=10).ready, "ModelReady")
        md = kstub.ModelMetadata(k.ModelMetadataRequest(name=info.name), timeout=10)
        check([t.name for t in md.inputs] == ["text_input", "max_tokens", "stream", "temperature", "top_p", "top_k",
                                             "ignore_eos"], "ModelMetadata inputs: %s" % [t.name for t in md.inputs])
        # one version is served, "1" (or none named)
        check(kstub.ModelReady(k.ModelReadyRequest(name=info.name, version="1"), timeout=10).ready and
              not kstub.ModelReady(k.ModelReadyRequest(name=info.name, version="2"), timeout=10).ready,
              "ModelReady of versions 1 and 2")
        try:
            kstub.ModelMetadata(k.ModelMetadataRequest(name=info.name, version="2"), timeout=10)
            check(False, "ModelMetadata of version 2 answered")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, "ModelMetadata of version 2: %s" % e.code())

        # Generate: the greedy tokens of the reference (HF transformers) continuation.
        ids, greedy = read_reference_greedy(src)
        n = 8
        toks, text, final = [], "", None
        for msg in gen.Generate(m.GenerateRequest(prompt_ids=ids, max_tokens=n, ignore_eos=True), timeout=60):
            toks += list(msg.token_ids)
            text += msg.text
            if msg.finished:
                final = msg
        check(toks == greedy[:n], "Generate tokens %s != greedy %s" % (toks, greedy[:n]))
        check(final is not None and final.finish_reason == "length" and final.completion_tokens == n
              and final.prompt_tokens == len(ids), "final message: %s" % final)
        # the same prompt again starts from the cached one: all of it but the last token (prefix cache on)
        again = [x for x in gen.Generate(m.GenerateRequest(prompt_ids=ids, max_tokens=n, ignore_eos=True),
                                         timeout=60) if x.finished]
        check(again and again[0].cached_prompt_tokens == len(ids) - 1 and again[0].prompt_tokens == len(ids),
              "the same prompt again: %d of %d prompt tokens cached, want %d" %
              (again[0].cached_prompt_tokens if again else -1, len(ids), len(ids) - 1))
        # ... and the same as `moeflow generate` when that command is available.
        tok = gen.Tokenize(m.TokenizeRequest(text="def add(a, b):"), timeout=10)
        check(len(tok.token_ids) > 0, "Tokenize")
        stream_text = "".join(x.text for x in gen.Generate(
            m.GenerateRequest(prompt="def add(a, b):", max_tokens=n), timeout=60))
        g = subprocess.run([moeflow, "generate", "--prompt", "def add(a, b):", "--max-tokens", str(n)],
                           capture_output=True, timeout=120)
        if g.returncode == 0:
            out = g.stdout.decode(errors="replace")
            check(out in (stream_text, stream_text + "\n"),
                  "Generate text %r != moeflow generate output %r" % (stream_text, out[:400]))
        else:
            print("note: moeflow generate unavailable (%d); compared with the reference only" % g.returncode)

        # KServe decoupled streaming
        def kreq(prompt, max_tokens, stream):
            req = k.ModelInferRequest(model_name=info.name, id="k1")
            t = req.inputs.add(name="text_input", datatype="BYTES", shape=[1])
            t.contents.bytes_contents.append(prompt.encode())
            t = req.inputs.add(name="max_tokens", datatype="INT32", shape=[1])
            t.contents.int_contents.append(max_tokens)
            t = req.inputs.add(name="stream", datatype="BOOL", shape=[1])
            t.contents.bool_contents.append(stream)
            return req
        resps = list(kstub.ModelStreamInfer(iter([kreq("def add(a, b):", n, True)]), timeout=60))
        # tokens that arrive within one poll of the server's completion queue share a response, so
        # a few tokens may come as one; 96 tokens (about 0.1 s of decoding) come as several
        long_req = kreq("def add(a, b):", 96, True)
        long_req.parameters["ignore_eos"].bool_param = True
        many = list(kstub.ModelStreamInfer(iter([long_req]), timeout=60))
        check(len(many) >= 2, "ModelStreamInfer: %d responses for 96 tokens" % len(many))
        # refused by name: another version, an output the model does not give, a sampling parameter out of
        # range, one given as input and parameter, a NUL inside a string, two JSON guides, an id outside
        def refused(fn, want_code, word, what):
            try:
                fn()
                check(False, "%s accepted" % what)
            except grpc.RpcError as e:
                check(e.code() == want_code and word in e.details(), "%s: %s %s" % (what, e.code(), e.details()))
        q = kreq("x", 2, False)
        q.model_version = "42"
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.NOT_FOUND, "version '42'", "version 42")
        q = kreq("x", 2, False)
        q.model_name = ""
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "model_name is empty",
                "an empty model_name")
        q.id = "noname"
        errs = [(r.infer_response.id, r.error_message) for r in kstub.ModelStreamInfer(iter([q]), timeout=30)]
        check(len(errs) == 1 and errs[0][0] == "noname" and "model_name is empty" in errs[0][1],
              "an empty model_name on a stream: %r" % errs)
        # error responses that quote the request's text cut to a length: cut between characters, so that the
        # response (error_message and id are protobuf strings, UTF-8) parses and the stream goes on
        bad = []
        q = kreq("x", 2, False)
        q.id = "u"
        q.inputs.add(name="a" + "\u00e9" * 50, datatype="BYTES", shape=[1])
        bad.append(q)
        q = kreq("x", 2, False)
        q.id = "d"
        q.inputs[1].datatype = "a" + "\u00e9" * 20
        bad.append(q)
        q = kreq("x", 2, False)
        q.id = "\u00e9" * 100
        bad.append(q)
        try:
            errs = [(r.infer_response.id, r.error_message) for r in kstub.ModelStreamInfer(iter(bad), timeout=30)]
        except grpc.RpcError as e:
            errs = [(e.code(), e.details())]
        check(len(errs) == 3 and errs[0][0] == "u" and "unknown input 'a%s' (" % ("\u00e9" * 31) in errs[0][1] and
              errs[1][0] == "d" and "got 'a%s'" % ("\u00e9" * 7) in errs[1][1] and
              errs[2][0] == "\u00e9" * 63 and "id must be at most 127 bytes" in errs[2][1],
              "error responses quoting text cut short: %r" % errs)
        q = kreq("x", 2, False)
        q.outputs.add(name="nope")
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "'nope'", "output nope")
        q = kreq("x", 2, False)
        q.parameters["temperature"].double_param = -5
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "temperature",
                "parameter temperature -5")
        q = kreq("x", 2, False)
        del q.inputs[1]  # max_tokens as a parameter only (both ways is refused as such)
        q.parameters["max_tokens"].double_param = 2.7
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens",
                "parameter max_tokens 2.7")
        q = kreq("x", 2, False)
        t = q.inputs.add(name="top_k", datatype="INT32", shape=[1])
        t.contents.int_contents.append(5)
        q.parameters["top_k"].int64_param = 5
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "both", "top_k twice")
        q = kreq("x", 2, False)
        q.parameters["max_tokens"].int64_param = 3
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "both", "max_tokens twice")
        q = kreq("x", 2, False)
        q.parameters["regex"].string_param = "ab\x00[0-9]+"
        refused(lambda: kstub.ModelInfer(q, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "NUL",
                "a regex parameter with a NUL")
        q = kreq("x", 2, False)
        q.parameters["temperature"].double_param = 0
        check(kstub.ModelInfer(q, timeout=30).outputs[0].name == "text_output", "parameter temperature 0")
        for kw, word in (({"prompt": "ab\x00cd"}, "'prompt'"), ({"prompt": "x", "stop": ["R\x00zz"]}, "'stop'"),
                         ({"prompt": "x", "json_object": True, "json_schema": '{"type": "boolean"}'}, "give one"),
                         ({"prompt_ids": [1, 8192]}, "'prompt_ids[1]'")):
            refused(lambda: list(gen.Generate(m.GenerateRequest(max_tokens=2, **kw), timeout=30)),
                    grpc.StatusCode.INVALID_ARGUMENT, word, "Generate %r" % kw)
        # a tokenizing request refused counts as invalid, over gRPC as over HTTP
        invalid, _ = rejections(srv)
        refused(lambda: gen.Tokenize(m.TokenizeRequest(text="ab\x00cd"), timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT, "NUL", "Tokenize with a NUL")
        raw_tokenize = ch.unary_unary("/moeflow.v1.Generation/Tokenize", request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
        refused(lambda: raw_tokenize(b"\xff\xff\xff", timeout=10), grpc.StatusCode.INVALID_ARGUMENT,
                "malformed", "Tokenize with a malformed body")
        code, out = srv.http("/tokenize", b"{")
        check(code == 400, "/tokenize with a malformed body: %d %r" % (code, out[:200]))
        got = rejections(srv)[0] - invalid
        check(got == 3, "2 Tokenize calls and 1 /tokenize refused as invalid counted %s" % got)
        # a string field that is not UTF-8 (proto3 strings are): refused naming it, where a ModelInfer id of it
        # was echoed into a reply the client's protobuf could not parse
        refused(lambda: raw_tokenize(b"\x0a\x03a\xffb", timeout=10), grpc.StatusCode.INVALID_ARGUMENT,
                "TokenizeRequest: 'text' is not valid UTF-8", "Tokenize of a text not UTF-8")
        raw_infer = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        body = kreq("x", 2, False)
        body.id = "IDX"
        body = body.SerializeToString().replace(b"\x1a\x03IDX", b"\x1a\x03I\xffX")
        refused(lambda: raw_infer(body, timeout=30), grpc.StatusCode.INVALID_ARGUMENT,
                "ModelInferRequest: 'id' is not valid UTF-8", "ModelInfer of an id not UTF-8")
        raw_stream = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                      request_serializer=lambda b: b,
                                      response_deserializer=k.ModelStreamInferResponse.FromString)
        try:
            errs = [(r.infer_response.id, r.error_message) for r in raw_stream(iter([body]), timeout=30)]
        except grpc.RpcError as e:
            errs = [(e.code(), e.details())]
        check(len(errs) == 1 and errs[0][0] == "" and "'id' is not valid UTF-8" in errs[0][1],
              "ModelStreamInfer of an id not UTF-8: %r" % errs)
        # a body that is no message of the call's type, on the calls whose request has no field to read
        for method, word in (("/moeflow.v1.Generation/ModelInfo", "ModelInfoRequest"),
                             ("/inference.GRPCInferenceService/ServerLive", "ServerLiveRequest"),
                             ("/inference.GRPCInferenceService/ServerReady", "ServerReadyRequest"),
                             ("/inference.GRPCInferenceService/ServerMetadata", "ServerMetadataRequest")):
            raw = ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            refused(lambda: raw(b"\xff\xff\xff", timeout=10), grpc.StatusCode.INVALID_ARGUMENT, word,
                    "%s with a malformed body" % method)
        # a name with a NUL byte, which protobuf-c would cut short: refused naming the field, not answered as the
        # name before the NUL (the model served, ready; the health of every service)
        health = pb["hg"].HealthStub(ch)
        for fn, word, what in (
                (lambda: kstub.ModelReady(k.ModelReadyRequest(name="pycode-moe-18m\x00x"), timeout=10),
                 "ModelReadyRequest: 'name' holds a NUL byte", "ModelReady of a name with a NUL"),
                (lambda: kstub.ModelReady(k.ModelReadyRequest(name="pycode-moe-18m", version="1\x00x"), timeout=10),
                 "'version' holds a NUL byte", "ModelReady of a version with a NUL"),
                (lambda: kstub.ModelMetadata(k.ModelMetadataRequest(name="pycode-moe-18m\x00x"), timeout=10),
                 "ModelMetadataRequest: 'name' holds a NUL byte", "ModelMetadata of a name with a NUL"),
                (lambda: health.Check(h.HealthCheckRequest(service="\x00x"), timeout=10),
                 "HealthCheckRequest: 'service' holds a NUL byte", "health Check of a service with a NUL"),
                (lambda: next(health.Watch(h.HealthCheckRequest(service="moeflow.v1.Generation\x00x"), timeout=10)),
                 "'service' holds a NUL byte", "health Watch of a service with a NUL")):
            refused(fn, grpc.StatusCode.INVALID_ARGUMENT, word, what)
        check(all(not r.error_message for r in resps), "stream errors")
        finals = [r.infer_response.parameters["triton_final_response"].bool_param for r in resps]
        check(finals[-1] and not any(finals[:-1]), "final flags %s" % finals)
        ktext = "".join(o.contents.bytes_contents[0].decode() for r in resps
                        for o in r.infer_response.outputs if o.name == "text_output")
        check(ktext == stream_text, "KServe text %r != Generate text %r" % (ktext, stream_text))
        check(resps[0].infer_response.id == "k1", "id echoed")
        one = kstub.ModelInfer(kreq("def add(a, b):", n, False), timeout=60)
        check(one.outputs[0].contents.bytes_contents[0].decode() == stream_text, "ModelInfer text")

        # one decoupled stream carries several requests at once: each answered under its id,
        # with the text it gets alone, the responses interleaved; a bad one errs alone
        prompts = {"s1": "def add(a, b):", "s2": "class Stack:", "s3": "import os\n"}
        alone = {}
        for rid, pr in prompts.items():
            one = kstub.ModelInfer(kreq(pr, 24, False), timeout=60)
            alone[rid] = one.outputs[0].contents.bytes_contents[0].decode()
        reqs = []
        for rid, pr in prompts.items():
            q = kreq(pr, 24, rid != "s3")  # s3 non-streamed: one final response
            q.id = rid
            reqs.append(q)
        badq = k.ModelInferRequest(model_name=info.name, id="bad")
        reqs.insert(1, badq)
        resps = list(kstub.ModelStreamInfer(iter(reqs), timeout=60))
        order = [r.infer_response.id for r in resps]
        texts, finals = {}, {}
        for r in resps:
            rid = r.infer_response.id
            texts[rid] = texts.get(rid, "") + "".join(o.contents.bytes_contents[0].decode()
                                                      for o in r.infer_response.outputs
                                                      if o.name == "text_output")
            if r.infer_response.parameters["triton_final_response"].bool_param:
                finals[rid] = finals.get(rid, 0) + 1
        check(all(texts.get(rid) == alone[rid] for rid in prompts), "multiplexed texts %r != %r" % (texts, alone))
        check(finals == {"s1": 1, "s2": 1, "s3": 1, "bad": 1}, "one final response per request: %r" % finals)
        check(any(r.error_message for r in resps if r.infer_response.id == "bad") and
              not any(r.error_message for r in resps if r.infer_response.id != "bad"), "errors %r" % order)
        s1_last = max(i for i, rid in enumerate(order) if rid == "s1")
        s2_first = min(i for i, rid in enumerate(order) if rid == "s2")
        check(s2_first < s1_last, "requests of one stream ran one after another: %r" % order)

        # HTTP via curl: streamed and non-streamed give the same text
        body = json.dumps({"model": info.name, "prompt": "def add(a, b):", "max_tokens": n})
        rc, out = curl("-H", "Content-Type: application/json", "-d", body, srv.url("/v1/completions"))
        check(rc == 0, "curl rc %d" % rc)
        js = json.loads(out)
        plain = js["choices"][0]["text"]
        check(plain == stream_text, "HTTP text %r != gRPC %r" % (plain, stream_text))
        check(js["usage"]["completion_tokens"] == n, "usage %s" % js["usage"])
        body = json.dumps({"prompt": "def add(a, b):", "max_tokens": n, "stream": True})
        rc, out = curl("-N", "-H", "Content-Type: application/json", "-d", body, srv.url("/v1/completions"))
        events = [ln[6:] for ln in out.decode().split("\n") if ln.startswith("data: ")]
        check(events and events[-1] == "[DONE]", "stream does not end with [DONE]: %r" % events[-2:])
        chunks = [json.loads(e) for e in events[:-1]]
        streamed = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
        check(streamed == plain, "streamed %r != plain %r" % (streamed, plain))
        check(sum(1 for c in chunks if c["choices"][0]["finish_reason"] is None) == n, "one chunk per token")
        check(chunks[-1].get("usage", {}).get("completion_tokens") == n, "usage in the last chunk")
        # a wrong method is a JSON 405 naming the right one, with Allow
        for method, path, allow in (("PUT", "/v1/completions", "POST"), ("GET", "/v1/chat/completions", "POST"),
                                    ("DELETE", "/health", "GET, HEAD")):
            rc, out = curl("-i", "-X", method, srv.url(path))
            head, _, body = out.decode().partition("\r\n\r\n")
            ok = rc == 0 and " 405 " in head.splitlines()[0] and ("Allow: %s" % allow) in head
            try:
                ok = ok and json.loads(body)["error"]["type"] == "method_not_allowed"
            except ValueError:
                ok = False
            check(ok, "%s %s: %r" % (method, path, out[:300]))
        # HEAD: the headers of GET with its Content-Length and no body, so the next reply on the
        # same connection still parses
        sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
        sk.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while True:
            x = sk.recv(65536)
            if not x:
                break
            raw += x
        sk.close()
        first, _, rest = raw.partition(b"\r\n\r\n")
        check(b"Content-Length: " in first and rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"\r\n\r\nok\n"),
              "HEAD then GET on one connection: %r" % raw[:400])
        # stream_options.include_usage: one more chunk, no choices, the request's usage
        body = json.dumps({"prompt": "def add(a, b):", "max_tokens": n, "stream": True,
                           "stream_options": {"include_usage": True}})
        rc, out = curl("-N", "-H", "Content-Type: application/json", "-d", body, srv.url("/v1/completions"))
        events = [ln[6:] for ln in out.decode().split("\n") if ln.startswith("data: ")]
        uchunks = [json.loads(e) for e in events[:-1]]
        check(len(uchunks) == len(chunks) + 1 and uchunks[-1]["choices"] == [] and
              uchunks[-1]["usage"]["completion_tokens"] == n and uchunks[-2]["choices"][0]["finish_reason"] == "length"
              and "usage" not in uchunks[-2],
              "include_usage: %r" % uchunks[-2:])
        # stop sequences: the text ends right before the first one, finish_reason "stop",
        # streamed or not; the generation is cut short (fewer completion tokens)
        cut = next((i for i in range(4, len(plain) - 2) if plain.find(plain[i:i + 2]) == i), None)
        check(cut is not None, "no stop candidate in %r" % plain)
        if cut is not None:
            stop = plain[cut:cut + 2]
            body = json.dumps({"prompt": "def add(a, b):", "max_tokens": n, "stop": ["@@never@@", stop]})
            code, out = srv.http("/v1/completions", body.encode())
            js = json.loads(out) if code == 200 else {}
            c0 = js.get("choices", [{}])[0]
            check(code == 200 and c0.get("text") == plain[:cut] and c0.get("finish_reason") == "stop",
                  "stop %r: %d %r (want %r)" % (stop, code, c0, plain[:cut]))
            check(js.get("usage", {}).get("completion_tokens", n) < n, "stopped early: %s" % js.get("usage"))
            body = json.dumps({"prompt": "def add(a, b):", "max_tokens": n, "stop": stop, "stream": True})
            rc, out = curl("-N", "-H", "Content-Type: application/json", "-d", body, srv.url("/v1/completions"))
            events = [ln[6:] for ln in out.decode().split("\n") if ln.startswith("data: ")]
            chunks = [json.loads(e) for e in events[:-1]]
            streamed = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
            check(events and events[-1] == "[DONE]" and streamed == plain[:cut] and
                  chunks[-1]["choices"][0]["finish_reason"] == "stop",
                  "streamed stop %r: %r (want %r), last %r" % (stop, streamed, plain[:cut], chunks[-1:]))
            msgs = list(gen.Generate(m.GenerateRequest(prompt="def add(a, b):", max_tokens=n,
                                                       stop=["@@never@@", stop]), timeout=60))
            gtext = "".join(x.text for x in msgs)
            check(gtext == plain[:cut] and msgs and msgs[-1].finished and msgs[-1].finish_reason == "stop"
                  and msgs[-1].completion_tokens < n,
                  "Generate stop %r: %r (want %r), last %s" % (stop, gtext, plain[:cut], msgs[-1:]))
            # log-probabilities, with and without stop sequences: one per token, greedy = the top one
            for stops in ([], ["@@never@@", stop]):
                lmsgs = list(gen.Generate(m.GenerateRequest(prompt="def add(a, b):", max_tokens=n, stop=stops,
                                                            logprobs=True, top_logprobs=2), timeout=60))
                toks = [t for x in lmsgs for t in x.token_ids]
                lps = [lp for x in lmsgs for lp in x.logprobs]
                check(lmsgs and [lp.token_id for lp in lps] == toks and len(toks) == lmsgs[-1].completion_tokens
                      and all(len(lp.top_token_ids) == 2 and lp.top_token_ids[0] == lp.token_id and
                              lp.top_logprobs[0] == lp.logprob <= 0 and lp.top_logprobs[1] <= lp.logprob
                              for lp in lps), "Generate logprobs (stop %r): %s" % (stops, lmsgs[-1:]))
            check(not any(x.logprobs for x in msgs), "Generate sent logprobs unasked")
            try:
                list(gen.Generate(m.GenerateRequest(prompt="x", top_logprobs=3), timeout=10))
                check(False, "Generate accepted top_logprobs without logprobs")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_logprobs" in e.details(),
                      "top_logprobs alone: %s %s" % (e.code(), e.details()))
            try:
                list(gen.Generate(m.GenerateRequest(prompt="x", stop=["a", ""]), timeout=10))
                check(False, "Generate accepted an empty stop sequence")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "stop" in e.details(),
                      "empty stop: %s %s" % (e.code(), e.details()))
            code, out = srv.http("/v1/completions", json.dumps({"prompt": "x", "stop": [""]}).encode())
            check(code == 400 and b"stop" in out, "empty stop: %d %r" % (code, out))
        # logit bias and penalties reach the sampler: +100 forces a token, -100 bans the greedy one;
        # penalised greedy text is the same over gRPC, HTTP and `moeflow generate`, and not the plain text
        forced = [t for x in gen.Generate(m.GenerateRequest(prompt_ids=ids, max_tokens=4, ignore_eos=True,
                                                             logit_bias=[m.LogitBias(token_id=42, bias=100)]),
                                          timeout=60) for t in x.token_ids]
        check(forced == [42] * 4, "logit_bias +100 on token 42: %s" % forced)
        banned = [t for x in gen.Generate(m.GenerateRequest(prompt_ids=ids, max_tokens=1, ignore_eos=True,
                                                             logit_bias=[m.LogitBias(token_id=greedy[0],
                                                                                     bias=-100)]),
                                          timeout=60) for t in x.token_ids]
        check(len(banned) == 1 and banned[0] != greedy[0], "logit_bias -100 on the greedy token: %s" % banned)
        # vLLM's stop_token_ids end the call as EOS does (stop, the token not sent); min_tokens masks them until
        # then (the greedy first token as a stop id: another comes first) and lets no stop sequence end in its
        # tokens' text, as over HTTP; bad values are INVALID_ARGUMENT naming the field
        at = greedy.index(greedy[2])
        msgs = list(gen.Generate(m.GenerateRequest(prompt_ids=ids, max_tokens=8, stop_token_ids=[greedy[2]]),
                                 timeout=60))
        check([t for x in msgs for t in x.token_ids] == greedy[:at] and msgs[-1].finish_reason == "stop" and
              msgs[-1].completion_tokens == at, "Generate stop_token_ids [%d]: %s" % (greedy[2], msgs[-1:]))
        held = [t for x in gen.Generate(m.GenerateRequest(prompt_ids=ids, max_tokens=3, min_tokens=3,
                                                           stop_token_ids=[greedy[0]]), timeout=60)
                for t in x.token_ids]
        check(len(held) == 3 and held[0] != greedy[0], "Generate min_tokens 3, stop id %d: %s" % (greedy[0], held))
        body = {"prompt": "def add(a, b):", "max_tokens": 30, "temperature": 0, "ignore_eos": True, "stop": ["\n"],
                "min_tokens": 4}
        code, out = srv.http("/v1/completions", json.dumps(body).encode())
        msgs = list(gen.Generate(m.GenerateRequest(**body), timeout=60))
        text = json.loads(out)["choices"][0]["text"] if code == 200 else None
        check(text and "".join(x.text for x in msgs) == text and msgs[-1].finish_reason == "stop",
              "Generate stop and min_tokens: %r, HTTP %r" % ("".join(x.text for x in msgs), text))
        for req, says in ((m.GenerateRequest(prompt="x", max_tokens=2, min_tokens=3), "min_tokens = 3"),
                          (m.GenerateRequest(prompt="x", min_tokens=17), "max_tokens = 16"),
                          (m.GenerateRequest(prompt="x", stop_token_ids=[8192]), "stop_token_ids[0]' = 8192")):
            try:
                list(gen.Generate(req, timeout=10))
                check(False, "Generate accepted %s" % req)
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and says in e.details(),
                      "Generate %s: %s %s" % (says, e.code(), e.details()))
        # JSON mode over gRPC: '{' and '}' favoured make "{}" at once, and the call stops there
        msgs = list(gen.Generate(m.GenerateRequest(prompt="x", max_tokens=20, json_object=True,
                                                   logit_bias=[m.LogitBias(token_id=91, bias=100),
                                                               m.LogitBias(token_id=93, bias=100)]), timeout=60))
        check("".join(x.text for x in msgs) == "{}" and msgs[-1].finish_reason == "stop" and
              msgs[-1].completion_tokens == 2, "Generate json_object: %s" % msgs[-1:])
        # a JSON schema over gRPC: the same greedy text as over HTTP; a bad schema is INVALID_ARGUMENT
        schema = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "n": {"type": "integer"}},
                  "required": ["kind", "n"], "additionalProperties": False}
        stext = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="pet = ", max_tokens=48,
                                                                       json_schema=json.dumps(schema)), timeout=60))
        code, out = srv.http("/v1/completions", json.dumps(dict(prompt="pet = ", max_tokens=48, response_format={
            "type": "json_schema", "json_schema": {"name": "pet", "schema": schema}})).encode())
        check(code == 200 and json.loads(out)["choices"][0]["text"] == stext and stext.startswith('{"'),
              "json_schema over gRPC %r and HTTP: %d %r" % (stext, code, out[:300]))
        kq = kreq("pet = ", 48, False)
        kq.parameters["json_schema"].string_param = json.dumps(schema)
        ktext = kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0].decode()
        check(ktext == stext, "json_schema over KServe %r, gRPC %r" % (ktext, stext))
        kq = kreq("config = ", 16, False)
        kq.parameters["json_object"].bool_param = True
        ktext = kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0].decode()
        gtext = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="config = ", max_tokens=16,
                                                                       json_object=True), timeout=60))
        check(ktext == gtext and ktext.startswith("{"), "json_object over KServe %r, gRPC %r" % (ktext, gtext))
        def kserve_refused(kq, what, want):
            """ModelInfer of kq ends INVALID_ARGUMENT with details holding want"""
            try:
                kstub.ModelInfer(kq, timeout=60)
                check(False, "KServe accepted %s" % what)
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and want in e.details(),
                      "KServe %s: %s %s" % (what, e.code(), e.details()))
        kq = kreq("x", 8, False)
        kq.parameters["json_schema"].string_param = '{"type": "string", "not": {"maxLength": 2}}'
        kserve_refused(kq, "a json_schema with not", "'not' is not supported")
        try:
            list(gen.Generate(m.GenerateRequest(prompt="x", json_schema='{"type": "string", "format": "ipv6"}'),
                              timeout=60))
            check(False, "a json_schema with format ipv6 was accepted")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "format 'ipv6' is not supported" in e.details(),
                  "bad json_schema: %s %s" % (e.code(), e.details()))
        # a regular expression and a choice over gRPC (and the expression over KServe): HTTP's greedy text
        rx = r"[a-z_]{1,8} = [0-9]{1,3}\n"
        rtext = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="x = 1\n", max_tokens=24, regex=rx),
                                                     timeout=60))
        code, out = srv.http("/v1/completions", json.dumps(dict(prompt="x = 1\n", max_tokens=24,
                                                                guided_regex=rx)).encode())
        check(code == 200 and json.loads(out)["choices"][0]["text"] == rtext and re.fullmatch(rx, rtext),
              "regex over gRPC %r and HTTP: %d %r" % (rtext, code, out[:300]))
        kq = kreq("x = 1\n", 24, False)
        kq.parameters["regex"].string_param = rx
        ktext = kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0].decode()
        check(ktext == rtext, "regex over KServe %r, gRPC %r" % (ktext, rtext))
        # a NUL byte in the generated text (HTTP sends it as \u0000) is kept, with what follows it, by
        # Generate (with a stop sequence too), KServe's whole reply and a streamed one
        rx0, want0 = r"ab\x00cd\n", "ab\x00cd\n"
        code, out = srv.http("/v1/completions", json.dumps(dict(prompt="x = 1\n", max_tokens=24,
                                                                guided_regex=rx0)).encode())
        check(code == 200 and json.loads(out)["choices"][0]["text"] == want0,
              "regex with a NUL over HTTP: %d %r" % (code, out[:300]))
        for stop in ([], ["zz"]):
            gtext = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="x = 1\n", max_tokens=24, regex=rx0,
                                                                           stop=stop), timeout=60))
            check(gtext == want0, "regex with a NUL over gRPC (stop %s): %r" % (stop, gtext))
        for stream in (None, True):
            kq = kreq("x = 1\n", 24, bool(stream))
            kq.parameters["regex"].string_param = rx0
            if stream is None:
                ktext = kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0]
            else:
                ktext = b"".join(o.contents.bytes_contents[0] for x in kstub.ModelStreamInfer(iter([kq]), timeout=60)
                                 for o in x.infer_response.outputs)
            check(ktext == want0.encode(), "regex with a NUL over KServe (stream %s): %r" % (stream, ktext))
        # an empty pattern is refused naming the field over HTTP and KServe, as an empty choice text is, where it was
        # taken as matching the empty text alone ('()' asks for that); gRPC's regex "" is the field unset
        emsg = "the pattern is empty: give one ('()' asks for an empty output)"
        for body, field in ((dict(guided_regex=""), "guided_regex"), (dict(structured_outputs={"regex": ""}), "regex")):
            code, out = srv.http("/v1/completions", json.dumps(dict(prompt="x = 1\n", max_tokens=4, **body)).encode())
            check(code == 400 and json.loads(out)["error"]["message"] == "'%s': %s" % (field, emsg),
                  "an empty %s over HTTP: %d %r" % (field, code, out[:300]))
        code, out = srv.http("/v1/completions", json.dumps(dict(prompt="x = 1\n", max_tokens=4,
                                                                guided_regex="()")).encode())
        check(code == 200 and json.loads(out)["choices"][0]["text"] == "" and
              json.loads(out)["choices"][0]["finish_reason"] == "stop", "guided_regex '()': %d %r" % (code, out[:300]))
        kq = kreq("x = 1\n", 4, False)
        kq.parameters["regex"].string_param = ""
        kserve_refused(kq, "an empty regex", "parameter 'regex': " + emsg)
        # a GBNF grammar of the expression's language: the same text over gRPC and KServe
        gbnf = 'root ::= [a-z_]{1,8} " = " [0-9]{1,3} "\\n"'
        gtext = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="x = 1\n", max_tokens=24, grammar=gbnf),
                                                     timeout=60))
        check(gtext == rtext, "grammar over gRPC %r, regex %r" % (gtext, rtext))
        kq = kreq("x = 1\n", 24, False)
        kq.parameters["grammar"].string_param = gbnf
        ktext = kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0].decode()
        check(ktext == rtext, "grammar over KServe %r, regex %r" % (ktext, rtext))
        # a structural tag: the same text over gRPC, KServe and HTTP
        tag = json.dumps({"structures": [{"begin": "# ", "schema": {"type": "object", "properties": {
            "todo": {"type": "string", "maxLength": 12}}, "required": ["todo"]}, "end": "\n"}], "triggers": ["# "]})
        prompt = "def fibonacci(n):\n    "
        ttext = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt=prompt, max_tokens=40,
                                                                       structural_tag=tag), timeout=60))
        kq = kreq(prompt, 40, False)
        kq.parameters["structural_tag"].string_param = tag
        ktext = kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0].decode()
        code, out = srv.http("/v1/completions", json.dumps(dict(prompt=prompt, max_tokens=40, structural_tag=tag)).encode())
        htext = json.loads(out)["choices"][0]["text"] if code == 200 else None
        check(ttext == ktext == htext and ttext.startswith(" # {"), "structural tag over gRPC %r, KServe %r, HTTP %r" % (
            ttext, ktext, htext))
        cmsgs = list(gen.Generate(m.GenerateRequest(prompt="answer = ", max_tokens=8, choice=["yes", "no", "maybe"]),
                                  timeout=60))
        check("".join(x.text for x in cmsgs) in ("yes", "no", "maybe") and cmsgs[-1].finish_reason == "stop",
              "choice over gRPC: %s" % cmsgs[-1:])
        for bad, word in ((dict(regex="a", choice=["a"]), "give one"), (dict(regex="a("), "regex: pattern 'a('"),
                          (dict(grammar="root ::= (", regex="a"), "give one"),
                          (dict(grammar="root ::= ("), "grammar: grammar, line 1 column 11: expected ')'")):
            try:
                list(gen.Generate(m.GenerateRequest(prompt="x", **bad), timeout=60))
                check(False, "Generate accepted %r" % bad)
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and word in e.details(),
                      "Generate %r: %s %s" % (bad, e.code(), e.details()))
        pen = dict(presence_penalty=1.5, frequency_penalty=0.5, repetition_penalty=1.3)
        ptext = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="def add(a, b):", max_tokens=24,
                                                                       **pen), timeout=60))
        code, out = srv.http("/v1/completions", json.dumps(dict(prompt="def add(a, b):", max_tokens=24,
                                                                **pen)).encode())
        check(code == 200 and json.loads(out)["choices"][0]["text"] == ptext,
              "penalised HTTP text differs from gRPC's %r: %d %r" % (ptext, code, out[:300]))
        plain24 = "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="def add(a, b):", max_tokens=24),
                                                       timeout=60))
        check(ptext != plain24, "penalties changed nothing: %r" % ptext)
        kq = kreq("def add(a, b):", 24, False)
        for key, val in pen.items():
            kq.parameters[key].double_param = val
        ktext = kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0].decode()
        check(ktext == ptext, "penalised KServe text %r differs from gRPC's %r" % (ktext, ptext))
        kq = kreq("def add(a, b):", 24, False)
        kq.parameters["min_p"].double_param = 2
        try:
            kstub.ModelInfer(kq, timeout=10)
            check(False, "KServe accepted min_p 2")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_p" in e.details(), "KServe min_p 2: %s" % e)
        g = subprocess.run([moeflow, "generate", "--prompt", "def add(a, b):", "--max-tokens", "24",
                            "--presence-penalty", "1.5", "--frequency-penalty", "0.5", "--repetition-penalty", "1.3"],
                           capture_output=True, timeout=120)
        if g.returncode == 0:
            check(g.stdout.decode(errors="replace") in (ptext, ptext + "\n"),
                  "penalised generate %r != Generate %r" % (g.stdout[:300], ptext))
        # without a seed every sampled request draws anew (gRPC: seed 0 is none); a seed repeats
        def sampled(seed):
            return "".join(x.text for x in gen.Generate(m.GenerateRequest(prompt="def add(a, b):", max_tokens=32,
                                                                          temperature=1.5, seed=seed), timeout=60))
        unseeded = [sampled(0) for _ in range(3)]
        check(len(set(unseeded)) > 1, "Generate without a seed repeated itself: %r" % unseeded)
        check(sampled(77) == sampled(77), "Generate with seed 77 differs between runs")
        def sampled_http(**seed):
            code, out = srv.http("/v1/completions", json.dumps(dict(prompt="def add(a, b):", max_tokens=32,
                                                                    temperature=1.5, **seed)).encode())
            return json.loads(out)["choices"][0]["text"] if code == 200 else "error %d" % code
        unseeded = [sampled_http() for _ in range(3)]
        check(len(set(unseeded)) > 1, "completions without a seed repeated themselves: %r" % unseeded)
        check(sampled_http(seed=0) == sampled_http(seed=0), "completions with seed 0 differ between runs")
        check(sampled_http(seed=77) == sampled(77), "seed 77: HTTP and gRPC draw differently")
        kq = kreq("def add(a, b):", 32, False)
        t = kq.inputs.add(name="temperature", datatype="FP32", shape=[1])
        t.contents.fp32_contents.append(1.5)
        kq.parameters["seed"].int64_param = 77
        check(kstub.ModelInfer(kq, timeout=60).outputs[0].contents.bytes_contents[0].decode() == sampled(77),
              "seed 77: KServe and gRPC draw differently")
        for extra, word in (({"logit_bias": {"8192": 1}}, b"vocabulary"), ({"presence_penalty": 3}, b"presence_penalty"),
                            ({"logit_bias": {"x": 1}}, b"logit_bias")):
            code, out = srv.http("/v1/completions", json.dumps(dict(prompt="x", **extra)).encode())
            check(code == 400 and word in out, "%r: %d %r" % (extra, code, out))
        invalid, sched = rejections(srv)
        try:
            list(gen.Generate(m.GenerateRequest(prompt="x", logit_bias=[m.LogitBias(token_id=9000, bias=1)]),
                              timeout=10))
            check(False, "Generate accepted a logit_bias token outside the vocabulary")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "'logit_bias' token 9000" in e.details() and
                  "sampling" not in e.details(),
                  "logit_bias outside the vocabulary: %s %s" % (e.code(), e.details()))
        now = rejections(srv)
        check(now == (invalid + 1, sched), "gRPC ids outside the vocabulary counted as invalid: %r -> %r" % (
            (invalid, sched), now))
        body = json.dumps({"messages": [{"role": "user", "content": "write add"}], "max_tokens": 4})
        code, out = srv.http("/v1/chat/completions", body.encode())
        check(code == 200 and json.loads(out)["choices"][0]["message"]["role"] == "assistant", "chat %d" % code)
        code, out = srv.http("/v1/models")
        check(code == 200 and json.loads(out)["data"][0]["id"] == info.name, "models")
        check(srv.http("/health")[0] == 200, "health")

        # Bad input gets errors, and the server keeps serving
        code, out = srv.http("/v1/completions", b"{not json")
        check(code == 400 and b"JSON" in out, "bad JSON: %d %s" % (code, out))
        code, out = srv.http("/v1/completions", json.dumps({"prompt": "x", "max_tokens": -3}).encode())
        check(code == 400 and b"max_tokens" in out, "negative max_tokens: %d %s" % (code, out))
        code, out = srv.http("/v1/completions", json.dumps({"prompt": "x", "temperature": 1e300}).encode())
        check(code == 400 and b"temperature" in out, "huge temperature: %d" % code)
        code, out = srv.http("/v1/completions", json.dumps({"prompt": "def a(b): return b", "max_tokens": 2047}).encode())
        check(code == 400 and b"context" in out, "beyond context: %d %s" % (code, out))
        code, out = srv.http("/v1/completions", b'{"prompt":"' + b"a" * 70000 + b'"}')
        check(code == 413, "oversized body: %d" % code)
        raw = ch.unary_stream("/moeflow.v1.Generation/Generate", request_serializer=None,
                              response_deserializer=None)
        try:
            list(raw(b"\xff\xff\xff\xff", timeout=10))
            check(False, "malformed protobuf accepted")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, "malformed protobuf: %s" % e.code())
        try:
            list(gen.Generate(m.GenerateRequest(prompt="x", temperature=float("nan")), timeout=10))
            check(False, "NaN accepted")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in e.details(),
                  "NaN: %s %s" % (e.code(), e.details()))
        try:
            list(gen.Generate(m.GenerateRequest(prompt="x" * 70000), timeout=10))
            check(False, "oversized message accepted")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "oversized message: %s" % e.code())
        bad = list(kstub.ModelStreamInfer(iter([k.ModelInferRequest(model_name=info.name)]), timeout=10))
        check(len(bad) == 1 and "text_input" in bad[0].error_message, "KServe error response")
        r = health.Check(h.HealthCheckRequest(), timeout=10)
        check(r.status == h.HealthCheckResponse.SERVING, "still serving after bad input")

        # Metrics parse and balance
        time.sleep(0.2)
        ms = srv.metrics()
        acc = metric(ms, "moeflow:requests_accepted_total")
        done = sum(metric(ms, "moeflow:requests_%s_total" % x) for x in ("completed", "cancelled", "failed"))
        check(acc > 0 and acc == done, "accepted %s != completed+cancelled+failed %s" % (acc, done))
        check(metric(ms, "moeflow:time_to_first_token_seconds_count") > 0, "ttft histogram")
        check(metric(ms, "moeflow:request_rejected_total", reason="invalid") >= 4, "rejections counted")
        # front-end traffic: the calls above (several gRPC ones) and the scrapes, each scrape one request more
        check(metric(ms, "moeflow:grpc_calls_total") >= 4 and metric(ms, "moeflow:http_requests_total") >= 1,
              "traffic counters: grpc %s http %s, %s accepted" % (metric(ms, "moeflow:grpc_calls_total"),
                                                                 metric(ms, "moeflow:http_requests_total"), acc))
        http_before = metric(ms, "moeflow:http_requests_total")
        check(metric(srv.metrics(), "moeflow:http_requests_total") == http_before + 1, "a scrape is an HTTP request")
        fin = {r: metric(ms, "moeflow:request_success_total", finished_reason=r) for r in ("length", "stop")}
        # (a stop-sequence end counts as a completed stop, or as length when generation had ended first)
        check(metric(ms, "moeflow:requests_completed_total") == fin["length"] + fin["stop"],
              "completed != length + stop: %s, completed %s" %
              (fin, metric(ms, "moeflow:requests_completed_total")))
        # Idle: no KV slot, cached token, expert pin or transfer held; capacities as ModelInfo says.
        for g in ("moeflow:kv_slots_used", "moeflow:kv_tokens_used", "moeflow:expert_pins",
                  "moeflow:expert_transfers_in_flight"):
            check(metric(ms, g) == 0, "idle server: %s = %s" % (g, metric(ms, g)))
        check(info.kv_slots > 0 and metric(ms, "moeflow:kv_slots") == info.kv_slots and
              metric(ms, "moeflow:expert_cache_slots", tier="device") == info.device_expert_slots and
              metric(ms, "moeflow:expert_cache_slots", tier="host") == info.host_expert_slots and
              (info.device_expert_slots > 0) == tiered,
              "capacities: ModelInfo kv %d device %d host %d, metrics kv %s device %s host %s" % (
                  info.kv_slots, info.device_expert_slots, info.host_expert_slots,
                  metric(ms, "moeflow:kv_slots"), metric(ms, "moeflow:expert_cache_slots", tier="device"),
                  metric(ms, "moeflow:expert_cache_slots", tier="host")))
        if tiered:
            check(metric(ms, "moeflow:expert_cache_tiered") == 1, "tiered cache not reported")
            acq = (metric(ms, "moeflow:expert_cache_hits_total", tier="device") +
                   metric(ms, "moeflow:expert_cache_misses_total", tier="device"))
            check(acq > 0 and metric(ms, "moeflow:expert_cache_bytes_total", tier="device") > 0,
                  "device tier counters: %s" % acq)
    return run_server_test("test_serve_api", srv, check, checks)


if __name__ == "__main__":
    sys.exit(main())
