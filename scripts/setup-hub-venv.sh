#!/usr/bin/env bash
# Create ./.venv-hub with olah, the self-hosted Hugging Face hub mirror the tests download
# models from (tests/hub.py starts it; docs/development.md says why this one). Kept apart
# from ./.venv: olah pins its own FastAPI and huggingface_hub, which must not move vLLM's.
# Idempotent: a second run with nothing changed is quick.
#
# Package indexes come from the machine's own pip configuration (pip.conf, PIP_* variables).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLAMA_HUB_VENV:-.venv-hub}
PYTHON=${PYTHON:-python3}
packages=("olah==0.5.4")

stamp="$VENV/.vllama-hub-setup"
want=$(sha256sum scripts/setup-hub-venv.sh | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup-hub-venv: $VENV is up to date"
  exit 0
fi
# olah reads local mirrors with GitPython, which runs the git binary.
command -v git >/dev/null || { echo "setup-hub-venv: git is missing; run scripts/install-system-deps.sh" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q -U pip wheel 2>&1 | grep -v "is ignored: it is neither" >&2 || true
echo "setup-hub-venv: installing ${packages[*]}"
pip install -q "${packages[@]}" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
"$VENV/bin/python" -c "import olah.server" \
  || { echo "setup-hub-venv: olah does not import; rm -rf $VENV and rerun" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup-hub-venv: ready: $VENV (olah $("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('olah'))"))"
