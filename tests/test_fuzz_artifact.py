"""Fuzzing of the artifact loader, on the tiny model: a mutated artifact.json or tensors file gives `ArtifactError`
(or `FingerprintMismatchError` from the engine), or an artifact that validates and works; never anything else."""

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from fuzz_helpers import FUZZ
from hypothesis import given, settings
from hypothesis import strategies as st

from scans_guard import Artifact, ArtifactError, FingerprintMismatchError, ScansEngine
from scans_guard.calibration.artifacts import ArtifactMeta

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _json_paths(node, prefix=()):
    """Every key path below `node` (dict keys and list indices)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _json_paths(child, (*prefix, key))


REPLACEMENTS = st.one_of(
    st.sampled_from(
        [
            float("nan"),
            float("inf"),
            -float("inf"),
            1e308,
            -1e308,
            10**30,
            -(10**30),
            0,
            -1,
            0.5,
            True,
            None,
            "",
            "nan",
            [],
            {},
            [1.0],
            {"a": 1},
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.text(max_size=8),
)


def _mutate(meta: dict, data) -> None:
    """Replace a value somewhere in the artifact's JSON (numbers by non-finite, huge or negative ones; anything by
    another type) or drop a key; the top-level key is drawn first so small sections are hit as often as big ones."""
    top = data.draw(st.sampled_from(sorted(meta)))
    paths = [(top,), *_json_paths(meta[top], (top,))]
    path = data.draw(st.sampled_from(paths))
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(REPLACEMENTS)


@pytest.fixture(scope="module")
def saved_artifact(tiny_artifact, tmp_path_factory):
    return tiny_artifact.save(tmp_path_factory.mktemp("fuzz-artifact") / "art")


@FUZZ
@given(data=st.data(), n_mutations=st.integers(1, 3))
def test_fuzz_artifact_json(saved_artifact, tiny, data, n_mutations):
    """A mutated artifact.json gives ArtifactError, or an artifact that validates and works, never anything else."""
    meta = json.loads((saved_artifact / "artifact.json").read_text())
    for _ in range(n_mutations):
        _mutate(meta, data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(shutil.copytree(saved_artifact, Path(tmp) / "art"))
        (path / "artifact.json").write_text(json.dumps(meta))
        try:
            loaded = Artifact.load(path)
        except ArtifactError:
            return
    ArtifactMeta.model_validate(loaded.meta.model_dump())
    recipe = loaded.recipe
    assert all(
        math.isfinite(x) for x in (recipe.threshold, recipe.alpha_benign, recipe.alpha_harmful, recipe.grey_zone)
    )
    assert torch.isfinite(loaded.refusal_vectors).all() and torch.isfinite(loaded.d_harm).all()
    try:
        engine = ScansEngine(tiny, loaded)
    except FingerprintMismatchError:
        return  # a mutated fingerprint: the typed error the loader's caller gets
    verdict = engine.classify("How do I bake bread?")[0]
    assert math.isfinite(verdict.score) and verdict.label in {"harmful", "benign"}


@settings(max_examples=25, deadline=None)
@given(offset=st.integers(0, 10**9), value=st.integers(0, 255))
def test_fuzz_artifact_tensor_bytes(saved_artifact, offset, value):
    """Any byte changed in tensors.safetensors: ArtifactError (the recorded sha256 no longer matches)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(shutil.copytree(saved_artifact, Path(tmp) / "art"))
        blob = bytearray((path / "tensors.safetensors").read_bytes())
        offset %= len(blob)
        if blob[offset] == value:
            value = (value + 1) % 256
        blob[offset] = value
        (path / "tensors.safetensors").write_bytes(bytes(blob))
        with pytest.raises(ArtifactError, match="tensors were modified"):
            Artifact.load(path)
