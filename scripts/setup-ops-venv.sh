#!/usr/bin/env bash
# Create ./.venv-ops with the operator tools for ops/ansible/: ansible-core, the community
# collections it uses (from PyPI's `ansible` package; there is no Galaxy access) and
# ansible-lint. Kept apart from ./.venv so vLLM's pins and Ansible's never fight.
# Idempotent: a second run with nothing changed is quick.
#
# Package indexes come from the machine's own pip configuration (pip.conf, PIP_* variables).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLAMA_OPS_VENV:-.venv-ops}
PYTHON=${PYTHON:-python3}
# The `ansible` package carries community.general, ansible.posix and community.docker;
# pydantic is what vllama's planner needs (ops/ansible/filter_plugins/vllama_plan.py).
packages=("ansible>=10,<13" "ansible-lint>=24.7" "pydantic>=2.5")

stamp="$VENV/.vllama-ops-setup"
want=$(sha256sum scripts/setup-ops-venv.sh | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup-ops-venv: $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q -U pip wheel 2>&1 | grep -v "is ignored: it is neither" >&2 || true
echo "setup-ops-venv: installing ${packages[*]} (about 1 minute the first time)"
pip install -q "${packages[@]}" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
for collection in community.general ansible.posix community.docker; do
  "$VENV/bin/ansible-galaxy" collection list "$collection" >/dev/null 2>&1 \
    || { echo "setup-ops-venv: collection $collection missing from the ansible package; rm -rf $VENV and rerun" >&2; exit 1; }
done
echo "$want" > "$stamp"
echo "setup-ops-venv: ready: $VENV (ansible-core $("$VENV/bin/python" -c "import ansible.release as r; print(r.__version__)"))"
