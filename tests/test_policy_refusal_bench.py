"""benchmarks/policy_refusal.py composes a sweep's replies with the engine's verdicts: checked on the tiny model
against a hand-made sweep of shipped XSTest prompts, where every count can be worked out from the verdicts."""

from __future__ import annotations

import json

from scans_guard.data import load_set
from scans_guard.sigma.decision import GuardPolicy


def test_composition_on_the_tiny_model(tiny_engine, tmp_path, one_torch_thread, script):
    module = script("policy_refusal")
    prompts = [e.prompt for e in load_set("xstest") if not e.harmful][:12]
    verdicts = tiny_engine.classify(prompts)
    rows = []
    for i, (p, v) in enumerate(zip(prompts, verdicts)):
        rows.append({"set": "xstest_safe", "prompt": p, "coefficient": 0.0, "response": "", "refused": i % 2 == 0})
        if v.coefficient != 0 and i != 3:  # one steered prompt without its steered reply: counted as missing
            rows.append(
                {"set": "xstest_safe", "prompt": p, "coefficient": v.coefficient, "response": "", "refused": False}
            )
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = {r["set"]: r for r in module.compose(tiny_engine, module.sweep_rows(tmp_path), None)}
    row = table["xstest_safe"]
    guard = GuardPolicy()
    kept = [(i, v) for i, v in enumerate(verdicts) if not (v.coefficient != 0 and i == 3)]
    assert row["n"] == len(kept) and row["missing"] == len(prompts) - len(kept)
    plain = [i % 2 == 0 for i, _ in kept]
    steer = [i % 2 == 0 and v.coefficient == 0 for i, v in kept]
    blocked = [guard.decide(v).blocked for _, v in kept]
    pct = lambda xs: round(100 * sum(xs) / len(xs), 1)  # noqa: E731
    assert row["refused_unsteered"] == pct(plain) and row["refused_steer"] == pct(steer)
    assert row["refused_guard"] == pct([b or p for b, p in zip(blocked, plain)])
    assert row["refused_guard_steer"] == pct([b or s for b, s in zip(blocked, steer)])
    assert row["blocked_pct"] == pct(blocked)
    assert table["oktest"]["n"] == 0  # no replies for it in this sweep


def test_an_eval_run_reads_as_a_sweep(tmp_path, script):
    module = script("policy_refusal")
    rows = [
        {"set": "xstest", "label": "safe", "prompt": "a", "condition": "scans", "coefficient": -2.0, "refused": False},
        {
            "set": "xstest",
            "label": "safe",
            "prompt": "a",
            "condition": "unsteered",
            "coefficient": 0.0,
            "refused": True,
        },
        {"set": "xstest", "label": "unsafe", "prompt": "b", "condition": "scans", "coefficient": 0.0, "refused": True},
        {
            "set": "xstest",
            "label": "unsafe",
            "prompt": "b",
            "condition": "unsteered",
            "coefficient": 0.0,
            "refused": False,
        },
        {
            "set": "advbench",
            "label": "unsafe",
            "prompt": "c",
            "condition": "helpful_prompt",
            "coefficient": 0.0,
            "refused": False,
        },
        {
            "set": "truthfulqa",
            "label": "safe",
            "prompt": "d",
            "condition": "unsteered",
            "coefficient": 0.0,
            "refused": False,
        },
    ]
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    replies = {(r["set"], r["prompt"], r["coefficient"]): r["refused"] for r in module.eval_rows(tmp_path)}
    # the unsteered reply is the one at coefficient 0; other conditions and sets are left out
    assert replies == {
        ("xstest_safe", "a", -2.0): False,
        ("xstest_safe", "a", 0.0): True,
        ("xstest_unsafe", "b", 0.0): False,
    }


def test_an_eval_run_is_composed_with_its_own_verdicts(tiny_engine, tmp_path, one_torch_thread, script):
    """--eval needs no model: the run's scores.jsonl verdicts give the table the engine's own verdicts give."""
    from scans_guard.eval.benchmarks import EvalPrompt
    from scans_guard.eval.runner import run_classification, scores_store

    module = script("policy_refusal")
    entries = [e for e in load_set("xstest")][:6] + [e for e in load_set("xstest") if e.harmful][:6]
    prompts = [EvalPrompt("xstest", "unsafe" if e.harmful else "safe", e.prompt, i) for i, e in enumerate(entries)]
    scored = run_classification(tiny_engine, prompts, scores_store(tmp_path), progress=False)
    rows = []
    for i, r in enumerate(scored):
        base = {"set": r["set"], "label": r["label"], "prompt": r["prompt"]}
        rows.append({**base, "condition": "unsteered", "coefficient": 0.0, "refused": i % 3 == 0})
        rows.append({**base, "condition": "scans", "coefficient": r["coefficient"], "refused": i % 2 == 0})
    (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    verdicts = module.eval_verdicts(tmp_path)
    assert len(verdicts) == len(prompts)
    own = module.compose(None, module.eval_rows(tmp_path), None, verdicts)
    assert own == module.compose(tiny_engine, module.eval_rows(tmp_path), None)
    assert sum(r["n"] for r in own) == len(prompts)
    assert "refused_steer_retry" not in own[0]  # no retry.jsonl in the run

    # the retry answers every steered, refused prompt: steer + retry loses exactly those refusals
    candidates = [r for r in rows if r["condition"] == "scans" and r["coefficient"] < 0 and r["refused"]]
    retry_rows = [{**{k: r[k] for k in ("set", "label", "prompt")}, "refused": False} for r in candidates]
    (tmp_path / "retry.jsonl").write_text("".join(json.dumps(r) + "\n" for r in retry_rows))
    with_retry = {
        r["set"]: r
        for r in module.compose(None, module.eval_rows(tmp_path), None, verdicts, module.eval_retries(tmp_path))
    }
    for table_row in own:
        name, n = table_row["set"], table_row["n"]
        if n == 0:
            continue
        answered = sum(module.SWEEP_SET[(r["set"], r["label"])] == name for r in candidates)
        assert with_retry[name]["refused_steer_retry"] == round(table_row["refused_steer"] - 100 * answered / n, 1)
