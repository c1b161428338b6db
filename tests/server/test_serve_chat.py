"""Integration: chat prompts through a model's chat template.
usage: test_serve_chat.py MOEFLOW_BINARY SOURCE_DIR

A copy of the bundled model (links) gets a tokenizer_config.json with a
ChatML-style template of this test's own; /v1/chat/completions must then run
on exactly the text that template makes (its token count is compared with
`moeflow tokenize` of the expected text), pass chat_template_kwargs to it,
take vLLM's add_generation_prompt and continue_final_message (the kwargs over
them; a continued reply starts from the assistant's text as cut by
transformers' rule, and its tokens go on from there as a completion of that
text would), as moeflow's markers do too,
turn its raise_exception() into a 400 that keeps the server serving, and
`--chat-template markers` / FILE / a template outside the subset must do what
`moeflow serve --help` says; an earlier tool call's arguments reach a template as the JSON value,
or as the client's text when the template fails with the value (DeepSeek-V3's `+` into a ```json
fence), exactly as Jinja2 renders each (and a Mixtral checkpoint with a SentencePiece tokenizer writes a
generated run of byte tokens as the Hugging Face ByteFallback decoder does); with
`--reasoning-parser think`, a reply's <think>...</think> (or, when
the prompt opened the block, its text up to </think>) is reasoning_content, whole and streamed; output
held to JSON is free inside the block and JSON after it."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import Server, Checks, free_port, gen_stubs  # noqa: E402

check = Checks()

TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m.role not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('role ' ~ m.role ~ ' is not allowed') }}"
    "{%- endif %}"
    "{{- '<|' ~ m.role ~ '|>\\n' ~ m.content | trim ~ eos_token ~ '\\n' }}"
    "{%- endfor %}"
    "{%- if greeting is defined %}{{ greeting }}{% endif %}"
    "{%- if tools %}{{ tools | length }} tools: {{ tools | map(attribute='function') | map(attribute='name') | join(',') }}{% endif %}"
    "{%- if documents %}{% for d in documents %}[doc {{ d.title }}: {{ d.text }}]{% endfor %}{% endif %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def model_copy(src, tmp, config):
    d = os.path.join(tmp, "model")
    os.mkdir(d)
    base = os.path.join(os.path.abspath(src), "models", "pycode-moe-18m")
    for f in os.listdir(base):
        if f != "tokenizer_config.json":  # written below: never through a link into the bundled model
            os.symlink(os.path.join(base, f), os.path.join(d, f))
    if config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    return d


def n_tokens(moeflow, model, text):
    r = subprocess.run([moeflow, "tokenize", "--model", model, "--text", text], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return len(json.loads(r.stdout))


def chat(srv, messages, **extra):
    body = dict(messages=messages, max_tokens=2, **extra)
    code, out = srv.http("/v1/chat/completions", json.dumps(body).encode())
    return code, json.loads(out)


def rendered(srv, messages, **extra):
    """The text a chat's messages render to (through /tokenize and /detokenize), or the error message."""
    code, raw = srv.http("/tokenize", json.dumps(dict(messages=messages, **extra)).encode())
    if code != 200:
        return code, json.loads(raw).get("error", {}).get("message", raw)
    code, raw = srv.http("/detokenize", json.dumps({"tokens": json.loads(raw)["tokens"]}).encode())
    return code, json.loads(raw).get("prompt") if code == 200 else raw


# DeepSeek-V3's and R1's way with earlier tool calls: the arguments joined into a ```json fence with +
DS_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<｜Assistant｜>' + (message['content'] or '') + '<｜tool▁calls▁begin｜>' }}"
    "{%- for tool in message['tool_calls'] %}"
    "{{ '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n'"
    " + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>' }}"
    "{%- endfor %}{{ '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' }}"
    "{%- elif message['role'] == 'tool' %}{{ '<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>' }}"
    "{%- endif %}{%- endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}")
DS_WANT = ("<｜User｜>weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
           "get_weather\n```json\n{\"city\": \"Paris\", \"n\": 2}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function"
           "<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
           "<｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜><｜Assistant｜>")
# Llama-3.1's and Qwen's way: the arguments through tojson, which needs the object
TOJSON_TEMPLATE = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% for c in m.tool_calls or [] %}"
                   "<call {{ c.function.name }} {{ c.function.arguments | tojson }}>{% endfor %}{% endfor %}")
TOJSON_WANT = '[user] weather?[assistant] <call get_weather {"city": "Paris", "n": 2}><call now {}>[tool] sunny'
# fails with the object (its own raise_exception) and with the text (a string has no items())
FAILS_TEMPLATE = ("{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.arguments.items() | list }}"
                  "{% if c.function.name == 'now' %}{{ raise_exception('no call may be made to now') }}{% endif %}"
                  "{% endfor %}{% endfor %}")


def check_generation_fields(srv, moeflow, model, msgs, want):
    """add_generation_prompt and continue_final_message on TEMPLATE (which trims each content): the text
    each renders (as Jinja2 and transformers' apply_chat_template make it), the kwargs over the fields, a
    continued reply's tokens going on from the cut text, and the 400s."""
    no_prompt = want[:-len("<|assistant|>\n")]
    for extra, text in (({"add_generation_prompt": False}, no_prompt),
                        ({"chat_template_kwargs": {"add_generation_prompt": False}}, no_prompt),
                        ({"add_generation_prompt": False, "chat_template_kwargs": {"add_generation_prompt": True}},
                         want),
                        ({"add_generation_prompt": True}, want)):
            got = rendered(srv, msgs, **extra)
            check(got == (200, text), "%s: %s" % (extra, got))
            code, out = chat(srv, msgs, **extra)
            check(code == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, model, text),
                  "%s: %d %s" % (extra, code, out))
    # the assistant's text trimmed by the template: cut after its stripped text, without the trailing space
    reply = msgs + [{"role": "assistant", "content": "    return a "}]
    cont = no_prompt + "<|assistant|>\nreturn a"
    for extra in ({"add_generation_prompt": False, "continue_final_message": True},
                  {"chat_template_kwargs": {"add_generation_prompt": False, "continue_final_message": True}}):
        got = rendered(srv, reply, **extra)
        check(got == (200, cont), "continued %s: %s" % (extra, got))
    body = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    code, raw = srv.http("/v1/chat/completions", json.dumps(dict(
        body, messages=reply, add_generation_prompt=False, continue_final_message=True)).encode())
    out = json.loads(raw)
    code2, raw2 = srv.http("/v1/completions", json.dumps(dict(body, prompt=cont)).encode())
    out2 = json.loads(raw2)
    check(code == 200 and code2 == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, model, cont) and
          out["choices"][0]["message"]["content"] == out2["choices"][0]["text"],
          "continued reply: %d %s, completion of the cut text: %d %s" % (code, out, code2, out2))
    for extra, msg, what in (
            ({"continue_final_message": True}, reply, "'add_generation_prompt' and 'continue_final_message'"),
            ({"add_generation_prompt": True, "continue_final_message": True}, reply,
             "'add_generation_prompt' and 'continue_final_message'"),
            ({"add_generation_prompt": False, "chat_template_kwargs": {"continue_final_message": 1,
                                                                       "add_generation_prompt": "yes"}}, reply,
             "'add_generation_prompt' and 'continue_final_message'"),
            ({"add_generation_prompt": False, "continue_final_message": True}, msgs,
             "'continue_final_message' needs the last message to be the assistant's, not 'user'"),
            ({"add_generation_prompt": "false"}, msgs, "'add_generation_prompt' must be true or false"),
            ({"continue_final_message": 0}, msgs, "'continue_final_message' must be true or false")):
        code, out = chat(srv, msg, **extra)
        check(code == 400 and what in out["error"]["message"], "%s: %d %s" % (extra, code, out))


def main():
    moeflow, src = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="moeflow_chat_")
    try:
        model = model_copy(src, tmp, {"chat_template": TEMPLATE, "eos_token": {"content": "<|endoftext|>"}})
        msgs = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "def add(a, b):"}]
        want = "<|system|>\nBe brief.<|endoftext|>\n<|user|>\ndef add(a, b):<|endoftext|>\n<|assistant|>\n"
        srv = Server(moeflow, "--model", model)
        try:
            check("chat template of" in srv.output() and "tokenizer_config.json" in srv.output(),
                  "start-up does not name the chat template: %s" % srv.output())
            code, out = chat(srv, msgs)
            check(code == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, model, want),
                  "templated prompt: %d %s (want %d tokens)" % (code, out, n_tokens(moeflow, model, want)))
            parts = [{"role": "system", "content": [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief. "}]},
                     msgs[1]]
            code, out = chat(srv, parts)
            check(code == 200 and out["usage"]["prompt_tokens"] ==
                  n_tokens(moeflow, model, want.replace("Be brief.", "Be\nbrief.")),
                  "content parts: %d %s" % (code, out))
            code, out = chat(srv, msgs, chat_template_kwargs={"greeting": "Hello there"})
            check(code == 200 and out["usage"]["prompt_tokens"] ==
                  n_tokens(moeflow, model, want.replace("<|assistant|>", "Hello there<|assistant|>")),
                  "chat_template_kwargs: %d %s" % (code, out))
            tools = [{"type": "function", "function": {"name": "add", "parameters": {}}},
                     {"type": "function", "function": {"name": "mul", "parameters": {}}}]
            code, out = chat(srv, msgs, tools=tools)
            check(code == 200 and out["usage"]["prompt_tokens"] ==
                  n_tokens(moeflow, model, want.replace("<|assistant|>", "2 tools: add,mul<|assistant|>")),
                  "tools: %d %s" % (code, out))
            code, out = chat(srv, msgs, tools=tools, chat_template_kwargs={"tools": None})  # vLLM: kwargs over tools
            check(code == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, model, want),
                  "kwargs over tools: %d %s" % (code, out))
            docs = [{"title": "a", "text": "one"}, {"title": "b", "text": "two"}]
            code, out = chat(srv, msgs, documents=docs)  # vLLM's documents, as apply_chat_template takes them
            check(code == 200 and out["usage"]["prompt_tokens"] ==
                  n_tokens(moeflow, model, want.replace("<|assistant|>", "[doc a: one][doc b: two]<|assistant|>")),
                  "documents: %d %s" % (code, out))
            code, out = rendered(srv, msgs, documents=docs)
            check(code == 200 and out == want.replace("<|assistant|>", "[doc a: one][doc b: two]<|assistant|>"),
                  "documents rendered: %d %r" % (code, out))
            code, out = chat(srv, msgs, documents=docs, chat_template_kwargs={"documents": None})
            check(code == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, model, want),
                  "kwargs over documents: %d %s" % (code, out))
            for bad, word in (({"text": "x"}, "'documents' must be an array"), (["x"], "'documents'[0] must be an object"),
                              ([{"title": "a"}, {"text": 5}], "'documents'[1]['text'] must be a string")):
                code, out = chat(srv, msgs, documents=bad)
                check(code == 400 and word in out["error"]["message"], "bad documents %r: %d %s" % (bad, code, out))
            code, out = chat(srv, msgs, tools={"add": 1})
            check(code == 400 and "tools" in out["error"]["message"], "bad tools: %d %s" % (code, out))
            code, out = chat(srv, [{"role": "tool", "content": "42"}])
            check(code == 400 and "role tool is not allowed" in out["error"]["message"],
                  "raise_exception: %d %s" % (code, out))
            code, out = chat(srv, msgs, chat_template_kwargs=["x"])
            check(code == 400 and "chat_template_kwargs" in out["error"]["message"], "bad kwargs: %d %s" % (code, out))
            code, out = chat(srv, [{"role": "user", "content": 5}])
            check(code == 400 and "content" in out["error"]["message"], "bad content: %d %s" % (code, out))
            check_generation_fields(srv, moeflow, model, msgs, want)
            code, out = chat(srv, msgs)
            check(code == 200, "still serving after the errors: %d" % code)
        finally:
            check(srv.stop() == 0, "exit status")

        # markers: moeflow's own lines, whatever the model has
        srv = Server(moeflow, "--model", model, "--chat-template", "markers")
        try:
            code, out = chat(srv, msgs)
            markers = "<|system|>\nBe brief. \n<|user|>\ndef add(a, b):\n<|assistant|>\n"
            check(code == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, model, markers),
                  "markers: %d %s" % (code, out))
            no_prompt = markers[:-len("<|assistant|>\n")]
            check(rendered(srv, msgs, add_generation_prompt=False) == (200, no_prompt),
                  "markers, no generation prompt: %s" % (rendered(srv, msgs, add_generation_prompt=False),))
            # the content as it is, with its trailing space when it has no leading one (transformers' rule)
            for content, text in (("    return a ", "    return a"), ("return a ", "return a ")):
                reply = {"role": "assistant", "content": content}
                got = rendered(srv, msgs + [reply], add_generation_prompt=False, continue_final_message=True)
                check(got == (200, no_prompt + "<|assistant|>\n" + text), "markers, continued: %s" % (got,))
        finally:
            srv.stop()

        # a template file, with the model's special tokens
        path = os.path.join(tmp, "t.jinja")
        with open(path, "w") as f:
            f.write("{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}\n")
        srv = Server(moeflow, "--model", model, "--chat-template", path)
        try:
            code, out = chat(srv, msgs)
            text = "[system] Be brief. <|endoftext|>[user] def add(a, b):<|endoftext|>"
            check(code == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, model, text),
                  "template file: %d %s" % (code, out))
        finally:
            srv.stop()

        # a template that asks for <tool_call> blocks: with tools and tool_choice auto the reply is searched
        # for them; this model, '<' favoured, copies the tag from its prompt but writes no call after it, so
        # the reply is its text, streamed alike (the tag's text held, then sent)
        with open(path, "w") as f:
            f.write("{% if tools %}Call a tool as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>\n"
                    "{% endif %}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}\n[assistant] ")
        srv = Server(moeflow, "--model", model, "--chat-template", path)
        try:
            tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
            body = {"messages": [msgs[1]], "tools": tools, "max_tokens": 48, "temperature": 0, "ignore_eos": True,
                    "logit_bias": {"28": 4, "766": 4}}  # '<' and ' <'

            code, raw = srv.http("/v1/chat/completions", json.dumps(body).encode())
            out = json.loads(raw)
            m = (out.get("choices") or [{}])[0].get("message", {})
            text = m.get("content") or ""
            check(code == 200 and "tool_calls" not in m and "<tool_call>" in text and
                  out["choices"][0]["finish_reason"] == "length", "tool_choice auto, no call: %d %s" % (code, out))
            code, raw = srv.http("/v1/chat/completions", json.dumps(dict(body, stream=True)).encode())
            chunks = [json.loads(line[6:]) for line in raw.decode().split("\n")
                      if line.startswith("data: {")]
            streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            check(code == 200 and streamed == text, "streamed %r, whole %r" % (streamed, text))
        finally:
            check(srv.stop() == 0, "exit status")

        # an agent loop's history as OpenAI clients send it: the assistant's content null, its call's
        # arguments JSON text; the template reads the arguments as an object (vLLM's reading; trim_blocks
        # takes the line break after the last block)
        with open(path, "w") as f:
            f.write("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% for c in m.tool_calls or [] %}"
                    "<call {{ c.function.name }}>{% for k, v in c.function.arguments.items() %}{{ k }}={{ v }};"
                    "{% endfor %}{% endfor %}{% endfor %}\n[assistant] ")
        srv = Server(moeflow, "--model", model, "--chat-template", path)
        try:
            history = [{"role": "user", "content": "weather?"},
                       {"role": "assistant", "content": None, "tool_calls": [
                           {"id": "c1", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"n\": 2}"}},
                           {"id": "c2", "type": "function", "function": {"name": "now", "arguments": ""}}]},
                       {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
            code, got = rendered(srv, history)
            want = "[user] weather?[assistant] <call get_weather>city=Paris;n=2;<call now>[tool] sunny[assistant] "
            check(code == 200 and got == want, "tool-call history: %d %r, want %r" % (code, got, want))
        finally:
            check(srv.stop() == 0, "exit status")

        # templates that join the arguments to strings with + (DeepSeek-V3's and R1's shape) fail with
        # the object, as Jinja2 does, and are rendered again with the client's text; the expected
        # texts are Jinja2's (sandboxed, trim_blocks, lstrip_blocks), given the text for DS_TEMPLATE and
        # the object for TOJSON_TEMPLATE (given the text, tojson would quote it)
        history[1]["tool_calls"][1]["function"]["arguments"] = "{}"
        for name, tmpl, want in (("ds", DS_TEMPLATE, DS_WANT), ("tojson", TOJSON_TEMPLATE, TOJSON_WANT),
                                 ("fails", FAILS_TEMPLATE, None)):
            path = os.path.join(tmp, name + ".jinja")
            with open(path, "w", encoding="utf-8") as f:
                f.write(tmpl)
            srv = Server(moeflow, "--model", model, "--chat-template", path)
            try:
                code, got = rendered(srv, history)
                if want is None:  # the error of the render with the object, not that of the one with the text
                    check(code == 400 and "no call may be made to now" in got and "items" not in got,
                          "a template that fails either way: %d %r" % (code, got))
                    continue
                check(code == 200 and got == want, "%s template, tool-call history: %d %r, want %r" %
                      (name, code, got, want))
                # the Responses API's function_call items become the same tool calls, arguments text
                items = [{"role": "user", "content": "weather?"}] + [
                    {"type": "function_call", "call_id": c["id"], "name": c["function"]["name"],
                     "arguments": c["function"]["arguments"]} for c in history[1]["tool_calls"]] + [
                    {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]
                code, raw = srv.http("/v1/responses", json.dumps({"input": items, "max_output_tokens": 1}).encode())
                usage = json.loads(raw).get("usage", {}) if code == 200 else raw
                check(code == 200 and usage.get("input_tokens") == n_tokens(moeflow, model, want),
                      "%s template, responses' function_call items: %d %r" % (name, code, usage))
            finally:
                check(srv.stop() == 0, "exit status")

        # --reasoning-parser think: a reply that opens with <think> (or whose prompt opened it) gives its
        # reasoning as reasoning_content, the rest as content, whole and streamed alike; the reply is
        # forced by a regular expression, since this model never writes the tags by itself
        last = {}  # the reasoning tokens of reply's last request

        def reply(srv, body, opened=False, parser=True):
            code, raw = srv.http("/v1/chat/completions", json.dumps(dict(body, logprobs=True)).encode())
            out = json.loads(raw)
            ch = (out.get("choices") or [{}])[0]
            m = ch.get("message", {})
            code_s, raw_s = srv.http("/v1/chat/completions", json.dumps(dict(body, stream=True, stream_options={
                "include_usage": True})).encode())
            chunks = [json.loads(line[6:]) for line in raw_s.decode().split("\n") if line.startswith("data: {")]
            deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
            streamed = ("".join(d.get("reasoning_content") or "" for d in deltas),
                        "".join(d.get("content") or "" for d in deltas))
            # reasoning tokens: those whose bytes begin before the end of the reply's </think> (all of
            # them when the block never closes; none without a block), counted from the tokens' bytes
            toks = [bytes(t["bytes"]) for t in (ch.get("logprobs") or {}).get("content") or []]
            reply_bytes = b"".join(toks)
            opened = opened or reply_bytes.lstrip().startswith(b"<think>")
            close = reply_bytes.find(b"</think>")
            end = (close + len(b"</think>")) if close >= 0 else (len(reply_bytes) + 1 if opened else 0)
            starts = [sum(len(t) for t in toks[:i]) for i in range(len(toks))]
            want_r = last["reasoning"] = sum(1 for a in starts if a < end)
            got_r = [((u or {}).get("completion_tokens_details") or {}).get("reasoning_tokens")
                     for u in (out.get("usage"), (chunks[-1] if chunks else {}).get("usage"))]
            check(code == 200 and toks and got_r == ([want_r, want_r] if parser else [None, None]),
                  "reasoning tokens %r, want %d of %d (%r)" % (got_r, want_r, len(toks), reply_bytes[:80]))
            return code, code_s, (m.get("reasoning_content"), m.get("content")), streamed

        plain = os.path.join(tmp, "plain.jinja")
        with open(plain, "w") as f:
            f.write("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}\n[assistant] ")
        opens = os.path.join(tmp, "opens.jinja")
        with open(opens, "w") as f:
            f.write("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}\n[assistant] <think>\n")
        user = [{"role": "user", "content": "def add(a, b):"}]
        for tmpl, rx, want in ((plain, "<think>Add them[.]</think>\n\nreturn a [+] b", ("Add them.", "return a + b")),
                               (opens, "Add them[.]</think>\nreturn a [+] b", ("Add them.", "return a + b")),
                               (plain, "return a [+] b", (None, "return a + b"))):
            srv = Server(moeflow, "--model", model, "--chat-template", tmpl, "--reasoning-parser", "think")
            try:
                code, code_s, whole, streamed = reply(srv, {"messages": user, "max_tokens": 40, "temperature": 0,
                                                            "guided_regex": rx}, opened=tmpl == opens)
                check(code == 200 and whole == want, "reasoning %s: %d %r, want %r" % (rx, code, whole, want))
                check(code_s == 200 and streamed == (want[0] or "", want[1]), "streamed %s: %r" % (rx, streamed))
                # the Responses API: a reasoning item (when there is reasoning), then the message
                rbody = {"input": "def add(a, b):", "max_output_tokens": 40, "temperature": 0, "guided_regex": rx}
                code, raw = srv.http("/v1/responses", json.dumps(rbody).encode())
                resp = json.loads(raw) if code == 200 else {}
                items = resp.get("output", [])
                got = {i.get("type"): i["content"][0]["text"] for i in items if i.get("content")}
                check(code == 200 and got.get("reasoning") == want[0] and got.get("message") == want[1] and
                      [i["type"] for i in items] == (["reasoning"] if want[0] else []) + ["message"],
                      "responses with reasoning %s: %d %r" % (rx, code, items))
                check(resp.get("usage", {}).get("output_tokens_details") == {"reasoning_tokens": last["reasoning"]},
                      "responses' reasoning tokens %s: %r, want %d" % (rx, resp.get("usage"), last["reasoning"]))
                code, raw = srv.http("/v1/responses", json.dumps(dict(rbody, stream=True)).encode())
                evs = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
                got = ("".join(e["delta"] for e in evs if e["type"] == "response.reasoning_text.delta"),
                       "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta"))
                check(code == 200 and got == (want[0] or "", want[1]) and evs[-1]["type"] == "response.completed",
                      "responses streamed with reasoning %s: %r" % (rx, got))
            finally:
                check(srv.stop() == 0, "exit status")
        # output held to JSON may reason first, in a block the model opens (this model, not trained to
        # reason, takes the chance: its reply begins with '<'); after a prompt that closed an empty
        # block (reasoning turned off) the reply is JSON from its first byte
        closes = os.path.join(tmp, "closes.jinja")
        with open(closes, "w") as f:
            f.write("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}\n[assistant] <think>\n\n"
                    "</think>\n\n")
        json_body = {"messages": user, "max_tokens": 16, "temperature": 0, "response_format": {"type": "json_object"}}
        srv = Server(moeflow, "--model", model, "--chat-template", plain, "--reasoning-parser", "think")
        try:
            code, code_s, whole, streamed = reply(srv, json_body)
            check(code == 200 and whole[0] and whole[1] == "" and streamed == whole,
                  "JSON mode with the parser, a block opened: %d %r %r" % (code, whole, streamed))
        finally:
            check(srv.stop() == 0, "exit status")
        srv = Server(moeflow, "--model", model, "--chat-template", closes, "--reasoning-parser", "think")
        try:
            code, code_s, whole, streamed = reply(srv, json_body)
            check(code == 200 and whole[0] is None and (whole[1] or "").startswith("{") and streamed == ("", whole[1]),
                  "JSON mode with the parser, reasoning turned off: %d %r %r" % (code, whole, streamed))
            # a forced tool call there: the call, no reasoning
            tool = {"type": "function", "function": {"name": "pick", "parameters": {
                "type": "object", "properties": {"n": {"enum": [1, 2]}}, "required": ["n"],
                "additionalProperties": False}}}
            code, raw = srv.http("/v1/chat/completions", json.dumps({
                "messages": user, "max_tokens": 40, "temperature": 0, "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": "pick"}}}).encode())
            out = json.loads(raw) if code == 200 else {}
            ch = (out.get("choices") or [{}])[0]
            msg = ch.get("message", {})
            fn = ((msg.get("tool_calls") or [{}])[0]).get("function", {})
            check(code == 200 and ch.get("finish_reason") == "tool_calls" and fn.get("name") == "pick" and
                  json.loads(fn.get("arguments", "null")) in ({"n": 1}, {"n": 2}) and
                  msg.get("reasoning_content") is None,
                  "forced tool call with the parser, reasoning turned off: %d %r" % (code, out))
        finally:
            check(srv.stop() == 0, "exit status")
        # the prompt opened the block and the reply never closes it: all reasoning, as the parser "none"
        # gives it as content
        srv = Server(moeflow, "--model", model, "--chat-template", opens)
        try:
            body = {"messages": user, "max_tokens": 24, "temperature": 0}
            code, code_s, (r, text), streamed = reply(srv, body, parser=False)
            check(code == 200 and r is None and text, "no parser: %d %r" % (code, text))
        finally:
            check(srv.stop() == 0, "exit status")
        srv = Server(moeflow, "--model", model, "--chat-template", opens, "--reasoning-parser", "think")
        try:
            code, code_s, whole, streamed = reply(srv, body, opened=True)
            check(code == 200 and whole == (text, "") and streamed == (text, ""),
                  "never closed: %d %r %r, want %r" % (code, whole, streamed, text))
            # JSON mode after a prompt that opened the block: the reasoning is as free (JSON holds only
            # what follows </think>), whole and streamed
            for rf in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "n", "schema": {
                    "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}):
                code, code_s, whole, streamed = reply(srv, dict(body, response_format=rf), opened=True)
                check(code == 200 and (whole[0] or "").startswith(text) and whole[1] == "" and
                      streamed == whole, "%s after an opened block: %d %r %r, want the reasoning %r" %
                      (rf["type"], code, whole, streamed, text))
        finally:
            check(srv.stop() == 0, "exit status")
        r = subprocess.run([moeflow, "serve", "--model", model, "--reasoning-parser", "deepseek", "--grpc-port", "0",
                            "--http-port", str(free_port())], capture_output=True, timeout=60)
        check(r.returncode != 0 and b"reasoning-parser" in r.stderr, "bad --reasoning-parser: %d %r" %
              (r.returncode, r.stderr))
        # a template that compiles but cannot render (a dict with tuple keys, outside the subset): as a
        # file it stops the server at start; as the model's own, the markers are used, with a warning
        odd = "{% set d = {(0, 1): 'x'} %}{% for m in messages %}{{ m.content }}{{ d[(0, 1)] }}{% endfor %}"
        with open(path, "w") as f:
            f.write(odd)
        r = subprocess.run([moeflow, "serve", "--model", model, "--chat-template", path, "--grpc-port", "0",
                            "--http-port", str(free_port())], capture_output=True, timeout=60)
        check(r.returncode == 1 and b"cannot render one user message" in r.stderr,
              "a template file that cannot render: %d %r" % (r.returncode, r.stderr[-400:]))
        os.makedirs(os.path.join(tmp, "odd"))
        odd_model = model_copy(src, os.path.join(tmp, "odd"), {"chat_template": odd})
        srv = Server(moeflow, "--model", odd_model)
        try:
            code, out = chat(srv, [{"role": "user", "content": "def f"}])
            check(code == 200 and out["usage"]["prompt_tokens"] == n_tokens(moeflow, odd_model,
                                                                              "<|user|>\ndef f\n<|assistant|>\n"),
                  "the model's template that cannot render: %d %r" % (code, out))
            check("cannot render one user message" in srv.output() and "markers" in srv.output(),
                  "no warning: %r" % srv.output()[-600:])
        finally:
            check(srv.stop() == 0, "exit status")

        # a file that does not compile, or is missing: no start, the message names it
        with open(path, "w") as f:
            f.write("{% for m in messages %}")
        for bad in (path, os.path.join(tmp, "missing.jinja")):
            r = subprocess.run([moeflow, "serve", "--model", model, "--chat-template", bad, "--grpc-port", "0",
                                "--http-port", str(free_port())], capture_output=True, timeout=60)
            check(r.returncode != 0 and b"--chat-template" in r.stderr and bad.encode() in r.stderr,
                  "bad --chat-template %s: %d %r" % (bad, r.returncode, r.stderr))

        # a Mixtral checkpoint whose tokenizer adds <s> to prompts: a completion prompt gets it once, a
        # chat prompt through a template that writes {{ bos_token }} itself gets it once too
        mix = os.path.join(tmp, "mixtral")
        os.mkdir(mix)
        fix = os.path.join(os.path.abspath(src), "tests", "fixtures")
        for f in ("config.json", "generation_config.json", "model.safetensors"):
            os.symlink(os.path.join(fix, "hf-tiny", "mixtral", f), os.path.join(mix, f))
        os.symlink(os.path.join(fix, "tokenizer", "spm-tiny.json"), os.path.join(mix, "tokenizer.json"))
        with open(os.path.join(mix, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": "<s>", "eos_token": "</s>",
                       "chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]"
                                        "{% endfor %}"}, f)
        srv = Server(moeflow, "--model", mix)
        try:
            code, out = srv.http("/v1/completions", json.dumps({"prompt": "def f", "max_tokens": 1}).encode())
            want_n = 1 + n_tokens(moeflow, mix, "def f")
            check(code == 200 and json.loads(out)["usage"]["prompt_tokens"] == want_n,
                  "completion prompt with <s>: %d %s" % (code, out))
            code, out = chat(srv, [{"role": "user", "content": "def f"}])
            want_n = n_tokens(moeflow, mix, "<s>[INST] def f [/INST]")
            check(code == 200 and out["usage"]["prompt_tokens"] == want_n,
                  "templated chat prompt with one <s>: %d %s" % (code, out))
            # generated byte-fallback tokens <0x41> ("A") and <0xFF>, pushed up by logit_bias: one run of
            # byte tokens that is not UTF-8 as a whole, so one U+FFFD per token, whole and streamed, as the
            # Hugging Face library's ByteFallback decoder gives it (not "A" and the rest)
            body = {"prompt": "def f(x): return x", "max_tokens": 6, "temperature": 0, "ignore_eos": True,
                    "logit_bias": {"68": 100, "258": 100}, "logprobs": 0}
            code, raw = srv.http("/v1/completions", json.dumps(body).encode())
            out = json.loads(raw) if code == 200 else {}
            c = (out.get("choices") or [{}])[0]
            toks = (c.get("logprobs") or {}).get("tokens") or []
            check(code == 200 and "A" in toks and "\ufffd" in toks and len(toks) == 6,
                  "the biases no longer give a run of both tokens (choose others): %d %r" % (code, toks))
            check(c.get("text") == "\ufffd" * 6, "generated byte tokens: %r" % c.get("text"))
            code, raw = srv.http("/v1/completions", json.dumps(dict(body, stream=True)).encode())
            chunks = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
            streamed = "".join(ch["choices"][0].get("text") or "" for ch in chunks if ch["choices"])
            check(code == 200 and streamed == "\ufffd" * 6, "streamed byte tokens: %d %r" % (code, streamed))
            # a stop sequence made of a byte-fallback token (<0x0A>, how SentencePiece models write a line
            # break): found at that token, though its run is still open, not when the run ends (here: never,
            # every token is <0x0A>, so only max_tokens would have ended it)
            body = {"prompt": "def f(x): return x", "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                    "logit_bias": {"13": 100}, "stop": ["\n"]}
            code, raw = srv.http("/v1/completions", json.dumps(body).encode())
            out = json.loads(raw) if code == 200 else {}
            c = (out.get("choices") or [{}])[0]
            check(code == 200 and c.get("text") == "" and c.get("finish_reason") == "stop" and
                  out["usage"]["completion_tokens"] == 1, "stop at a byte token: %d %r" % (code, raw))
            code, raw = srv.http("/v1/completions", json.dumps(dict(body, stream=True, stop=["\n\n"], stream_options={
                "include_usage": True})).encode())
            chunks = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
            fin = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
            streamed = "".join(ch["choices"][0].get("text") or "" for ch in chunks if ch["choices"])
            usage = [ch["usage"] for ch in chunks if ch.get("usage")]
            check(code == 200 and fin[-1:] == ["stop"] and streamed == "" and usage and
                  usage[-1]["completion_tokens"] == 2, "streamed stop over two byte tokens: %d %r" % (code, raw))
            try:
                import grpc
            except ImportError:
                grpc = None  # python3-grpcio missing: the HTTP checks above stand for the shared scanner
            if grpc:
                pb = gen_stubs(src)
                m = pb["m"]
                with grpc.insecure_channel(srv.target) as ch:
                    gen = pb["mg"].GenerationStub(ch)
                    replies = list(gen.Generate(m.GenerateRequest(
                        prompt="def f(x): return x", max_tokens=8, temperature=0, ignore_eos=True, stop=["\n"],
                        logit_bias=[m.LogitBias(token_id=13, bias=100)]), timeout=60))
                    last = replies[-1] if replies else None
                    check(last is not None and last.finished and last.finish_reason == "stop" and
                          last.completion_tokens == 1 and "".join(x.text for x in replies) == "",
                          "gRPC stop at a byte token: %r" % replies)
        finally:
            srv.stop()

        # the model's template outside the subset: a warning, and the markers
        shutil.rmtree(os.path.join(tmp, "model"))
        model = model_copy(src, tmp, {"chat_template": "{% include 'other.jinja' %}"})
        srv = Server(moeflow, "--model", model)
        try:
            check("warning" in srv.output() and "include" in srv.output(), "no warning: %s" % srv.output())
            code, out = chat(srv, msgs)
            check(code == 200, "markers after the warning: %d %s" % (code, out))
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if check.failures:
        print("%d check(s) failed" % check.failures)
        return 1
    print("test_serve_chat: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
