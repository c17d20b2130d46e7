"""What `scans-guard bench` measures and how often: the one settings model every bench section reads."""

from __future__ import annotations

from pydantic import BaseModel, Field, PositiveInt


class BenchConfig(BaseModel):
    """What to measure and how often. `quick_config()` shrinks it to a sanity run."""

    model: str | None = None  # None: the embedded default model
    artifact: str | None = None  # None: the artifact shipped for the default model
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens: int = Field(48, ge=1)
    repeats: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)
    n_prompts: int = Field(8, ge=1)  # end-to-end prompts (half harmful, half benign)
    sigma_prompts: int = Field(32, ge=1)  # prompts classified at each sigma batch size
    sigma_batch_sizes: list[PositiveInt] = Field([1, 8, 32], min_length=1)
    steer_batch_sizes: list[PositiveInt] = Field([1, 8], min_length=1)
    force_length: bool = True  # suppress EOS while timing so both modes generate max_new_tokens per row
    memory: bool = True  # peak RSS plain vs SCANS, one subprocess each
    load_time: bool = True  # warm load time in a fresh process (reuses the memory subprocesses when they run)
    cold: bool = False  # time a first load (GGUF -> cache) into a temporary SCANS_GUARD_CACHE
    threads: int | None = None  # torch.set_num_threads; None: leave torch's default
    seed: int = 0
    quick: bool = False
    generate_threads: int = Field(8, ge=1)  # the threads section: concurrent one-prompt generate calls
    serve: bool = True  # the serve section: the HTTP server under concurrent clients (needs the [serve] extra)

    @classmethod
    def quick_config(cls, **overrides: object) -> BenchConfig:
        base = dict(
            max_new_tokens=8,
            repeats=1,
            warmup=1,
            n_prompts=2,
            sigma_prompts=8,
            sigma_batch_sizes=[1, 8],
            steer_batch_sizes=[1, 2],
            generate_threads=4,
            quick=True,
        )
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
