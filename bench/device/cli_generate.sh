#!/usr/bin/env bash
# End-to-end CLI check on a GPU: `moeflow generate --backend cuda --temperature 0`
# prints exactly the text of the CPU backend for the bundled model, with every
# routed expert in the GPU tier and with the tier at 25 % of them (--gpu-experts).
#   usage: cli_generate.sh PATH/TO/moeflow [MODEL_DIR]
# Prints one line per case, "case NAME pass|fail" (check.sh copies them into
# summary.json), the texts of a failing case, and exits 0 when every case passed
# (77 without a device or without CUDA in the build).
set -u
bin=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
model=${2:-$root/models/pycode-moe-18m}
max_tokens=${CLI_MAX_TOKENS:-64}

# 25 % of the routed experts: layers x experts / 4 (every layer of the bundled model is MoE)
num() { grep -oE "\"$1\": *[0-9]+" "$model/config.json" | head -1 | grep -oE '[0-9]+$'; }
layers=$(num num_hidden_layers)
experts=$(num num_local_experts)
[ -n "$experts" ] || experts=$(num num_experts)
if [ -z "$layers" ] || [ -z "$experts" ]; then
  echo "cli_generate.sh: cannot read num_hidden_layers / num_local_experts from $model/config.json"
  exit 1
fi
quarter=$(( layers * experts / 4 ))
echo "model $model: $layers layers x $experts experts; 25 % = $quarter GPU slots; --max-tokens $max_tokens"

# no device (or a build without CUDA): skip like the gpu tests
probe=$("$bin" generate --model "$model" --backend cuda --max-tokens 1 --prompt x 2>&1 >/dev/null)
if [ $? -ne 0 ] && [[ "$probe" == *"no CUDA device is visible"* || "$probe" == *"has no CUDA backend"* ]]; then
  echo "cli_generate.sh: skipped: $probe"
  exit 77
fi

prompts=(
  'def fibonacci(n):'
  $'import numpy as np\n\ndef normalize(x):'
  $'class Stack:\n    def __init__(self):'
)
modes="all quarter"
"$bin" generate --help 2>/dev/null | grep -q -- --predictor && modes="$modes quarter_nopred"
fails=0
gen() { "$bin" generate --model "$model" --temperature 0 --max-tokens "$max_tokens" "$@"; }
for i in "${!prompts[@]}"; do
  p=${prompts[$i]}
  if ! cpu=$(gen --backend cpu --prompt "$p"); then
    echo "case p${i}_cpu fail"
    fails=$((fails + 1))
    continue
  fi
  for mode in $modes; do
    extra=()
    [ $mode = quarter ] && extra=(--gpu-experts "$quarter" --stats)
    # the same without the routing predictor (generate's default is auto when experts are offloaded)
    [ $mode = quarter_nopred ] && extra=(--gpu-experts "$quarter" --predictor none)
    name="p${i}_cuda_${mode}"
    gpu=$(gen --backend cuda "${extra[@]}" --prompt "$p")
    rc=$?
    if [ $rc -eq 0 ] && [ "$gpu" == "$cpu" ]; then
      echo "case $name pass"
    else
      echo "case $name fail"
      echo "--- $name: exit $rc; cpu text:"; printf '%s\n' "$cpu"
      echo "--- cuda text:"; printf '%s\n' "$gpu"
      fails=$((fails + 1))
    fi
  done
done
echo "cli_generate.sh: $fails failing case(s)"
[ $fails -eq 0 ]
