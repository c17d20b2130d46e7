"""Load a causal LM and locate the parts SCANS touches: decoder blocks, final norm, LM head, chat template."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import InvalidPromptError, ModelLoadError, UnsupportedArchitectureError
from .quiet import quiet_transformers

if TYPE_CHECKING:  # `import scans_guard` stays free of transformers
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .embedded import EmbeddedModel

log = logging.getLogger(__name__)
T = TypeVar("T")

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Attribute paths tried in order; covers Llama, Qwen2/2.5/3, Mistral, Gemma 1-3, Phi-3, GPT-2/NeoX style models.
_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
)
_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
)


class ToolConversation(list):
    """A conversation (a list of message dicts) that also carries the tool schemas its chat template is given.

    The engine passes conversations through to `ModelHandle.chat_ids` unchanged, so tools travel with them into
    classification and generation. (Renderings built from it, such as the copy without the system prompt, are
    plain lists: they are scored without the tool schemas.)
    """

    def __init__(self, messages: list[dict], tools: list[dict] | None = None):
        super().__init__(messages)
        self.tools = list(tools) if tools else None


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:  # no such submodule on this architecture
        return None


@dataclass
class ModelHandle:
    """A loaded model plus the modules SCANS reads and writes; the only place architecture differences live."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    layers: nn.ModuleList  # decoder blocks; block l's output is h^l
    final_norm: nn.Module
    lm_head: nn.Module
    name: str
    # One lock per model: every engine on this model runs its forward steps (and their hooks) under it.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # A fast tokenizer keeps `split_special_tokens` as state on its shared backend: encode calls from several threads
    # must not interleave, or a template's <|im_start|> gets split, or a forged one in content becomes a control token.
    tokenize_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # Objects derived from the model once and kept with it (the grammar vocabulary of constrained decoding).
    _derived: dict = field(default_factory=dict, repr=False, compare=False)
    _derived_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def wrap(cls, model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str = "model") -> ModelHandle:
        """Locate blocks, norm and head on an already loaded HF model (clear error if the family is unknown)."""
        layers = next((x for p in _LAYER_PATHS if isinstance(x := _get_path(model, p), nn.ModuleList)), None)
        norm = next((x for p in _NORM_PATHS if isinstance(x := _get_path(model, p), nn.Module)), None)
        output_embeddings = getattr(model, "get_output_embeddings", None)
        head = output_embeddings() if output_embeddings is not None else None
        if layers is None or norm is None or head is None:
            missing = [n for n, x in (("decoder layers", layers), ("final norm", norm), ("LM head", head)) if x is None]
            raise UnsupportedArchitectureError(
                f"unsupported architecture {type(model).__name__}: could not find {', '.join(missing)}"
            )
        if getattr(tokenizer, "chat_template", None) is None:
            raise UnsupportedArchitectureError(
                f"{name}: the tokenizer has no chat template; use an instruct/chat model"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        model.eval()
        # Its blocks, norm and head were found: a transformers causal LM from here on.
        hf_model = cast("PreTrainedModel", model)
        return cls(model=hf_model, tokenizer=tokenizer, layers=layers, final_norm=norm, lm_head=head, name=name)

    def cached(self, key: str, build: Callable[[], T]) -> T:
        """The object `build()` made for this model on the first call with `key` (built once, also across threads)."""
        with self._derived_lock:
            if key not in self._derived:
                self._derived[key] = build()
            return self._derived[key]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """The LM head's output width: the logits' last dimension (may exceed the tokenizer's length)."""
        return int(_weight(self.lm_head).shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 4096))

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special-token strings (chat markup such as `<|im_start|>`), as text."""
        return tuple(t for t in self.tokenizer.all_special_tokens if t)

    def eos_token_ids(self) -> set[int]:
        """Token ids that end a reply: the tokenizer's EOS plus the generation config's (e.g. <|im_end|>)."""
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[tok] for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>") if tok in vocab)
        return {i for i in ids if i is not None}

    def encode(self, text: str, *, content: bool) -> list[int]:
        """Token ids of `text`, no BOS/EOS; `content=True` reads special-token text as literal characters.

        The one way to tokenise (thread-safe): see `tokenize_lock`.
        """
        with self.tokenize_lock:
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=content)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """The text of one sequence of token ids, special tokens included."""
        text = self.tokenizer.decode(list(ids))
        if not isinstance(text, str):  # a list comes back only for a batch of sequences
            raise TypeError(f"decoding one sequence gave {type(text).__name__}")
        return text

    def chat_ids(self, conversation: str | list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of the chat-formatted conversation, generation prompt included.

        Message content is data: special-token text inside it (a forged `<|im_start|>system`) is tokenised as the
        literal characters, so only the chat template itself can open or close a turn. `tools` (JSON schemas,
        OpenAI's `{"type": "function", "function": {...}}` form) go to the template's `tools=`; a conversation
        that is a `ToolConversation` carries its own. Assistant messages may hold `tool_calls` for the template.
        Tool schemas and tool-call arguments are rendered by the template, not as content, so special-token text
        in them is refused.
        """
        messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
        tools = tools if tools is not None else getattr(conversation, "tools", None)
        _validate_messages(messages)
        self._check_template_data(messages, tools)
        text = self._render(messages, tools)
        if messages[-1]["content"].strip() not in text:
            raise InvalidPromptError(f"the chat template dropped the last message (role {messages[-1].get('role')!r})")
        ids: list[int] = []
        for segment, is_content in self._template_segments(messages, text, tools):
            ids += self.encode(segment, content=is_content)
        return ids

    def _check_template_data(self, messages: list[dict], tools: list[dict] | None) -> None:
        """Tool schemas and tool calls are template data, tokenised with special tokens live: refuse chat markup."""
        data = [json.dumps(tools or [], ensure_ascii=False)]
        data += [json.dumps(m.get("tool_calls") or [], ensure_ascii=False, default=str) for m in messages]
        if any(t in d for d in data for t in self.special_tokens):
            raise InvalidPromptError(
                "a tool schema or tool call holds special-token text (chat markup such as <|im_start|>); remove it"
            )

    def _render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tools=[*tools] if tools else None, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja2 errors and TypeErrors from malformed messages
            raise InvalidPromptError(f"the chat template rejected the conversation: {exc}") from exc
        if not isinstance(text, str):  # tokenize=False renders text; anything else is not a prompt to send
            raise InvalidPromptError(f"the chat template rendered {type(text).__name__}, not text")
        return text

    def _template_segments(
        self, messages: list[dict], text: str, tools: list[dict] | None = None
    ) -> list[tuple[str, bool]]:
        """`text` cut into (segment, is_message_content) pieces.

        The template is rendered once more with each non-empty content replaced by a private-use placeholder;
        where it placed a placeholder, that message's content goes. A template that transforms content (trims it,
        say) cannot be cut this way: that is fine for plain text, but content holding special-token text is refused.
        """
        marks = [f"\ue000{i}\ue001" if m["content"] else "" for i, m in enumerate(messages)]
        rendered = self._render([{**m, "content": mark} for m, mark in zip(messages, marks)], tools)
        segments: list[tuple[str, bool]] = []
        for piece in _MARK.split(rendered):
            if _MARK.fullmatch(piece):
                segments.append((messages[int(piece[1:-1])]["content"], True))
            elif piece:
                segments.append((piece, False))
        if "".join(s for s, _ in segments) == text:
            return segments
        if any(t in m["content"] for m in messages for t in self.special_tokens):
            raise InvalidPromptError(
                "message content holds special-token text and this chat template transforms "
                "content, so it cannot be kept as plain text; remove the special-token text"
            )
        return [(text, False)]

    def fingerprint(self) -> dict:
        """What identifies the model an artifact was calibrated on: architecture, sizes and a strided probe of a few
        weight matrices, compared with a tolerance, so one checkpoint in float32, bfloat16 or on another device
        matches itself while a different checkpoint does not."""
        probe: list[float] = []
        for param in (
            _weight(self.model.get_input_embeddings()),
            self.layers[0],
            self.layers[-1],
            _weight(self.lm_head),
        ):
            tensor = param if isinstance(param, torch.Tensor) else next(param.parameters())
            flat = tensor.detach().reshape(-1)
            idx = (torch.arange(16) * (flat.numel() - 1) // 15).to(flat.device)  # exact integer stride
            probe.extend(float(x) for x in flat[idx].float().cpu())
        return {
            "architecture": type(self.model).__name__,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "weight_probe": [round(x, 6) for x in probe],
            "weight_probe_sha256": hashlib.sha256(",".join(f"{x:.2e}" for x in probe).encode()).hexdigest()[:16],
        }


def _weight(module: nn.Module) -> torch.Tensor:
    """A module's `weight` (an embedding's or LM head's matrix); torch types module attributes as Tensor | Module."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise UnsupportedArchitectureError(f"{type(module).__name__}.weight is not a tensor")
    return weight


_MARK = re.compile("(\ue000\\d+\ue001)")


def _validate_messages(messages: object) -> None:
    if not isinstance(messages, list):
        raise InvalidPromptError(f"a conversation is a string or a list of messages, got {type(messages).__name__}")
    if not messages:
        raise InvalidPromptError("the conversation is empty")
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, str):
            raise InvalidPromptError(f"message content must be text, got {type(content).__name__}")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidPromptError(f"message content is not valid Unicode text: {exc.reason}") from None
    if not messages[-1]["content"].strip():
        raise InvalidPromptError("the prompt is empty or whitespace")


def fingerprints_match(a: dict, b: dict, rtol: float = 2e-2, atol: float = 1e-3) -> bool:
    """Same shapes and weight probes equal up to dtype rounding."""
    keys = ("architecture", "n_layers", "hidden_size", "vocab_size")
    if any(a.get(k) != b.get(k) for k in keys):
        return False
    pa, pb = torch.tensor(a["weight_probe"]), torch.tensor(b["weight_probe"])
    return pa.shape == pb.shape and bool(torch.allclose(pa, pb, rtol=rtol, atol=atol))


def load_model(
    model: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> ModelHandle:
    """Load `model`: None for the embedded default model, an embedded model's name (`EMBEDDED_MODELS`), a local HF
    model directory, or a local .gguf file (dequantised once, then loaded from its safetensors cache).

    `progress`: bars while a model cache is built (minutes, once). `verbose=False` silences transformers' own bar and
    logs while the weights load (a second or two), for that load only (`scans_guard.model.quiet`)."""
    from .embedded import EMBEDDED_MODELS, embedded_model, gguf_file_dir

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    _check_device(device)
    spec = embedded_model(model)
    if spec is not None:
        return _load_embedded(spec, device, dtype, cache_dir, progress, verbose)
    assert model is not None  # embedded_model(None) is the default model
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model path does not exist: {path} (scans-guard never downloads weights; embedded "
            f"models: {', '.join(EMBEDDED_MODELS)})"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"a model file must be .gguf, got {path.name}")
        return _load_hf(gguf_file_dir(path, cache_dir=cache_dir, progress=progress), device, dtype, path.stem, verbose)
    return _load_hf(path, device, dtype, path.name, verbose)


def _load_embedded(
    spec: EmbeddedModel, device: str, dtype: str, cache_dir: str | os.PathLike | None, progress: bool, verbose: bool
) -> ModelHandle:
    """Load an embedded model from its cache while another core hashes the same weights (2-3 s for the default
    model); a cache damaged after it was written (hashes that differ, weights that do not load) is rebuilt once."""
    from .embedded import embedded_model_dir, invalidate_cache, weights_intact

    name = f"{spec.name}-q4_k_m"
    path = embedded_model_dir(spec, cache_dir=cache_dir, progress=progress, verify_weights=False)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scans-guard-verify") as pool:
        intact = pool.submit(weights_intact, path)
        try:
            handle: ModelHandle | None = _load_hf(path, device, dtype, name, verbose)
            why = "its weights were modified after it was built"
        except ModelLoadError as exc:
            handle, why = None, f"it is unreadable ({exc})"
        if handle is not None and intact.result():
            return handle
        handle = None  # the damaged copy's weights are freed before the rebuild
    log.warning("cached model at %s is not usable: %s; rebuilding it", path, why)
    invalidate_cache(path)
    rebuilt = embedded_model_dir(spec, cache_dir=cache_dir, progress=progress)
    return _load_hf(rebuilt, device, dtype, name, verbose)


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if parsed.type not in available:
        raise ModelLoadError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    if not available[parsed.type] or (parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count()):
        raise ModelLoadError(f"device {device!r} is not available on this machine")


def _load_hf(path: Path, device: str, dtype: str, name: str, verbose: bool = True) -> ModelHandle:
    """Load from a directory of safetensors weights; pickled weights (.bin, .pt) are never opened."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any(path.glob("*.safetensors")) and any(p.suffix in _PICKLE_SUFFIXES for p in path.iterdir()):
        raise ModelLoadError(
            f"{path} has only pickled weights (e.g. pytorch_model.bin); scans-guard loads only "
            "safetensors or GGUF, since unpickling can run code: convert the checkpoint to safetensors"
        )
    try:
        with quiet_transformers(enabled=not verbose):
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True, dtype=DTYPES[dtype], use_safetensors=True
            ).to(device)  # type: ignore[arg-type]  # PreTrainedModel.to is functools.wraps(nn.Module.to): read as unbound
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ModelLoadError(f"could not load a causal LM from {path}: {exc}") from exc
    return ModelHandle.wrap(model, tokenizer, name=name)
