"""Shared fixtures: a tiny random model built in code, its calibrated artifact, and the default model (once)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The shared helper modules assert too: their failures read like the tests' own.
pytest.register_assert_rewrite("fuzz_helpers", "benchmark_scripts", "tool_schemas")

from scans_guard import CalibrationConfig, ScansEngine  # noqa: E402
from scans_guard.calibration.fit import calibrate  # noqa: E402
from scans_guard.model.embedded import DEFAULT_MODEL, QWEN_05B  # noqa: E402
from scans_guard.testing import tiny_model  # noqa: E402

SHARED_DATA = Path(os.environ.get("SCANS_GUARD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny():
    return tiny_model("qwen2", seed=0)


@pytest.fixture(scope="session")
def tiny_artifact(tiny):
    config = CalibrationConfig(
        n_anchors=8, n_threshold=8, steer_layers=[1, 2], classify_layers=[1, 2], alpha_benign=4.0, alpha_harmful=4.0
    )
    return calibrate(tiny, config, progress=False)


@pytest.fixture(scope="session")
def tiny_cosine_artifact(tiny):
    """The same calibration without the sigma probe: the paper's mean-cosine sigma (and older artifacts' layout)."""
    config = CalibrationConfig(
        n_anchors=8,
        n_threshold=8,
        steer_layers=[1, 2],
        classify_layers=[1, 2],
        alpha_benign=4.0,
        alpha_harmful=4.0,
        sigma_probe=False,
    )
    return calibrate(tiny, config, progress=False)


@pytest.fixture(scope="session")
def tiny_engine(tiny, tiny_artifact):
    return ScansEngine(tiny, tiny_artifact)


@pytest.fixture(scope="session")
def tiny_long_engine(tiny_artifact):
    """The tiny model (same weights, same artifact) with 2048 positions: room for tool schemas in its prompt."""
    return ScansEngine(tiny_model("qwen2", seed=0, context=2048), tiny_artifact)


@pytest.fixture(scope="session")
def tiny_on_disk(tiny, tiny_artifact, tmp_path_factory):
    """The tiny model and its artifact saved to disk, for code paths that load from a path (CLI, bench)."""
    root = tmp_path_factory.mktemp("tiny-on-disk")
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    tiny_artifact.save(root / "artifact")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's matrices are too small for intra-op threads, which only contend for the CPUs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _embedded_engine(spec) -> ScansEngine:
    if importlib.util.find_spec(spec.packages[0]) is None:
        pytest.skip(f"{spec.name} is not installed: pip install -e '.[{spec.extra}]'")
    return ScansEngine.load(spec.name, progress=False)


@pytest.fixture(scope="session")
def default_engine():
    """The default model (the 1.5B) with its shipped artifact, loaded once per test session (cached on first run):
    for the tests that pin what users get by default."""
    return _embedded_engine(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def small_engine():
    """The small embedded model (the 0.5B) with its shipped artifact, loaded once per test session: for behaviour
    that needs a real model but not the default's quality (about four times faster)."""
    return _embedded_engine(QWEN_05B)


@pytest.fixture(scope="session")
def shared_data():
    if not (SHARED_DATA / "oktest.csv").is_file():
        pytest.skip(
            f"benchmark data not found at {SHARED_DATA} (set SCANS_GUARD_DATA); "
            "only AdvBench, TruthfulQA and XSTest ship with the package"
        )
    return SHARED_DATA


# -- the benchmark scripts' tests (helpers: benchmark_scripts.py) ---------------------------------------------------


@pytest.fixture(scope="module")
def script(one_torch_thread):
    """Loads benchmarks/NAME.py; the scripts import their siblings (`from safe_steering_sweep import ...`)."""
    from benchmark_scripts import BENCH, load_module

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))
        yield lambda name: load_module(BENCH / f"{name}.py")


@pytest.fixture(scope="module")
def data_dir(shared_data) -> Path:
    """The scripts' sets need the benchmark data (`shared_data` skips without it)."""
    return shared_data


@pytest.fixture(scope="module")
def tiny_args(tiny_on_disk) -> list[str]:
    """The command-line options that point a script at the tiny model and its artifact on disk."""
    return ["--model", str(tiny_on_disk / "model"), "--artifact", str(tiny_on_disk / "artifact")]
