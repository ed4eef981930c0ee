#!/usr/bin/env bash
# Build a local Debian base image with debootstrap and `docker import` it: the base for
# every image here when no container registry can be reached (air-gapped sites, CI).
#
#   ops/local-base-image.sh                 # prints the image reference on stdout
#   ops/local-base-image.sh --print-mirror  # the mirror it would use, then exit
#
# Tags: vllama-local/debian:<suite>-<hash> and the stable vllama-local/debian:<suite>.
# <hash> covers this script, the suite and the mirror; an image already present is reused.
# The rootfs tarball is kept in .cache/base-images/ so a reset Docker engine re-imports in
# seconds. The mirror comes from this machine's apt sources (or VLLAMA_DEBIAN_MIRROR);
# it is never written into the repository. Needs root (debootstrap) and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SUITE=${VLLAMA_DEBIAN_SUITE:-bookworm}
NAME=${VLLAMA_LOCAL_BASE_NAME:-vllama-local/debian}
CACHE="$REPO/.cache/base-images"
mkdir -p "$CACHE" "$REPO/.cache/locks"

log() { echo "local-base-image: $*" >&2; }
die() { echo "local-base-image: $*" >&2; exit 1; }

# The first deb URI whose suites include $SUITE: deb822 (*.sources) first, then one-line lists.
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '
      BEGIN { RS=""; FS="\n" }
      {
        uris=""; suites=""; types=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
          if ($i ~ /^Suites:/) { suites = " " $i " " }
          if ($i ~ /^Types:/)  { types = $i }
        }
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && suites ~ ("[ \t]" suite "[ \t]") && uris != "") {
          split(uris, u, /[ \t]+/); print u[1]; exit
        }
      }' "$f"
  done | head -n1
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i+1) == suite) { print $i; exit } }' "$f"
  done | head -n1
}

# A suite this machine does not use (trixie on a bookworm host) comes from the mirror that
# serves this machine's own Debian suite: a Debian mirror carries every release.
own_suite=$(sed -n "s/^VERSION_CODENAME=//p" /etc/os-release 2>/dev/null | head -n1)
mirror=${VLLAMA_DEBIAN_MIRROR:-$(apt_mirror | head -n1)}
if [ -z "$mirror" ] && [ -n "$own_suite" ] && [ "$own_suite" != "$SUITE" ]; then
  mirror=$(SUITE=$own_suite apt_mirror | head -n1)
fi
[ -n "$mirror" ] || die "no Debian apt source in /etc/apt; set VLLAMA_DEBIAN_MIRROR=<debian mirror URL>"
if [ "${1:-}" = "--print-mirror" ]; then echo "$mirror"; exit 0; fi

hash=$( { cat "$0"; echo "$SUITE $mirror"; } | sha256sum | cut -c1-12)
ref="$NAME:$SUITE-$hash"
stable="$NAME:$SUITE"

docker info >/dev/null 2>&1 || die "no Docker engine; run scripts/ensure-docker.sh first"

# Two callers at once: the second waits, then finds the image.
exec 9>"$REPO/.cache/locks/local-base-image.lock"
flock -w 600 9 || die "another local-base-image.sh holds the lock for 10 min; check it"

if docker image inspect "$ref" >/dev/null 2>&1; then
  docker tag "$ref" "$stable"
  log "present: $ref"
  echo "$ref"
  exit 0
fi

tarball="$CACHE/debian-$SUITE-$hash.tar"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing; run scripts/install-system-deps.sh"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  root="$CACHE/rootfs-$SUITE-$hash"
  rm -rf "$root"
  log "debootstrap --variant=minbase $SUITE (about 30 s)"
  debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$CACHE/debootstrap-$hash.log" 2>&1 \
    || die "debootstrap failed; see .cache/base-images/debootstrap-$hash.log"
  # Image hygiene: no package lists or logs baked in; apt inside builds refreshes them.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
fi

log "docker import $ref"
docker import \
  --change 'CMD ["bash"]' \
  --change "LABEL org.opencontainers.image.title=vllama-local-debian vllama.content-hash=$hash" \
  --change 'ENV LANG=C.UTF-8' \
  "$tarball" "$ref" >/dev/null
docker tag "$ref" "$stable"
echo "$ref"
