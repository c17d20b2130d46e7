"""Silence transformers' own progress bars and logs for one block, restoring what was there before.

Loading a cached model takes a second or two; its "Loading weights" bar and load report only clutter a command's
output. Long work (building the model cache, eval, calibrate) keeps its bars: only the blocks wrapped here are quiet.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

VERBOSE_ENV = "SCANS_GUARD_VERBOSE"


def verbose_from_env() -> bool:
    """$SCANS_GUARD_VERBOSE set to something other than "", 0, false, no or off."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


@contextlib.contextmanager
def quiet_transformers(enabled: bool = True) -> Iterator[None]:
    """Inside the block transformers shows no progress bar and logs errors only; both are restored on exit, even on
    an exception. `enabled=False` leaves everything as it is (a caller's --verbose)."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    root = hf_logging.get_logger("transformers")
    level = root.level
    with _no_bars(hf_logging):
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


@contextlib.contextmanager
def _no_bars(hf_logging) -> Iterator[None]:
    """transformers' tqdm bars off: through its tqdm hook, which hands back the hook it replaces, so nothing else
    (huggingface_hub's bar settings included) is touched; older transformers 5 releases without the hook toggle the
    bars off and back on."""
    if hasattr(hf_logging, "set_tqdm_hook"):
        previous = hf_logging.set_tqdm_hook(lambda _factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
        try:
            yield
        finally:
            hf_logging.set_tqdm_hook(previous)
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
