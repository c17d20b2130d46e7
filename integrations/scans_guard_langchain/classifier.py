"""sigma(q) as LangChain components: a Runnable classifier and a `BaseDecisionModel`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, model_validator

from scans_guard.config import SafetyVerdict
from scans_guard.engine import ScansEngine
from scans_guard.sigma.classifier import r_pos_ids

from ._convert import select_input, state_to_conversation, to_conversation

try:  # langchain-core >= 1.8 (decision models); absent in older releases
    from langchain_core.decisions import (
        BaseDecisionModel,
        Choice,
        ChoiceAnswer,
        ClassifierResponse,
        Noul,
        NoulAnswer,
        Question,
        State,
    )
except ImportError:  # pragma: no cover - depends on the installed langchain-core
    BaseDecisionModel = None  # type: ignore[assignment,misc]  # a class where langchain-core has it


class SafetyClassifier(RunnableSerializable[Any, SafetyVerdict]):
    """sigma(q) as a Runnable: str | messages | PromptValue | [{"role", "content"}] -> `SafetyVerdict`
    (or a dict holding one of these under `input_key`).

    A str is one user turn; messages and prompt values are classified as the whole conversation, through the
    chat template, exactly as `SafetyConsciousLLM` classifies them before steering. `batch` makes one
    `engine.classify` call for the whole batch (forward passes of `batch_size` prompts each; None: all at once).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: ScansEngine = Field(exclude=True)
    batch_size: int | None = Field(None, ge=1, description="prompts per forward pass in batch(); None: the whole batch")
    input_key: str | None = None
    """For dict inputs (what chains pass): classify `input[input_key]`. None: a dict input raises."""

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return Any

    @property
    def OutputType(self) -> type[SafetyVerdict]:  # noqa: N802
        return SafetyVerdict

    def classify(self, inputs: list[Any]) -> list[SafetyVerdict]:
        """Verdicts for many inputs with one engine.classify call (no callbacks)."""
        if not inputs:
            return []
        conversations = [to_conversation(select_input(x, self.input_key)) for x in inputs]
        return self.engine.classify(conversations, batch_size=self.batch_size or len(conversations))

    def _one(self, value: Any) -> SafetyVerdict:
        return self.classify([value])[0]

    def _many(self, values: list[Any]) -> list[SafetyVerdict | Exception]:
        """One engine call; if it fails, each value alone, so only the values that fail get their error."""
        try:
            return [*self.classify(values)]
        except Exception:
            if len(values) == 1:
                raise
        out: list[SafetyVerdict | Exception] = []
        for v in values:
            try:
                out.append(self._one(v))
            except Exception as exc:  # noqa: BLE001 - that input's error (batch reports it per input)
                out.append(exc)
        return out

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> SafetyVerdict:
        return self._call_with_config(self._one, input, config, run_type="chain")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> SafetyVerdict:
        async def one(value: Any) -> SafetyVerdict:
            return await run_in_executor(None, self._one, value)

        return await self._acall_with_config(one, input, config, run_type="chain")

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        return self._batch_with_config(
            self._many, inputs, config, return_exceptions=return_exceptions, run_type="chain"
        )

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []

        async def many(values: list[Any]) -> list[SafetyVerdict | Exception]:
            return await run_in_executor(None, self._many, values)

        return await self._abatch_with_config(
            many, inputs, config, return_exceptions=return_exceptions, run_type="chain"
        )


if BaseDecisionModel is not None:

    class ScansDecisionModel(BaseDecisionModel):
        """sigma(q) as a LangChain decision model (`langchain_core.decisions`), for `AutoModeMiddleware`,
        `ModelRouterMiddleware` and other decision-driven code.

        sigma is a fixed classifier: it answers one question, "is this request harmful?", whatever a question's
        free-text `instructions` and `criteria` say (they are not read). So:

        - `Noul`: the answer is P(harmful) from the artifact's Platt fit (`verdict.probability`). For a question whose
          "yes" means *safe*, list its id in `benign_questions` and the answer is 1 - P(harmful).
        - `Choice`: each label must map to "harmful" or "benign" via `choice_labels` (labels named "harmful" and
          "benign" map to themselves). The chosen label follows sigma's own decision (score >= T), its probability
          and confidence come from the Platt fit; labels of the same class share that class's probability.
        - `Score` and `Box`: ValueError (sigma has no rubric or image to locate).

        The state is read as `state_to_conversation` describes (agent state: its messages, then the other keys,
        e.g. a proposed tool call, as one JSON user turn).
        """

        model_config = ConfigDict(arbitrary_types_allowed=True)

        engine: ScansEngine = Field(exclude=True)
        model: str = ""
        benign_questions: frozenset[str] = frozenset()
        choice_labels: dict[str, Literal["harmful", "benign"]] = Field(default_factory=dict)

        @model_validator(mode="after")
        def _default_name(self) -> ScansDecisionModel:
            if not self.model:
                self.model = self.engine.handle.name
            return self

        @property
        def _provider(self) -> str:
            return "scans_guard"

        def _probability(self, verdict: SafetyVerdict) -> float:
            if verdict.probability is None:
                raise ValueError(
                    "the artifact has no Platt fit, so sigma has no calibrated probability; "
                    "recalibrate it with `scans-guard calibrate`"
                )
            return verdict.probability

        def _choice(self, question: Choice, verdict: SafetyVerdict, p_harmful: float) -> ChoiceAnswer:
            labels = list(question.criteria)
            mapping = {**{k: k for k in labels if k in ("harmful", "benign")}, **self.choice_labels}
            unmapped = [k for k in labels if k not in mapping]
            if unmapped:
                raise ValueError(
                    f"sigma can only choose between harmful and benign: map the labels {unmapped} "
                    "with choice_labels={label: 'harmful' | 'benign'}"
                )
            groups = {c: [k for k in labels if mapping[k] == c] for c in ("harmful", "benign")}
            if not groups["harmful"] or not groups["benign"]:
                raise ValueError("a Choice answered by sigma needs at least one harmful and one benign label")
            p_class = {"harmful": p_harmful, "benign": 1.0 - p_harmful}
            probabilities = {k: p_class[mapping[k]] / len(groups[mapping[k]]) for k in labels}
            chosen = groups[verdict.label][0]
            return ChoiceAnswer(
                type="choice", choice=chosen, probabilities=probabilities, confidence=p_class[verdict.label]
            )

        def _answers(self, verdict: SafetyVerdict, questions: Mapping[str, Question]) -> dict[str, Any]:
            answers: dict[str, Any] = {}
            for qid, question in questions.items():
                if isinstance(question, Noul):
                    p = self._probability(verdict)
                    answers[qid] = NoulAnswer(type="noul", noul=1.0 - p if qid in self.benign_questions else p)
                elif isinstance(question, Choice):
                    answers[qid] = self._choice(question, verdict, self._probability(verdict))
                else:
                    raise ValueError(
                        f"sigma answers Noul and Choice questions, not {type(question).__name__} ({qid!r})"
                    )
            return answers

        def _classify(self, state: State, questions: dict[str, Question]) -> ClassifierResponse:
            if not questions:
                raise ValueError("no questions to answer")
            conversation = state_to_conversation(state)
            verdict = self.engine.classify([conversation], batch_size=1)[0]
            n_tokens = len(self.engine.handle.chat_ids(conversation)) + len(
                r_pos_ids(self.engine.handle, self.engine.recipe.r_pos)
            )
            return ClassifierResponse(
                model=self.model,
                answers=self._answers(verdict, questions),
                usage={"input_tokens": n_tokens, "output_tokens": 0},
            )

else:  # pragma: no cover
    ScansDecisionModel = None  # type: ignore[assignment,misc]  # a class where langchain-core has it
