"""JSON schemas against an independent validator: `moeflow generate --json-schema` samples
(temperature 1.2) under twelve schemas (nested objects, enums of mixed values, nullable $refs,
recursion, bounded arrays, a tagged union, a root enum; string lengths, number ranges and tuples;
patterns; formats; unique items; property counts): every output that ends must validate under the jsonschema package, and some must end;
and `generate --regex` under five regular expressions: every output that ends must match whole
under Python's re; and `generate --grammar` under four GBNF grammars (two recursive): every output
that ends must be a sentence, by Python's re or a parser written here for the language.
usage: test_schema_conformance.py MOEFLOW_BINARY SOURCE_DIR [--seeds N] (default 5; 25 for a longer run)"""
import json
import os
import re
import subprocess
import sys
import tempfile

SCHEMAS = [
    {"type": "object", "properties": {
        "name": {"type": "string"}, "kind": {"enum": ["cat", "dog", "bird"]}, "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["small", "big", "old"]}, "maxItems": 3},
        "owner": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"id": {"type": "integer"}},
                                                 "required": ["id"], "additionalProperties": False}]}},
     "required": ["name", "kind", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": ["number", "boolean", "null"]}, "minItems": 2, "maxItems": 5},
    {"type": "object", "properties": {
        "a": {"const": 1}, "b": {"enum": [1, 10, 100, "x", None, True, {"k": [1, 2]}]},
        "c": {"type": "object", "additionalProperties": {"type": "integer"}}}, "required": ["a", "b", "c"]},
    {"$defs": {"N": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/N"}, "maxItems": 2}},
        "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/N"},
    {"type": "object", "properties": {"s": {"type": "string"}, "n": {"type": "number"}, "i": {"type": "integer"}},
     "required": ["s", "n", "i"], "additionalProperties": False},
    {"enum": ["yes", "no", "maybe"]},
    {"type": "object", "properties": {"pets": {"type": "array", "maxItems": 3, "items": {"oneOf": [
        {"type": "object", "properties": {"pet_type": {"const": "cat"}, "lives": {"type": "integer"}},
         "required": ["pet_type", "lives"], "additionalProperties": False},
        {"type": "object", "properties": {"pet_type": {"enum": ["dog"]}, "good": {"type": "boolean"}},
         "required": ["pet_type"], "additionalProperties": False},
        {"type": "null"}]}}}, "required": ["pets"], "additionalProperties": False},
    {"$defs": {"K": {"enum": ["a", "b"]}}, "type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "step": {"type": "integer", "multipleOf": 5, "minimum": -50, "exclusiveMaximum": 50},
        "pair": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1, "maximum": 9},
                                                  {"type": "string", "maxLength": 3}], "items": False, "minItems": 2},
        "kind": {"allOf": [{"$ref": "#/$defs/K"}], "description": "a kind"}},
     "required": ["name", "age", "score", "step", "pair", "kind"], "additionalProperties": False},
    {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[a-z]{2,4}-[0-9]{1,3}$"},
        "mail": {"type": "string", "pattern": "^[\\w.]+@(example|test)\\.(com|org)$", "maxLength": 20},
        "note": {"type": "string", "pattern": "[A-Z]\\d"},
        "path": {"type": "string", "pattern": "^(/[^/\\s]+)+/?$"},
        "dec": {"type": "string", "pattern": "^(?!^[-+.]*$)[+-]?0*\\d*\\.?\\d*$"}},
     "required": ["id", "mail", "note", "path"], "additionalProperties": False},
    {"type": "object", "properties": {f: {"type": "string", "format": f}
                                      for f in ("date", "date-time", "uuid", "ipv4", "email", "uri", "hostname")},
     "required": ["date", "uuid", "ipv4", "email"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["red", "green", "blue", 1, 10]},
                                               "uniqueItems": True, "minItems": 1}},
     "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}, "c": {"type": "null"}},
     "additionalProperties": {"type": "string", "maxLength": 6}, "required": ["c"], "minProperties": 2,
     "maxProperties": 3},
]

# Regular expressions over raw text (`generate --regex`): every output that ends must match whole.
REGEXES = [r"[0-9]{3}-[a-z]+( ok)?", r"(def|class) [A-Za-z_]\w{0,12}\((self)?\):", r"-?\d{1,4}(\.\d{1,2})?",
           r"(True|False|None|'[^'\n]{0,8}')\n", r"(?!no)[a-z]{2,6}!"]

# GBNF grammars (`generate --grammar`): every output that ends must be a sentence, as checked here
# by a regular expression or, for the recursive ones, a parser written for the language.
def arith_ok(text):
    """expr "\\n" where expr ::= term ((" + " | " * ") term)*, term ::= [0-9]{1,3} | "(" expr ")"."""
    pos = 0

    def term():
        nonlocal pos
        if text.startswith("(", pos):
            pos += 1
            if not expr() or not text.startswith(")", pos):
                return False
            pos += 1
            return True
        m = re.match(r"[0-9]{1,3}", text[pos:])
        if not m:
            return False
        pos += m.end()
        return True

    def expr():
        nonlocal pos
        if not term():
            return False
        while text.startswith((" + ", " * "), pos):
            pos += 3
            if not term():
                return False
        return True

    return expr() and text[pos:] == "\n"


def json_object_ok(text):
    try:
        return isinstance(json.loads(text), dict) and not re.search(r"\s", text)
    except ValueError:
        return False


GRAMMARS = [
    ('root ::= [0-9]{3} "-" [a-z]+ " ok"?', lambda t: re.fullmatch(r"[0-9]{3}-[a-z]+( ok)?", t)),
    ('root ::= ("def" | "class") " " [A-Za-z_] [A-Za-z_0-9]{0,12} "(" "self"? "):"',
     lambda t: re.fullmatch(r"(def|class) [A-Za-z_][A-Za-z_0-9]{0,12}\((self)?\):", t)),
    ('root ::= expr "\\n"\nexpr ::= term ((" + " | " * ") term)*\nterm ::= [0-9]{1,3} | "(" expr ")"\n', arith_ok),
    ('root   ::= object\n'
     'object ::= "{" (pair ("," pair)*)? "}"\n'
     'pair   ::= string ":" value\n'
     'value  ::= object | "[" (value ("," value)*)? "]" | string | [0-9]+ | "true" | "false" | "null"\n'
     'string ::= "\\"" [a-z_]{0,8} "\\""\n', json_object_ok),
]


def main():
    import jsonschema
    moeflow = sys.argv[1]
    seeds = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 5
    ended = invalid = unfinished = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, schema in enumerate(SCHEMAS):
            path = os.path.join(tmp, "s%d.json" % k)
            with open(path, "w") as f:
                json.dump(schema, f)
            for seed in range(1, seeds + 1):
                for prompt in ("x = ", "data = {"):
                    r = subprocess.run([moeflow, "generate", "--prompt", prompt, "--json-schema", path,
                                        "--max-tokens", "200", "--temperature", "1.2", "--seed", str(seed)],
                                       capture_output=True, timeout=120)
                    if r.returncode != 0:
                        print("FAIL: schema %d seed %d: exit %d: %s" % (k, seed, r.returncode, r.stderr[-300:]))
                        invalid += 1
                        continue
                    text = r.stdout.decode("utf-8", "replace")[:-1]
                    try:
                        value = json.loads(text)
                    except ValueError:
                        unfinished += 1  # stopped at --max-tokens inside the value
                        continue
                    ended += 1
                    try:  # formats too, where the package checks them
                        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
                    except jsonschema.ValidationError as e:
                        invalid += 1
                        print("FAIL: schema %d seed %d: %r: %s" % (k, seed, text[:300], e.message[:200]))
    r_ended = 0
    def sample(what, k, seed, flags):
        """generate's text after "x = " at temperature 1.2 under flags, or None (counted invalid)."""
        nonlocal invalid
        r = subprocess.run([moeflow, "generate", "--prompt", "x = ", "--temperature", "1.2", "--seed", str(seed)] +
                           flags, capture_output=True, timeout=120)
        if r.returncode != 0:
            print("FAIL: %s %d seed %d: exit %d: %s" % (what, k, seed, r.returncode, r.stderr[-300:]))
            invalid += 1
            return None
        return r.stdout.decode("utf-8")[:-1]

    for k, pattern in enumerate(REGEXES):
        for seed in range(1, seeds + 1):
            text = sample("regex", k, seed, ["--regex", pattern, "--max-tokens", "60"])
            if text is None:
                continue
            if re.fullmatch(pattern, text):
                r_ended += 1
            elif not any(re.fullmatch(pattern, text + tail) for tail in ("", "a", "0", " ok", "):", "\n")):
                # a text cut by --max-tokens is a prefix of a match; anything else breaks the pattern
                prefix = any(re.match("(?:%s)" % pattern, text[:i]) for i in range(len(text) + 1))
                if not prefix:
                    invalid += 1
                    print("FAIL: regex %d seed %d: %r does not match %r" % (k, seed, text, pattern))
    g_ended = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, (grammar, is_sentence) in enumerate(GRAMMARS):
            path = os.path.join(tmp, "g%d.gbnf" % k)
            with open(path, "w") as f:
                f.write(grammar)
            for seed in range(1, seeds + 1):
                text = sample("grammar", k, seed, ["--grammar", path, "--max-tokens", "80"])
                if text is None:
                    continue
                if is_sentence(text):
                    g_ended += 1
                elif len(text.encode()) < 80:  # not stopped by --max-tokens (ASCII: a byte a token at least)
                    invalid += 1
                    print("FAIL: grammar %d seed %d: %r is not a sentence of it" % (k, seed, text))
    print("test_schema_conformance: %d ended, %d invalid or failed, %d unfinished; %d regex texts matched, "
          "%d grammar texts whole" % (ended, invalid, unfinished, r_ended, g_ended))
    ok = (invalid == 0 and ended >= len(SCHEMAS) * seeds and r_ended >= len(REGEXES) * seeds // 2 and
          g_ended >= len(GRAMMARS) * seeds // 2)
    print("test_schema_conformance: %s" % ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
