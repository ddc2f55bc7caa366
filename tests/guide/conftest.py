"""Fixtures for running the guide's samples: the guide itself, and a real gateway on port 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .guide_gateway import RunningGateway, start_gateway
from .guide_samples import Sample, guide_path, load_sample


@pytest.fixture(scope="session")
def guide() -> Path:
    path = guide_path()
    if not path.is_file():
        pytest.skip(f"the SDK guide is not beside the repository ({path}); set KRUXOS_SDK_GUIDE to its path")
    return path


@pytest.fixture
def sample(guide: Path, request: pytest.FixtureRequest) -> Sample:
    """The guide's sample under the heading given by ``parametrize("sample", [...], indirect=True)``."""
    return load_sample(guide, request.param)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The real gateway (``kruxos_gateway``) on 127.0.0.1, port 0, with a fresh key and workspace."""
    with start_gateway(tmp_path_factory.mktemp("gateway")) as running:
        yield running
