"""How many replicas of the server Ray Serve runs, and how it scales them: one validated model behind
`scans-guard serve --ray` and `serve run scans_guard.serving.server.ray_serve:build_app`.

Kept apart from `scans_guard.serving.server.ray_serve` (and free of Ray) so flags are checked, with a clear message,
before Ray starts or where it is not installed.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InvalidArgumentError

# Per replica: in-flight requests the proxy may send it. Above the scheduler's max_batch they queue in the
# replica's own scheduler (429 past its max_queue), so keep it near max_batch + what may queue.
DEFAULT_MAX_ONGOING_REQUESTS = 32
AUTOSCALING_KEYS = ("min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s")
# The options `scans-guard serve --ray` has flags for, and the flags not spelt as the option's name with dashes.
CLI_OPTIONS = (
    "num_replicas",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
    "num_cpus",
    "num_gpus",
    "max_ongoing_requests",
)
FLAGS = {"num_replicas": "--replicas", "num_cpus": "--num-cpus-per-replica", "num_gpus": "--num-gpus-per-replica"}


def flag_of(option: str) -> str:
    """The `scans-guard serve --ray` flag of a RayServeOptions field."""
    return FLAGS.get(option, "--" + option.replace("_", "-"))


class RayServeOptions(BaseModel):
    """Replicas, their resources and autoscaling. A fixed `num_replicas`, or autoscaling between `min_replicas` and
    `max_replicas` on the average in-flight requests per replica (`target_ongoing_requests`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int | None = Field(None, ge=1, description="a fixed number of replicas (default 1)")
    min_replicas: int | None = Field(None, ge=0, description="autoscaling: the fewest replicas (default 1)")
    max_replicas: int | None = Field(None, ge=1, description="autoscaling: the most replicas (default 2)")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="autoscaling: in-flight requests per replica it scales towards (default 8)"
    )
    upscale_delay_s: float | None = Field(None, ge=0, description="autoscaling: load held this long adds a replica")
    downscale_delay_s: float | None = Field(None, ge=0, description="autoscaling: idle this long removes one")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each replica (1 with --device cuda)")
    max_ongoing_requests: int = Field(
        DEFAULT_MAX_ONGOING_REQUESTS, ge=1, description="in-flight requests the proxy sends one replica at most"
    )
    # A replica loads a model: give it time to come up, and to drain its streams on the way down.
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)
    health_check_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> RayServeOptions:
        if self.autoscaling and self.num_replicas is not None:
            raise ValueError(
                "give a fixed num_replicas or autoscaling (min_replicas, max_replicas, target_ongoing_requests, "
                "upscale_delay_s, downscale_delay_s), not both"
            )
        low, high = self.bounds()
        if self.autoscaling and low > high:
            raise ValueError(f"min_replicas ({low}) is above max_replicas ({high})")
        target = self.target_ongoing_requests or 8
        if self.autoscaling and target > self.max_ongoing_requests:
            raise ValueError(
                f"target_ongoing_requests ({target:g}) is above max_ongoing_requests ({self.max_ongoing_requests}): "
                "no replica could ever reach it"
            )
        return self

    def bounds(self) -> tuple[int, int]:
        """Autoscaling's (min, max) replicas, defaults filled in: 1, and 2 or min if that is more."""
        low = 1 if self.min_replicas is None else self.min_replicas
        return low, self.max_replicas or max(low, 2)

    @property
    def autoscaling(self) -> bool:
        return any(getattr(self, key) is not None for key in AUTOSCALING_KEYS)

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments of `ray.serve.deployment` these options stand for."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if not self.autoscaling:
            options["num_replicas"] = self.num_replicas or 1
            return options
        low, high = self.bounds()
        autoscaling = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": self.target_ongoing_requests or 8.0,
        }
        for key in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, key) is not None:
                autoscaling[key] = getattr(self, key)
        options["autoscaling_config"] = autoscaling
        return options

    @classmethod
    def parse(cls, values: dict[str, Any], flags: bool = False) -> RayServeOptions:
        """Validated options; a bad value raises InvalidArgumentError naming the option (its CLI flag if `flags`)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                name = str(err["loc"][0]) if err["loc"] else ""
                message = err["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {message}" if name else message)
            text = "; ".join(problems)
            if flags:  # name each option by its flag
                text = re.sub(r"\b(" + "|".join(CLI_OPTIONS) + r")\b", lambda m: flag_of(m.group(1)), text)
            raise InvalidArgumentError(text) from None
