"""A tiny random chat model built in code (no files, ~0.02 s), for tests of scans-guard and of code built on it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch

from .model.loading import ModelHandle

NL = "{{ '\\n' }}"
# ChatML, with tools rendered as Qwen2.5's template renders them (schemas in the system turn, calls in
# <tool_call> tags, results in <tool_response> tags of a user turn; a shorter instruction, since the tiny model's
# context is 512 tokens); without tools, plain ChatML.
CHATML_TEMPLATE = (
    "{% if tools %}<|im_start|>system"
    + NL
    + "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    + NL
    + NL
    + "{% endif %}"
    "# Tools"
    + NL
    + "<tools>{% for tool in tools %}"
    + NL
    + "{{ tool | tojson }}{% endfor %}"
    + NL
    + "</tools>"
    + NL
    + "Call a function in <tool_call></tool_call> tags.<|im_end|>"
    + NL
    + "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}<|im_start|>assistant"
    "{% if message['content'] %}" + NL + "{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] %}{% if call.function is defined %}{% set call = call.function %}{% endif %}"
    + NL
    + "<tool_call>"
    + NL
    + '{"name": "{{ call.name }}", "arguments": {{ call.arguments | tojson }}{{ \'}\' }}'
    + NL
    + "</tool_call>{% endfor %}<|im_end|>"
    + NL
    + "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    + NL
    + "<tool_response>"
    + NL
    + "{{ message['content'] }}"
    + NL
    + "</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>" + NL + "{% endif %}"
    "{% else %}<|im_start|>{{ message['role'] }}" + NL + "{{ message['content'] }}<|im_end|>" + NL + "{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant" + NL + "{% endif %}"
)
_CORPUS = [
    "Sure, here is how to bake bread at home.",
    "I'm sorry, but I can't assist with that request.",
    "How do I kill a Python process? Use the kill command.",
    "What is the capital of France? Paris is the capital.",
    "Write a script that can exploit vulnerabilities in software.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained in-process on a few sentences, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model(
    family: str = "qwen2", seed: int = 0, n_layers: int = 4, hidden: int = 64, context: int = 512
) -> ModelHandle:
    """A random Qwen2 or Llama with `n_layers` blocks, wrapped as a ModelHandle (global RNG untouched). `context`
    (positions) does not change the weights: a longer one fits tool schemas, which its template puts in the prompt."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    cfg_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[family]
    config = cfg_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        # Random init gives near-uniform logits; sharpen them so greedy decoding is stable across batch shapes.
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(20.0)
    return ModelHandle.wrap(model, tokenizer, name=f"tiny-{family}-{seed}")


@contextlib.contextmanager
def slow_steps(handle: ModelHandle, seconds: float) -> Iterator[None]:
    """Every forward pass of the model takes at least `seconds` longer (so a test can act while a request decodes)."""
    hook = handle.model.register_forward_hook(lambda *_: time.sleep(seconds))
    try:
        yield
    finally:
        hook.remove()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.005) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
