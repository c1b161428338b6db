"""Integration: the HTTP API as OpenAI's client libraries use it.
usage: test_serve_openai.py MOEFLOW_BINARY SOURCE_DIR [SERVE FLAGS...]

Drives `moeflow serve` (served under a model name with a slash, as Hugging Face
names are) with the requests the official OpenAI clients send and checks the
replies against what they parse: model retrieval by URL-encoded id, and streams
whose usage, added up over the chunks as LangChain does, is the request's;
request fields as clients fill them in (nulls for what is not set, fields
moeflow does not use) and a 400 naming the field for output it does not
produce (best_of, an unsupported response_format, vLLM's include_stop_str_in_output); log-probabilities and echo; developer messages;
ids unique to the server's start; n choices; batches of prompts; vLLM's stop_token_ids and min_tokens; /tokenize and /detokenize; JSON mode and JSON schemas; tool calls (tool_choice); the default max_tokens of completions (16) and chat (the
context's end); CORS for browser clients."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import (Server, Checks, free_port, metric, post, read_reference_greedy, rejections,  # noqa: E402
                        run_server_test, scaled)

NAME = "acme/pycode-moe-18m"

check = Checks()


def error_ok(code, js, status, word):
    """An OpenAI error body with the given status whose message names word."""
    e = js.get("error") if isinstance(js, dict) else None
    return (code == status and isinstance(e, dict) and set(e) == {"message", "type", "param", "code"} and
            isinstance(e["message"], str) and word in e["message"] and isinstance(e["type"], str))


def sse(srv, path, body):
    """(Content-Type, [parsed chunks], ended with [DONE]) of a streamed request; every event is
    one 'data: ' line and a blank line."""
    req = urllib.request.Request(srv.url(path), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=scaled(60)) as r:
        ctype, raw = r.headers.get("Content-Type"), r.read().decode()
    events = raw.split("\n\n")
    framed = events[-1] == "" and all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    data = [e[6:] for e in events[:-1]]
    done = framed and data[-1:] == ["[DONE]"]
    return ctype, [json.loads(d) for d in data if d != "[DONE]"], done


def get_json(srv, path):
    """GET path: the status, the body as JSON ({} when it is not) and as bytes."""
    code, out = srv.http(path)
    try:
        return code, json.loads(out), out
    except ValueError:
        return code, {}, out


def usage_add(total, usage):
    """usage added into total, the details objects key by key."""
    for k, v in usage.items():
        total[k] = usage_add(total.get(k, {}), v) if isinstance(v, dict) else total.get(k, 0) + v
    return total


def usage_sum(chunks):
    """The chunks' usage added up, as LangChain's chunk aggregation does."""
    total = {}
    for c in chunks:
        usage_add(total, c.get("usage") or {})
    return total


def check_stream_usage(srv):
    for path, req in (("/v1/completions", {"prompt": "def add(a, b):"}),
                      ("/v1/chat/completions", {"messages": [{"role": "user", "content": "def add(a, b):"}]})):
        req = dict(req, model=NAME, max_tokens=6)
        post(srv, path, req)
        code, plain = post(srv, path, req)
        check(code == 200 and "logprobs" in plain["choices"][0] and plain["choices"][0]["logprobs"] is None,
              "%s: %d %r" % (path, code, plain))
        # the prompt ran just before: all of it but its last token comes from the prefix cache, in every
        # run below too; no reasoning tokens without a reasoning parser
        u = plain.get("usage", {})
        check(u.get("prompt_tokens_details") == {"cached_tokens": u.get("prompt_tokens", 0) - 1} and
              "completion_tokens_details" not in u, "%s: usage %r" % (path, u))
        if code != 200:
            continue
        for opts in (None, {"include_usage": False}, {"include_usage": True}):
            body = dict(req, stream=True)
            if opts is not None:
                body["stream_options"] = opts
            ctype, chunks, done = sse(srv, path, body)
            what = "%s stream_options %r" % (path, opts)
            check(ctype == "text/event-stream" and done, "%s: %s, framing/[DONE] %s" % (what, ctype, done))
            check(usage_sum(chunks) == plain["usage"], "%s: usage over the chunks %r, request's %r" %
                  (what, usage_sum(chunks), plain["usage"]))
            finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
            check(len(finishing) == 1 and finishing[0]["choices"][0]["finish_reason"] == "length",
                  "%s: finishing chunks %r" % (what, finishing))
            inc = bool(opts and opts["include_usage"])
            check(not inc or (chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"] and
                              chunks[-2] is finishing[0] and "usage" not in finishing[0]),
                  "%s: the usage chunk %r" % (what, chunks[-2:]))
            check(all("logprobs" in ch and ch["logprobs"] is None for c in chunks for ch in c["choices"]),
                  "%s: choices without logprobs: null %r" % (what, chunks[:1]))
            check(all(c["id"] == chunks[0]["id"] and c["model"] == NAME and isinstance(c["created"], int) and
                      c["object"] == ("chat.completion.chunk" if "chat" in path else "text_completion")
                      for c in chunks), "%s: chunk id/object/created/model %r" % (what, chunks[:1]))


def check_params(srv):
    chat = {"model": NAME, "messages": [{"role": "user", "content": "def add(a, b):"}]}
    # clients that send every field write null for those not set: a null is not given
    for extra, want in (({"max_completion_tokens": 3}, 3), ({"max_tokens": 3}, 3),
                        ({"max_completion_tokens": None, "max_tokens": 3}, 3),
                        ({"max_completion_tokens": 2, "max_tokens": 5}, 2),
                        ({"max_completion_tokens": 3, "max_tokens": None}, 3)):
        code, js = post(srv, "/v1/chat/completions", dict(chat, **extra))
        got = js.get("usage", {}).get("completion_tokens")
        check(code == 200 and got == want, "chat %r: %d, %r tokens (want %d)" % (extra, code, got, want))
    # fields moeflow does not use (user, penalties, metadata, ...) are accepted
    code, js = post(srv, "/v1/chat/completions", dict(chat, max_tokens=2, user="u-1", presence_penalty=0,
                                                     frequency_penalty=0, logit_bias={}, metadata={"a": "b"},
                                                     n=1, seed=7, temperature=0.5, top_p=0.9, stop=None,
                                                     stream=False, stream_options=None, x_unknown={"y": 1}))
    check(code == 200 and js["choices"][0]["finish_reason"] == "length", "extra fields: %d %r" % (code, js))
    code, js = post(srv, "/v1/completions", {"model": NAME, "prompt": "x", "n": 17})
    check(error_ok(code, js, 400, "'n'"), "n = 17: %d %r" % (code, js))
    # output moeflow does not produce is refused by name, not left out of the reply; off values pass
    cmpl = {"model": NAME, "prompt": "x", "max_tokens": 2}
    for path, base, extra, refused in (
            ("/v1/completions", cmpl, {"best_of": 3}, "best_of"),
            ("/v1/completions", cmpl, {"suffix": "\n    return x"}, "suffix"),
            ("/v1/completions", cmpl, {"logprobs": 21}, "logprobs"),
            ("/v1/chat/completions", chat, {"top_logprobs": 2}, "top_logprobs"),
            ("/v1/chat/completions", chat, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
            ("/v1/completions", cmpl, {"include_stop_str_in_output": True, "stop": ["\n"]}, "include_stop_str_in_output"),
            ("/v1/chat/completions", chat, {"allowed_token_ids": [1, 2]}, "allowed_token_ids"),
            ("/v1/chat/completions", chat, {"use_beam_search": False, "prompt_logprobs": None, "bad_words": []}, None),
            ("/v1/completions", cmpl, {"logprobs": None, "echo": False, "best_of": 1, "suffix": ""}, None),
            ("/v1/chat/completions", chat, {"logprobs": False, "top_logprobs": 0}, None),
            ("/v1/chat/completions", chat, {"logprobs": None, "top_logprobs": None}, None)):
        code, js = post(srv, path, dict(base, max_tokens=2, **extra))
        if refused:
            check(error_ok(code, js, 400, "'%s'" % refused), "%s %r: %d %r" % (path, extra, code, js))
        else:
            check(code == 200 and js["choices"][0].get("logprobs") is None, "%s %r: %d %r" % (path, extra, code, js))
    # {"type": "text"} is plain text; json_object and json_schema are JSON mode (check_json,
    # check_json_schema); a json_schema without its schema is a 400, as is another type
    for rf, ok in (({"type": "json_object"}, True), ({"type": "json_schema", "json_schema": {"name": "x"}}, False),
                   ({"type": "grammar"}, False), ({"type": "text"}, True), (None, True)):
        code, js = post(srv, "/v1/chat/completions", dict(chat, max_tokens=2, response_format=rf))
        check(code == 200 if ok else error_ok(code, js, 400, "'response_format'"),
              "response_format %r: %d %r" % (rf, code, js))
    # stream_options only with stream, as OpenAI answers
    for stream in (False, None):
        body = dict(chat, max_tokens=2, stream_options={"include_usage": True})
        if stream is not None:
            body["stream"] = stream
        code, js = post(srv, "/v1/chat/completions", body)
        check(error_ok(code, js, 400, "'stream_options'"), "stream_options, stream %r: %d %r" % (stream, code, js))
    # a developer message (OpenAI's newer name for system) is marked as system
    said = {}
    for role in ("system", "developer"):
        code, js = post(srv, "/v1/chat/completions", dict(max_tokens=2, temperature=0, messages=[
            {"role": role, "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]))
        said[role] = (code, js.get("usage", {}).get("prompt_tokens"), js.get("choices", [{}])[0].get("message"))
    check(said["developer"][0] == 200 and said["developer"] == said["system"], "developer vs system: %r" % said)
    # ids: chatcmpl-/cmpl-, a random tag of this start, then a count; never the same twice
    ids = [post(srv, path, dict(base, max_tokens=1))[1].get("id", "") for path, base in (
        ("/v1/chat/completions", chat), ("/v1/completions", cmpl), ("/v1/completions", cmpl))]
    check(re.fullmatch(r"chatcmpl-[0-9a-f]{12}[0-9]+", ids[0]) and re.fullmatch(r"cmpl-[0-9a-f]{12}[0-9]+", ids[1])
          and ids[1][5:17] == ids[0][9:21] and len(set(ids)) == 3, "ids %r" % ids)


def check_n(srv):
    """n choices per request: indexes 0..n-1, usage with the prompt once and the choices' tokens added
    up; with a seed, choice i draws as a request with seed + i; streamed, each choice's chunks carry
    its index (chat: its role first), one finishing chunk each, one [DONE]."""
    body = {"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 1.5, "ignore_eos": True}
    code, js = post(srv, "/v1/completions", dict(body, n=3))
    ch = js.get("choices", [])
    check(code == 200 and [c["index"] for c in ch] == [0, 1, 2] and js["usage"]["completion_tokens"] == 24 and
          js["usage"]["prompt_tokens"] == post(srv, "/v1/completions", dict(body, max_tokens=1))[1]["usage"][
              "prompt_tokens"], "n = 3: %d %r" % (code, js))
    check(len(set(c["text"] for c in ch)) > 1, "n = 3 without a seed: the choices are the same %r" % ch)
    code, js = post(srv, "/v1/completions", dict(body, n=3, seed=40, logprobs=1))
    alone = [post(srv, "/v1/completions", dict(body, seed=40 + i, logprobs=1))[1]["choices"][0] for i in range(3)]
    check(code == 200 and [c["text"] for c in js["choices"]] == [a["text"] for a in alone] and
          [c["logprobs"]["token_logprobs"] for c in js["choices"]] == [a["logprobs"]["token_logprobs"] for a in alone],
          "n = 3, seed 40: %r, alone %r" % (js.get("choices"), alone))
    # a longer prompt, seen by no earlier request: choices 1 and 2 copy choice 0's cache once its prefill
    # is done (the prefix cache), and still draw as requests of their own
    long_prompt = "# choices sharing one prompt\n" + "def add(a, b):\n    return a + b\n\n" * 4
    hits = lambda: metric(srv.metrics(), "moeflow:prefix_cache_hit_tokens_total")  # noqa: E731
    prompts = lambda: metric(srv.metrics(), "moeflow:prompt_tokens_total")  # noqa: E731
    before, prompts_before = hits(), prompts()
    body = {"prompt": long_prompt, "max_tokens": 8, "temperature": 1.5, "ignore_eos": True, "seed": 90}
    code, js = post(srv, "/v1/completions", dict(body, n=3))
    copied, counted = hits() - before, prompts() - prompts_before
    n_p = js.get("usage", {}).get("prompt_tokens", 0)
    # moeflow:prompt_tokens_total counts the prompt once per choice (a sequence each, its copied tokens
    # too), as vLLM's does, where usage counts it once per request; its HELP says so
    help_line = [x for x in srv.http("/metrics")[1].decode().splitlines()
                 if x.startswith("# HELP moeflow:prompt_tokens_total ")]
    check(counted == 3 * n_p and help_line and "once per choice" in help_line[0],
          "n = 3 on a %d-token prompt: prompt_tokens_total rose by %d (want %d), %r" % (
              n_p, counted, 3 * n_p, help_line))
    alone = [post(srv, "/v1/completions", dict(body, seed=90 + i))[1]["choices"][0]["text"] for i in range(3)]
    check(code == 200 and n_p > 17 and copied == 2 * (n_p - 1) and
          [c["text"] for c in js["choices"]] == alone,
          "n = 3 on a %d-token prompt: %d tokens copied (want %d), %r vs %r" % (
              n_p, copied, 2 * (n_p - 1), js.get("choices"), alone))
    chat = {"messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 6, "temperature": 1.5,
            "seed": 7, "n": 2, "ignore_eos": True}
    code, plain = post(srv, "/v1/chat/completions", chat)
    for opts in (None, {"include_usage": True}):
        body = dict(chat, stream=True)
        if opts:
            body["stream_options"] = opts
        _, chunks, done = sse(srv, "/v1/chat/completions", body)
        per = {0: "", 1: ""}
        first, finishing = {}, {0: 0, 1: 0}
        for c in chunks:
            for x in c["choices"]:
                i = x["index"]
                first.setdefault(i, x["delta"].get("role"))
                per[i] += x["delta"].get("content", "")
                finishing[i] += x["finish_reason"] is not None
        check(done and first == {0: "assistant", 1: "assistant"} and finishing == {0: 1, 1: 1} and
              [per[0], per[1]] == [c["message"]["content"] for c in plain["choices"]] and
              usage_sum(chunks) == plain["usage"] and plain["usage"]["completion_tokens"] == 12,
              "streamed n = 2 %r: %r / %r, usage %r vs %r" % (opts, per, plain.get("choices"), usage_sum(chunks),
                                                          plain.get("usage")))



def check_batch(srv, moeflow):
    """A batch of prompts (OpenAI's list of texts or of token-id lists): n choices each, choice index =
    prompt * n + choice, in one reply ordered by index (streamed: each chunk carries its choice's index,
    one finishing chunk per choice, the usage once); every choice is what its prompt sent alone gives
    (greedy; with a seed, choice i of each prompt draws with seed + i), echo and logprobs included; usage
    counts each prompt once (its cached tokens too) and adds up the choices' tokens.  A bad prompt is a
    400 naming prompt[i], with nothing run; prompts x n is at most 16; a batch whose tokens in flight
    never fit max-tokens-in-flight is a 400, though each prompt alone fits."""
    texts = ["def add(a, b):", "class Stack:\n"]
    ids = [[324, 285, 2974, 263], [1132, 1301, 8, 78, 324, 285]]
    n_tok = {}
    for prompts in (texts, ids, [texts[1], ids[0]], texts[:1]):
        body = {"prompt": prompts, "max_tokens": 6, "temperature": 0}
        code, js = post(srv, "/v1/completions", body)
        alone = [post(srv, "/v1/completions", dict(body, prompt=p))[1] for p in prompts]
        u = js.get("usage", {})
        check(code == 200 and [c["index"] for c in js["choices"]] == list(range(len(prompts))) and
              [c["text"] for c in js["choices"]] == [a["choices"][0]["text"] for a in alone] and
              u["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in alone) and
              u["completion_tokens"] == sum(a["usage"]["completion_tokens"] for a in alone) and
              u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"],
              "greedy batch %r: %d %r, alone %r" % (prompts, code, js, alone))
        for p, a in zip(prompts, alone):
            n_tok[str(p)] = a["usage"]["prompt_tokens"]
    # n = 2 of two prompts, sampled with a seed: choice k is prompt k // 2 drawn with seed + k % 2
    body = {"prompt": texts, "max_tokens": 8, "temperature": 1.5, "ignore_eos": True, "seed": 40, "n": 2,
            "logprobs": 1}
    code, js = post(srv, "/v1/completions", body)
    alone = [post(srv, "/v1/completions", dict(body, prompt=texts[k // 2], n=1, seed=40 + k % 2))[1]["choices"][0]
             for k in range(4)]
    ch = js.get("choices", [])
    want_p = n_tok[str(texts[0])] + n_tok[str(texts[1])]
    check(code == 200 and [c["index"] for c in ch] == [0, 1, 2, 3] and
          [c["text"] for c in ch] == [a["text"] for a in alone] and
          [c["logprobs"]["token_logprobs"] for c in ch] == [a["logprobs"]["token_logprobs"] for a in alone] and
          js["usage"]["prompt_tokens"] == want_p and js["usage"]["completion_tokens"] == 32,
          "n = 2 of 2 prompts: %d %r, alone %r" % (code, js, alone))
    # the same batch again: every prompt comes from the prefix cache but its last token, counted once
    code, again = post(srv, "/v1/completions", body)
    check(code == 200 and again["choices"] == ch and
          again["usage"]["prompt_tokens_details"] == {"cached_tokens": want_p - 2},
          "the batch again: %d %r" % (code, again.get("usage")))
    for opts in (None, {"include_usage": True}):
        b = dict(body, stream=True)
        if opts:
            b["stream_options"] = opts
        _, chunks, done = sse(srv, "/v1/completions", b)
        text, fin = {}, {}
        for c in chunks:
            for x in c["choices"]:
                text[x["index"]] = text.get(x["index"], "") + x["text"]
                fin[x["index"]] = fin.get(x["index"], 0) + (x["finish_reason"] is not None)
        check(done and text == {k: c["text"] for k, c in enumerate(ch)} and fin == {0: 1, 1: 1, 2: 1, 3: 1} and
              usage_sum(chunks) == js.get("usage"),
              "streamed n = 2 of 2 prompts %r: %r, %r, usage %r" % (opts, text, fin, usage_sum(chunks)))
    # echo and logprobs apply to each prompt
    body = {"prompt": ["def add", [1132, 1301, 8]], "max_tokens": 2, "temperature": 0, "echo": True, "logprobs": 1}
    code, js = post(srv, "/v1/completions", body)
    alone = [post(srv, "/v1/completions", dict(body, prompt=p))[1]["choices"][0] for p in body["prompt"]]
    ch = js.get("choices", [])
    ok = code == 200 and len(ch) == 2 and ch[0]["text"].startswith("def add") and all(
        c["text"] == a["text"] and c["logprobs"]["tokens"] == a["logprobs"]["tokens"] and
        c["logprobs"]["token_logprobs"][0] is None and
        max(abs(x - y) for x, y in zip(c["logprobs"]["token_logprobs"][1:], a["logprobs"]["token_logprobs"][1:])) < 1e-4
        for c, a in zip(ch, alone))
    check(ok, "echo and logprobs of 2 prompts: %d %r, alone %r" % (code, str(js)[:600], str(alone)[:600]))
    # a bad prompt: a 400 naming it, counted once as invalid, nothing run
    ctx = get_json(srv, "/v1/models")[1]["data"][0]["max_model_len"]
    invalid, sched = rejections(srv)
    accepted = metric(srv.metrics(), "moeflow:requests_accepted_total")
    bad = ((["x", []], "'prompt[1]' must be a string or a non-empty array of token ids"),
           (["x", 7], "'prompt[1]' must be"), (["x", [5, -1]], "'prompt[1][1]' must be a token id"),
           (["x", [5, 99999]], "'prompt[1][1]' = 99999 is outside the vocabulary"),
           (["x", [5] * (ctx + 1)], "'prompt[1]': the prompt is %d tokens" % (ctx + 1)))
    for prompts, word in bad:
        code, js = post(srv, "/v1/completions", {"prompt": prompts, "max_tokens": 1})
        check(error_ok(code, js, 400, word), "bad second prompt %r: %d %r" % (str(prompts)[:40], code, js))
    check(rejections(srv) == (invalid + len(bad), sched) and
          metric(srv.metrics(), "moeflow:requests_accepted_total") == accepted,
          "bad batches: rejections %r -> %r, accepted %s -> %s" % (
              (invalid, sched), rejections(srv), accepted, metric(srv.metrics(), "moeflow:requests_accepted_total")))
    # what is wrong with the request, not with a prompt, is not put on one
    for body, status, word in (({"model": "nope"}, 404, "model 'nope' is not served"),
                               ({"max_tokens": 10 ** 6}, 400, "max_tokens = 1000000 exceeds")):
        code, js = post(srv, "/v1/completions", dict(body, prompt=texts))
        check(error_ok(code, js, status, word) and "prompt[" not in js["error"]["message"],
              "a batch with %r: %d %r" % (body, code, js))
    # at most 16 completions per request, prompts x n
    for body, word in (({"prompt": texts, "n": 9}, "2 prompts and 'n' = 9: 18 completions, more than 16"),
                       ({"prompt": ["x"] * 17}, "17 prompts, more than 16")):
        code, js = post(srv, "/v1/completions", body)
        check(error_ok(code, js, 400, word), "%r: %d %r" % (str(body)[:60], code, js))
    code, js = post(srv, "/v1/completions", {"prompt": ["x"] * 8, "n": 2, "max_tokens": 1})
    check(code == 200 and [c["index"] for c in js["choices"]] == list(range(16)), "16 completions: %d %r" % (code, js))
    # tokens in flight for the whole batch at once: 2 + 30 prompt tokens and 2 x 30 fit 100, 2 x 40 never
    # do (a 400, not a 429) though each prompt alone, and twice the first, would
    small = Server(moeflow, "--max-tokens-in-flight", "100")
    try:
        prompts = [[324, 285], [1132] * 30]
        for m, want in ((30, 200), (40, 400)):
            code, js = post(small, "/v1/completions", {"prompt": prompts, "max_tokens": m, "ignore_eos": True})
            check(code == want and (want == 200 or error_ok(code, js, 400, "2 choices need 112 tokens in flight")),
                  "a batch of %d tokens in flight, bound 100: %d %r" % (32 + 2 * m, code, js))
        codes = [post(small, "/v1/completions", {"prompt": p, "max_tokens": 40, "ignore_eos": True})[0]
                 for p in prompts]
        check(codes == [200, 200], "each prompt alone: %r" % codes)
        check(small.stop() == 0, "max-tokens-in-flight server: exit status")
    finally:
        small.kill()


def json_prefix_ok(t):
    """Whether t is the beginning of one JSON object (whitespace, then '{'...), nothing after it."""
    stack, i, n = [], 0, len(t)
    expect = "start"  # start, value, key, key_or_end, colon, next, value_or_end, done

    def skip_ws(j):
        while j < n and t[j] in " \t\n\r":
            j += 1
        return j
    while True:
        i = skip_ws(i)
        if i == n:
            return True
        c = t[i]
        if expect == "done":
            return False
        if expect == "colon":
            if c != ":":
                return False
            i, expect = i + 1, "value"
            continue
        if expect == "next":
            if c == ",":
                i, expect = i + 1, "key" if stack[-1] == "{" else "value"
                continue
            if c != ("}" if stack[-1] == "{" else "]"):
                return False
            stack.pop()
            i, expect = i + 1, "next" if stack else "done"
            continue
        if expect in ("key_or_end", "value_or_end") and c == ("}" if expect == "key_or_end" else "]"):
            stack.pop()
            i, expect = i + 1, "next" if stack else "done"
            continue
        if expect == "start":
            if c != "{":
                return False
            stack.append("{")
            i, expect = i + 1, "key_or_end"
            continue
        if expect in ("key", "key_or_end") and c != '"':
            return False
        # a value (or a key string)
        m = {"{": "key_or_end", "[": "value_or_end"}.get(c)
        if m and expect in ("value", "value_or_end"):
            stack.append(c)
            i, expect = i + 1, m
            continue
        if c == '"':
            j = i + 1
            while j < n and t[j] != '"':
                if ord(t[j]) < 0x20:
                    return False
                if t[j] == "\\":
                    if j + 1 == n:
                        return True
                    if t[j + 1] == "u":
                        h = t[j + 2:j + 6]
                        if not all(x in "0123456789abcdefABCDEF" for x in h):
                            return False
                        j += 6
                        continue
                    if t[j + 1] not in '"\\/bfnrt':
                        return False
                    j += 2
                    continue
                j += 1
            if j >= n:
                return True
            i, expect = j + 1, "colon" if expect in ("key", "key_or_end") else ("next" if stack else "done")
            continue
        import re
        mt = re.match(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null", t[i:])
        whole = mt.group(0) if mt else ""
        rest = t[i + len(whole):]
        tail = t[i:]  # the text ends inside a number or literal that can still be completed
        if re.fullmatch(r"-?(0|[1-9][0-9]*)?(\.[0-9]*)?([eE][+-]?[0-9]*)?", tail) or any(
                w.startswith(tail) for w in ("true", "false", "null")):
            return True
        if not whole:
            return False
        i, expect = i + len(whole), "next"
        if rest[:1] and rest[0] not in " \t\n\r,}]":
            return False


def check_json(srv, moeflow):
    """JSON mode (response_format json_object): the output is always the beginning of one JSON object,
    and a generation that stops (not at max_tokens) is one object, whole; biased toward '{' and '}' it
    is "{}" at once; streamed, the same text; `moeflow generate --json` writes what the server does."""
    import subprocess
    for prompt in ("config = ", "def add(a, b):"):
        code, js = post(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 40, "temperature": 0,
                                                 "response_format": {"type": "json_object"}})
        g = subprocess.run([moeflow, "generate", "--prompt", prompt, "--json", "--max-tokens", "40"],
                           capture_output=True, timeout=120)
        text = (js.get("choices") or [{}])[0].get("text")
        check(code == 200 and g.returncode == 0 and g.stdout.decode() == text + "\n",
              "generate --json %r vs the server's %r" % (g.stdout[:200], text))
    for body in ({"prompt": "def add(a, b):", "max_tokens": 48, "temperature": 0},
                 {"prompt": "x = ", "max_tokens": 48, "temperature": 1.0, "seed": 3},
                 {"prompt": "import json\ndata = ", "max_tokens": 64, "temperature": 0.8, "seed": 5}):
        body = dict(body, response_format={"type": "json_object"})
        code, js = post(srv, "/v1/completions", body)
        ch = (js.get("choices") or [{}])[0]
        text = ch.get("text", "")
        check(code == 200 and json_prefix_ok(text), "JSON mode %r: %d %r" % (body, code, js))
        if ch.get("finish_reason") == "stop":
            check(isinstance(json.loads(text), dict), "JSON mode stopped on %r" % text)
        _, chunks, done = sse(srv, "/v1/completions", dict(body, stream=True))
        streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        check(done and streamed == text, "JSON mode streamed %r vs %r" % (streamed, text))
    code, js = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "an empty object"}],
                                                  "response_format": {"type": "json_object"},
                                                  "logit_bias": {"91": 100, "93": 100}})
    ch = (js.get("choices") or [{}])[0]
    check(code == 200 and ch.get("message", {}).get("content") == "{}" and ch.get("finish_reason") == "stop",
          "JSON mode with '{' and '}' biased: %d %r" % (code, js))
    code, js = post(srv, "/v1/completions", {"prompt": "x", "max_tokens": 2, "response_format": {"type": "json_object"},
                                             "logit_bias": {"91": 100, "93": 100}})  # whole at the last token
    ch = (js.get("choices") or [{}])[0]
    check(code == 200 and ch.get("text") == "{}" and ch.get("finish_reason") == "stop",
          "JSON mode, object whole at max_tokens: %d %r" % (code, js))
    for bad in ("[1]", '{"a" 1', "{}x"):
        check(not json_prefix_ok(bad), "the test's own checker accepts %r" % bad)
    for good in ('{"a": [1, 2.5, {"b": null}], "c": "x\\"', " {", '{"a": tr', '{"a": -1.5e'):
        check(json_prefix_ok(good), "the test's own checker refuses %r" % good)


PET = {
    "$defs": {"Owner": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}},
                        "required": ["id"], "additionalProperties": False}},
    "type": "object", "title": "Pet",
    "properties": {"name": {"type": "string", "description": "what it is called", "minLength": 1, "maxLength": 24},
                   "kind": {"enum": ["cat", "dog", "bird"]}, "age": {"type": "integer", "minimum": 0, "maximum": 40},
                   "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 200}, "indoor": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"enum": ["small", "big", "old"]}, "maxItems": 3},
                   "owner": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/Owner"}]}},
    "required": ["name", "kind", "age"], "additionalProperties": False}


def check_json_schema(srv, moeflow):
    """response_format json_schema: every output is the beginning of JSON text, one that stops is
    valid under the schema (checked by the jsonschema package), streamed text and every choice of n
    as well, gRPC's json_schema and `moeflow generate --json-schema` write the server's greedy text;
    keywords outside the supported set and bad schemas are a 400 naming them."""
    import subprocess
    import jsonschema
    rf = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET, "strict": True}}
    stopped = 0
    for body in ({"prompt": "pet = ", "max_tokens": 256, "temperature": 0},
                 {"prompt": "def add(a, b):", "max_tokens": 256, "temperature": 0},
                 {"prompt": "x = ", "max_tokens": 256, "temperature": 1.0, "seed": 3},
                 {"prompt": "import json\ndata = ", "max_tokens": 256, "temperature": 0.8, "seed": 5, "n": 3}):
        body = dict(body, response_format=rf)
        code, js = post(srv, "/v1/completions", body)
        check(code == 200 and len(js.get("choices", [])) == body.get("n", 1), "json_schema %r: %d %r" % (body, code, js))
        for ch in js.get("choices", []):
            text = ch.get("text", "")
            check(json_prefix_ok(text), "json_schema %r: not JSON: %r" % (body, text))
            if ch.get("finish_reason") == "stop":
                stopped += 1
                try:
                    jsonschema.validate(json.loads(text), PET)
                except Exception as e:  # noqa: BLE001
                    check(False, "json_schema %r: %r breaks the schema: %s" % (body, text, e))
        if body.get("n", 1) == 1:
            _, chunks, done = sse(srv, "/v1/completions", dict(body, stream=True))
            streamed = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
            check(done and streamed == js["choices"][0]["text"], "json_schema streamed %r vs %r" %
                  (streamed, js["choices"][0]["text"]))
    check(stopped >= 2, "only %d of 6 schema outputs ended within 256 tokens" % stopped)
    try:  # the validator itself refuses what breaks the schema
        jsonschema.validate({"name": "a", "kind": "fish", "age": 1}, PET)
        check(False, "jsonschema accepts a kind outside the enum")
    except jsonschema.ValidationError:
        pass
    code, js = post(srv, "/v1/completions", {"prompt": "pet = ", "max_tokens": 160, "temperature": 0,
                                             "response_format": rf})
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(PET, f)
        f.flush()
        g = subprocess.run([moeflow, "generate", "--prompt", "pet = ", "--json-schema", f.name, "--max-tokens",
                            "160"], capture_output=True, timeout=120)
    text = (js.get("choices") or [{}])[0].get("text")
    check(g.returncode == 0 and g.stdout.decode() == text + "\n",
          "generate --json-schema %r vs the server's %r (%s)" % (g.stdout[:200], text, g.stderr[-300:]))
    # a chat answer, the model writing an enum of its choice
    code, js = post(srv, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "yes or no?"}], "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"enum": ["yes", "no"]}}}})
    content = (js.get("choices") or [{}])[0].get("message", {}).get("content")
    check(code == 200 and content in ('"yes"', '"no"'), "chat json_schema enum: %d %r" % (code, js))
    for schema, word in (({"type": "string", "pattern": "(?=a)"}, "lookaround"),
                         ({"type": "object", "properties": {"d": {"type": "string", "format": "ipv6"}}},
                          "/properties/d"),
                         ({"type": "number"}, "bare number"),
                         ({"type": "object", "required": ["x"]}, "required property 'x'"),
                         ({"$ref": "#/$defs/Nope"}, "names nothing"),
                         ({"anyOf": [{"type": "object"}, {"type": "object"}]}, "told apart only by a tag"),
                         ({"anyOf": [{"type": "string"}, {"enum": ["a"]}]}, "both begin with"),
                         ({"type": "array", "items": {"type": "number", "minimum": 1e40}},
                          "no number the output can write (at most 32 characters, sign and point included, without an "
                          "exponent: below 10^32) meets 'minimum' 1e+40: lower it")):
        code, js = post(srv, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
        check(error_ok(code, js, 400, word), "json_schema %r: %d %r" % (schema, code, js))


def check_structured(srv):
    """vLLM's structured outputs: structured_outputs.choice / guided_choice give one of the texts as
    it is, structured_outputs.json / guided_json (an object or its text) what response_format's
    json_schema gives; regex and grammar (GBNF) give the text they match or derive; a choice that
    begins another, a bad grammar, structural_tag and two at once are a 400."""
    base = {"prompt": "answer = ", "max_tokens": 16, "temperature": 0}
    choices = ["yes", "no", "maybe"]
    texts = []
    for extra in ({"guided_choice": choices}, {"structured_outputs": {"choice": choices}}):
        code, js = post(srv, "/v1/completions", dict(base, **extra))
        ch = (js.get("choices") or [{}])[0]
        texts.append(ch.get("text"))
        check(code == 200 and ch.get("text") in choices and ch.get("finish_reason") == "stop",
              "%r: %d %r" % (extra, code, js))
    check(texts[0] == texts[1], "guided_choice %r, structured_outputs.choice %r" % tuple(texts))
    # a pattern or grammar whose one text is the empty one: "" and stop, whole and streamed (an empty pattern is
    # refused: test_serve_api)
    for extra in ({"guided_regex": "()"}, {"guided_grammar": 'root ::= ""'}):
        code, js = post(srv, "/v1/completions", dict(base, **extra))
        ch = (js.get("choices") or [{}])[0]
        check(code == 200 and ch.get("text") == "" and ch.get("finish_reason") == "stop" and
              js.get("usage", {}).get("completion_tokens") == 0, "%r: %d %r" % (extra, code, js))
        ctype, chunks, done = sse(srv, "/v1/completions", dict(base, stream=True, **extra))
        check(done and "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "" and
              [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1:] == ["stop"],
              "%r streamed: %r" % (extra, chunks))
    schema = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "n": {"type": "integer"}},
              "required": ["kind", "n"], "additionalProperties": False}
    want = None
    for extra in ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}},
                  {"guided_json": schema}, {"guided_json": json.dumps(schema)},
                  {"structured_outputs": {"json": schema}}):
        code, js = post(srv, "/v1/completions", dict(base, max_tokens=48, **extra))
        text = (js.get("choices") or [{}])[0].get("text")
        want = text if want is None else want
        check(code == 200 and text == want and text.startswith("{"), "%r: %d %r (want %r)" % (extra, code, js, want))
    # a regular expression: the whole text matches where it ends with "stop"; the same both ways
    texts = []
    for extra in ({"guided_regex": r"[a-z_]{1,8} = [0-9]{1,3}\n"},
                  {"structured_outputs": {"regex": r"[a-z_]{1,8} = [0-9]{1,3}\n"}}):
        code, js = post(srv, "/v1/completions", dict(base, max_tokens=24, **extra))
        ch = (js.get("choices") or [{}])[0]
        texts.append(ch.get("text"))
        check(code == 200 and ch.get("finish_reason") == "stop" and
              re.fullmatch(r"[a-z_]{1,8} = [0-9]{1,3}\n", ch.get("text") or ""), "%r: %d %r" % (extra, code, js))
    check(texts[0] == texts[1], "guided_regex %r, structured_outputs.regex %r" % tuple(texts))
    # a GBNF grammar of the same language as the expression: the same greedy text, by all three names
    gbnf = 'root ::= name " = " [0-9]{1,3} "\\n"\nname ::= [a-z_]{1,8}\n'
    for extra in ({"guided_grammar": gbnf}, {"structured_outputs": {"grammar": gbnf}}, {"grammar": gbnf}):
        code, js = post(srv, "/v1/completions", dict(base, max_tokens=24, **extra))
        ch = (js.get("choices") or [{}])[0]
        check(code == 200 and ch.get("finish_reason") == "stop" and ch.get("text") == texts[0],
              "%r: %d %r (the expression's text: %r)" % (extra, code, js, texts[0]))
    # a structural tag: free text, and after each "# " a JSON object of the schema, then a line break;
    # the same text by all three names
    tag = {"structures": [{"begin": "# ", "schema": {"type": "object", "properties": {"todo": {
        "type": "string", "maxLength": 12}}, "required": ["todo"], "additionalProperties": False}, "end": "\n"}],
        "triggers": ["# "]}
    texts = []
    for extra in ({"structured_outputs": {"structural_tag": tag}}, {"structural_tag": json.dumps(tag)},
                  {"response_format": dict(tag, type="structural_tag")}):
        code, js = post(srv, "/v1/completions", dict(base, prompt="def fibonacci(n):\n    ", max_tokens=60, **extra))
        texts.append((js.get("choices") or [{}])[0].get("text") or "")
        check(code == 200, "structural tag %r: %d %r" % (list(extra), code, js))
    text, whole, i = texts[0], 0, 0
    while True:  # each trigger opens a structure: its begin, a value of the schema, whitespace, its end
        j = text.find("# ", i)
        if j < 0:
            break
        try:
            value, k = json.JSONDecoder().raw_decode(text, j + 2)
        except ValueError:
            check(len(text) - j < 40, "structural tag: no value after the trigger at %d in %r" % (j, text))
            break
        while k < len(text) and text[k] in " \t\r" :
            k += 1
        check(set(value) == {"todo"} and len(value["todo"]) <= 12 and (k == len(text) or text[k] == "\n"),
              "structural tag: %r then %r" % (value, text[k:k + 10]))
        whole += 1
        i = k + 1
    check(whole >= 1 and texts[0] == texts[1] == texts[2], "structural tag: %d structures in %r (%r)" % (
        whole, text, texts[1:]))
    # no whitespace between JSON's tokens: outside its strings the text has none
    code, js = post(srv, "/v1/completions", dict(base, max_tokens=48, structured_outputs={
        "json": schema, "disable_any_whitespace": True}))
    text = (js.get("choices") or [{}])[0].get("text") or ""
    bare = re.sub(r'"(?:[^"\\]|\\.)*("|$)', "", text)
    check(code == 200 and text.startswith("{") and not re.search(r"\s", bare),
          "disable_any_whitespace: %d %r" % (code, js))
    for extra, word in (({"guided_regex": "a("}, "'guided_regex': pattern 'a('"),
                        ({"structured_outputs": {"grammar": "root ::= x"}},
                         "'grammar': grammar, line 1 column 10: rule 'x' is used but never defined"),
                        ({"structural_tag": {"structures": []}}, "'structures' must be an array"),
                        # past the recognizer's limits after "x" (1100 ways on at once): no token at all
                        ({"guided_grammar": 'root ::= "x" y\ny ::= ' + " | ".join(['"a"'] * 1100)},
                         "no token of the vocabulary continues the text"),
                        ({"guided_choice": ["a", "ab"]}, "begins another"),
                        ({"guided_choice": []}, "'guided_choice'"),
                        ({"guided_choice": ["a"], "guided_json": schema}, "together"),
                        ({"guided_json": schema, "response_format": {"type": "json_object"}}, "together"),
                        ({"guided_json": 5}, "'guided_json' must be"),
                        ({"structured_outputs": "json"}, "'structured_outputs' must be")):
        code, js = post(srv, "/v1/completions", dict(base, **extra))
        check(error_ok(code, js, 400, word), "%r: %d %r" % (extra, code, js))


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["c", "f"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"],
    "additionalProperties": False}}}


def check_tools(srv):
    """tool_choice naming a function or "required": the reply is a call of a request's tool, its
    arguments valid under the function's parameters (jsonschema), as OpenAI's tool_calls, streamed as
    one tool_calls delta; "auto" leaves text; bad choices are a 400 naming what to fix."""
    import jsonschema
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    calls = {}
    for tc in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        body = {"messages": msgs, "tools": [WEATHER, CLOCK], "tool_choice": tc, "max_tokens": 120,
                "temperature": 0}
        code, js = post(srv, "/v1/chat/completions", body)
        ch = (js.get("choices") or [{}])[0]
        msg = ch.get("message", {})
        call = (msg.get("tool_calls") or [{}])[0]
        fn = call.get("function", {})
        ok = (code == 200 and ch.get("finish_reason") == "tool_calls" and msg.get("content") is None and
              call.get("type") == "function" and call.get("id", "").startswith("call_") and
              fn.get("name") in params and isinstance(fn.get("arguments"), str))
        check(ok, "tool_choice %r: %d %r" % (tc, code, js))
        if not ok:
            continue
        if isinstance(tc, dict):
            check(fn["name"] == "get_weather", "tool_choice named get_weather, called %r" % fn["name"])
        try:
            jsonschema.validate(json.loads(fn["arguments"]), params[fn["name"]])
        except Exception as e:  # noqa: BLE001
            check(False, "tool_choice %r: arguments %r: %s" % (tc, fn["arguments"], e))
        calls[json.dumps(tc)] = call
        _, chunks, done = sse(srv, "/v1/chat/completions", dict(body, stream=True))
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        streamed = [d["tool_calls"] for d in deltas if "tool_calls" in d]
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1:]
        check(done and len(streamed) == 1 and streamed[0][0]["index"] == 0 and
              streamed[0][0]["function"] == call["function"] and finish == ["tool_calls"] and
              not any(d.get("content") for d in deltas),
              "tool_choice %r streamed: %r" % (tc, chunks[:3]))
    code, js = post(srv, "/v1/chat/completions", {"messages": msgs, "tools": [WEATHER], "tool_choice": "auto",
                                                  "max_tokens": 4})
    msg = (js.get("choices") or [{}])[0].get("message", {})
    check(code == 200 and "tool_calls" not in msg and isinstance(msg.get("content"), str),
          "tool_choice auto: %d %r" % (code, js))
    for body, word in (({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                        "'nope'"),
                       ({"tool_choice": "required"}, "'tools'"),
                       ({"tools": [WEATHER], "tool_choice": "sometimes"}, "'tool_choice'"),
                       ({"tools": [{"type": "function", "function": {}}], "tool_choice": "required"}, "'tools'[0]"),
                       ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
                        "not both"),
                       ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
                           "type": "object", "properties": {"d": {"type": "string", "format": "ipv6"}}}}}],
                         "tool_choice": "required"}, "format 'ipv6' is not supported")):
        code, js = post(srv, "/v1/chat/completions", dict(body, messages=msgs))
        check(error_ok(code, js, 400, word), "tools %r: %d %r" % (body, code, js))
    code, js = post(srv, "/v1/completions", {"prompt": "x", "tools": [WEATHER], "tool_choice": "required"})
    check(error_ok(code, js, 400, "chat completions"), "tool_choice on completions: %d %r" % (code, js))


def check_tokenize(srv):
    """vLLM's /tokenize and /detokenize: the ids a completion or chat request runs on (its usage's
    prompt_tokens), and back to the text; bad input is a 400 naming what to fix."""
    code, js = post(srv, "/tokenize", {"prompt": "def add(a, b):"})
    _, c = post(srv, "/v1/completions", {"prompt": "def add(a, b):", "max_tokens": 1})
    check(code == 200 and js.get("count") == len(js.get("tokens", [])) == c["usage"]["prompt_tokens"] and
          js.get("max_model_len", 0) > 0, "tokenize: %d %r" % (code, js))
    code, back = post(srv, "/detokenize", {"tokens": js.get("tokens", [])})
    check(code == 200 and back == {"prompt": "def add(a, b):"}, "detokenize: %d %r" % (code, back))
    # vLLM's return_token_strs: each id's string as the vocabulary spells it (convert_ids_to_tokens)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "pycode-moe-18m",
                           "tokenizer.json"), encoding="utf-8") as f:
        spelled = {i: t for t, i in json.load(f)["model"]["vocab"].items()}
    code, st = post(srv, "/tokenize", {"prompt": "def add(a, b):", "return_token_strs": True})
    check(code == 200 and st.get("tokens") == js.get("tokens") and
          st.get("token_strs") == [spelled.get(i) for i in js.get("tokens", [])] and "Ġadd" in st["token_strs"],
          "tokenize, return_token_strs: %d %r" % (code, st))
    code, st = post(srv, "/tokenize", {"prompt": "def add(a, b):", "return_token_strs": False})
    check(code == 200 and "token_strs" not in st, "tokenize, return_token_strs false: %d %r" % (code, st))
    code, st = post(srv, "/tokenize", {"prompt": "x", "return_token_strs": "yes"})
    check(error_ok(code, st, 400, "'return_token_strs' must be a boolean"), "return_token_strs 'yes': %d %r" % (code, st))
    # an emoji's tokens cut before its last byte: one U+FFFD for the cut sequence, as Hugging Face's byte-level
    # decoder gives it (not one per byte)
    code, em = post(srv, "/tokenize", {"prompt": "\U0001F600"})
    ids = em.get("tokens", [])
    cut = []
    for k in range(1, len(ids)):
        code, part = post(srv, "/detokenize", {"tokens": ids[:k]})
        cut.append(part.get("prompt"))
    code, whole = post(srv, "/detokenize", {"tokens": ids})
    check(len(ids) > 1 and whole.get("prompt") == "\U0001F600" and all(c == "\ufffd" for c in cut),
          "an emoji cut: %r -> %r, whole %r" % (ids, cut, whole))
    for path in ("/tokenize", "/detokenize"):  # a body that is not JSON: the parser's reason, with its place
        code, raw = srv.http(path, b'{"prompt": "x",}')
        check(code == 400 and b"not valid JSON" in raw and b"column" in raw, "%s, bad JSON: %d %r" % (path, code, raw))
        # valid JSON with an integer beyond int64: said to be valid, out of range, with its place
        code, raw = srv.http(path, b'{"prompt": 12345678901234567890}')
        check(code == 400 and b"out of range at line 1 column 31" in raw and b"it is valid JSON" in raw and
              b"not valid JSON" not in raw, "%s, a big integer: %d %r" % (path, code, raw))
    for path in ("/tokenize", "/v1/completions", "/v1/responses"):  # a NUL in a string: said so, not jansson's flag
        code, raw = srv.http(path, b'{"prompt": "a\\u0000b", "input": "x"}')
        check(code == 400 and b"NUL" in raw and b"JSON_ALLOW_NUL" not in raw, "%s, a NUL: %d %r" % (path, code, raw))
    msgs = [{"role": "user", "content": "def add(a, b):"}]
    code, tj = post(srv, "/tokenize", {"messages": msgs})
    _, cc = post(srv, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1})
    check(code == 200 and tj.get("count") == cc["usage"]["prompt_tokens"] and tj["count"] > js["count"],
          "tokenize messages: %d %r vs %r" % (code, tj, cc.get("usage")))
    for path, body, word in (("/tokenize", {}, "'prompt'"), ("/tokenize", {"prompt": 5}, "'prompt'"),
                             ("/detokenize", {"tokens": [1, 99999]}, "'tokens'[1]"),
                             ("/detokenize", {"tokens": "x"}, "'tokens'"), ("/tokenize", [1], "object")):
        code, out = post(srv, path, body)
        check(error_ok(code, out, 400, word), "%s %r: %d %r" % (path, body, code, out))
    code, _ = srv.http("/tokenize")
    check(code == 405, "GET /tokenize: %d" % code)


def check_logprobs(srv):
    """Log-probabilities as OpenAI's clients read them, greedy so the chosen token is the top one."""
    body = {"model": NAME, "prompt": "def add(a, b):", "max_tokens": 6, "temperature": 0, "logprobs": 3}
    code, js = post(srv, "/v1/completions", body)
    ch = js.get("choices", [{}])[0]
    lp, n = ch.get("logprobs") or {}, js.get("usage", {}).get("completion_tokens")
    ok = code == 200 and set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"} and all(
        len(lp[k]) == n for k in lp)
    check(ok, "completions logprobs: %d %r" % (code, js))
    if ok:
        check("".join(lp["tokens"]) == ch["text"], "tokens %r do not make the text %r" % (lp["tokens"], ch["text"]))
        check(all(len(t) == 3 and max(t.values()) == v and v <= 0 for t, v in zip(lp["top_logprobs"],
                                                                                 lp["token_logprobs"])),
              "top_logprobs / token_logprobs: %r / %r" % (lp["top_logprobs"], lp["token_logprobs"]))
        check(lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(n)],
              "text_offset %r" % lp["text_offset"])
    chat = {"model": NAME, "messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 6,
            "temperature": 0, "logprobs": True, "top_logprobs": 2}
    code, js = post(srv, "/v1/chat/completions", chat)
    ch = js.get("choices", [{}])[0]
    content, n = (ch.get("logprobs") or {}).get("content"), js.get("usage", {}).get("completion_tokens")
    ok = code == 200 and isinstance(content, list) and len(content) == n
    check(ok, "chat logprobs: %d %r" % (code, js))
    if ok:
        check(bytes(b for e in content for b in e["bytes"]).decode() == ch["message"]["content"],
              "chat logprobs bytes do not make the content: %r" % content)
        check(all(len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["token"] == e["token"] and
                  e["top_logprobs"][0]["logprob"] == e["logprob"] >= e["top_logprobs"][1]["logprob"] for e in content),
              "chat top_logprobs: %r" % content)
        # streamed: the chunks' entries, in order, are the reply's
        _, chunks, done = sse(srv, "/v1/chat/completions", dict(chat, stream=True))
        streamed = [e for c in chunks for ch2 in c["choices"] for e in ((ch2.get("logprobs") or {}).get("content")
                                                                         or [])]
        check(done and streamed == content, "streamed logprobs differ: %r vs %r" % (streamed, content))
    # nothing generated (the model's greedy first token here is EOS): the reply still has the collection,
    # empty, not null, which clients reading choices[0].logprobs.tokens would fail on
    eos_first = "if __name__ == \"__main__\":\n    main()\n"
    code, js = post(srv, "/v1/completions", {"model": NAME, "prompt": eos_first, "max_tokens": 4, "temperature": 0,
                                             "logprobs": 2})
    ch = (js.get("choices") or [{}])[0]
    check(code == 200 and js["usage"]["completion_tokens"] == 0 and ch.get("logprobs") == {
        "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []},
        "completions, nothing generated: %d %r" % (code, js))
    # without logprobs: 0 alternatives still gives each token's own
    code, js = post(srv, "/v1/chat/completions", dict(chat, top_logprobs=0))
    content = ((js.get("choices") or [{}])[0].get("logprobs") or {}).get("content") or []
    check(code == 200 and content and all(e["top_logprobs"] == [] and e["logprob"] <= 0 for e in content),
          "top_logprobs 0: %d %r" % (code, js))


def inf_logits_model(src, into):
    """A copy of the bundled model (links but for the lm_head's shard) whose lm_head rows 200 and 201 are
    +inf and -inf in their first column: one of the two logits is +inf at every step (unless that
    column of the final hidden state is 0), and every other token's log-probability is -inf."""
    model = os.path.join(src, "models", "pycode-moe-18m")
    with open(os.path.join(model, "model.safetensors.index.json")) as f:
        shard = json.load(f)["weight_map"]["lm_head.weight"]
    for name in os.listdir(model):
        if name != shard:
            os.symlink(os.path.join(model, name), os.path.join(into, name))
    with open(os.path.join(model, shard), "rb") as f:
        data = bytearray(f.read())
    hlen = int.from_bytes(data[:8], "little")
    t = json.loads(data[8:8 + hlen])["lm_head.weight"]
    assert t["dtype"] == "BF16"
    base, cols = 8 + hlen + t["data_offsets"][0], t["shape"][1]
    data[base + 200 * cols * 2:base + 200 * cols * 2 + 2] = b"\x80\x7f"  # BF16 +inf
    data[base + 201 * cols * 2:base + 201 * cols * 2 + 2] = b"\x80\xff"  # BF16 -inf
    with open(os.path.join(into, shard), "wb") as f:
        f.write(data)


def check_inf_logits(moeflow, src):
    """A log-probability of -inf (a token beside an infinite logit) is written -9999.0, as vLLM does,
    where JSON's lack of infinities left the entry out: token_logprobs and top_logprobs fell out of step
    with tokens, and chat's content lost the token."""
    with tempfile.TemporaryDirectory() as d:
        inf_logits_model(src, d)
        srv = Server(moeflow, "--model", d)
        try:
            body = {"prompt": "def add(a, b):", "max_tokens": 3, "temperature": 0, "logprobs": 3, "ignore_eos": True}
            code, js = post(srv, "/v1/completions", body)
            lp = ((js.get("choices") or [{}])[0].get("logprobs")) or {}
            check(code == 200 and all(len(lp.get(k, [])) == 3 for k in ("tokens", "token_logprobs", "top_logprobs")),
                  "completions, infinite logits: %d %r" % (code, js))
            check(lp.get("token_logprobs") == [0.0] * 3 and all(
                sorted(t.values()) == [-9999.0, -9999.0, 0.0] for t in lp.get("top_logprobs", [])),
                "completions, infinite logits: %r" % lp)
            chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "temperature": 0,
                    "logprobs": True, "top_logprobs": 2, "ignore_eos": True}
            code, js = post(srv, "/v1/chat/completions", chat)
            content = (((js.get("choices") or [{}])[0].get("logprobs")) or {}).get("content") or []
            check(code == 200 and len(content) == 3 and all(
                e["logprob"] == 0.0 and [x["logprob"] for x in e["top_logprobs"]] == [0.0, -9999.0] for e in content),
                "chat, infinite logits: %d %r" % (code, js))
            check(srv.stop() == 0, "infinite-logits server: exit status")
        finally:
            srv.kill()


def stop_cut_ok(texts, content):
    """The log-probabilities' tokens (their texts, bytes) cover exactly the text a stop sequence left:
    they begin with it, and each token begins inside it (the last may run past it; tokens without
    text at the end of a reply no stop sequence cut are its own)."""
    while texts and texts[-1] == b"":
        texts = texts[:-1]
    joined = b"".join(texts)
    return joined.startswith(content) and (not texts or len(joined) - len(texts[-1]) < len(content))


def straddle_stop(toks):
    """(k, stop): a stop sequence that begins at the second character of token k (ASCII, two characters
    or more, k > 0) and occurs nowhere before, from a greedy reply's token texts; (None, None) if none."""
    full = "".join(toks)
    for k, t in enumerate(toks):
        at = sum(map(len, toks[:k])) + 1
        stop = (t[1:] + "".join(toks[k + 1:k + 2]))[:8]
        if k > 0 and len(t) >= 2 and t.isascii() and stop.strip() and full.find(stop) == at:
            return k, stop
    return None, None


def check_stop_logprobs(srv):
    """Log-probabilities of tokens a stop sequence cut off are not returned, whole or streamed, chat
    or completions; a token whose text begins before the stop sequence and runs into it is (part of its
    text is in the reply).  Streamed, a chunk carries the log-probabilities of the tokens whose text it
    carries."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0, "logprobs": True}
    code, js = post(srv, "/v1/chat/completions", dict(chat, stop="|>"))
    ch = (js.get("choices") or [{}])[0]
    content = (ch.get("message") or {}).get("content", "").encode()
    texts = [bytes(e["bytes"]) for e in ((ch.get("logprobs") or {}).get("content") or [])]
    check(code == 200 and ch.get("finish_reason") == "stop" and stop_cut_ok(texts, content) and
          len(texts) < js["usage"]["completion_tokens"],
          "chat, stop '|>': content %r, log-probabilities of %r" % (content, texts))
    # a stop sequence that begins inside a token: that token is kept, the rest cut
    body = {"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0, "logprobs": 0}
    code, js = post(srv, "/v1/completions", body)
    toks = ((js.get("choices") or [{}])[0].get("logprobs") or {}).get("tokens") or []
    k, stop = straddle_stop(toks)
    check(code == 200 and k is not None, "completions: no token to stop inside: %r" % toks)
    if k is not None:
        code, js = post(srv, "/v1/completions", dict(body, stop=stop))
        ch = (js.get("choices") or [{}])[0]
        lp = ch.get("logprobs") or {}
        check(code == 200 and ch.get("finish_reason") == "stop" and ch.get("text") == "".join(toks[:k]) + toks[k][0]
              and lp.get("tokens") == toks[:k + 1] and len(lp["token_logprobs"]) == len(lp["text_offset"]) == k + 1,
              "completions, stop %r inside token %d of %r: %r, log-probabilities of %r" % (
                  stop, k, toks, ch.get("text"), lp.get("tokens")))
        _, chunks, done = sse(srv, "/v1/completions", dict(body, stop=stop, stream=True))
        streamed = [t for c in chunks for x in c.get("choices", []) for t in ((x.get("logprobs") or {}).get("tokens")
                                                                               or [])]
        check(done and streamed == toks[:k + 1], "completions streamed, stop %r: %r" % (stop, streamed))
    code, js = post(srv, "/v1/chat/completions", dict(chat, messages=[{"role": "user", "content": "def add(a, b):"}]))
    ctoks = [bytes(e["bytes"]).decode(errors="replace") for e in
             (((js.get("choices") or [{}])[0].get("logprobs") or {}).get("content") or [])]
    k, cstop = straddle_stop(ctoks)
    check(code == 200 and k is not None, "chat: no token to stop inside: %r" % ctoks)
    for extra in [{"stop": "|>"}] + ([{"stop": cstop, "messages": [{"role": "user", "content": "def add(a, b):"}]}]
                                     if k is not None else []):
        whole = post(srv, "/v1/chat/completions", dict(chat, **extra))[1]
        _, chunks, done = sse(srv, "/v1/chat/completions", dict(chat, stream=True, **extra))
        sent, lps, ok = b"", [], done
        for c in chunks:
            for x in c.get("choices", []):
                sent += ((x.get("delta") or {}).get("content") or "").encode()
                lps += [bytes(e["bytes"]) for e in ((x.get("logprobs") or {}).get("content") or [])]
                ok = ok and stop_cut_ok(lps, sent)  # after each chunk, as for the whole reply
        wl = [bytes(e["bytes"]) for e in ((whole["choices"][0].get("logprobs") or {}).get("content") or [])]
        check(ok and sent == whole["choices"][0]["message"]["content"].encode() and lps == wl and
              stop_cut_ok(wl, sent) and whole["choices"][0]["finish_reason"] == "stop",
              "chat streamed, stop %r: text %r, log-probabilities %r (whole: %r)" % (extra["stop"], sent, lps, wl))


def check_stream_held_text(srv):
    """Streamed with stop sequences, text that could begin one is held back, and no chunk goes out empty
    meanwhile: every chunk before the finishing one carries text (chat: content), and the text, whole and
    the log-probabilities' tokens, is the non-streamed reply's."""
    for path, body in (("/v1/completions", {"prompt": "def add(a, b):", "logprobs": 0}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "def add(a, b):"}],
                                                 "logprobs": True})):
        body = dict(body, max_tokens=24, temperature=0, ignore_eos=True)
        # stop sequences that begin with a generated token's text and are never completed: that token's text
        # is held back whole, until the next token's shows it begins none
        w = (post(srv, path, body)[1].get("choices") or [{}])[0]
        toks = ([e["token"] for e in ((w.get("logprobs") or {}).get("content") or [])] if "chat" in path else
                (w.get("logprobs") or {}).get("tokens") or [])
        stops = []
        for t in toks[1:-1]:
            if t.strip() and t + "zq" not in stops and len(stops) < 4:
                stops.append(t + "zq")
        body["stop"] = stops
        code, whole = post(srv, path, body)
        _, chunks, done = sse(srv, path, dict(body, stream=True))
        chat = "chat" in path
        steps = [c["choices"][0] for c in chunks if c["choices"]]
        texts = [(x.get("delta") or {}).get("content") if chat else x.get("text") for x in steps]
        empty = [x for x, t in zip(steps, texts) if not t and not x.get("finish_reason")]
        w = (whole.get("choices") or [{}])[0]
        want = (w.get("message") or {}).get("content") if chat else w.get("text")
        if chat:
            lps = [e["token"] for x in steps for e in ((x.get("logprobs") or {}).get("content") or [])]
            wlps = [e["token"] for e in ((w.get("logprobs") or {}).get("content") or [])]
        else:
            lps = [t for x in steps for t in ((x.get("logprobs") or {}).get("tokens") or [])]
            wlps = (w.get("logprobs") or {}).get("tokens")
        check(code == 200 and done and not empty and "".join(t or "" for t in texts) == want and lps == wlps and
              len(steps) - 1 < whole["usage"]["completion_tokens"],
              "%s streamed with stop sequences: %d chunks for %d tokens, empty ones %r; text %r, want %r; "
              "log-probabilities' tokens %r, want %r" % (path, len(steps), whole.get("usage", {}).get(
                  "completion_tokens", 0), empty[:2], texts, want, lps, wlps))


def check_stop_token_ids(srv, src):
    """vLLM's stop_token_ids and min_tokens.  A stop token ends the reply as EOS does (finish_reason stop, its
    text left out and not counted), ignore_eos or not; min_tokens masks EOS and the stop tokens until that many
    tokens are generated (greedy takes the next best, log-probabilities stay the model's) and no stop
    sequence ends in those tokens' text; bad values are 400s naming the field."""
    ids, greedy = read_reference_greedy(src)  # the bundled model's greedy tokens after ids
    k = greedy.index(greedy[2])  # where the token greedy gives at step 3 first comes
    base = {"model": NAME, "prompt": ids, "temperature": 0, "max_tokens": 8}
    code, js = post(srv, "/v1/completions", dict(base, max_tokens=k))
    before = js["choices"][0]["text"] if code == 200 else None  # the text of the tokens before it
    for extra in ({"stop_token_ids": [greedy[2]]}, {"stop_token_ids": [7000, greedy[2]], "ignore_eos": True}):
        code, js = post(srv, "/v1/completions", dict(base, **extra))
        ch = (js.get("choices") or [{}])[0]
        check(code == 200 and ch.get("text") == before and ch.get("finish_reason") == "stop" and
              js["usage"]["completion_tokens"] == k, "stop_token_ids %r: %d %r (want %r, %d tokens)" % (
                  extra, code, js, before, k))
        _, chunks, done = sse(srv, "/v1/completions", dict(base, stream=True, **extra))
        check(done and "".join(x["text"] for c in chunks for x in c["choices"]) == before and
              chunks[-1]["choices"][0]["finish_reason"] == "stop" and usage_sum(chunks)["completion_tokens"] == k,
              "stop_token_ids %r streamed: %r" % (extra, chunks[-2:]))
    # chat: the token its greedy reply has at step 3 (the id its text tokenizes to)
    chat = {"model": NAME, "messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 8,
            "temperature": 0, "logprobs": True}
    code, js = post(srv, "/v1/chat/completions", chat)
    pieces = [bytes(e["bytes"]).decode() for e in js["choices"][0]["logprobs"]["content"]] if code == 200 else []
    tid = post(srv, "/tokenize", {"prompt": pieces[2] if len(pieces) > 2 else "", "add_special_tokens": False})[1]
    check(code == 200 and len(pieces) > 2 and len(tid.get("tokens", [])) == 1, "chat greedy: %r, %r" % (pieces, tid))
    if len(tid.get("tokens", [])) == 1:
        k = pieces.index(pieces[2])
        code, js = post(srv, "/v1/chat/completions", dict(chat, stop_token_ids=tid["tokens"]))
        ch = (js.get("choices") or [{}])[0]
        check(code == 200 and ch["message"]["content"] == "".join(pieces[:k]) and ch["finish_reason"] == "stop" and
              js["usage"]["completion_tokens"] == k, "chat stop_token_ids %r: %d %r" % (tid["tokens"], code, js))
        # min_tokens masks a stop token: the first token is not the greedy one, and the reply goes on
        first = post(srv, "/tokenize", {"prompt": pieces[0], "add_special_tokens": False})[1].get("tokens")
        code, js = post(srv, "/v1/chat/completions", dict(chat, stop_token_ids=first, min_tokens=2))
        got = [bytes(e["bytes"]).decode() for e in ((js.get("choices") or [{}])[0].get("logprobs") or {}).get(
            "content", [])]
        check(code == 200 and len(got) >= 2 and got[0] != pieces[0], "chat min_tokens 2, stop_token_ids %r: %d %r" % (
            first, code, js))
    # the model's greedy first token here is EOS (id 0): min_tokens goes on past it, to the next best token, and
    # the log-probabilities are those of the model, EOS still the most likely
    eos_first = {"model": NAME, "prompt": "if __name__ == \"__main__\":\n    main()\n", "max_tokens": 6,
                 "temperature": 0, "logprobs": 2}
    code, js = post(srv, "/v1/completions", eos_first)
    check(code == 200 and js["usage"]["completion_tokens"] == 0 and js["choices"][0]["finish_reason"] == "stop",
          "EOS first: %d %r" % (code, js))
    for stream in (False, True):
        if stream:
            _, chunks, done = sse(srv, "/v1/completions", dict(eos_first, min_tokens=3, stream=True))
            code, n, lps = 200 if done else 0, usage_sum(chunks).get("completion_tokens", 0), [
                x.get("logprobs") or {} for c in chunks for x in c["choices"]]
        else:
            code, js = post(srv, "/v1/completions", dict(eos_first, min_tokens=3))
            n, lps = js.get("usage", {}).get("completion_tokens", 0), [
                x.get("logprobs") or {} for x in js.get("choices") or []]
        top = [t for lp in lps for t in lp.get("top_logprobs") or []]
        chosen = [v for lp in lps for v in lp.get("token_logprobs") or []]
        alt = sorted(top[0].items(), key=lambda kv: -kv[1]) if top else []
        check(code == 200 and n >= 3 and len(alt) == 2 and alt[0][0] == "<|endoftext|>" and chosen[:1] == [alt[1][1]],
              "min_tokens 3 past EOS (stream %s): %d, %d tokens, first alternatives %r, chosen %r" % (
                  stream, code, n, alt, chosen[:1]))
    # min_tokens and stop sequences (vLLM's rule): one that ends in the text of the first min_tokens tokens
    # does not count, the first that ends after does, even when it began in that text
    body = {"model": NAME, "prompt": "def add(a, b):", "max_tokens": 30, "temperature": 0, "logprobs": 0,
            "ignore_eos": True}
    code, js = post(srv, "/v1/completions", body)
    toks = js["choices"][0]["logprobs"]["tokens"] if code == 200 else []
    full, quiet = "".join(toks), len("".join(toks[:4]))
    at = full.find("\n", quiet)
    check(code == 200 and 0 <= full.find("\n") < quiet and at >= 0,
          "no line break before and after 4 tokens: %r" % toks)
    for stream in (False, True):
        if stream:
            _, chunks, done = sse(srv, "/v1/completions", dict(body, stop="\n", min_tokens=4, stream=True))
            text, why = "".join(x["text"] for c in chunks for x in c["choices"]), chunks[-1]["choices"][0][
                "finish_reason"] if done else None
        else:
            code, js = post(srv, "/v1/completions", dict(body, stop="\n", min_tokens=4))
            text, why = (js["choices"][0]["text"], js["choices"][0]["finish_reason"]) if code == 200 else (None, None)
        check(text == full[:at] and why == "stop", "stop \\n, min_tokens 4 (stream %s): %r, want %r" % (
            stream, text, full[:at]))
    # bad values: 400s that name the field (and both counts)
    for path, extra, says in (
            ("/v1/completions", {"stop_token_ids": [8192]}, "'stop_token_ids[0]' = 8192 is outside the vocabulary"),
            ("/v1/completions", {"stop_token_ids": [1, -1]}, "'stop_token_ids[1]'"),
            ("/v1/completions", {"stop_token_ids": 5}, "'stop_token_ids'"),
            ("/v1/completions", {"stop_token_ids": list(range(65))}, "at most 64"),
            ("/v1/completions", {"min_tokens": -1}, "'min_tokens'"),
            ("/v1/completions", {"min_tokens": 10, "max_tokens": 5}, "'min_tokens' = 10 is more than 'max_tokens' = 5"),
            ("/v1/completions", {"min_tokens": 17}, "min_tokens = 17 is more than max_tokens = 16"),
            ("/v1/chat/completions", {"min_tokens": 3, "max_completion_tokens": 2},
             "'min_tokens' = 3 is more than 'max_completion_tokens' = 2"),
            ("/v1/chat/completions", {"stop_token_ids": [9000]}, "'stop_token_ids[0]' = 9000"),
            ("/v1/responses", {"min_tokens": 3, "max_output_tokens": 2}, "'max_output_tokens' = 2"),
            ("/v1/responses", {"stop_token_ids": [9000]}, "'stop_token_ids[0]' = 9000")):
        req = {"prompt": "x"} if path == "/v1/completions" else {"input": "x"} if path == "/v1/responses" else {
            "messages": [{"role": "user", "content": "x"}]}
        code, js = post(srv, path, dict(req, **extra))
        check(error_ok(code, js, 400, says), "%s %r: %d %r" % (path, extra, code, js))


def check_errors(srv):
    """Errors name what to fix, in the endpoint's own terms, and always come as the JSON error object:
    a message that quotes bytes that are not UTF-8 (a percent-decoded path) has them as U+FFFD, text
    cut at a byte limit is cut between characters; /v1/responses names its own fields (not those of
    the chat request it becomes) and refuses duplicate keys; ids outside the vocabulary count as
    invalid requests; tools and chat_template_kwargs are checked whatever renders the messages (here
    moeflow's markers); /tokenize and /detokenize answer a model not served 404, as completions do."""
    code, js, out = get_json(srv, "/v1/models/%FF")
    check(error_ok(code, js, 404, "'\ufffd'"), "GET /v1/models/%%FF: %d %r" % (code, out[:300]))
    code, js = post(srv, "/v1/chat/completions", {"messages": [{"role": "a" * 31 + "\u00e9", "content": "hi"}]})
    check(error_ok(code, js, 400, "'%s'" % ("a" * 31)) and "\ufffd" not in js["error"]["message"],
          "a role cut at 32 bytes inside a character: %d %r" % (code, js))
    for body, word in (({"input": "x", "max_output_tokens": 0}, "'max_output_tokens' = 0"),
                       ({"input": "x", "max_output_tokens": 100000}, "max_output_tokens = 100000"),
                       ({"input": [{"role": "user"}]}, "'input[0].content'"),
                       ({"instructions": "i", "input": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]},
                        "'input[1].role' = 'bot'"),
                       ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s"}}}, "'text.format'"),
                       ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s",
                                                           "schema": {"type": "nope"}}}}, "'text.format'")):
        code, js = post(srv, "/v1/responses", body)
        msg = (js.get("error") or {}).get("message", "")
        check(error_ok(code, js, 400, word) and not re.search(r"\bmax_tokens\b|messages|response_format", msg),
              "responses %r: %d %r" % (body, code, js))
    code, out = srv.http("/v1/responses", b'{"input": "x", "max_output_tokens": 1, "input": "y"}')
    check(error_ok(code, json.loads(out), 400, "duplicate"), "responses, a key twice: %d %r" % (code, out[:300]))
    invalid, sched = rejections(srv)
    code, js = post(srv, "/v1/completions", {"prompt": [99999], "echo": True})
    check(error_ok(code, js, 400, "'prompt[0]' = 99999"), "echo of an id outside the vocabulary: %d %r" % (code, js))
    code, js = post(srv, "/v1/completions", {"prompt": "x", "logit_bias": {"9000": 1}})
    check(error_ok(code, js, 400, "'logit_bias' token 9000 is outside the vocabulary") and
          "sampling" not in js["error"]["message"], "logit_bias outside the vocabulary: %d %r" % (code, js))
    now = rejections(srv)
    check(now == (invalid + 2, sched), "ids outside the vocabulary counted as invalid: %r -> %r" % ((invalid, sched), now))
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for extra, word in (({"tools": 5}, "'tools'"), ({"tools": [{"type": "function"}]}, "'tools'[0]"),
                        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}]}, "'tools'[0]"),
                        ({"chat_template_kwargs": 5}, "'chat_template_kwargs'")):
        code, js = post(srv, "/v1/chat/completions", dict(chat, **extra))
        check(error_ok(code, js, 400, word), "markers, %r: %d %r" % (extra, code, js))
    for path, body in (("/tokenize", {"prompt": "a"}), ("/tokenize", {"messages": chat["messages"]}),
                       ("/detokenize", {"tokens": [65]})):
        code, js = post(srv, path, dict(body, model="nope"))
        check(error_ok(code, js, 404, "'nope'"), "%s, model nope: %d %r" % (path, code, js))
        code, js = post(srv, path, dict(body, model=NAME))
        check(code == 200, "%s, model %s: %d %r" % (path, NAME, code, js))
    code, js = post(srv, "/v1/completions", {"prompt": [["a"]]})
    check(error_ok(code, js, 400, "'prompt[0]' must be a string or an array of token ids"),
          "a nested array as the prompt: %d %r" % (code, js))
    code, js = post(srv, "/v1/chat/completions", dict(chat, response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "string", "maxLength": 2 ** 62}}}))
    check(error_ok(code, js, 400, "4294967294"), "maxLength 2**62: %d %r" % (code, js))


def check_responses_store(moeflow):
    """responses-store 2: a slot a DELETE emptied takes the next response; the oldest goes only when
    both hold one."""
    srv = Server(moeflow, "--responses-store", "2")
    try:
        body = {"input": "x", "max_output_tokens": 1}
        ids = [post(srv, "/v1/responses", body)[1].get("id", "") for _ in range(3)]  # A, B, C: A goes
        code, _, _ = raw(srv, "DELETE", "/v1/responses/" + ids[2], {})
        ids.append(post(srv, "/v1/responses", body)[1].get("id", ""))               # D: in C's slot
        codes = [srv.http("/v1/responses/" + i)[0] for i in ids]
        check(code == 200 and codes == [404, 200, 404, 200], "kept after DELETE: %d, %r" % (code, codes))
        ids.append(post(srv, "/v1/responses", body)[1].get("id", ""))               # E: B goes
        codes = [srv.http("/v1/responses/" + i)[0] for i in ids]
        check(codes == [404, 404, 404, 200, 200], "kept when full: %r" % codes)
        check(srv.stop() == 0, "responses-store server: exit status")
    finally:
        srv.kill()


def model_logprobs(moeflow, ids):
    """log_softmax of `moeflow logits` at every position of ids (the engine outside the server)."""
    import math
    import struct
    import subprocess
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "l.safetensors")
        subprocess.run([moeflow, "logits", "--ids", ",".join(map(str, ids)), "--out", out], check=True,
                       capture_output=True)
        b = open(out, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    t = json.loads(b[8:8 + n])["logits"]
    rows, vocab = t["shape"]
    flat = struct.unpack("<%df" % (rows * vocab), b[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]])
    res = []
    for r in range(rows):
        row = flat[r * vocab:(r + 1) * vocab]
        mx = max(row)
        lz = mx + math.log(sum(math.exp(v - mx) for v in row))
        res.append([v - lz for v in row])
    return res


def check_echo(srv, moeflow):
    """echo: the prompt comes back first, with its tokens' log-probabilities (the first null), which are
    the model's own: log-softmax of the logits at the position before each token.  The prompt is longer
    than a prefill chunk, so the values cross chunks."""
    ids = ([324, 285, 2974, 263, 1132, 1301, 8, 78] * 20)[:150]
    lsm = model_logprobs(moeflow, ids)
    code, js = post(srv, "/v1/completions", {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1})
    ch, usage = js.get("choices", [{}])[0], js.get("usage", {})
    lp = ch.get("logprobs") or {}
    ok = code == 200 and usage.get("completion_tokens") == 0 and usage.get("prompt_tokens") == len(ids) and len(
        lp.get("token_logprobs", [])) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    check(ok, "echo, max_tokens 0: %d %r" % (code, str(js)[:400]))
    if ok:
        worst = max(abs(lp["token_logprobs"][i] - lsm[i - 1][ids[i]]) for i in range(1, len(ids)))
        check(worst < 1e-4, "echoed prompt log-probabilities differ from the logits' by %g" % worst)
        check("".join(lp["tokens"]) == ch["text"], "echoed tokens do not make the text")
    body = {"prompt": "def add(a, b):", "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 2}
    code, js = post(srv, "/v1/completions", body)
    plain = post(srv, "/v1/completions", dict(body, echo=False))[1]
    ch, usage = js.get("choices", [{}])[0], js.get("usage", {})
    lp = ch.get("logprobs") or {}
    check(code == 200 and ch.get("text") == "def add(a, b):" + plain["choices"][0]["text"] and
          len(lp.get("tokens", [])) == usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0) and
          lp["token_logprobs"][usage["prompt_tokens"]:] == plain["choices"][0]["logprobs"]["token_logprobs"],
          "echo with a continuation: %d %r / %r" % (code, str(js)[:300], str(plain)[:300]))
    _, chunks, done = sse(srv, "/v1/completions", dict(body, stream=True))
    check(done and "".join(c["choices"][0]["text"] for c in chunks if c.get("choices")) == ch.get("text"),
          "streamed echo: %r" % chunks[:2])
    # the prompt alone without log-probabilities; and a token-id prompt whose bytes are not UTF-8 (160 is
    # the byte 0xe3, a character's first byte alone): its echo is valid JSON, the byte as U+FFFD
    for prompt, extra, want in (("def add", {}, "def add"), ([160], {"logprobs": 0}, "\ufffd")):
        for stream in (False, True):
            b = dict({"prompt": prompt, "max_tokens": 0, "echo": True, "stream": stream}, **extra)
            if stream:
                _, chunks, done = sse(srv, "/v1/completions", b)
                text, fin = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices")), done
            else:
                code, js = post(srv, "/v1/completions", b)
                text, fin = (js.get("choices") or [{}])[0].get("text"), code == 200
            check(fin and text == want, "echo of %r (stream %s): %r" % (prompt, stream, text))
    # a request that fails before its prompt is scored (its deadline passes in the prefill of a long
    # prompt) streams the error alone, not the prompt with log-probabilities it never computed
    _, chunks, done = sse(srv, "/v1/completions", {"prompt": "def add(a, b):\n    return a + b\n" * 40,
                                                    "max_tokens": 2, "echo": True, "logprobs": 1, "stream": True,
                                                    "timeout": 0.001})
    check(done and [c.get("error", {}).get("code") for c in chunks] == [504],
          "echo, deadline in the prefill: %r" % [str(c)[:200] for c in chunks])
    # an id outside the vocabulary is the client's error, as without echo
    code, js = post(srv, "/v1/completions", {"prompt": [5, 99999999], "max_tokens": 1, "echo": True})
    check(error_ok(code, js, 400, "99999999"), "echo of an id outside the vocabulary: %d %r" % (code, js))
    code, js = post(srv, "/v1/completions", {"prompt": "def", "max_tokens": 0})
    check(error_ok(code, js, 400, "'max_tokens'"), "max_tokens 0 without echo: %d %r" % (code, js))
    code, js = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True})
    check(error_ok(code, js, 400, "'echo'"), "chat echo: %d %r" % (code, js))


def raw(srv, method, path, headers, body=None):
    """(status, headers dict with lower-case names, body) of one request."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=scaled(60))
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    c.close()
    return out


def check_cors(srv):
    """cors-origin (this server: two origins): browser requests from them are answered with
    Access-Control-Allow-Origin (and Vary), preflights get the methods and the headers asked for; other
    origins get no CORS header and a 403 preflight; requests without Origin are as before."""
    allowed, other = "http://localhost:3000", "https://evil.example"
    body = json.dumps({"prompt": "x", "max_tokens": 2})
    for origin, want in ((allowed, allowed), ("https://APP.example", "https://APP.example"), (other, None),
                         (None, None)):
        hd = {"Content-Type": "application/json"}
        if origin:
            hd["Origin"] = origin
        code, h, out = raw(srv, "POST", "/v1/completions", hd, body)
        check(code == 200 and h.get("access-control-allow-origin") == want and
              (h.get("vary") == "Origin") == (want is not None),
              "POST from %r: %d %r" % (origin, code, h))
    code, h, out = raw(srv, "POST", "/v1/chat/completions", {"Origin": allowed}, json.dumps(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}))
    check(code == 200 and h.get("access-control-allow-origin") == allowed and out.endswith(b"data: [DONE]\n\n"),
          "streamed from an allowed origin: %d %r" % (code, h))
    asked = "content-type, authorization, x-stainless-os"
    code, h, out = raw(srv, "OPTIONS", "/v1/chat/completions", {
        "Origin": allowed, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked})
    check(code == 204 and h.get("access-control-allow-origin") == allowed and
          h.get("access-control-allow-methods") == "POST, OPTIONS" and h.get("access-control-allow-headers") == asked
          and "content-length" not in h and out == b"", "preflight: %d %r %r" % (code, h, out))
    code, h, _ = raw(srv, "OPTIONS", "/v1/models", {"Origin": allowed, "Access-Control-Request-Method": "GET"})
    check(code == 204 and h.get("access-control-allow-methods") == "GET, HEAD, OPTIONS", "models preflight: %d %r" % (
        code, h))
    code, h, _ = raw(srv, "OPTIONS", "/v1/responses/resp_x", {"Origin": allowed, "Access-Control-Request-Method": "DELETE"})
    check(code == 204 and h.get("access-control-allow-methods") == "GET, HEAD, DELETE, OPTIONS",
          "kept responses' preflight: %d %r" % (code, h))
    code, h, _ = raw(srv, "PUT", "/v1/responses/resp_x", {}, "")
    check(code == 405 and h.get("allow") == "GET, HEAD, DELETE", "PUT on a kept response: %d %r" % (code, h))
    code, h, out = raw(srv, "OPTIONS", "/v1/chat/completions", {"Origin": other, "Access-Control-Request-Method": "POST"})
    check(code == 403 and "access-control-allow-origin" not in h and b"cors-origin" in out,
          "preflight from another origin: %d %r %r" % (code, h, out))


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
    # created: when the server started, the same on every call
    time.sleep(1.1)
    code, again = srv.http("/v1/models")
    check(code == 200 and json.loads(again)["data"][0]["created"] == listed[0]["created"] <= time.time(),
          "models created: %r then %r" % (out[:200], again[:200]))
    code, js, out = get_json(srv, "/v1/models/gpt-4")
    check(error_ok(code, js, 404, "gpt-4"), "retrieve of another model: %d %r" % (code, out[:300]))
    code, out = srv.http("/v1/models/" + urllib.parse.quote(NAME, safe=""), b"{}")
    check(code == 405, "POST to a model: %d" % code)


def check_default_max_tokens(srv, moeflow, src):
    """Without max_tokens: completions get OpenAI's 16; chat runs to the end of the context (as OpenAI's
    chat API has no default cap), unless the server sets default-max-tokens, which then holds for both."""
    ctx = json.load(open(os.path.join(src, "models", "pycode-moe-18m", "config.json")))["max_position_embeddings"]
    code, js = post(srv, "/v1/completions", {"prompt": "def add(a, b):", "ignore_eos": True})
    check(code == 200 and js["usage"]["completion_tokens"] == 16, "completions default: %d %r" % (code, js.get("usage")))
    chat = {"messages": [{"role": "user", "content": "def add(a, b):"}], "ignore_eos": True}
    code, js = post(srv, "/v1/chat/completions", chat)
    u = js.get("usage", {})
    check(code == 200 and u.get("total_tokens") == ctx and js["choices"][0]["finish_reason"] == "length",
          "chat without max_tokens: %d %r (context %d)" % (code, u, ctx))
    code, js = post(srv, "/v1/chat/completions", dict(chat, max_completion_tokens=None, max_tokens=None))
    check(code == 200 and js.get("usage", {}).get("total_tokens") == ctx, "chat with null max_tokens: %d %r" % (
        code, js.get("usage")))
    # without max-ctx the context is cut so that the KV cache fits kv-cache-bytes: 20 MiB over 32 sequences
    # at 3072 bytes per token (a BF16 cache) is 213 tokens each
    capped = Server(moeflow, "--default-max-tokens", "5", "--kv-cache-bytes", "20M", "--max-seqs", "32",
                    "--kv-dtype", "bf16")
    try:
        code, out = capped.http("/v1/models")
        js = json.loads(out) if code == 200 else {}
        check(code == 200 and js["data"][0].get("max_model_len") == 213, "kv-cache-bytes 20M: %d %r" % (code, out[:300]))
        check("context 213 tokens per sequence" in capped.output() and "kv-cache-bytes (20.0 MiB)" in capped.output(),
              "kv-cache-bytes 20M: the cut's warning %r" % capped.output()[:400])
        for path, body in (("/v1/chat/completions", chat), ("/v1/completions", {"prompt": "x", "ignore_eos": True})):
            code, js = post(capped, path, body)
            check(code == 200 and js.get("usage", {}).get("completion_tokens") == 5,
                  "default-max-tokens 5, %s: %d %r" % (path, code, js.get("usage")))
        # without cors-origin a browser's preflight is a method the path does not take
        code, h, _ = raw(capped, "OPTIONS", "/v1/completions", {"Origin": "https://app.example",
                                                                 "Access-Control-Request-Method": "POST"})
        check(code == 405 and "access-control-allow-origin" not in h, "preflight without cors-origin: %d %r" % (code, h))
        check(capped.stop() == 0, "default-max-tokens server: exit status")
    finally:
        capped.kill()
    # a budget that holds too little, or is not a size: no start, the message says what to change
    for flags, says in ((("--kv-cache-bytes", "100K"), b"lower max-seqs"), (("--kv-cache-bytes", "lots"), b"kv-cache-bytes")):
        r = subprocess.run([moeflow, "serve", *flags, "--grpc-port", "0", "--http-port", str(free_port())],
                           capture_output=True, timeout=120)
        check(r.returncode != 0 and says in r.stderr, "serve %s: %d %r" % (" ".join(flags), r.returncode, r.stderr[-300:]))


def check_default_over_context(srv):
    """A prompt that leaves less room than the default max_tokens (16) is a 400 that says the 16 is the
    server's default, not a value the request sent; one that sent max_tokens is told to lower it."""
    code, out = srv.http("/v1/models")
    ctx = json.loads(out)["data"][0]["max_model_len"]
    ids = [100 + i % 50 for i in range(ctx - 8)]
    code, js = post(srv, "/v1/completions", {"prompt": ids})
    msg = js.get("error", {}).get("message", "")
    check(code == 400 and "max_tokens (16, this server's default: the request gave none)" in msg and
          "give a smaller max_tokens" in msg, "a prompt of context - 8 tokens without max_tokens: %d %r" % (code, msg))
    code, js = post(srv, "/v1/completions", {"prompt": ids, "max_tokens": 16})
    msg = js.get("error", {}).get("message", "")
    check(code == 400 and "max_tokens (16) = %d exceeds" % (ctx + 8) in msg and "lower max_tokens" in msg,
          "a prompt of context - 8 tokens with max_tokens 16: %d %r" % (code, msg))
    code, js = post(srv, "/v1/completions", {"prompt": ids, "max_tokens": 8, "ignore_eos": True})
    check(code == 200 and js["usage"]["total_tokens"] == ctx and js["choices"][0]["finish_reason"] == "length",
          "a prompt of context - 8 tokens with max_tokens 8: %d %r" % (code, js))


def check_chat_fill_flight(moeflow):
    """A chat request without max_tokens runs as far as max-tokens-in-flight lets it when that is less than
    the context (each of n choices its share), where it was a 400 naming a max_tokens (the context's room)
    the request never sent; n choices whose prompts alone fill it are a 400 that says so."""
    srv = Server(moeflow, "--max-ctx", "256", "--max-tokens-in-flight", "100")
    try:
        chat = {"messages": [{"role": "user", "content": "def add(a, b):"}], "ignore_eos": True}
        code, js = post(srv, "/v1/chat/completions", dict(chat, max_tokens=1))
        p = js["usage"]["prompt_tokens"]
        code, js = post(srv, "/v1/chat/completions", chat)
        check(code == 200 and js["usage"]["total_tokens"] == 100 and js["choices"][0]["finish_reason"] == "length",
              "chat without max_tokens, max-tokens-in-flight 100: %d %r" % (code, js))
        code, js = post(srv, "/v1/chat/completions", dict(chat, n=3))
        check(code == 200 and js.get("usage", {}).get("completion_tokens") == 3 * (100 // 3 - p) and
              all(c["finish_reason"] == "length" for c in js["choices"]),
              "chat n=3 without max_tokens, max-tokens-in-flight 100 (prompt %d): %d %r" % (p, code, js))
        code, js = post(srv, "/v1/chat/completions", dict(chat, min_tokens=100 - p + 1))
        msg = js.get("error", {}).get("message", "")
        check(code == 400 and "max_tokens = %d (as much as max-tokens-in-flight leaves the reply)" % (100 - p) in msg,
              "chat min_tokens %d without max_tokens, max-tokens-in-flight 100: %d %r" % (100 - p + 1, code, js))
        code, js = post(srv, "/v1/chat/completions", dict(chat, n=100 // p + 1))
        msg = js.get("error", {}).get("message", "")
        check(code == 400 and "max-tokens-in-flight 100" in msg and "lower n" in msg,
              "chat n=%d without max_tokens, max-tokens-in-flight 100: %d %r" % (100 // p + 1, code, js))
        check(srv.stop() == 0, "max-tokens-in-flight server: exit status")
    finally:
        srv.kill()
    # max-output below both: the reply's bound is max-output, which a min_tokens above it is told (not the
    # context's or max-tokens-in-flight's room, which are larger), and giving max_tokens cannot raise it
    for flags in (("--max-ctx", "256", "--max-output", "20"),
                  ("--max-ctx", "256", "--max-tokens-in-flight", "100", "--max-output", "20")):
        srv = Server(moeflow, *flags)
        try:
            chat = {"messages": [{"role": "user", "content": "def add(a, b):"}], "ignore_eos": True}
            code, js = post(srv, "/v1/chat/completions", dict(chat, min_tokens=21))
            msg = js.get("error", {}).get("message", "")
            check(code == 400 and "min_tokens = 21 is more than max_tokens = 20 (this server's max-output)" in msg and
                  "raise max_tokens" not in msg, "chat min_tokens 21 without max_tokens, %s: %d %r" % (flags, code, js))
            code, js = post(srv, "/v1/chat/completions", chat)
            check(code == 200 and js["usage"]["completion_tokens"] == 20, "chat without max_tokens, %s: %d %r" % (
                  flags, code, js))
            check(srv.stop() == 0, "max-output server: exit status")
        finally:
            srv.kill()


def responses_sse(srv, body):
    """The events of a streamed /v1/responses request: [(type, data)], each framed as 'event: T' and
    'data: {...}' lines and a blank line, with no [DONE] after the last."""
    req = urllib.request.Request(srv.url("/v1/responses"), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=scaled(60)) as r:
        ctype, raw = r.headers.get("Content-Type"), r.read().decode()
    check(ctype == "text/event-stream", "responses stream Content-Type %r" % ctype)
    out = []
    for e in raw.split("\n\n")[:-1]:
        lines = e.split("\n")
        check(len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "),
              "responses event framing %r" % e[:200])
        if len(lines) == 2:
            out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


def check_responses(srv):
    """POST /v1/responses: the chat completion's text and usage for the same messages, whole or
    streamed as numbered events whose deltas add up to it; text.format as response_format; a function
    tool with tool_choice required as a function_call item; what it cannot serve is a 400."""
    body = {"input": "def add(a, b):", "instructions": "Python only.", "max_output_tokens": 24, "temperature": 0}
    code, js = post(srv, "/v1/chat/completions", {"messages": [{"role": "system", "content": "Python only."},
                                                               {"role": "user", "content": "def add(a, b):"}],
                                                  "max_tokens": 24, "temperature": 0})
    want = js["choices"][0]["message"]["content"]
    code, r = post(srv, "/v1/responses", body)
    out = r.get("output") or [{}]
    text = ((out[0].get("content") or [{}])[0]).get("text")
    check(code == 200 and r.get("object") == "response" and r.get("id", "").startswith("resp_") and
          out[0].get("type") == "message" and text == want and
          r.get("usage") == {"input_tokens": js["usage"]["prompt_tokens"], "output_tokens": 24,
                             "total_tokens": js["usage"]["prompt_tokens"] + 24,
                             "input_tokens_details": {"cached_tokens": js["usage"]["prompt_tokens"] - 1},
                             "output_tokens_details": {"reasoning_tokens": 0}} and
          r.get("status") == "incomplete" and r.get("incomplete_details") == {"reason": "max_output_tokens"} and
          r.get("instructions") == "Python only.", "responses: %d %r (chat text %r)" % (code, r, want))
    ev = responses_sse(srv, dict(body, stream=True))
    types = [t for t, _ in ev]
    deltas = "".join(d["delta"] for t, d in ev if t == "response.output_text.delta")
    check(types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.incomplete" and
          [d["sequence_number"] for _, d in ev] == list(range(len(ev))) and deltas == want and
          ev[-1][1]["response"]["output"][0]["content"][0]["text"] == want,
          "responses stream: %r, deltas %r (want %r)" % (types, deltas, want))
    # text.format json_schema: the chat completion's JSON
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    code, js = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "n?"}], "max_tokens": 40,
                                                  "temperature": 0, "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "s", "schema": schema}}})
    code2, r = post(srv, "/v1/responses", {"input": "n?", "max_output_tokens": 40, "temperature": 0,
                                           "text": {"format": {"type": "json_schema", "name": "s", "schema": schema}}})
    text = (((r.get("output") or [{}])[0].get("content") or [{}])[0]).get("text")
    check(code2 == 200 and text == js["choices"][0]["message"]["content"] and json.loads(text).keys() == {"n"},
          "responses json_schema: %d %r" % (code2, r))
    # a function tool, required: one function_call item whose arguments follow its parameters
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    code, r = post(srv, "/v1/responses", {"input": "weather?", "tools": [tool], "tool_choice": "required",
                                          "max_output_tokens": 120, "temperature": 0})
    items = r.get("output") or []
    calls = [i for i in items if i.get("type") == "function_call"]
    args = json.loads(calls[0]["arguments"]) if calls else {}
    check(code == 200 and len(calls) == 1 and calls[0]["name"] == "get_weather" and calls[0]["call_id"] and
          set(args) == {"city", "unit"} and r.get("status") == "completed", "responses tool call: %d %r" % (code, r))
    ev = responses_sse(srv, {"input": "weather?", "tools": [tool], "tool_choice": "required", "max_output_tokens": 120,
                             "temperature": 0, "stream": True})
    done = [d for t, d in ev if t == "response.function_call_arguments.done"]
    check(len(done) == 1 and done[0]["arguments"] == calls[0]["arguments"] if calls else False,
          "responses streamed tool call: %r" % [t for t, _ in ev])
    # kept responses: previous_response_id goes on from one (as chat completions with the whole
    # conversation), GET answers it, DELETE forgets it; "store": false keeps nothing
    first = {"input": "def add(a, b):", "max_output_tokens": 8, "temperature": 0}
    code, r1 = post(srv, "/v1/responses", first)
    t1 = r1["output"][0]["content"][0]["text"]
    code, r2 = post(srv, "/v1/responses", {"previous_response_id": r1["id"], "input": "def sub(a, b):",
                                           "max_output_tokens": 8, "temperature": 0})
    code_c, js = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "def add(a, b):"},
                                                                 {"role": "assistant", "content": t1},
                                                                 {"role": "user", "content": "def sub(a, b):"}],
                                                    "max_tokens": 8, "temperature": 0})
    check(code == 200 and r1.get("store") is True and
          r2["output"][0]["content"][0]["text"] == js["choices"][0]["message"]["content"] and
          r2["usage"]["input_tokens"] == js["usage"]["prompt_tokens"],
          "previous_response_id: %d %r, chat %r" % (code, r2, js))
    req = urllib.request.Request(srv.url("/v1/responses/" + r1["id"]))
    with urllib.request.urlopen(req, timeout=scaled(10)) as resp:
        kept = json.loads(resp.read())
    check(kept == r1, "GET a kept response: %r, answered %r" % (kept, r1))
    req = urllib.request.Request(srv.url("/v1/responses/" + r1["id"]), method="DELETE")
    with urllib.request.urlopen(req, timeout=scaled(10)) as resp:
        gone = json.loads(resp.read())
    check(gone == {"id": r1["id"], "object": "response", "deleted": True}, "DELETE: %r" % gone)
    for rid in (r1["id"], "resp_none"):
        try:
            urllib.request.urlopen(urllib.request.Request(srv.url("/v1/responses/" + rid)), timeout=scaled(10))
            check(False, "GET %s after DELETE (or never kept) answered" % rid)
        except urllib.error.HTTPError as e:
            check(e.code == 404, "GET %s: %d" % (rid, e.code))
    code, r3 = post(srv, "/v1/responses", dict(first, store=False))
    code2, js = post(srv, "/v1/responses", {"previous_response_id": r3["id"], "input": "x"})
    check(code == 200 and r3.get("store") is False and error_ok(code2, js, 404, "is not kept here"),
          "store false: %r, then %d %r" % (r3.get("store"), code2, js))
    ev = responses_sse(srv, dict(first, stream=True))
    sid = ev[-1][1]["response"]["id"]
    with urllib.request.urlopen(urllib.request.Request(srv.url("/v1/responses/" + sid)), timeout=scaled(10)) as resp:
        kept = json.loads(resp.read())
    check(kept == ev[-1][1]["response"], "a streamed response kept: %r" % kept)
    for extra, word in (({"conversation": "conv_1"}, "'conversation' is not supported"),
                        ({"tools": [{"type": "web_search"}]}, "function tools only"),
                        ({"input": [{"type": "input_image", "image_url": "x"}]}, "'input[0]' of type 'input_image'")):
        code, js = post(srv, "/v1/responses", dict({"input": "x"}, **extra))
        check(error_ok(code, js, 400, word), "responses %r: %d %r" % (extra, code, js))


def main():
    moeflow = sys.argv[1]
    srv = Server(moeflow, "--model-name", NAME, "--cors-origin", "https://app.example, http://localhost:3000",
                 *sys.argv[3:])
    return run_server_test("test_serve_openai", srv, check, check_models, check_stream_usage, check_params,
                           check_n, lambda s: check_batch(s, moeflow), check_tokenize, lambda s: check_json(s, moeflow),
                           lambda s: check_json_schema(s, moeflow), check_structured, check_tools, check_logprobs,
                           check_stop_logprobs, check_stream_held_text, lambda s: check_stop_token_ids(s, sys.argv[2]), check_errors,
                           lambda s: check_responses_store(moeflow),
                           lambda s: check_echo(s, moeflow),
                           lambda s: check_default_max_tokens(s, moeflow, sys.argv[2]),
                           check_default_over_context, lambda s: check_chat_fill_flight(moeflow), check_cors,
                           check_responses, lambda s: check_inf_logits(moeflow, sys.argv[2]))

if __name__ == "__main__":
    sys.exit(main())
