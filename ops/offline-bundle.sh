#!/usr/bin/env bash
# Offline bundle for air-gapped hosts: the images (docker save), a model snapshot, the
# compose files and the configs they mount, with checksums. Build it where the images and
# the model are, carry one tar file across, load it on the other side.
#
#   ops/offline-bundle.sh create [--out FILE] [--image REF]... [--model DIR] [--hf-model REPO_ID]
#   ops/offline-bundle.sh load FILE [--dest DIR] [--no-volume]
#
# create: images default to every image compose/compose.yaml names (all profiles; the
#   values of compose/.env when it exists). --model DIR copies a local model directory
#   into models/<name>; --hf-model downloads a Hugging Face snapshot into hf-cache/
#   (needs the network and huggingface_hub, e.g. .venv/bin/python).
# load: checks every checksum, `docker load`s the images, unpacks the tree into DIR
#   (default ./vllama-offline), writes DIR/compose/.env from .env.example when absent
#   (HF_HUB_OFFLINE=1), and copies hf-cache/ into the compose volume <project>_hf-cache.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${VLLAMA_PYTHON:-$REPO/.venv/bin/python}

log() { echo "offline-bundle: $*" >&2; }
die() { echo "offline-bundle: $*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

compose_images() {
  local env_file="$REPO/compose/.env"
  [ -f "$env_file" ] || env_file="$REPO/compose/.env.example"
  # Placeholders only satisfy the required variables; image names do not depend on them.
  GRAFANA_ADMIN_PASSWORD=${GRAFANA_ADMIN_PASSWORD:-unused} VLLAMA_MODEL=${VLLAMA_MODEL:-unused} \
    docker compose -f "$REPO/compose/compose.yaml" --env-file "$env_file" \
    --profile gpu --profile cpu --profile monitoring config --images | sort -u
}

create() {
  local out="" model="" hf_model="" images=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out=$2; shift 2 ;;
      --image) images+=("$2"); shift 2 ;;
      --model) model=$2; shift 2 ;;
      --hf-model) hf_model=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [ ${#images[@]} -gt 0 ] || mapfile -t images < <(compose_images)
  local version
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)
  out=${out:-$PWD/vllama-bundle-$version.tar}
  for ref in "${images[@]}"; do
    docker image inspect "$ref" >/dev/null 2>&1 \
      || die "image $ref is not on this host; build it (docker compose build) or pull it, then retry"
  done

  local stage
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  local root="$stage/vllama-bundle"
  mkdir -p "$root"/{compose,proxy,monitoring,models}
  log "saving ${#images[@]} image(s)"
  docker save -o "$root/images.tar" "${images[@]}"
  printf '%s\n' "${images[@]}" > "$root/images.txt"
  cp "$REPO/compose/compose.yaml" "$REPO/compose/nginx.yaml" "$REPO/compose/.env.example" "$root/compose/"
  cp -a "$REPO/proxy/." "$root/proxy/"
  cp -a "$REPO/monitoring/." "$root/monitoring/"
  if [ -n "$model" ]; then
    [ -d "$model" ] || die "--model $model is not a directory"
    cp -a "$model" "$root/models/$(basename "$model")"
  fi
  if [ -n "$hf_model" ]; then
    log "downloading $hf_model from the Hugging Face hub"
    HF_HOME="$root/hf-cache" "$PY" -c 'import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1])' "$hf_model" \
      || die "download of $hf_model failed; check the name, HF_TOKEN for gated models, and the network"
  fi
  (cd "$root" && find . -type f -print0 | sort -z | xargs -0 sha256sum > "$stage/SHA256SUMS")
  mv "$stage/SHA256SUMS" "$root/SHA256SUMS"
  tar -C "$stage" -cf "$out.tmp" vllama-bundle
  mv "$out.tmp" "$out"
  log "wrote $out ($(du -h "$out" | cut -f1))"
  echo "$out"
}

load() {
  local bundle="" dest="$PWD/vllama-offline" volume=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --dest) dest=$2; shift 2 ;;
      --no-volume) volume=0; shift ;;
      -*) usage ;;
      *) bundle=$1; shift ;;
    esac
  done
  [ -f "$bundle" ] || die "no bundle file given (ops/offline-bundle.sh load FILE)"
  docker info >/dev/null 2>&1 || die "no Docker engine; start one (scripts/ensure-docker.sh) and retry"
  mkdir -p "$dest"
  tar -C "$dest" --strip-components=1 -xf "$bundle"
  (cd "$dest" && sha256sum --quiet -c SHA256SUMS) || die "checksum mismatch in $bundle: copy it again"
  log "loading images"
  docker load -i "$dest/images.tar" >&2
  rm -f "$dest/images.tar"
  if [ ! -f "$dest/compose/.env" ]; then
    sed 's/^HF_HUB_OFFLINE=.*/HF_HUB_OFFLINE=1/' "$dest/compose/.env.example" > "$dest/compose/.env"
    log "wrote $dest/compose/.env: set the REQUIRED values before 'docker compose up'"
  fi
  if [ "$volume" = 1 ] && [ -d "$dest/hf-cache" ]; then
    local project vol helper
    project=$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "$dest/compose/.env" | head -n1)
    vol="${project:-vllama}_hf-cache"
    helper=$(head -n1 "$dest/images.txt")
    docker volume create "$vol" >/dev/null
    # Any loaded image with a shell copies the snapshot in; the engines run as UID 10001.
    docker run --rm --user 0 --entrypoint /bin/sh -v "$vol:/dst" -v "$dest/hf-cache:/src:ro" "$helper" \
      -c 'cp -a /src/. /dst/ && chown -R 10001:10001 /dst'
    log "model snapshot copied into volume $vol"
  fi
  log "ready in $dest: cd $dest/compose && docker compose --profile gpu up -d --wait"
  echo "$dest"
}

case "${1:-}" in
  create) shift; create "$@" ;;
  load) shift; load "$@" ;;
  *) usage ;;
esac
