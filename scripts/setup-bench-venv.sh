#!/usr/bin/env bash
# .venv-bench: the LiteLLM proxy, kept out of vllama's own venv (its pins differ).
# Used only by `make bench`; indexes come from the machine's pip configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
stamp="$VENV/.ready"
[ -f "$stamp" ] && { echo "setup-bench-venv: $VENV is ready"; exit 0; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check 'litellm[proxy]'
touch "$stamp"
echo "setup-bench-venv: ready"
