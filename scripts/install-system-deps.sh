#!/usr/bin/env bash
# Install the real binaries the test suites drive, from Debian's packages, when missing:
# Caddy, Nginx, Prometheus + promtool, Alertmanager, node-exporter, shellcheck, a Docker
# engine, debootstrap. Needs root (CI and the development machines run as root).
set -euo pipefail

want=(caddy nginx-light prometheus prometheus-alertmanager prometheus-node-exporter
      shellcheck docker.io debootstrap sshpass openssl gettext-base)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system deps: all present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "system deps: missing ${missing[*]}; run this script as root (or install them) and retry" >&2
  exit 1
fi
echo "system deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps out extras; policy-rc.d stops the packages' own services
# from starting: the tests start each binary themselves, on their own ports.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system deps: done"
