"""Integration, misbehaving clients: each gets a clear answer (or its own back-pressure) and
leaves the server as it was for everyone else.  usage: test_serve_clients.py MOEFLOW_BINARY SOURCE_DIR"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import (Server, gen_stubs, metric, Checks, kserve_request, parse_prometheus,  # noqa: E402
                        require_grpc, run_server_test, scaled)

grpc = require_grpc()
check = Checks()


def settled(srv):
    """Metrics once nothing runs or waits and the accepted count has not moved for a second."""
    last, since = None, time.time()
    while True:
        ms = srv.metrics()
        acc = metric(ms, "moeflow:requests_accepted_total")
        busy = metric(ms, "moeflow:num_requests_running") + metric(ms, "moeflow:num_requests_waiting")
        if acc != last or busy:
            last, since = acc, time.time()
        elif time.time() - since >= 1:
            return ms
        time.sleep(0.05)


def exchange(srv, data, timeout=30):
    """Send raw bytes on a new HTTP connection; everything the server sends until it closes the
    connection, and whether it did close it within timeout seconds."""
    sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=timeout)
    sk.sendall(data)
    out, closed = b"", False
    try:
        while True:
            x = sk.recv(65536)
            if not x:
                closed = True
                break
            out += x
    except socket.timeout:
        pass
    sk.close()
    return out, closed


def http10_keepalive_stream(srv):
    """An HTTP/1.0 keep-alive client asks for a stream: the events come as the body of a reply
    that ends with the connection (not after a "Content-Length: 0" on a connection kept open), however
    its Connection header says keep-alive (libevent takes any that begins so)."""
    body = json.dumps({"prompt": "def f():", "max_tokens": 4, "ignore_eos": True, "stream": True}).encode()
    for conn in (b"keep-alive", b"Keep-Alive", b"keep-alive, x-a"):
        out, closed = exchange(srv, b"POST /v1/completions HTTP/1.0\r\nConnection: %s\r\n" % conn +
                                    b"Content-Length: %d\r\n\r\n" % len(body) + body, timeout=10)
        head, _, events = out.partition(b"\r\n\r\n")
        check(head.startswith(b"HTTP/1.0 200") and b"content-length" not in head.lower() and
              b"keep-alive" not in head.lower() and closed and events.count(b"data: {") == 5 and
              events.endswith(b"data: [DONE]\n\n"),
              "HTTP/1.0 %s stream: closed %s, %r" % (conn, closed, out[:300]))


def read_reply(f):
    """One reply from a file over the socket: status line, headers (lower-case names), body
    (framed by Content-Length; None when the reply has none)."""
    status = f.readline()
    hd = {}
    for ln in iter(f.readline, b"\r\n"):
        name, _, v = ln.decode().partition(":")
        hd[name.strip().lower()] = v.strip()
    n = hd.get("content-length")
    return status, hd, f.read(int(n)) if n is not None else None


def connect_method(srv):
    """CONNECT (no tunnels here) gets a JSON error with its length, and the connection goes on
    to serve the next request."""
    sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
    f = sk.makefile("rb")
    for target in (b"/health", b"127.0.0.1:443"):
        sk.sendall(b"CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        status, hd, body = read_reply(f)
        check(status.split()[1:2] in ([b"404"], [b"405"]) and body is not None and b'"error"' in body,
              "CONNECT %s: %r %r %r" % (target, status, hd, body))
        if body is None:
            sk.close()
            return
    sk.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, hd, body = read_reply(f)
    check(status.startswith(b"HTTP/1.1 200") and body == b"ok\n", "GET after CONNECT: %r %r" % (status, body))
    sk.close()
    # with "Connection: close" the connection ends after the reply (libevent would keep a CONNECT's open
    # until http-read-timeout)
    out, closed = exchange(srv, b"CONNECT /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5)
    check(out.startswith(b"HTTP/1.1 405") and b"connection: close" in out.lower() and closed,
          "CONNECT with Connection: close: closed %s, %r" % (closed, out[:200]))


def status_phrases(srv):
    """Each reply's status line has its code's standard reason phrase (RFC 9110), as clients print it
    ("400 Client Error: Bad Request"), where every error read "Error"."""
    for req, want in ((b"GET /health", b"200 OK"), (b"GET /nope", b"404 Not Found"),
                      (b"GET /v1/completions", b"405 Method Not Allowed"),
                      (b"POST /v1/completions", b"400 Bad Request"),
                      (b"GET /v1/models/nope", b"404 Not Found")):
        out, _ = exchange(srv, req + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        check(out.startswith(b"HTTP/1.1 " + want + b"\r\n"), "%s: %r, want %r" % (req, out[:40], want))


def connection_close_option(srv):
    """A request whose Connection header lists "close" among other options has its connection closed
    after the reply, which says so: the request pipelined after it is not served."""
    for conn in (b"keep-alive, close", b"TE, Close"):
        out, closed = exchange(srv, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: %s\r\n\r\n" % conn +
                               b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        check(out.startswith(b"HTTP/1.1 200") and out.count(b"HTTP/1.1") == 1 and
              b"connection: close" in out.lower() and closed,
              "Connection: %s: closed %s, %r" % (conn, closed, out[:300]))


def absolute_form(srv):
    """A request target in absolute form ("http://host/path", as to a proxy) is served as its path."""
    for target in (b"http://127.0.0.1/health", b"HTTP://x:1/health?a=1"):
        out, closed = exchange(srv, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
        check(out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\nok\n"), "GET %s: %r" % (target, out[:300]))
    out, closed = exchange(srv, b"GET http://x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 404"), "GET http://x: %r" % out[:300])
    # its connection is kept as any other's (libevent takes such a request for a proxy's, and would close
    # the connection after the reply without saying so): the request after it is served too
    out, closed = exchange(srv, b"GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"ok\n") and out.lower().count(b"connection: close") == 1,
          "GET http://x/health kept alive, then /health: %r" % out[:400])


def ambiguous_body(srv):
    """A request whose body length the headers do not settle (Content-Length headers that differ,
    one that is not digits alone, a Transfer-Encoding other than chunked, a header name that is not a
    token) gets a 400 naming why, and the connection closes: the bytes after it, here a request of
    their own, are not served."""
    inner = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    base = metric(srv.metrics(), "moeflow:requests_accepted_total")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    for hd, body, why in (
            (b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(inner), inner, b"Content-Length"),
            (b"Content-Length: %d\r\nContent-Length: 0\r\n" % len(inner), inner, b"Content-Length"),
            (b"Transfer-Encoding: gzip\r\n", inner, b"Transfer-Encoding"),
            (b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", chunked, b"Transfer-Encoding"),
            # a name with whitespace before its colon is another header to libevent (the body read by
            # Content-Length), chunked to a proxy that trims it
            (b"Content-Length: %d\r\nTransfer-Encoding : chunked\r\n" % len(chunked), chunked, b"header name"),
            (b"Content-Length: %d\r\nX-A\t: b\r\n" % len(inner), inner, b"header name"),
            (b"Content-Length: %d\r\n: b\r\n" % len(inner), inner, b"header name"),
            (b"Content-Length: +%d\r\n" % len(inner), inner, b"Content-Length"),
            (b"Content-Length: -0\r\n", inner, b"Content-Length")):
        out, closed = exchange(srv, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + hd + b"\r\n" + body)
        check(out.startswith(b"HTTP/1.1 400") and out.count(b"HTTP/1.1") == 1 and why in out and closed,
              "ambiguous body %r: closed %s, %r" % (hd, closed, out[:400]))
    # Transfer-Encoding on HTTP/1.0 (RFC 9112: the framing is faulty), its connection kept alive
    body = b'{"prompt": "x", "max_tokens": 1}'
    out, closed = exchange(srv, b"POST /v1/completions HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: "
                                b"chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\nGET /health HTTP/1.0\r\n\r\n" % (len(body), body))
    # (and its reply says close alone, not keep-alive beside it)
    check(out.startswith(b"HTTP/1.0 400") and out.count(b"Content-Type") == 1 and b"Transfer-Encoding" in out
          and b"keep-alive" not in out.lower() and closed,
          "HTTP/1.0 chunked body: closed %s, %r" % (closed, out[:400]))
    out, closed = exchange(srv, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    check(out.startswith(b"HTTP/1.1 400") and b"prompt" in out, "repeated equal Content-Length: %r" % out[:300])
    # whitespace before the value may be a tab (RFC 9112's OWS), which libevent leaves on it
    out, closed = exchange(srv, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length:\t2\r\n"
                                b"Connection: close\r\n\r\n{}")
    check(out.startswith(b"HTTP/1.1 400") and b"prompt" in out, "Content-Length after a tab: %r" % out[:300])
    check(metric(srv.metrics(), "moeflow:requests_accepted_total") == base, "an ambiguous request was admitted")


def send_on(sk):
    """Send 1 MiB at a time until the socket fails or 256 MiB went, then close it: (bytes sent, the error
    or None)."""
    sent, err, chunk = 0, None, b"x" * (1 << 20)
    try:
        while sent < (256 << 20):
            sent += sk.send(chunk)
    except OSError as e:
        err = e
    sk.close()
    return sent, err


def body_after_413(srv):
    """A client that goes on sending its body over max-body-bytes after the 413 (a Content-Length of 1 GiB)
    has its connection closed once max-body-bytes more has come (thrown away), where the server read on and
    kept what came (hundreds of MB a second on loopback) until its once-a-second sweep of closed
    connections.  What gets through is that and what the socket buffers take, a few MB."""
    sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=scaled(30))
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
    head = b""
    while b"\r\n\r\n" not in head:
        x = sk.recv(4096)
        if not x:
            break
        head += x
    check(head.startswith(b"HTTP/1.1 413"), "a body over max-body-bytes: %r" % head[:200])
    sent, err = send_on(sk)
    check(isinstance(err, (BrokenPipeError, ConnectionResetError)) and sent < (64 << 20),
          "after the 413 the server read on: %d MB sent, then %r" % (sent >> 20, err))


def sends_during_stream(srv):
    """A client that sends on and on while its streamed reply goes out (and reads none of it) is read only
    as far as one request may need (max-body-bytes and headers): the rest waits in the socket buffers,
    where the server read it all and kept it (hundreds of MB a second) while the reply was pending."""
    body = json.dumps({"prompt": "def f():", "max_tokens": 2000, "ignore_eos": True, "stream": True, "n": 4,
                       "logprobs": 5}).encode()
    sk = socket.socket()
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sk.settimeout(scaled(30))
    sk.connect(("127.0.0.1", srv.http_port))
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    check(sk.recv(12) == b"HTTP/1.1 200", "the stream did not begin")
    sk.settimeout(scaled(2))   # a send that waits this long: the server reads no more
    sent, err = send_on(sk)
    check(isinstance(err, socket.timeout) and sent < (64 << 20),
          "bytes sent during a streamed reply: %d MB, then %r" % (sent >> 20, err))


def host_header(srv):
    """An HTTP/1.1 request without a Host header, and a request of any version with more than one, get a
    400 naming Host, and the connection closes (RFC 9112 3.2): the request after it is not served.  An
    HTTP/1.0 request may leave Host out."""
    nxt = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b'{"prompt": "x", "max_tokens": 1}'
    for req in (b"GET /health HTTP/1.1\r\n\r\n",
                b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
                b"GET /health HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: a\r\nX-A: b\r\nHOST: b\r\n\r\n",
                b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\nHost: b\r\n\r\n"):
        out, closed = exchange(srv, req + nxt)
        check(out.split(b" ", 2)[1:2] == [b"400"] and out.count(b" 200 OK") == 0 and b"Host" in out and closed,
              "Host header missing or repeated, %r: closed %s, %r" % (req[:80], closed, out[:300]))
    out, closed = exchange(srv, b"GET /health HTTP/1.0\r\n\r\n")
    check(out.startswith(b"HTTP/1.0 200") and out.endswith(b"\r\n\r\nok\n"), "HTTP/1.0 without Host: %r" % out[:300])


def chunk_extension(srv):
    """A chunked body whose chunk size has an extension right after its digits ("20;a=b", on the last chunk
    "0;a=b") gets libevent's 413 and the connection closes: libevent 2.1 reads a chunk-size line as hex digits
    followed by nothing or a space, and answers any other before the request reaches the server.  After a
    space ("20 ;a=b", whitespace RFC 9112 allows before the ';') the extension is ignored and the request
    served.  (docs/api.md says so; a libevent that reads extensions would fail the first check.)"""
    body = b'{"prompt": "x", "max_tokens": 1}'
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    for size, last, status in ((b"%x;a=b" % len(body), b"0", b"413"), (b"%x" % len(body), b"0;a=b", b"413"),
                               (b"%x ;a=b" % len(body), b"0 ;a", b"200")):
        out, closed = exchange(srv, head + b"%s\r\n%s\r\n%s\r\n\r\n" % (size, body, last))
        check(out.startswith(b"HTTP/1.1 %s" % status) and closed,
              "chunk sizes %r, %r: closed %s, %r (want %s)" % (size, last, closed, out[:200], status))


def stream_backlog(srv, pb):
    """A ModelStreamInfer client that sends request after request and reads no response: the
    stream stops taking requests once its responses wait unsent (the server does not queue the
    output of every request the client sends), and a client that then reads gets them all."""
    k = pb["k"]
    n_req, n_tok = 200, 20

    def reqs():
        for i in range(n_req):
            yield kserve_request(k, "r%d" % i, n_tok, stream=True)

    base = metric(srv.metrics(), "moeflow:requests_accepted_total")
    # no window growth on the client: what it leaves unread stays within HTTP/2's 64 KiB window
    ch = grpc.insecure_channel(srv.target, options=[("grpc.http2.bdp_probe", 0)])
    it = pb["kg"].GRPCInferenceServiceStub(ch).ModelStreamInfer(reqs(), timeout=120)
    taken = metric(settled(srv), "moeflow:requests_accepted_total") - base
    print("a stream whose client reads nothing took %d of %d requests" % (taken, n_req))
    check(0 < taken < n_req, "a stream whose client reads nothing took %d of %d requests" % (taken, n_req))
    finals = set()
    for r in it:
        check(not r.error_message, "stream response error: %s" % r.error_message)
        if r.infer_response.parameters["triton_final_response"].bool_param:
            finals.add(r.infer_response.id)
    check(len(finals) == n_req, "after reading: final responses for %d requests of %d" % (len(finals), n_req))
    ch.close()


def unknown_method(srv, pb):
    """A call to a method not served here gets UNIMPLEMENTED naming it at once, whatever its client does:
    sends a request message, half-closes without one (where that got INVALID_ARGUMENT 'no request
    message'), or waits for the server before sending anything (where that waited for its deadline).  A
    method served here that gets no message is still INVALID_ARGUMENT."""
    import threading
    ch = grpc.insecure_channel(srv.target)
    for method in ("/moeflow.v1.Generation/Nope", "/no.such.Service/Call"):
        for what in ("a message", "no message", "nothing yet"):
            sent = threading.Event()  # "nothing yet": the client sends only after the server answered

            def reqs():
                if what == "a message":
                    yield b"\x0a\x01x"
                elif what == "nothing yet":
                    sent.wait(scaled(30))
            call = ch.stream_stream(method, request_serializer=None, response_deserializer=None)
            try:
                got = list(call(reqs(), timeout=scaled(10)))
                check(False, "%s with %s answered %r" % (method, what, got))
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNIMPLEMENTED and method in e.details(),
                      "%s with %s: %s %s" % (method, what, e.code(), e.details()))
            sent.set()
    tok = ch.stream_unary("/moeflow.v1.Generation/Tokenize", request_serializer=None, response_deserializer=None)
    try:
        tok(iter([]), timeout=scaled(10))
        check(False, "Tokenize without a message answered")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "no request message" in e.details(),
              "Tokenize without a message: %s %s" % (e.code(), e.details()))
    ch.close()


def n_choices_gone(srv):
    """A client of an n = 3 stream that leaves mid-stream, and an n = 2 request whose deadline passes:
    every choice's generation ends (no_generation_left, after, sees none left), the deadline once as 504."""
    body = json.dumps({"prompt": "def add(a, b):", "max_tokens": 2000, "n": 3, "stream": True,
                       "ignore_eos": True}).encode()
    sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    got = b""
    while got.count(b"data: ") < 10:
        got += sk.recv(65536)
    sk.close()
    code, out = srv.http("/v1/completions", json.dumps({"prompt": "def add(a, b):", "max_tokens": 2000, "n": 2,
                                                        "ignore_eos": True, "timeout": 0.3}).encode())
    check(code == 504 and out.count(b"error") == 1, "n = 2 past its deadline: %d %r" % (code, out[:300]))


def gone_after_pipelined(srv):
    """A client of a non-streamed request that sent more after it (the CRLF some clients put after a
    body, a pipelined request) and left: its request is cancelled at once, as one that sent nothing
    more is, not generated to its end for no one."""
    body = json.dumps({"prompt": "def add(a, b):", "max_tokens": 2000, "ignore_eos": True}).encode()
    for after in (b"\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"):
        base = metric(settled(srv), "moeflow:requests_cancelled_total")
        sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
        sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
        # the rest once the request runs: the server has read the request and reads no further
        t0 = time.time()
        while not metric(srv.metrics(), "moeflow:num_requests_running") and time.time() - t0 < scaled(30):
            time.sleep(0.01)
        sk.sendall(after)
        sk.close()
        got = metric(settled(srv), "moeflow:requests_cancelled_total") - base
        check(got == 1, "a client gone after sending %r: %d requests cancelled" % (after[:20], got))


def connections_gauge(srv):
    """moeflow:http_connections counts the connections open when /metrics is read: those closed since are
    not counted, however recently they closed."""
    for rnd in range(3):
        socks = [socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) for _ in range(20)]
        for sk in socks:
            sk.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        for sk in socks:
            sk.recv(1000)
        opened = metric(srv.metrics(), "moeflow:http_connections")
        for sk in socks:
            sk.close()
        time.sleep(0.1)  # the server reads the closes
        closed = metric(srv.metrics(), "moeflow:http_connections")
        check(opened >= 21 and opened - closed >= 20,
              "round %d: http_connections %s with 20 more open, %s once they closed" % (rnd, opened, closed))


def connection_limits(moeflow):
    """max-http-connections and http-read-timeout, each on a server of its own with a small value, the other
    far off, so that no check depends on how fast the test runs: one connection beyond the cap is answered
    503 and closed, whatever the others do (silent, a header cut short, idle after a reply); connections
    that do not send a whole request in time (silent, a header cut short or trickling, idle after a reply)
    are closed, those that began a request (cut short, trickling) answered 408 with an OpenAI-shaped error
    first; a stream that outlasts the timeout is not cut; the server serves again once they are gone, and
    counts what it closed."""
    def conn(srv):
        return socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)

    def drained(sk):
        """Everything until the server closes the connection (30 s at most)."""
        out = b""
        try:
            while True:
                x = sk.recv(65536)
                if not x:
                    return out, True
                out += x
        except socket.timeout:
            return out, False
        except ConnectionResetError:
            return out, True

    def let_go(socks):
        """The connections ended by the client and gone from the server's count, so that the next ones (and
        a /metrics call) are counted from none open: the server closes a connection's socket (the end the
        client waits for here) only once it no longer counts it.  One the server shut down itself (beyond
        the cap) it let go of before those the client ends after seeing that."""
        for sk in socks:
            try:
                sk.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            check(drained(sk)[1], "a connection its client ended was not closed")
            sk.close()

    def one_reply(sk):
        """One whole reply with a Content-Length read from sk."""
        got = b""
        while b"\r\n\r\n" not in got or len(got.partition(b"\r\n\r\n")[2]) < int(
                re.search(rb"(?i)content-length: *(\d+)", got.partition(b"\r\n\r\n")[0]).group(1)):
            x = sk.recv(65536)
            if not x:
                break
            got += x
        return got
    srv = Server(moeflow, "--max-http-connections", "4", "--http-read-timeout", "3600")
    try:
        # a connection beyond the cap that sends its request at once is answered once and counted once,
        # whether the sweep or the request comes first.  The sweep comes first when the connection is
        # accepted after its request arrived, as when the HTTP thread is busy reading a long request of the
        # fourth connection (sent a moment before, 0.03 s: the outcome is the same either way)
        limit = lambda: metric(srv.metrics(), "moeflow:http_connections_closed_total", reason="limit")
        big = json.dumps({"prompt": "def add(a, b):\n    return a + b\n" * 30000}).encode()
        before_all = limit()
        for wait in (0, 0.03, 0.03):
            before = limit()
            idle = [conn(srv) for _ in range(4)]
            if wait:
                idle[3].sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\n\r\n" % len(big) + big)
                time.sleep(wait)
            sk = conn(srv)
            sk.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            out, closed = drained(sk)
            let_go([sk] + idle)
            after = limit()
            check(closed and out.startswith(b"HTTP/1.1 503 ") and b"max-http-connections" in out and
                  after - before == 1,
                  "a request beyond the cap at once (after %g s): limit closes counted %d, %r (closed %s)" % (
                      wait, after - before, out[:200], closed))
        # the cap counts connections whatever they are doing: a header cut short, idle after a reply
        idle = [conn(srv) for _ in range(4)]
        idle[1].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")  # headers cut short
        idle[2].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")                # a reply, then idle
        got = one_reply(idle[2])
        extra = conn(srv)
        out, closed = drained(extra)
        check(closed and out.startswith(b"HTTP/1.1 503 ") and b"max-http-connections" in out,
              "a connection beyond the cap: %r (closed %s)" % (out[:200], closed))
        check(got.startswith(b"HTTP/1.1 200 "), "a reply within the cap: %r" % got[:200])
        let_go([extra] + idle)
        code, _ = srv.http("/health")
        check(code == 200 and limit() - before_all == 4,
              "after the cap: /health %d, limit closes counted %d for 4" % (code, limit() - before_all))
        check(srv.stop() == 0, "connection cap server: exit status")
    finally:
        srv.kill()
    srv = Server(moeflow, "--http-read-timeout", "0.5")
    try:
        idle = [conn(srv) for _ in range(4)]
        idle[1].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")  # headers cut short
        idle[2].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")                # a reply, then idle
        for i, sk in enumerate(idle):
            out, closed = drained(sk)
            check(closed, "connection %d not closed after http-read-timeout: %r" % (i, out[:100]))
            if i == 1:  # a request begun and not whole in time: 408 with an OpenAI-shaped error
                head, _, js = out.partition(b"\r\n\r\n")
                try:
                    err = json.loads(js)["error"]
                except (ValueError, KeyError, TypeError):
                    err = {}
                check(head.startswith(b"HTTP/1.1 408 ") and err.get("code") == 408 and
                      "http-read-timeout" in err.get("message", ""), "a header cut short: %r" % out[:300])
            else:  # silent, or idle after its reply: closed without another
                check(out.count(b"HTTP/1.1 ") == (i == 2) and (i != 2 or out.startswith(b"HTTP/1.1 200 ")),
                      "connection %d: %r" % (i, out[:300]))
            sk.close()
        # a header sent a byte at a time, each within libevent's own timeout, is closed all the same
        sk, sent, t0 = conn(srv), 0, time.time()
        sk.settimeout(0.1)
        header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        closed, got = False, b""
        while not closed and time.time() - t0 < 30:
            try:
                if not got:  # once the reply began, only read (a byte sent after it could reset the connection)
                    sk.sendall(header[sent % len(header):sent % len(header) + 1])
                    sent += 1
                x = sk.recv(1000)
                got += x
                closed = x == b""
            except socket.timeout:
                pass
            except OSError:
                closed = True
        check(closed, "a header trickling a byte per 0.1 s kept its connection for %.0f s" % (time.time() - t0))
        check(got.startswith(b"HTTP/1.1 408 ") and b'"code":408' in got, "the trickled header's reply: %r" % got[:300])
        # a stream of several seconds on a 0.5 s read timeout runs to its end
        body = json.dumps({"prompt": "def add(a, b):", "max_tokens": 2000, "stream": True, "ignore_eos": True,
                           "temperature": 0}).encode()
        sk = conn(srv)
        t0 = time.time()
        sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        out, closed = drained(sk)
        check(closed and out.count(b"data: ") == 2002 and out.rstrip().endswith(b"0"),
              "a stream was cut: %d events in %.1f s" % (out.count(b"data: "), time.time() - t0))
        code, _ = srv.http("/health")
        ms = srv.metrics()
        check(code == 200 and metric(ms, "moeflow:http_connections_closed_total", reason="read_timeout") >= 5,
              "after the read timeouts: %d, closed %r" % (code, metric(ms, "moeflow:http_connections_closed_total",
                                                                       reason="read_timeout")))
        check(srv.stop() == 0, "read timeout server: exit status")
    finally:
        srv.kill()


def read_timeout_after_burst(moeflow):
    """A burst of connections beyond max-http-connections (each answered 503) leaves http-read-timeout as it
    was: an idle connection opened after the burst is closed at its timeout, with no new connection to
    set the check off.  Each connection beyond the cap had pushed the periodic check a second later, so
    after 1000 of them an idle connection was kept for about 1000 s."""
    srv = Server(moeflow, "--max-http-connections", "2", "--http-read-timeout", "1")
    try:
        def until_closed(sk, limit):
            """What the server sent until it closed sk, and whether it did within limit seconds."""
            out, t0 = b"", time.time()
            while time.time() - t0 < limit:
                try:
                    x = sk.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return out, True
                if not x:
                    return out, True
                out += x
            return out, False
        before = metric(srv.metrics(), "moeflow:http_connections_closed_total", reason="read_timeout")
        full = [socket.create_connection(("127.0.0.1", srv.http_port), timeout=30) for _ in range(2)]
        refused = 0
        for _ in range(1000):
            sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
            out, _ = until_closed(sk, 30)
            sk.close()
            refused += out.startswith(b"HTTP/1.1 503 ")
        for sk in full:
            sk.close()
        # an idle connection within the cap (one opened before the server saw those two close is answered
        # 503 at once: another is opened), then nothing: it must be closed, with nothing sent
        for _ in range(100):
            sk = socket.create_connection(("127.0.0.1", srv.http_port), timeout=1)
            out, closed = until_closed(sk, 60)  # closed after a second or two; 60 s is generous
            sk.close()
            if not out.startswith(b"HTTP/1.1 503 "):
                break
            time.sleep(0.1)
        check(refused >= 900, "of 1000 connections beyond the cap of 2, %d were answered 503" % refused)
        check(closed and out == b"", "an idle connection opened after %d connections beyond the cap was %s (%r)" % (
              refused, "closed" if closed else "still open after 60 s", out[:100]))
        for _ in range(100):
            code, body = srv.http("/metrics")
            if code == 200:
                break
            time.sleep(0.1)
        after = metric(parse_prometheus(body.decode()), "moeflow:http_connections_closed_total", reason="read_timeout")
        check(after > before, "read_timeout closes %s -> %s" % (before, after))
        check(srv.stop() == 0, "read timeout after a burst server: exit status")
    finally:
        srv.kill()


def grpc_stream_cap(moeflow, pb):
    """grpc-max-streams: one connection's calls beyond the cap wait for one to end (HTTP/2 flow
    control, not an error): with a cap of 2, three long streams on one channel all finish, and the
    server never holds more than two of them at once."""
    import threading
    srv = Server(moeflow, "--grpc-max-streams", "2")
    try:
        ch = grpc.insecure_channel(srv.target)
        gen = pb["mg"].GenerationStub(ch)
        counts, errors = [], []

        def call():
            try:
                n = sum(len(x.token_ids) for x in gen.Generate(pb["m"].GenerateRequest(
                    prompt="def add(a, b):", max_tokens=600, ignore_eos=True), timeout=120))
                counts.append(n)
            except grpc.RpcError as e:
                errors.append(e.code())
        ths = [threading.Thread(target=call) for _ in range(3)]
        for t in ths:
            t.start()
        most = 0
        while any(t.is_alive() for t in ths):
            ms = srv.metrics()
            most = max(most, metric(ms, "moeflow:num_requests_running") + metric(ms, "moeflow:num_requests_waiting"))
            time.sleep(0.02)
        for t in ths:
            t.join()
        check(not errors and counts == [600] * 3 and 1 <= most <= 2,
              "three streams under a cap of two: %r, errors %r, at most %d held at once" % (counts, errors, most))
        ch.close()
        check(srv.stop() == 0, "stream cap server: exit status")
    finally:
        srv.kill()


def cancelled_before_read(srv, pb):
    """Calls cancelled by their client, or past their deadline, about when they arrive, before the server has
    read their message (gRPC core then fails the server's receive of it, as it fails the receive of a message
    over max-message-bytes), were not refused: none counts in request_rejected_total, where such a failed
    receive counted as invalid (some 30 of 200 Tokenize calls given up to 3 ms, and of 200 ModelInfer calls
    cancelled within 5 ms)."""
    import random
    import threading
    m, k = pb["m"], pb["k"]
    ch = grpc.insecure_channel(srv.target)
    gen, ks = pb["mg"].GenerationStub(ch), pb["kg"].GRPCInferenceServiceStub(ch)
    before = metric(settled(srv), "moeflow:request_rejected_total")
    rnd = random.Random(7)
    waits = [rnd.random() for _ in range(400)]

    def call(i):
        try:
            if i % 2:
                gen.Tokenize(m.TokenizeRequest(text="def f(): pass"), timeout=waits[i] * 0.003)
            else:
                f = ks.ModelInfer.future(kserve_request(k, "c%d" % i, 20), timeout=scaled(30))
                time.sleep(waits[i] * 0.005)
                f.cancel()
        except grpc.RpcError:
            pass
    for at in range(0, len(waits), 40):
        ths = [threading.Thread(target=call, args=(i,)) for i in range(at, at + 40)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
    refused = metric(settled(srv), "moeflow:request_rejected_total") - before
    check(refused == 0, "400 calls cancelled or past their deadline as they arrived counted %s refused" % refused)
    ch.close()


def reply_too_big(moeflow, pb):
    """A KServe reply over max-message-bytes (a server of its own with the least, 256 bytes): ModelInfer
    ends with RESOURCE_EXHAUSTED naming the limit, a ModelStreamInfer request gets an error response and
    its stream serves the next request; both count as failed in /metrics, not as completed, and the
    counters balance.  A Tokenize reply over it ends with RESOURCE_EXHAUSTED naming its size and the limit,
    counted as refused (invalid: the text is too long for the reply), and the next one that fits is
    served."""
    k = pb["k"]
    srv = Server(moeflow, "--max-message-bytes", "256")
    try:
        ch = grpc.insecure_channel(srv.target)
        ks = pb["kg"].GRPCInferenceServiceStub(ch)
        m0 = settled(srv)
        try:
            ks.ModelInfer(kserve_request(k, "big", 300), timeout=60)
            check(False, "a ModelInfer reply over max-message-bytes went out")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max-message-bytes" in e.details(),
                  "ModelInfer reply over max-message-bytes: %s %s" % (e.code(), e.details()))
        resps = list(ks.ModelStreamInfer(iter([kserve_request(k, "big", 300), kserve_request(k, "small", 2)]),
                                         timeout=60))
        errs = {r.infer_response.id: r.error_message for r in resps}
        check(set(errs) == {"big", "small"} and "max-message-bytes" in errs["big"] and not errs["small"],
              "ModelStreamInfer over max-message-bytes, then a small request: %r" % errs)
        ms = settled(srv)

        def delta(name, **labels):
            return metric(ms, name, **labels) - metric(m0, name, **labels)
        got = {x: delta("moeflow:requests_%s_total" % x) for x in ("accepted", "completed", "cancelled", "failed")}
        check(got == {"accepted": 3, "completed": 1, "cancelled": 0, "failed": 2},
              "two replies over max-message-bytes and one that fits, counted %r" % got)
        check(delta("moeflow:request_success_total", finished_reason="error") == 2 and
              delta("moeflow:request_success_total", finished_reason="length") == 1,
              "finish reasons of the replies over max-message-bytes: error %s, length %s" % (
                  delta("moeflow:request_success_total", finished_reason="error"),
                  delta("moeflow:request_success_total", finished_reason="length")))
        # a Tokenize reply over the limit: each of 80 CJK characters is 3 byte tokens of 2-byte ids
        gen = pb["mg"].GenerationStub(ch)
        big = pb["m"].TokenizeRequest(text="\u4e2d" * 80)
        check(big.ByteSize() <= 256, "the Tokenize request is %d bytes, over the limit" % big.ByteSize())
        try:
            gen.Tokenize(big, timeout=60)
            check(False, "a Tokenize reply over max-message-bytes went out")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max-message-bytes (256)" in e.details() and
                  "token ids" in e.details(),
                  "Tokenize reply over max-message-bytes: %s %s" % (e.code(), e.details()))
        small = gen.Tokenize(pb["m"].TokenizeRequest(text="def f():"), timeout=60)
        ms2 = settled(srv)
        refused = {r: metric(ms2, "moeflow:request_rejected_total", reason=r) -
                   metric(ms, "moeflow:request_rejected_total", reason=r) for r in ("invalid", "memory")}
        check(len(small.token_ids) > 0 and refused == {"invalid": 1, "memory": 0},
              "a Tokenize reply over max-message-bytes, then one that fits: %d ids, counted %s" % (
                  len(small.token_ids), refused))
        # an error response that would itself be over the limit (a long id, a refusal that names the
        # request's unknown input): the request still gets its answer, the message cut to fit
        bad = kserve_request(k, "e" * 80, 2)
        t = bad.inputs.add(name="x" * 40, datatype="INT32", shape=[1])
        t.contents.int_contents.append(1)
        check(bad.ByteSize() <= 256, "the refused request is %d bytes, over the limit" % bad.ByteSize())
        resps = list(ks.ModelStreamInfer(iter([bad, kserve_request(k, "small", 2)]), timeout=60))
        errs = {r.infer_response.id: r.error_message for r in resps}
        cut = [r for r in resps if r.infer_response.id == bad.id]
        check(set(errs) == {bad.id, "small"} and errs[bad.id].startswith("unknown input 'xxx") and
              not errs["small"] and cut[0].ByteSize() <= 256,
              "ModelStreamInfer error response over max-message-bytes, then a small request: %r" % errs)
        ch.close()
        check(srv.stop() == 0, "max-message-bytes server: exit status")
    finally:
        srv.kill()


def metadata_too_big(moeflow, pb):
    """A ModelMetadata reply over max-message-bytes (a long --model-name, the least limit): the call ends
    with the server's RESOURCE_EXHAUSTED naming the reply's size and the limit, not gRPC core's words,
    and the server answers the next call."""
    k = pb["k"]
    name = "m" * 100
    srv = Server(moeflow, "--max-message-bytes", "256", "--model-name", name)
    try:
        ch = grpc.insecure_channel(srv.target)
        ks = pb["kg"].GRPCInferenceServiceStub(ch)
        try:
            ks.ModelMetadata(k.ModelMetadataRequest(name=name), timeout=30)
            check(False, "a ModelMetadata reply over max-message-bytes went out")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and
                  "bytes exceeds max-message-bytes (256)" in (e.details() or ""),
                  "ModelMetadata reply over max-message-bytes: %s %s" % (e.code(), e.details()))
        check(ks.ModelReady(k.ModelReadyRequest(name=name), timeout=30).ready, "ModelReady after it")
        ch.close()
        check(srv.stop() == 0, "max-message-bytes server (long name): exit status")
    finally:
        srv.kill()


def refused_too_large(moeflow, pb):
    """An HTTP body over max-body-bytes (libevent's 413, given before the request reaches the server) counts
    in request_rejected_total as invalid, as other requests refused before admission do; a gRPC request
    message over max-message-bytes gets the library's RESOURCE_EXHAUSTED and is not counted (the library
    fails the server's receive of it as it fails that of a call cancelled before its message was read:
    cancelled_before_read); so is one just over it, 257 bytes, sent as it is or gzip-compressed to far less
    (the library checks the message's size once decompressed too), while one of 256 bytes is served.  A
    server of its own with the least of both, 256 bytes; nothing of them is admitted, and requests that fit
    count nothing."""
    k = pb["k"]
    srv = Server(moeflow, "--max-body-bytes", "256", "--max-message-bytes", "256")
    try:
        m0 = settled(srv)
        body = json.dumps({"prompt": "x" * 300, "max_tokens": 1}).encode()
        head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
        for what, req in (
                ("Content-Length", head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)),
                ("chunked", head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)),
                # after a request served on the same connection
                ("after a reply", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + head +
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))):
            out, closed = exchange(srv, req)
            check(out.count(b"HTTP/1.1 413") == 1 and out.count(b"HTTP/1.1") == (2 if what == "after a reply" else 1)
                  and closed, "a body over max-body-bytes (%s): closed %s, %r" % (what, closed, out[:300]))
        ch = grpc.insecure_channel(srv.target)
        ks = pb["kg"].GRPCInferenceServiceStub(ch)
        codes = []
        big = kserve_request(k, "x" * 300, 2)
        gen = pb["mg"].GenerationStub(ch)
        fits, over = pb["m"].TokenizeRequest(text="a" * 253), pb["m"].TokenizeRequest(text="a" * 254)
        check((fits.ByteSize(), over.ByteSize()) == (256, 257), "Tokenize messages of %d and %d bytes" % (
            fits.ByteSize(), over.ByteSize()))
        gz = grpc.Compression.Gzip
        for call in (lambda: ks.ModelInfer(big, timeout=scaled(60)),
                     lambda: list(ks.ModelStreamInfer(iter([kserve_request(k, "a", 2), big]), timeout=scaled(60))),
                     lambda: gen.Tokenize(over, timeout=scaled(60)),
                     lambda: gen.Tokenize(over, timeout=scaled(60), compression=gz)):
            try:
                call()
                codes.append(None)
            except grpc.RpcError as e:
                codes.append((e.code(), "larger than max" in e.details()))
        check(codes == [(grpc.StatusCode.RESOURCE_EXHAUSTED, True)] * 4, "gRPC messages over max-message-bytes: %r" % codes)
        for comp in (None, gz):
            check(len(gen.Tokenize(fits, timeout=scaled(60), compression=comp).token_ids) > 0,
                  "a Tokenize message of 256 bytes (compression %s) was not served" % comp)
        # what fits, and a call cancelled before its message, count nothing
        code, _ = srv.http("/v1/completions", json.dumps({"prompt": "x", "max_tokens": 1}).encode())
        ks.ModelInfer(kserve_request(k, "b", 1), timeout=scaled(60))
        check(code == 200, "a request that fits: %s" % code)
        import threading
        gone = threading.Event()

        def nothing():
            gone.wait(scaled(60))
            yield from ()
        it = ks.ModelStreamInfer(nothing(), timeout=scaled(60))
        time.sleep(0.5)
        it.cancel()
        gone.set()
        ms = settled(srv)
        refused = metric(ms, "moeflow:request_rejected_total", reason="invalid") - \
            metric(m0, "moeflow:request_rejected_total", reason="invalid")
        check(refused == 3, "3 HTTP bodies and 4 gRPC messages over the limits counted %s refused (want 3)" % refused)
        check(metric(ms, "moeflow:requests_accepted_total") - metric(m0, "moeflow:requests_accepted_total") == 3,
              "a request over the limits was admitted")
        ch.close()
        check(srv.stop() == 0, "max-body-bytes server: exit status")
    finally:
        srv.kill()


def stream_reply_unsendable(moeflow, pb):
    """A ModelStreamInfer request whose reply cannot go out even as an error response (a server of its own
    with max-message-bytes 256 and a 100-byte model name; the request's id is 120 bytes): the stream ends with
    RESOURCE_EXHAUSTED saying to raise max-message-bytes, after the responses it had queued; its other request
    still running is cancelled and a request sent after is not read, where the stream went on generating and
    reading requests with their responses dropped, and counted them completed."""
    import threading
    k = pb["k"]
    name = "m" * 100
    srv = Server(moeflow, "--max-message-bytes", "256", "--model-name", name)
    try:
        def req(rid, n, stream):
            q = kserve_request(k, rid, n, stream=stream)
            q.model_name = name
            return q
        # one final response; the request holds its text_input alone (default-max-tokens tokens), which its
        # error response outgrows (the model version and the final flag)
        big = k.ModelInferRequest(model_name=name, id="a" * 120)
        t = big.inputs.add(name="text_input", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(b"x")
        err = k.ModelStreamInferResponse(infer_response=k.ModelInferResponse(model_name=name, model_version="1",
                                                                             id=big.id))
        err.infer_response.parameters["triton_final_response"].bool_param = True
        check(big.ByteSize() <= 256 < err.ByteSize(), "the request is %d bytes and its error response without a "
              "message %d: want the first within max-message-bytes (256), the second over it" % (
                  big.ByteSize(), err.ByteSize()))
        m0 = settled(srv)

        def delta(ms, name):
            return metric(ms, name) - metric(m0, name)

        def failed():
            return delta(srv.metrics(), "moeflow:requests_failed_total")

        def wait_failed():
            t0 = time.time()
            while failed() < 1 and time.time() - t0 < scaled(120):
                time.sleep(0.05)
        later = threading.Event()

        def reqs():
            yield req("b", 1900, True)  # many responses, which the client leaves unread for now
            yield big
            wait_failed()
            yield req("c", 4, True)  # sent once the stream could not answer big
            later.wait(scaled(120))
        # no window growth on the client: what it leaves unread stays queued on the server
        ch = grpc.insecure_channel(srv.target, options=[("grpc.http2.bdp_probe", 0)])
        it = pb["kg"].GRPCInferenceServiceStub(ch).ModelStreamInfer(reqs(), timeout=scaled(120))
        wait_failed()
        ms = settled(srv)
        resps, code, details = [], None, ""
        try:
            for r in it:
                resps.append(r)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        later.set()
        check(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max-message-bytes" in details and "raise" in details,
              "a stream whose reply cannot go out ended with %s %r" % (code, details))
        check(all(r.infer_response.id == "b" and not r.error_message and
                  not r.infer_response.parameters["triton_final_response"].bool_param for r in resps),
              "responses before the stream ended: %r" % sorted({(r.infer_response.id, r.error_message)
                                                                for r in resps}))
        got = {x: delta(ms, "moeflow:requests_%s_total" % x) for x in ("accepted", "completed", "cancelled", "failed")}
        check(got == {"accepted": 2, "completed": 0, "cancelled": 1, "failed": 1},
              "a stream ended by a reply it cannot send, its requests counted %r (want the one running cancelled, "
              "the one sent after not read)" % got)
        ch.close()
        check(srv.stop() == 0, "unsendable reply server: exit status")
    finally:
        srv.kill()


def health_watch(moeflow, pb):
    """grpc.health.v1.Health/Watch (a server of its own): SERVING at once, NOT_SERVING when SIGTERM starts the
    drain, and the call ends (OK) with the server's stop; a service not served here gets SERVICE_UNKNOWN,
    streamed, and its call stays open until then too (Check answers it NOT_FOUND)."""
    import threading
    h = pb["h"]
    S, NS, SU = (h.HealthCheckResponse.SERVING, h.HealthCheckResponse.NOT_SERVING,
                 h.HealthCheckResponse.SERVICE_UNKNOWN)
    srv = Server(moeflow)
    try:
        ch = grpc.insecure_channel(srv.target)
        hs = pb["hg"].HealthStub(ch)
        seen = {"": [], "inference.GRPCInferenceService": [], "nope": []}
        ends = {}

        def watch(svc):
            try:
                for r in hs.Watch(h.HealthCheckRequest(service=svc), timeout=scaled(120)):
                    seen[svc].append(r.status)
                ends[svc] = "OK"
            except grpc.RpcError as e:
                ends[svc] = "%s %s" % (e.code(), e.details())
        ths = [threading.Thread(target=watch, args=(svc,)) for svc in seen]
        for t in ths:
            t.start()
        t0 = time.time()
        while not all(seen.values()) and not ends and time.time() - t0 < scaled(30):
            time.sleep(0.02)
        time.sleep(0.3)  # a status sent twice would show by now
        first = {svc: list(v) for svc, v in seen.items()}
        check(first == {"": [S], "inference.GRPCInferenceService": [S], "nope": [SU]} and not ends,
              "Watch while ready: %r, ended %r" % (first, ends))
        try:
            hs.Check(h.HealthCheckRequest(service="nope"), timeout=scaled(10))
            check(False, "Check of a service not served here answered")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, "Check of a service not served here: %s" % e.code())
        rc = srv.stop()
        for t in ths:
            t.join(scaled(30))
        check(seen == {"": [S, NS], "inference.GRPCInferenceService": [S, NS], "nope": [SU]} and
              ends == {svc: "OK" for svc in seen}, "Watch across SIGTERM: %r, ended %r" % (seen, ends))
        check(rc == 0, "health Watch server: exit status %d" % rc)
        ch.close()
    finally:
        srv.kill()


def drain_idle_stream(moeflow, pb):
    """SIGTERM while a ModelStreamInfer stream waits between requests: once the drain ends the stream
    ends with UNAVAILABLE saying the server drains, where gRPC core's "Cancelling all calls" ended it."""
    import threading
    k = pb["k"]
    srv = Server(moeflow)
    try:
        ch = grpc.insecure_channel(srv.target)
        done = threading.Event()

        def requests():
            yield kserve_request(k, "one", 2)
            done.wait(scaled(60))  # the stream stays open with nothing more to ask
        it = pb["kg"].GRPCInferenceServiceStub(ch).ModelStreamInfer(requests(), timeout=scaled(60))
        got, err = [], None
        try:
            for r in it:
                got.append(r)
                if r.infer_response.parameters["triton_final_response"].bool_param:
                    srv.proc.send_signal(signal.SIGTERM)
        except grpc.RpcError as e:
            err = (e.code(), e.details())
        done.set()
        check(len(got) >= 1 and not got[0].error_message and err is not None and
              err[0] == grpc.StatusCode.UNAVAILABLE and "draining" in (err[1] or ""),
              "an idle ModelStreamInfer stream at SIGTERM: %d responses, ended %r" % (len(got), err))
        ch.close()
        check(srv.stop() == 0, "idle stream drain server: exit status")
    finally:
        srv.kill()


def read_to_end(it, toks):
    """The rest of the Generate stream it, its token ids added to toks: (its finished message, the error
    that ended it as "CODE details"), None where there is none."""
    final, err = None, None
    try:
        for x in it:
            toks += list(x.token_ids)
            if x.finished:
                final = x
    except grpc.RpcError as e:
        err = "%s %s" % (e.code(), e.details())
    return final, err


def drain_sighup(moeflow, pb):
    """SIGHUP (the terminal that started serve closing) drains as SIGTERM does: a Generate stream in
    flight gets all its tokens and its final message, the log names SIGHUP and the server exits 0, where
    SIGHUP's default action ended the process at once and cut the stream off."""
    m = pb["m"]
    srv = Server(moeflow)
    try:
        ch = grpc.insecure_channel(srv.target)
        n = 500
        it = pb["mg"].GenerationStub(ch).Generate(m.GenerateRequest(
            prompt="def f():", max_tokens=n, ignore_eos=True), timeout=scaled(120))
        toks = list(next(it).token_ids)
        srv.proc.send_signal(signal.SIGHUP)
        final, err = read_to_end(it, toks)
        check(err is None and len(toks) == n and final is not None and final.completion_tokens == n,
              "a stream across SIGHUP got %d of %d tokens, final %s, error %s" % (len(toks), n, final is not None, err))
        ch.close()
        try:
            rc = srv.proc.wait(scaled(60))
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0 and "SIGHUP: draining" in srv.output(),
              "SIGHUP: exit status %s, log %r" % (rc, srv.output()[-300:]))
    finally:
        srv.kill()


def drain_slow_reader(moeflow, pb):
    """SIGTERM while a Generate client has not yet read the reply of a request that finished generating:
    the drain delivers the rest of the stream and its status before the server exits (the client is
    still within the drain's time), where ending the gRPC front once no generation was left cancelled
    the call, and the client lost the end of a completed request."""
    m = pb["m"]
    srv = Server(moeflow)
    try:
        # no window growth on the client: what it leaves unread stays queued on the server
        ch = grpc.insecure_channel(srv.target, options=[("grpc.http2.bdp_probe", 0)])
        n = 500  # with 20 top log-probabilities each (some 300 KB), far more bytes than HTTP/2's 64 KiB window
        it = pb["mg"].GenerationStub(ch).Generate(m.GenerateRequest(
            prompt="def f():", max_tokens=n, ignore_eos=True, logprobs=True, top_logprobs=20), timeout=scaled(120))
        toks = list(next(it).token_ids)
        ms = settled(srv)  # the request has finished generating; its reply waits for the client
        check(metric(ms, "moeflow:live_generations") == 0 and metric(ms, "moeflow:requests_completed_total") >= 1,
              "the request did not finish generating: %s live" % metric(ms, "moeflow:live_generations"))
        srv.proc.send_signal(signal.SIGTERM)
        final, err = read_to_end(it, toks)
        check(err is None and len(toks) == n and final is not None and final.completion_tokens == n,
              "a slow reader across SIGTERM got %d of %d tokens, final %s, error %s" % (
                  len(toks), n, final is not None, err))
        ch.close()
        check(srv.stop() == 0, "slow reader drain server: exit status")
    finally:
        srv.kill()


def drain_slow_reader_http(moeflow):
    """The same over HTTP: SIGTERM while a client has read nothing of a streamed completion that finished
    generating (a small receive window keeps most of it on the server): the drain delivers every event,
    the final chunk and [DONE] before the server exits, where freeing the HTTP front once no generation
    was left closed the connection with its reply's tail unsent."""
    srv = Server(moeflow)
    try:
        # 16 choices of 1000 tokens with 20 top log-probabilities each: some 10 MB, more than the server's
        # socket buffer holds (it may grow to a few MB); as many tokens as 8 choices of 2000, in half the
        # attention work (a token's attention takes time in proportion to the tokens before it)
        n_ch, n = 16, 1000
        body = json.dumps({"prompt": "def f():", "max_tokens": n, "n": n_ch, "ignore_eos": True, "logprobs": 20,
                           "stream": True}).encode()
        sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sk.settimeout(scaled(60))
        sk.connect(("127.0.0.1", srv.http_port))
        sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
        ms = settled(srv)  # the request has finished generating; its reply waits for the client
        check(metric(ms, "moeflow:live_generations") == 0 and metric(ms, "moeflow:requests_completed_total") >= 1,
              "the request did not finish generating: %s live" % metric(ms, "moeflow:live_generations"))
        srv.proc.send_signal(signal.SIGTERM)
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # now read it all
        out = b""
        try:
            while True:
                x = sk.recv(65536)
                if not x:
                    break
                out += x
        except OSError as e:
            out += b"\n(error: %s)" % str(e).encode()
        sk.close()
        head, _, rest = out.partition(b"\r\n\r\n")
        events, at = [], 0
        while True:  # the chunked body's chunks
            eol = rest.find(b"\r\n", at)
            try:
                size = int(rest[at:eol], 16)
            except ValueError:
                break
            if size == 0 or eol + 2 + size > len(rest):
                break
            events.append(rest[eol + 2:eol + 2 + size])
            at = eol + 2 + size + 2
        events = b"".join(events)
        toks, finals, done = [0] * n_ch, [None] * n_ch, False
        for ev in events.split(b"\n\n"):
            if ev == b"data: [DONE]":
                done = True
            elif ev.startswith(b"data: {"):  # each event is a chunk: a cut one is not counted
                c = json.loads(ev[6:])["choices"][0]
                toks[c["index"]] += len((c.get("logprobs") or {}).get("tokens") or [])
                finals[c["index"]] = c.get("finish_reason") or finals[c["index"]]
        check(head.startswith(b"HTTP/1.1 200") and toks == [n] * n_ch and finals == ["length"] * n_ch and done,
              "a slow HTTP reader across SIGTERM got %s of %d tokens each, final %s, [DONE] %s: %r" % (
                  toks, n, finals, done, out[-200:]))
        check(srv.stop() == 0, "slow HTTP reader drain server: exit status")
    finally:
        srv.kill()


def main():
    moeflow, src = sys.argv[1], sys.argv[2]
    pb = gen_stubs(src)
    srv = Server(moeflow)

    def no_generation_left(srv):
        ms = settled(srv)
        check(metric(ms, "moeflow:live_generations") == 0, "generations left: %s" %
              metric(ms, "moeflow:live_generations"))

    return run_server_test("test_serve_clients", srv, check, lambda s: stream_backlog(s, pb),
                           lambda s: unknown_method(s, pb), lambda s: cancelled_before_read(s, pb),
                           http10_keepalive_stream, connect_method, status_phrases,
                           connection_close_option, absolute_form, ambiguous_body, body_after_413, sends_during_stream,
                           host_header, chunk_extension,
                           n_choices_gone, gone_after_pipelined, no_generation_left, connections_gauge,
                           lambda s: connection_limits(moeflow), lambda s: read_timeout_after_burst(moeflow),
                           lambda s: grpc_stream_cap(moeflow, pb),
                           lambda s: reply_too_big(moeflow, pb), lambda s: metadata_too_big(moeflow, pb),
                           lambda s: refused_too_large(moeflow, pb),
                           lambda s: stream_reply_unsendable(moeflow, pb),
                           lambda s: health_watch(moeflow, pb), lambda s: drain_slow_reader(moeflow, pb),
                           lambda s: drain_idle_stream(moeflow, pb),
                           lambda s: drain_sighup(moeflow, pb),
                           lambda s: drain_slow_reader_http(moeflow))


if __name__ == "__main__":
    sys.exit(main())
