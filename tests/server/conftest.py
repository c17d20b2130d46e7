"""A live server on the tiny model, on a loopback port in this process; the official clients talk to it.

Network rules for these tests: 127.0.0.1 only, every request loop bounded in count and time, every server stopped
when its fixture ends.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server needs the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the server needs the [serve] extra: pip install -e '.[serve]'")

from server_helpers import running  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """The tiny model's matrices are too small for intra-op threads (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def server(tiny_engine):
    with running(tiny_engine, allow_fixed_coefficient=True) as srv:  # the baselines' fixed coefficients are tested
        yield srv


@pytest.fixture(scope="module")
def model_name(tiny_engine):
    return tiny_engine.handle.name


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def http(server):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c
