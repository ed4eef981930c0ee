#!/usr/bin/env bash
# Build vllama's wheel from this checkout into dist/: what Ansible copies to the hosts and
# checks by sha256 (vllama is never installed by name from a package index: an unrelated
# project of that name is published there). Prints the wheel's path.
# With ./.venv (scripts/setup-venv.sh) the build needs no network; without it, python3's pip
# fetches the build backend (setuptools, wheel) from the machine's package index.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
  build=(.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation)
else
  build=(python3 -m pip wheel -q --no-deps)
fi
mkdir -p dist
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${build[@]}" -w "$tmp" . >&2
wheel=$(ls "$tmp"/vllama-*.whl)
rm -f dist/vllama-*.whl
mv "$wheel" dist/
echo "$PWD/dist/$(basename "$wheel")"
