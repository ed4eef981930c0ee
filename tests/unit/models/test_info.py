"""models/info.py reads real model files (local dirs, the HF cache) and never raises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from vllama.models.info import model_dir, read_model_config, read_model_files


def write_model(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (directory / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    save_file(
        {"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)},
        str(directory / "model-1.safetensors"),
    )
    save_file({"c": np.zeros((2, 2, 2), np.float32)}, str(directory / "model-2.safetensors"))


def test_a_local_model_directory(tmp_path: Path) -> None:
    write_model(tmp_path / "m")
    files = read_model_files(str(tmp_path / "m"))
    assert files.config == {"model_type": "llama", "hidden_size": 8}
    assert files.generation_config == {"temperature": 0.7}
    assert files.chat_template == "{{ x }}"
    assert files.parameter_count == 12 + 5 + 8
    assert files.weight_dtype == "F32"
    sizes = sum(p.stat().st_size for p in (tmp_path / "m").glob("*.safetensors"))
    assert files.size_bytes == sizes
    assert files.modified_unix == (tmp_path / "m" / "config.json").stat().st_mtime
    assert read_model_config(str(tmp_path / "m")) == files.config


def test_a_repo_id_in_the_hugging_face_cache(tmp_path: Path) -> None:
    repo = tmp_path / "models--acme--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    write_model(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert model_dir("acme/tiny", tmp_path) == snapshot
    assert read_model_config("acme/tiny", tmp_path) == {"model_type": "llama", "hidden_size": 8}
    assert read_model_files("acme/tiny", tmp_path).parameter_count == 25


def test_the_shipped_embedding_model() -> None:
    from tests.engines import embed_model_dir

    files = read_model_files(str(embed_model_dir()))
    assert files.config is not None
    assert files.config["model_type"] == "bert"
    assert files.parameter_count is not None
    assert 20_000_000 < files.parameter_count < 25_000_000  # all-MiniLM-L6-v2: 22.7M


@pytest.mark.parametrize("root", [None, "", "no/such-model", "/nonexistent/path", "a b c"])
def test_unknown_roots_give_nothing(root: str | None) -> None:
    files = read_model_files(root)
    assert files.config is None
    assert files.size_bytes is None
    assert read_model_config(root) is None


def test_broken_files_never_raise(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text("[]")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + b"junk")
    files = read_model_files(str(tmp_path))
    assert files.config is None
    assert files.chat_template is None
    assert files.parameter_count is None
    assert files.size_bytes == 12
