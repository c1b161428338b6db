#!/usr/bin/python3
"""The properties of every test of this build, as ctest --show-only=json-v1 lists them: each has a label and a
time limit, and none labelled fuzz takes exit 77 for a skip, since libFuzzer exits 77 when it finds a bug
(its -error_exitcode), which ctest would then count as skipped, not failed."""
import json
import os
import subprocess
import sys

ctest, build = sys.argv[1], os.environ["MOEFLOW_BINARY_DIR"]
listing = subprocess.run([ctest, "--show-only=json-v1"], cwd=build, capture_output=True, text=True, check=True)
tests = json.loads(listing.stdout)["tests"]
failures = []
for test in tests:
    props = {p["name"]: p["value"] for p in test.get("properties", [])}
    labels = props.get("LABELS", [])
    if not labels:
        failures.append(f"{test['name']}: no label")
    if not props.get("TIMEOUT"):
        failures.append(f"{test['name']}: no time limit")
    if "fuzz" in labels and props.get("SKIP_RETURN_CODE") == 77:
        failures.append(f"{test['name']}: a fuzz smoke whose exit 77 (libFuzzer's on a bug it found) reads as a skip")
for f in failures:
    print(f, file=sys.stderr)
if not tests or failures:
    print(f"test_ctest_properties: {len(failures)} of {len(tests)} tests wrong", file=sys.stderr)
    sys.exit(1)
print(f"test_ctest_properties: ok ({len(tests)} tests)")
