#!/usr/bin/env bash
# .venv-bench: the LiteLLM proxy (kept out of vllama's own venv: its pins differ) and
# py-spy (the sampling profiler behind `make profile`). Used only by `make bench` and
# `make profile`; indexes come from the machine's pip configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
if [ -x "$VENV/bin/litellm" ] && [ -x "$VENV/bin/py-spy" ]; then
  echo "setup-bench-venv: $VENV is ready"
  exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check 'litellm[proxy]' 'py-spy>=0.3.14'
echo "setup-bench-venv: ready"
