"""Integration: a large request is prepared (parsed, tokenized, checked) off its front end's thread, so
the front end serves its other requests meanwhile.  A prompt of 4 MiB, which tokenizes to far more
than max-prompt and is refused after, is sent over HTTP and then over gRPC; once the server has begun
on it (HTTP: /metrics counts the request; gRPC: the debug log names its message), a small streamed
completion on the same front end runs to its end before the large request is answered.  Orderings
only: the large prompt's size makes its tokenizing far longer than the small request.  Then a client
that goes away, or a call cancelled, while its request is prepared, and SIGTERM while one is: the
server stays sound, counts each refusal once, and exits 0.  And a ModelStreamInfer stream's requests
still run in their order when the first is large.
usage: test_serve_prepare.py MOEFLOW_BINARY SOURCE_DIR"""
import json
import os
import re
import socket
import sys
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


def send_big_http(srv):
    """The large completion request on a socket of its own, sent whole; returns the socket."""
    body = json.dumps({"prompt": BIG, "max_tokens": 1}).encode()
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
    and the server goes on (a leak or a reply to a freed call would show in the sanitizer builds)."""
    m, mg = pb["m"], pb["mg"]
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


def drain_steps(srv):
    """SIGTERM while a large request is prepared: it is answered (refused: too long, or draining)."""
    before = http_requests(srv)
    big = send_big_http(srv)
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
    return run_server_test("test_serve_prepare", srv, check, http_steps, lambda s: grpc_steps(s, pb),
                           lambda s: stream_order_steps(s, pb), lambda s: let_go_steps(s, pb), drain_steps)


if __name__ == "__main__":
    sys.exit(main())
