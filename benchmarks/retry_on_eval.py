"""The opt-in retry on a `scans-guard eval` run's own prompts: only where it can change a reply.

The retry acts on exactly one kind of reply: steered away from refusal by sigma and still refused. So the run's
SCANS rows with a negative coefficient that the judge calls refused are sent again through
`ScansEngine.generate(..., retry=RetryPolicy())` (the run's reply length, greedy); every other SCANS reply is what the
retry gives too. Rows go to the run's `retry.jsonl`, one per prompt, appended per batch (`JsonlStore`: a killed run
continues); `policy_refusal.py --eval` composes them into its `steer + retry` and `guard+steer + retry` columns.

    python benchmarks/retry_on_eval.py --eval results/eval-1.5b-full --model qwen2.5-coder-1.5b-instruct

On a harmful set the rows it sends are the most the retry can cost (harmful prompts sigma steered away that still
refuse); on a safe set, the most it can gain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary_io import read_rows  # noqa: E402

from scans_guard import GenerationConfig, ScansEngine  # noqa: E402
from scans_guard.eval.store import JsonlStore  # noqa: E402
from scans_guard.steering.judge import KeywordJudge  # noqa: E402
from scans_guard.steering.retry import RetryPolicy  # noqa: E402

RETRY_FILE = "retry.jsonl"
KEY = ("set", "label", "prompt")


def retry_candidates(run: Path) -> list[dict]:
    """The run's SCANS rows the retry can change: steered away (coefficient < 0) and refused."""
    rows = read_rows(run / "generations.jsonl")
    return [r for r in rows if r["condition"] == "scans" and r["coefficient"] < 0 and r["refused"]]


def run(
    engine: ScansEngine, run_dir: Path, max_new_tokens: int, batch_size: int = 8, policy: RetryPolicy | None = None
) -> list[dict]:
    """Retry rows for every candidate not yet in the run's retry.jsonl; returns all of them."""
    store = JsonlStore(run_dir / RETRY_FILE, KEY)
    todo = [r for r in retry_candidates(run_dir) if store.key(r) not in store]
    judge, policy = KeywordJudge(), policy or RetryPolicy()
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        outputs = engine.generate([r["prompt"] for r in chunk], config, retry=policy)
        store.append(
            {
                **{k: r[k] for k in KEY},
                "coefficient": o.steering.coefficient,
                "source": o.steering.source,
                "first_reply_is_the_runs": (o.first_reply if o.first_reply is not None else o.text) == r["response"],
                "response": o.text,
                "refused": bool(judge(r["prompt"], o.text)),
            }
            for r, o in zip(chunk, outputs)
        )
    return store.rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=Path, required=True, help="a `scans-guard eval` run with the scans condition")
    ap.add_argument("--model", default=None)
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    settings = json.loads((args.eval / "run.json").read_text())
    engine = ScansEngine.load(args.model, args.artifact, progress=False)
    rows = run(engine, args.eval, int(settings["settings"]["max_new_tokens"]), args.batch_size)
    retried = sum(r["source"] == "retry" for r in rows)
    print(f"{len(rows)} candidates, {retried} retried, {sum(not r['refused'] for r in rows)} answered after the retry")


if __name__ == "__main__":
    main()
