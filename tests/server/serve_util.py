"""Helpers for the serving integration tests: free ports, a live `moeflow serve`
on loopback, gRPC stubs generated at test time, curl, Prometheus parsing.

MOEFLOW_TEST_TIME_SCALE (default 1) multiplies the waits a slower server needs longer for (start-up,
client timeouts, deadlines that must let work through): a ThreadSanitizer build (scripts/tsan.sh)
decodes several times slower.  Deadlines a test expects to expire are not scaled."""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import urllib.error

SKIP = 77


def _time_scale():
    v = os.environ.get("MOEFLOW_TEST_TIME_SCALE", "1")
    try:
        f = float(v)
    except ValueError:
        f = 0
    if not 1 <= f <= 1000:
        sys.exit("MOEFLOW_TEST_TIME_SCALE=%r: give a number from 1 to 1000 (how many times slower the "
                 "server under test runs)" % v)
    return f


TIME_SCALE = _time_scale()


def scaled(seconds):
    """seconds times MOEFLOW_TEST_TIME_SCALE: a wait that a slower server (a sanitizer build) needs longer."""
    return seconds * TIME_SCALE


def require_grpc():
    """The grpc module, or exit with the skip status when python3-grpcio is missing."""
    try:
        import grpc
    except ImportError:
        print("skip: python3-grpcio missing")
        sys.exit(SKIP)
    return grpc


class Checks:
    """check(cond, msg): count and print a failure instead of stopping the test."""

    def __init__(self):
        self.failures = 0

    def __call__(self, cond, msg):
        if not cond:
            self.failures += 1
            print("FAIL:", msg)


def run_server_test(name, srv, check, *steps):
    """Run each step(srv) in order, then stop the server with SIGTERM (it must exit 0); on a
    failure print the end of its output.  Prints the verdict; returns the exit status."""
    try:
        for step in steps:
            step(srv)
        rc = srv.stop()
        check(rc == 0, "exit status after SIGTERM %d" % rc)
    finally:
        srv.kill()
        if check.failures:
            print(srv.output()[-4000:])
    print("%s: %s" % (name, "ok" if not check.failures else "%d failure(s)" % check.failures))
    return 1 if check.failures else 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def gen_stubs(src):
    """protoc --python_out + grpc_python_plugin into a temp dir; returns modules."""
    out = tempfile.mkdtemp(prefix="moeflow_pb_")
    protos = [os.path.join(src, "proto", p) for p in ("moeflow.proto", "grpc_service.proto", "health.proto")]
    subprocess.run(["protoc", "-I", os.path.join(src, "proto"), "--python_out=" + out,
                    "--grpc_out=" + out, "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin"] + protos,
                   check=True)
    sys.path.insert(0, out)
    import moeflow_pb2, moeflow_pb2_grpc, grpc_service_pb2, grpc_service_pb2_grpc, health_pb2, health_pb2_grpc
    return dict(m=moeflow_pb2, mg=moeflow_pb2_grpc, k=grpc_service_pb2, kg=grpc_service_pb2_grpc,
                h=health_pb2, hg=health_pb2_grpc)


def kserve_request(k, rid, max_tokens, stream=None):
    """A KServe ModelInferRequest of "def f():" for max_tokens tokens past any end of sequence (stream:
    the stream input, when not None)."""
    req = k.ModelInferRequest(model_name="pycode-moe-18m", id=rid)
    t = req.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"def f():")
    t = req.inputs.add(name="max_tokens", datatype="INT32", shape=[1])
    t.contents.int_contents.append(max_tokens)
    t = req.inputs.add(name="ignore_eos", datatype="BOOL", shape=[1])
    t.contents.bool_contents.append(True)
    if stream is not None:
        t = req.inputs.add(name="stream", datatype="BOOL", shape=[1])
        t.contents.bool_contents.append(stream)
    return req


class Server:
    def __init__(self, moeflow, *extra, ready_timeout=120, nofile=None, env=None):
        # free_port's ports are free when picked, not when the server binds them: a test running beside
        # this one (ctest -j) or an outgoing connection's local port may take one first; the server then
        # exits with "in use", and starts again on other ports
        for _ in range(3):
            if self._start(moeflow, extra, ready_timeout, nofile, env):
                return
        raise RuntimeError("moeflow serve found its ports in use three times:\n%s" % self.output())

    def _start(self, moeflow, extra, ready_timeout, nofile, env):
        """Start the server and wait until /ready; False when it exited because a port was taken."""
        self.grpc_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.grpc_port:
            self.http_port = free_port()
        self.log = tempfile.TemporaryFile()
        args = [moeflow, "serve", "--grpc-port", str(self.grpc_port), "--http-port",
                str(self.http_port), "--warmup-tokens", "1"] + list(extra)
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit,
                                     env=dict(os.environ, **env) if env else None)
        ready_timeout = scaled(ready_timeout)
        t0 = time.time()
        while time.time() - t0 < ready_timeout:
            if self.proc.poll() is not None:
                if "in use" in self.output():
                    return False
                raise RuntimeError("moeflow serve exited %d:\n%s" % (self.proc.returncode, self.output()))
            try:
                if self.http("/ready")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("moeflow serve not ready in %.0fs:\n%s" % (ready_timeout, self.output()))

    @property
    def target(self):
        return "127.0.0.1:%d" % self.grpc_port

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.http_port, path)

    def http(self, path, body=None, headers=None, timeout=30):
        req = urllib.request.Request(self.url(path), data=body, headers=headers or {})
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=scaled(timeout)) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self):
        code, body = self.http("/metrics")
        assert code == 200, code
        return parse_prometheus(body.decode())

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, timeout=60):
        """SIGTERM; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_line = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_prometheus(text):
    """Strict-ish exposition parser: {(name, labels-string): value}; raises on a bad line."""
    out = {}
    types = {}
    for ln in text.splitlines():
        if not ln:
            continue
        if ln.startswith("# HELP "):
            continue
        if ln.startswith("# TYPE "):
            _, _, name, typ = ln.split(" ", 3)
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), ln
            # Prometheus keeps the _total suffix for counters
            assert typ == "counter" or not name.endswith("_total"), "a %s named as a counter: %r" % (typ, ln)
            types[name] = typ
            continue
        assert not ln.startswith("#"), "bad comment line: %r" % ln
        m = _line.match(ln)
        assert m, "bad sample line: %r" % ln
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        base = re.sub(r'_(bucket|sum|count)$', '', name)
        assert name in types or base in types, "sample without TYPE: %r" % ln
        out[(name, labels)] = float(value)
    return out


def post(srv, path, body):
    """(status, parsed JSON reply) of a POST with a JSON body to srv."""
    code, out = srv.http(path, json.dumps(body).encode())
    try:
        return code, json.loads(out)
    except ValueError:
        return code, {"unparsed": out[:300]}


def metric(ms, name, **labels):
    """Sum of the samples of name whose labels include the given ones."""
    total = 0.0
    for (n, lab), v in ms.items():
        if n != name:
            continue
        if all(('%s="%s"' % (k, val)) in lab for k, val in labels.items()):
            total += v
    return total


def rejections(srv):
    """(requests refused as invalid, requests the scheduler refused) as /metrics counts them."""
    ms = srv.metrics()
    return (metric(ms, "moeflow:request_rejected_total", reason="invalid"),
            metric(ms, "moeflow:requests_rejected_total"))


def curl(*args, timeout=60):
    r = subprocess.run(["curl", "-sS", "--max-time", "%g" % scaled(timeout)] + list(args), capture_output=True)
    return r.returncode, r.stdout


def read_reference_greedy(src):
    """p0.input_ids and p0.greedy_ids from the bundled model's reference.safetensors."""
    import struct
    path = os.path.join(src, "models", "pycode-moe-18m", "reference.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        base = 8 + n

        def i64(name):
            t = hdr[name]
            assert t["dtype"] == "I64"
            a, b = t["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            return list(struct.unpack("<%dq" % ((b - a) // 8), raw))
        return i64("p0.input_ids"), i64("p0.greedy_ids")
