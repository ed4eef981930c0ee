#!/usr/bin/env bash
# Run by images/Dockerfile while it builds: the fixed non-root user every image runs as, and
# the directories it writes (state, the model cache, vLLM's compile cache). Compose mounts
# volumes over the caches; a fresh volume takes its owner from the image's directory.
#
#   runtime-user.sh UID
set -euo pipefail
uid=${1:?runtime-user.sh UID}
groupadd --system --gid "$uid" vllama
useradd --system --uid "$uid" --gid vllama --home-dir /var/lib/vllama --create-home \
  --shell /usr/sbin/nologin vllama
install -d -o vllama -g vllama /var/cache/huggingface /var/cache/huggingface/hub /var/cache/vllm
