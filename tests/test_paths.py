"""Where files live outside the package: the cache root and the data directory (env var or explicit, no default)."""

import sys
from pathlib import Path

import pytest

from scans_guard.data import load_set
from scans_guard.model.paths import data_dir, default_cache_root, require_data_dir


def test_cache_root_env_first(monkeypatch, tmp_path):
    monkeypatch.setenv("SCANS_GUARD_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "c"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG paths are the Linux convention")
def test_cache_root_follows_xdg_as_before(monkeypatch, tmp_path):
    monkeypatch.delenv("SCANS_GUARD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "scans-guard"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "scans-guard"


def test_data_dir_explicit_then_env_then_none(monkeypatch, tmp_path):
    monkeypatch.delenv("SCANS_GUARD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path.parent / "shared" / "data").mkdir(parents=True, exist_ok=True)  # a checkout's layout is not a default
    assert data_dir() is None
    with pytest.raises(FileNotFoundError, match=r"--data-dir.*SCANS_GUARD_DATA"):
        require_data_dir(None, "the sweep")
    with pytest.raises(FileNotFoundError, match=r"oktest\.csv.*--data-dir.*SCANS_GUARD_DATA"):
        load_set("oktest")
    monkeypatch.setenv("SCANS_GUARD_DATA", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env" and require_data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "flag") == tmp_path / "flag"


def test_load_set_reads_the_env_directory(monkeypatch, tmp_path):
    (tmp_path / "oktest.csv").write_text("prompt,label\nHow do I bake bread?,safe\n")
    monkeypatch.setenv("SCANS_GUARD_DATA", str(tmp_path))
    assert [e.prompt for e in load_set("oktest")] == ["How do I bake bread?"]
