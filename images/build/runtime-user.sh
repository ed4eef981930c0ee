#!/usr/bin/env bash
# Run by images/Dockerfile while it builds: the fixed non-root user every image runs as, and
# the directories it writes (state, the model cache, vLLM's compile cache). Compose mounts
# volumes over the caches; a fresh volume takes its owner from the image's directory.
#
#   runtime-user.sh UID
set -euo pipefail
uid=${1:?runtime-user.sh UID}
# A base that already has it (images built on runtime-base) keeps it.
if ! getent passwd vllama >/dev/null; then
  groupadd --system --gid "$uid" vllama
  useradd --system --uid "$uid" --gid vllama --home-dir /var/lib/vllama --create-home \
    --shell /usr/sbin/nologin vllama
fi
[ "$(id -u vllama)" = "$uid" ] || { echo "user vllama exists with uid $(id -u vllama), not $uid" >&2; exit 1; }
install -d -o vllama -g vllama /var/cache/huggingface /var/cache/huggingface/hub /var/cache/vllm
