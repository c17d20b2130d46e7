"""quiet_transformers: transformers' bars and logs off inside the block, exactly as before after it."""

import logging

import pytest
from transformers.utils import logging as hf_logging

from scans_guard.model.quiet import quiet_transformers, verbose_from_env


def _state():
    hook = hf_logging.set_tqdm_hook(None)
    hf_logging.set_tqdm_hook(hook)
    return hf_logging.get_logger("transformers").level, hf_logging.is_progress_bar_enabled(), hook


def test_silences_the_block_and_restores_even_on_error(capsys):
    logger = hf_logging.get_logger("transformers.quiet_test")
    before = _state()
    with pytest.raises(RuntimeError), quiet_transformers():
        for _ in hf_logging.tqdm(range(3), desc="a transformers bar"):
            pass
        logger.warning("a load report")
        assert hf_logging.get_logger("transformers").level == logging.ERROR
        raise RuntimeError("the load failed")
    assert "a transformers bar" not in capsys.readouterr().err
    assert _state() == before
    for _ in hf_logging.tqdm(range(3), desc="a transformers bar"):
        pass
    assert "a transformers bar" in capsys.readouterr().err


def test_disabled_changes_nothing(capsys):
    before = _state()
    with quiet_transformers(enabled=False):
        assert _state() == before
        for _ in hf_logging.tqdm(range(3), desc="shown"):
            pass
    assert "shown" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "verbose"), [("", False), ("0", False), ("off", False), ("1", True), ("yes", True)])
def test_verbose_env(monkeypatch, value, verbose):
    monkeypatch.setenv("SCANS_GUARD_VERBOSE", value)
    assert verbose_from_env() is verbose
