"""Where scans-guard finds files outside the package: the model cache and the benchmark data directory.

Neither defaults to a path inside a checkout of this repository: an installed package has no `../shared/data`.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

CACHE_ENV = "SCANS_GUARD_CACHE"
DATA_ENV = "SCANS_GUARD_DATA"


def default_cache_root() -> Path:
    """$SCANS_GUARD_CACHE, else the platform's user cache directory for "scans-guard" (platformdirs; on Linux
    $XDG_CACHE_HOME/scans-guard, i.e. ~/.cache/scans-guard, as before)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    return Path(user_cache_dir("scans-guard", appauthor=False))


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The benchmark data directory: `explicit` (--data-dir / data_dir=), else $SCANS_GUARD_DATA, else None.

    Not checked for existence here: whoever reads a set names the missing file.
    """
    if explicit is not None and str(explicit):
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def missing_data_dir_hint() -> str:
    """The two ways to name the data directory, for error messages and skip notes."""
    return f"pass --data-dir (data_dir= in Python) or set ${DATA_ENV}"


def require_data_dir(explicit: str | os.PathLike | None = None, needed_for: str = "this") -> Path:
    """`data_dir(explicit)`, or a FileNotFoundError naming both ways to give it."""
    found = data_dir(explicit)
    if found is None:
        raise FileNotFoundError(f"{needed_for} needs the benchmark data directory: {missing_data_dir_hint()}")
    return found
