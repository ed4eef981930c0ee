#!/usr/bin/env bash
# The whole test run, from a fresh clone: set up, lint, then every suite against real parts.
# `make test` and CI (.ci/run) call this. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stage() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }

stage "system packages"
scripts/install-system-deps.sh
stage "python environment"
scripts/setup-venv.sh --test
scripts/setup-hub-venv.sh   # olah: the local model hub the download tests use (tests/hub.py)
stage "lint"
.venv/bin/ruff check app tests ops
.venv/bin/mypy

stage "tests"
set +e
.venv/bin/python -m pytest tests -ra --durations=30 -p no:cacheprovider "$@"
rc=$?
set -e
stage "done: pytest exit $rc"
# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
if [ "$rc" -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$rc"
