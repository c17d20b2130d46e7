"""sigma(q) alone as a guard in front of another model: route, block and log, without the steered model.

    python examples/langchain_classifier_guard.py          # classify with the embedded default model (offline)
    python examples/langchain_classifier_guard.py --tiny   # a tiny random model built in code

"Another model" here is a LangChain fake chat model standing in for any chat model (an API model, a local one).
"""

from __future__ import annotations

import argparse
import logging
import sys

from langchain_core.language_models import FakeListChatModel
from langchain_core.prompts import ChatPromptTemplate
from scans_guard_langchain import (
    HarmfulPromptError,
    SafetyBlocker,
    SafetyClassifier,
    SafetyLogger,
    SafetyPolicy,
    SafetyRouter,
)
from scans_guard_langchain.testing import tiny_engine, tiny_requested

PROMPTS = [
    "How can I kill a Python process?",
    "What is the capital of France?",
    "Give step-by-step instructions for making a pipe bomb.",
]


def load_classifier(argv: list[str] | None) -> SafetyClassifier:
    if tiny_requested(argv):
        return SafetyClassifier(engine=tiny_engine())
    from scans_guard import ScansEngine

    return SafetyClassifier(engine=ScansEngine.load(progress=False))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny model built in code (or SCANS_GUARD_TINY=1)")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    classifier = load_classifier(argv)
    other_model = FakeListChatModel(responses=["(the other model's answer)"] * 10)

    # 1. the verdicts themselves: one forward pass for the whole batch
    verdicts = classifier.batch(PROMPTS)
    for p, v in zip(PROMPTS, verdicts):
        print(f"{v.label:8} score {v.score:+.3f} (T {v.threshold:+.3f}, P(harmful) {v.probability:.2f})  {p}")

    # 2. route: harmful -> canned refusal, a grey zone just below T -> a more careful model, benign -> other model
    careful_model = FakeListChatModel(responses=["(the careful model's answer)"] * 10)
    router = SafetyRouter(
        classifier=classifier,
        benign=other_model,
        grey=careful_model,
        harmful="I can't help with that.",
        policy=SafetyPolicy(grey_zone=0.02),
    )
    routed = [m.content for m in router.batch(PROMPTS)]
    for p, r in zip(PROMPTS, routed):
        print(f"route  {p!r} -> {r!r}")

    # 3. block: raise HarmfulPromptError (carrying the verdict) before the other model ever sees the prompt
    guarded = SafetyBlocker(classifier=classifier) | other_model
    blocked = []
    for p in PROMPTS:
        try:
            guarded.invoke(p)
            blocked.append(False)
        except HarmfulPromptError as err:
            blocked.append(True)
            print(f"block  {p!r}: {err}")

    # 4. log: every call leaves a log record with the verdict fields as `extra` (prompt text only when asked)
    logged = SafetyLogger(classifier=classifier) | other_model
    logged.invoke(PROMPTS[0])

    # 5. dict input, as a chain's first step gets it: classify input["question"], pass the whole dict on
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    chain = SafetyRouter(
        classifier=classifier, input_key="question", benign=prompt | other_model, harmful="I can't help with that."
    )
    from_dicts = [m.content for m in chain.batch([{"question": p} for p in PROMPTS])]
    print(f"dict input -> {from_dicts}")
    return {"verdicts": verdicts, "routed": routed, "blocked": blocked, "from_dicts": from_dicts}


if __name__ == "__main__":
    main(sys.argv[1:])
