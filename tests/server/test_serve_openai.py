"""Integration: the HTTP API as OpenAI's client libraries use it.
usage: test_serve_openai.py MOEFLOW_BINARY SOURCE_DIR [SERVE FLAGS...]

Drives `moeflow serve` (served under a model name with a slash, as Hugging Face
names are) with the requests the official OpenAI clients send and checks the
replies against what they parse: model retrieval by URL-encoded id."""
import json
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import Server, Checks  # noqa: E402

NAME = "acme/pycode-moe-18m"

check = Checks()


def post(srv, path, body):
    """(status, parsed JSON reply) of a POST with a JSON body."""
    code, out = srv.http(path, json.dumps(body).encode())
    try:
        return code, json.loads(out)
    except ValueError:
        return code, {"unparsed": out[:300]}


def error_ok(code, js, status, word):
    """An OpenAI error body with the given status whose message names word."""
    e = js.get("error") if isinstance(js, dict) else None
    return (code == status and isinstance(e, dict) and isinstance(e.get("message"), str) and
            word in e["message"] and isinstance(e.get("type"), str))


def check_models(srv):
    # GET /v1/models/{id}: client.models.retrieve(id), the id URL-encoded ('/' as %2F)
    code, out = srv.http("/v1/models")
    listed = json.loads(out)["data"] if code == 200 else []
    check(code == 200 and [m["id"] for m in listed] == [NAME], "models list: %d %r" % (code, out[:300]))
    for path in ("/v1/models/" + urllib.parse.quote(NAME, safe=""), "/v1/models/" + NAME):
        code, out = srv.http(path)
        js = json.loads(out) if code == 200 else {}
        check(code == 200 and js.get("id") == NAME and js.get("object") == "model" and
              isinstance(js.get("created"), int) and js.get("owned_by") == "moeflow",
              "models retrieve %s: %d %r" % (path, code, out[:300]))
    code, out = srv.http("/v1/models/gpt-4")
    try:
        js = json.loads(out)
    except ValueError:
        js = {}
    check(error_ok(code, js, 404, "gpt-4"), "retrieve of another model: %d %r" % (code, out[:300]))
    code, out = srv.http("/v1/models/" + urllib.parse.quote(NAME, safe=""), b"{}")
    check(code == 405, "POST to a model: %d" % code)


def main():
    moeflow, src = sys.argv[1], sys.argv[2]
    srv = Server(moeflow, "--model-name", NAME, *sys.argv[3:])
    try:
        check_models(srv)
        rc = srv.stop()
        check(rc == 0, "exit status after SIGTERM %d" % rc)
    finally:
        srv.kill()
        if check.failures:
            print(srv.output()[-4000:])
    print("test_serve_openai: %s" % ("ok" if not check.failures else "%d failure(s)" % check.failures))
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
