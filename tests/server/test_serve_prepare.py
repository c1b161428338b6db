"""Integration: a large request is prepared (parsed, tokenized, checked) off its front end's thread, so
the front end serves its other requests meanwhile.  A prompt of 4 MiB, which tokenizes to far more
than max-prompt and is refused after, is sent over HTTP and then over gRPC; once the server has begun
on it (HTTP: /metrics counts the request; gRPC: the debug log names its message), a small streamed
completion on the same front end runs to its end before the large request is answered.  Orderings
only: the large prompt's size makes its tokenizing far longer than the small request.  Then a client
that goes away, or a call cancelled, while its request is prepared, and SIGTERM while one is: the
server stays sound, counts each request once, and exits 0.  Clients that leave while their requests
wait for the preparation threads (held at a gate) have their requests dropped unprepared, each counted
as accepted and cancelled (as a small request's is whose client leaves), so that accepted = completed +
cancelled + failed still adds up and no request goes uncounted.  And a ModelStreamInfer stream's
requests still run in their order when the first is large.
usage: test_serve_prepare.py MOEFLOW_BINARY SOURCE_DIR"""
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import Server, gen_stubs, metric, Checks, kserve_request, require_grpc, run_server_test, scaled  # noqa: E402

grpc = require_grpc()
check = Checks()
BIG = ("def f(x):\n    return x * 2 + 1  # a line of code\n" * 100000)[:4 << 20]
LIMIT = str(8 << 20)


def http_requests(srv):
    return metric(srv.metrics(), "moeflow:http_requests_total")


def rejected(srv):
    return metric(srv.metrics(), "moeflow:request_rejected_total", reason="invalid")


# A request that is large (prepared on the threads) and runs: a short prompt, and 20 KiB of the whitespace
# JSON allows after the body (HTTP) or within the schema (gRPC).
PAD = " " * (20 << 10)
PADDED = {"prompt": "def f():", "max_tokens": 64, "ignore_eos": True}


def send_big_http(srv, body=None):
    """The large completion request (or body) on a socket of its own, sent whole; returns the socket."""
    body = body or json.dumps({"prompt": BIG, "max_tokens": 1}).encode()
    s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=scaled(120))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return s


def wait_begun_http(srv, before):
    """Until /metrics counts the large request (its own reads counted too): the front end has it."""
    polls = 0
    while True:
        polls += 1
        if http_requests(srv) >= before + polls + 1:
            return
        time.sleep(0.002)  # leave the cores to the server


def answered(sock):
    """Whether any byte of the reply has arrived, without waiting."""
    sock.setblocking(False)
    try:
        return len(sock.recv(1, socket.MSG_PEEK)) > 0
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


def read_all(sock):
    sock.settimeout(scaled(120))
    out = b""
    while True:
        b = sock.recv(65536)
        if not b:
            return out
        out += b


def small_stream_http(srv):
    code, out = srv.http("/v1/completions", json.dumps({"prompt": "def f():", "max_tokens": 8, "ignore_eos": True,
                                                         "stream": True}).encode())
    return code == 200 and out.rstrip().endswith(b"data: [DONE]"), out


def messages_logged(srv):
    return len(re.findall(r"grpc: call \S+ message", srv.output()))


def wait_begun_grpc(srv, before):
    while messages_logged(srv) < before + 1:
        time.sleep(0.01)


def http_steps(srv):
    r0 = rejected(srv)
    before = http_requests(srv)
    big = send_big_http(srv)
    wait_begun_http(srv, before)
    ok, out = small_stream_http(srv)
    check(ok, "small stream while a large prompt is prepared: %r" % out[-300:])
    check(not answered(big), "HTTP: the large request was answered before the small stream ended: the front end "
          "tokenized it on its own thread")
    reply = read_all(big)
    big.close()
    check(reply.startswith(b"HTTP/1.1 400") and b"(max-prompt)" in reply, "large prompt's reply: %r" % reply[:400])
    check(rejected(srv) == r0 + 1, "refusals counted %d, want %d" % (rejected(srv), r0 + 1))


def grpc_steps(srv, pb):
    m, mg = pb["m"], pb["mg"]
    r0 = rejected(srv)
    with grpc.insecure_channel(srv.target) as ch:
        gen = mg.GenerationStub(ch)
        n0 = messages_logged(srv)
        big = gen.Generate(m.GenerateRequest(prompt=BIG, max_tokens=1), timeout=scaled(120))
        wait_begun_grpc(srv, n0)
        small = list(gen.Generate(m.GenerateRequest(prompt="def f():", max_tokens=8, ignore_eos=True),
                                  timeout=scaled(60)))
        check(small and small[-1].finished and sum(len(x.token_ids) for x in small) == 8,
              "gRPC small stream while a large prompt is prepared: %s" % small)
        check(not big.done(), "gRPC: the large request was answered before the small stream ended: the front end "
              "tokenized it on its own thread")
        try:
            got = list(big)
            check(False, "large prompt answered %s" % got)
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "(max-prompt)" in e.details(),
                  "large prompt's status: %s %s" % (e.code(), e.details()))
    check(rejected(srv) == r0 + 1, "gRPC refusals counted %d, want %d" % (rejected(srv), r0 + 1))


def stream_order_steps(srv, pb):
    """A ModelStreamInfer stream's requests run in their order, a large one first among them."""
    k, kg = pb["k"], pb["kg"]
    big = k.ModelInferRequest(model_name="pycode-moe-18m", id="big")
    t = big.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(BIG.encode())
    with grpc.insecure_channel(srv.target) as ch:
        resps = list(kg.GRPCInferenceServiceStub(ch).ModelStreamInfer(
            iter([big, kserve_request(k, "small", 4, stream=True)]), timeout=scaled(120)))
    order = [r.infer_response.id for r in resps]
    check(order and order[0] == "big" and order.count("big") == 1 and "(max-prompt)" in resps[0].error_message,
          "the large request's error first: %r %r" % (order, resps[0].error_message[:200] if resps else ""))
    check(order[1:] and all(x == "small" for x in order[1:]) and not any(r.error_message for r in resps[1:]) and
          resps[-1].infer_response.parameters["triton_final_response"].bool_param, "then the small one: %r" % order)


def let_go_steps(srv, pb):
    """A client gone, a call cancelled, while their requests are prepared: nothing is answered to them,
    each is counted once (refused as too long, or cancelled when it had not begun), and the server goes on (a leak or a reply to a freed call
    would show in the sanitizer builds)."""
    m, mg = pb["m"], pb["mg"]
    o0 = outcomes(srv)
    r0, a0, c0 = o0["refused_invalid"], o0["accepted"], o0["cancelled"]
    before = http_requests(srv)
    big = send_big_http(srv)
    wait_begun_http(srv, before)
    big.close()
    with grpc.insecure_channel(srv.target) as ch:
        gen = mg.GenerationStub(ch)
        n0 = messages_logged(srv)
        call = gen.Generate(m.GenerateRequest(prompt=BIG, max_tokens=1), timeout=scaled(120))
        wait_begun_grpc(srv, n0)
        call.cancel()
        small = list(gen.Generate(m.GenerateRequest(prompt="def f():", max_tokens=4, ignore_eos=True),
                                  timeout=scaled(60)))
        check(small and small[-1].finished, "gRPC after a cancelled preparation: %s" % small)
    ok, out = small_stream_http(srv)
    check(ok, "HTTP after a client left during a preparation: %r" % out[-300:])
    for _ in range(int(scaled(600))):
        if metric(srv.metrics(), "moeflow:live_generations") == 0:
            break
        time.sleep(0.05)
    check(metric(srv.metrics(), "moeflow:live_generations") == 0, "generations left alive")
    # refused when a thread took it before its client was seen gone, else dropped unprepared (cancelled)
    o = wait_outcomes(srv, lambda o: o["refused_invalid"] - r0 + o["cancelled"] - c0 >= 2)
    check(o["refused_invalid"] - r0 + o["cancelled"] - c0 == 2 and o["accepted"] - a0 == o["cancelled"] - c0 + 2,
          "the requests let go: %d refused, %d cancelled, want 2 refused or cancelled (%d accepted: the two small "
          "ones after and those cancelled)" % (o["refused_invalid"] - r0, o["cancelled"] - c0, o["accepted"] - a0))


OUTCOMES = ("accepted", "completed", "cancelled", "failed")


def outcomes(srv):
    """The scheduler's outcomes and the refusals, as /metrics counts them."""
    ms = srv.metrics()
    got = {x: metric(ms, "moeflow:requests_%s_total" % x) for x in OUTCOMES}
    got.update({"refused_" + r: metric(ms, "moeflow:request_rejected_total", reason=r)
                for r in ("invalid", "busy", "draining")})
    got["e2e"] = metric(ms, "moeflow:e2e_request_latency_seconds_count")
    got["live"] = metric(ms, "moeflow:live_generations") + metric(ms, "moeflow:num_requests_running") + \
        metric(ms, "moeflow:num_requests_waiting")
    return got


def wait_outcomes(srv, done):
    """outcomes(srv) once done(it) holds; a bound on the wait only, for a server that never counts them."""
    t0 = time.time()
    while True:
        o = outcomes(srv)
        if done(o) or time.time() - t0 > scaled(30):
            return o
        time.sleep(0.05)


def gone(moeflow, pb):
    """Requests whose clients leave while they wait for the preparation threads (held at a gate, every
    request prepared there) are dropped before they are prepared: each counts as one accepted and cancelled,
    none as refused though each would have been (max_tokens over max-output: a completion, a chat, a gRPC
    Generate), and accepted = completed + cancelled + failed still adds up.  A client that stays behind them
    is served."""
    m, mg = pb["m"], pb["mg"]
    gate = os.path.join(tempfile.mkdtemp(prefix="moeflow_gate_"), "gate")
    open(gate, "w").close()
    srv = Server(moeflow, env={"MOEFLOW_LOG": "debug", "MOEFLOW_TEST_PREP_GATE": gate,
                               "MOEFLOW_TEST_PREP_INLINE_BYTES": "0"})
    try:
        o0 = outcomes(srv)
        for body in ({"prompt": "def f():", "max_tokens": 1 << 30},
                     {"messages": [{"role": "user", "content": "Write add."}], "max_tokens": 1 << 30}):
            before = http_requests(srv)
            send_big_http(srv, json.dumps(body).encode()).close()
            wait_begun_http(srv, before)
        # the front end has seen both clients leave: only the /metrics read's own connection is open
        while metric(srv.metrics(), "moeflow:http_connections") > 1:
            time.sleep(0.01)
        with grpc.insecure_channel(srv.target) as ch:
            gen = mg.GenerationStub(ch)
            n0 = messages_logged(srv)
            call = gen.Generate(m.GenerateRequest(prompt="def f():", max_tokens=1 << 30), timeout=scaled(120))
            wait_begun_grpc(srv, n0)
            call.cancel()
            while "ended while its request was prepared or waited to be" not in srv.output():
                time.sleep(0.01)
        before = http_requests(srv)
        stays = send_big_http(srv, json.dumps({"prompt": "def f():", "max_tokens": 4,
                                               "ignore_eos": True}).encode())
        wait_begun_http(srv, before)
        os.unlink(gate)
        reply = read_all(stays)
        stays.close()
        check(reply.startswith(b"HTTP/1.1 200"), "the client that stayed: %r" % reply[:300])
        o = wait_outcomes(srv, lambda o: o["accepted"] >= o0["accepted"] + 4 and o["live"] == 0)
        d = {k: o[k] - o0[k] for k in o}
        check(d["accepted"] == 4 and d["cancelled"] == 3 and d["completed"] == 1 and d["failed"] == 0 and
              d["refused_invalid"] == 0, "requests whose clients left while they waited for the preparation "
              "threads: %s, want 3 accepted and cancelled (none refused) and the one that stayed completed" % d)
        check(o["accepted"] == sum(o[x] for x in OUTCOMES[1:]) and o["e2e"] == o["accepted"],
              "accepted %d != completed + cancelled + failed %d, or end-to-end latencies %d" % (
                  o["accepted"], sum(o[x] for x in OUTCOMES[1:]), o["e2e"]))
        check(srv.stop() == 0, "gated server: exit status")
    finally:
        if os.path.exists(gate):
            os.unlink(gate)
        os.rmdir(os.path.dirname(gate))
        srv.kill()
        if check.failures:
            print(srv.output()[-3000:])


def drain_steps(srv):
    """SIGTERM while a large request is prepared: it is answered (refused: too long, or draining).  Behind
    it, one whose client left and one that would run, whose client left too, are dropped (or prepared, when
    a thread took them before their clients were seen gone) as the threads stop (a leak, or a generation
    submitted for them that outlived the server, would show in the sanitizer builds)."""
    before = http_requests(srv)
    big = send_big_http(srv)
    wait_begun_http(srv, before)
    for body in (None, (json.dumps(PADDED) + PAD).encode()):
        before = http_requests(srv)
        send_big_http(srv, body).close()
        wait_begun_http(srv, before)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("reply", read_all(big)))
    t.start()
    rc = srv.stop()
    t.join()
    big.close()
    reply = got.get("reply", b"")
    check(rc == 0, "exit status after SIGTERM during a preparation %d" % rc)
    check(reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.1 503"),
          "large prompt's reply during the drain: %r" % reply[:300])


def main():
    moeflow, src = sys.argv[1], sys.argv[2]
    pb = gen_stubs(src)
    srv = Server(moeflow, "--max-body-bytes", LIMIT, "--max-message-bytes", LIMIT, env={"MOEFLOW_LOG": "debug"})
    run_server_test("test_serve_prepare", srv, check, http_steps, lambda s: grpc_steps(s, pb),
                    lambda s: stream_order_steps(s, pb), lambda s: let_go_steps(s, pb), drain_steps)
    gone(moeflow, pb)
    print("test_serve_prepare, clients gone before their requests were prepared: %s" %
          ("ok" if not check.failures else "%d failure(s) in all" % check.failures))
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
