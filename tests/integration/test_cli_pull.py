"""`vllama pull / list / rm` as real subprocesses against a STAND-IN hub on 127.0.0.1
(the real Hugging Face hub is unreachable here): download, list with sizes, remove, and
the errors a user sees for a gated model and an unreachable hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import free_port
from tests.unit.cli.hub_standin import GATED, REPO, standin_hub

pytestmark = pytest.mark.timeout(120)


def vllama(tmp: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "XDG_CONFIG_HOME": str(tmp / "xdg"),
        "VLLAMA_CACHE_DIR": str(tmp / "cache"),
        "HF_ENDPOINT": endpoint,
    }
    return subprocess.run(
        [sys.executable, "-m", "vllama.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=90,
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (src / "model.safetensors").write_bytes(os.urandom(200_000))
    return src


def test_pull_list_rm(tmp_path: Path, model_dir: Path) -> None:
    with standin_hub(model_dir) as (url, _):
        pulled = vllama(tmp_path, url, "pull", REPO, "--json")
        assert pulled.returncode == 0, pulled.stderr
        path = Path(json.loads(pulled.stdout)["path"])
        assert (path / "model.safetensors").read_bytes() == (
            model_dir / "model.safetensors"
        ).read_bytes()

        listed = vllama(tmp_path, url, "list", "--json")
        [model] = json.loads(listed.stdout)["models"]
        assert model["name"] == REPO and model["size_bytes"] == 200_000 + len(
            '{"architectures": ["LlamaForCausalLM"]}'
        )
        table = vllama(tmp_path, url, "list").stdout
        assert REPO in table and "200.0 KB" in table
        assert vllama(tmp_path, url, "list", "-q").stdout.split() == [REPO]

        gated = vllama(tmp_path, url, "pull", GATED)
        assert gated.returncode == 1
        assert "gated" in gated.stderr and "HF_TOKEN" in gated.stderr
        assert "Traceback" not in gated.stderr

    removed = vllama(tmp_path, url, "rm", REPO, "--force", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["freed_bytes"] == model["size_bytes"]
    assert json.loads(vllama(tmp_path, url, "list", "--json").stdout)["models"] == []
    missing = vllama(tmp_path, url, "rm", REPO, "--force")
    assert missing.returncode == 1 and "vllama list" in missing.stderr


def test_unreachable_hub(tmp_path: Path) -> None:
    result = vllama(tmp_path, f"http://127.0.0.1:{free_port()}", "pull", "org/model")
    assert result.returncode == 1
    assert result.stderr.startswith("vllama pull: cannot reach the model hub")
    assert "HF_ENDPOINT" in result.stderr and "Traceback" not in result.stderr
