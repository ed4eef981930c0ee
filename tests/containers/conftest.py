"""Fixtures for the container suites: the images, built once per session (cached by
content hash across sessions), and the Docker SDK client."""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import pytest

from tests.containers.build import TIMINGS, Images, build_all


@pytest.fixture(scope="session")
def images() -> Iterator[Images]:
    start = time.monotonic()
    built = build_all()
    TIMINGS["images total"] = time.monotonic() - start
    yield built
    print("\ncontainer build timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items()))


@pytest.fixture(scope="session")
def docker_client(images: Images) -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=120)
    yield client
    client.close()
