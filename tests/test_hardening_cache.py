"""The default model's cache is rebuilt, never used, when damaged, stale or half-built.

Runs on the tiny model; see docs/hardening.md for the table these tests back.
"""

import json
import logging
import shutil
import struct
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from scans_guard import ModelLoadError, load_model
from scans_guard.model import embedded as default_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the default model's cache --------------------------------------------------------------------------------------


def _cache_target(cache_dir):
    return cache_dir / "models" / default_model.DEFAULT_MODEL.cache_name


def _complete_cache(tiny, cache_dir):
    """The tiny model saved as the default model's cache and marked complete; its directory."""
    target = _cache_target(cache_dir)
    tiny.model.save_pretrained(target)
    tiny.tokenizer.save_pretrained(target)
    default_model._write_marker(target)
    return target


@pytest.fixture
def fake_build(tiny, monkeypatch):
    """Stands in for the minute-long GGUF dequantisation: writes the tiny model; records each build."""
    builds = []

    def build(work, get_gguf, progress):
        builds.append(work)
        time.sleep(0.3)  # long enough for a second builder to arrive while this one holds the lock
        tiny.model.save_pretrained(work / "model")
        tiny.tokenizer.save_pretrained(work / "model")

    monkeypatch.setattr(default_model, "_build_cache", build)
    return builds


def _write_float(path, tensor_name, index, value):
    """Overwrite one float32 of a tensor inside a safetensors file, in place (same size, header untouched)."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        start = json.loads(f.read(n))[tensor_name]["data_offsets"][0]
        f.seek(8 + n + start + 4 * index)
        f.write(struct.pack("<f", value))


def test_cached_weights_damaged_with_nan_are_rebuilt_not_used(tiny, tmp_path, fake_build):
    target = _complete_cache(tiny, tmp_path)
    weights = target / "model.safetensors"
    _write_float(weights, "model.layers.1.mlp.down_proj.weight", 5, float("nan"))
    assert torch.isnan(load_file(str(weights))["model.layers.1.mlp.down_proj.weight"]).any()  # loads fine as is
    handle = load_model(None, cache_dir=tmp_path, progress=False)
    assert len(fake_build) == 1
    assert all(bool(torch.isfinite(p).all()) for p in handle.model.parameters())


def test_cache_marked_by_an_older_version_is_rebuilt(tiny, tmp_path, fake_build):
    target = _cache_target(tmp_path)
    tiny.model.save_pretrained(target)
    (target / default_model._COMPLETE).write_text(json.dumps({"gguf_sha256": default_model.DEFAULT_MODEL.gguf_sha256}))
    assert default_model.embedded_model_dir(cache_dir=tmp_path, progress=False) == target
    assert len(fake_build) == 1 and default_model._is_complete(target)


@pytest.mark.parametrize("damage", ["unreadable", "missing", "extra"])
def test_cache_with_unreadable_missing_or_extra_weights_is_rebuilt(tiny, tmp_path, fake_build, damage):
    target = _cache_target(tmp_path)
    tiny.model.save_pretrained(target)
    default_model._write_marker(target)
    weights = target / "model.safetensors"
    if damage == "unreadable":
        weights.unlink()
        weights.mkdir()  # open() fails with IsADirectoryError
    elif damage == "missing":
        weights.unlink()
    else:
        (target / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert not default_model._is_complete(target)
    default_model.embedded_model_dir(cache_dir=tmp_path, progress=False)
    assert len(fake_build) == 1 and default_model._is_complete(target)


def test_a_build_removes_what_a_killed_build_left(tmp_path, fake_build):
    stale = tmp_path / "models" / ".build-abc123"
    (stale / "model").mkdir(parents=True)
    (stale / "model.gguf").write_bytes(b"half a model")
    target = default_model.embedded_model_dir(cache_dir=tmp_path, progress=False)
    assert sorted(p.name for p in target.parent.iterdir()) == [default_model._LOCK, target.name]


def test_two_builders_at_once_build_once(tmp_path, fake_build, caplog):
    barrier, results, errors = threading.Barrier(2), [], []

    def use_cache():
        barrier.wait()
        try:
            results.append(default_model.embedded_model_dir(cache_dir=tmp_path, progress=False))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use_cache) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="scans_guard.model.embedded"):
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(fake_build) == 1, "the second builder waited and used the first one's copy"
    assert "waiting for it" in caplog.text
    assert default_model._is_complete(results[0])


def test_cache_of_the_full_precision_layout_is_rebuilt(tiny, tmp_path, fake_build):
    """A cache written before weights were stored at half precision records hashes but no format: rebuilt once."""
    target = _cache_target(tmp_path)
    tiny.model.save_pretrained(target)
    default_model._write_marker(target)
    marker = json.loads((target / default_model._COMPLETE).read_text())
    assert marker.pop("format") == default_model.CACHE_FORMAT
    (target / default_model._COMPLETE).write_text(json.dumps(marker))
    assert not default_model._is_complete(target)
    assert default_model.embedded_model_dir(cache_dir=tmp_path, progress=False) == target
    assert len(fake_build) == 1 and default_model._is_complete(target)


# -- a cache marked complete whose weights were damaged afterwards ---------------------------------------------------


@pytest.fixture
def corrupted_cache(tiny, tmp_path):
    """A default-model cache that is marked complete but whose weights were damaged afterwards."""
    target = _complete_cache(tiny, tmp_path)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return tmp_path


def test_cache_marked_complete_loads_from_cache(tiny, tmp_path):
    """Control for the test below: the same cache, undamaged, loads."""
    _complete_cache(tiny, tmp_path)
    assert load_model(None, cache_dir=tmp_path, progress=False).n_layers == 4


def test_corrupted_cache_is_rebuilt_once(corrupted_cache, tiny, monkeypatch):
    rebuilt = []

    def fake_build(work, get_gguf, progress):  # stands in for the minute-long GGUF dequantisation
        tiny.model.save_pretrained(work / "model")
        tiny.tokenizer.save_pretrained(work / "model")
        rebuilt.append(work)

    monkeypatch.setattr(default_model, "_build_cache", fake_build)
    assert load_model(None, cache_dir=corrupted_cache, progress=False).n_layers == 4
    assert len(rebuilt) == 1


def test_corrupted_cache_that_stays_corrupt_is_a_model_load_error(corrupted_cache, tmp_path_factory, monkeypatch):
    damaged = tmp_path_factory.mktemp("damaged") / "model"
    shutil.copytree(corrupted_cache / "models" / default_model.DEFAULT_MODEL.cache_name, damaged)

    def broken_build(work, get_gguf, progress):
        shutil.copytree(damaged, work / "model")

    monkeypatch.setattr(default_model, "_build_cache", broken_build)
    with pytest.raises(ModelLoadError):
        load_model(None, cache_dir=corrupted_cache, progress=False)
