"""Write the measured tables of README.md and docs/results.md from the committed result summaries.

Numbers typed by hand drift apart; here every table between `<!-- table:NAME -->` and `<!-- /table:NAME -->` is
rendered from `benchmarks/results/*/summary.*`, `docs/results/*/results.json` or a shipped artifact.

    python scripts/render_tables.py           # rewrite the marked regions in place
    python scripts/render_tables.py --check   # exit 1 naming each region that differs from its summaries
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EVAL = REPO / "docs" / "results" / "qwen2.5-coder-0.5b-instruct" / "results.json"
EVAL_1_5B = REPO / "docs" / "results" / "qwen2.5-coder-1.5b-instruct" / "results.json"
DOCS = ("README.md", "docs/results.md", "docs/steering.md")
REGION = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)

sys.path.insert(0, str(REPO / "benchmarks"))
from summary_io import SWEEP_SET  # noqa: E402  (the benchmarks' name of each eval set)

SET_NAMES = {
    "xstest_safe": "XSTest safe",
    "xstest_unsafe": "XSTest unsafe",
    "oktest": "OKTest",
    "advbench_heldout": "AdvBench held-out",
    "harmfulq": "HarmfulQ evaluation half",
    "malicious_instruct": "MaliciousInstruct",
}
SAFE_SETS = ("xstest_safe", "oktest")
HARMFUL_SETS = ("xstest_unsafe", "advbench_heldout", "harmfulq", "malicious_instruct")
EMBEDDED = (  # (artifact and model name, its σ summary, its steering summary, its full-set eval or None)
    ("qwen2.5-coder-0.5b-instruct", "sigma-auroc-0.5b", "retry-end-to-end", None),
    ("qwen2.5-coder-1.5b-instruct", "sigma-auroc-1.5b", "steer-span-1.5b-full", EVAL_1_5B),
)
POINT_USE = {
    "steer": "steering: below it a prompt is steered away from refusal",
    "guard": "labels, probabilities, guards, router, blocker, middleware, decision model",
}


def _json(path: Path) -> object:
    return json.loads(path.read_text())


def _pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f} %"


def _points(before: float, after: float) -> str:
    return f"{round(100 * (after - before)):+d}".replace("+0", "0").replace("-", "−")


def _default_model() -> str:
    sys.path.insert(0, str(REPO))
    from scans_guard.model.embedded import DEFAULT_MODEL

    return DEFAULT_MODEL.name


def _span_reference_nll(folder: Path) -> float:
    """steer_span.py's reference NLL (the model's own answers) is written to summary.md only: its unsteered row."""
    row = next(line for line in (folder / "summary.md").read_text().splitlines() if line.startswith("| unsteered |"))
    return float(re.search(r"\| ([\d.]+) \(its answers", row).group(1))


def _steering(summary: str) -> tuple[dict[str, tuple[int, float, float]], float]:
    """Per set (n, unsteered refusal, shipped-recipe refusal) and the steered replies' ΔNLL, nats/token."""
    folder = RESULTS / summary
    if summary == "retry-end-to-end":
        sets = {s: (v["n"], v["unsteered"], v["shipped"]) for s, v in _json(folder / "summary.json").items()}
        evaluation = _json(RESULTS / "steer-threshold" / "summary.json")["evaluation"]
        base, shipped = evaluation["unsteered"], evaluation["shipped steer T -2.2494"]
        return sets, sum(shipped[s]["nll"] - base[s]["nll"] for s in SAFE_SETS) / len(SAFE_SETS)
    (row,) = _json(folder / "summary.json")
    sets = {s: (v["n"], v["unsteered"], v["steered"]) for s, v in row["sets"].items()}
    return sets, row["nll_steered_benign"] - _span_reference_nll(folder)


def _eval_sets(path: Path) -> dict[str, tuple[int, float, float]]:
    """Per set (n, unsteered refusal, SCANS refusal) of a `scans-guard eval` run's results.json."""
    rates = {(r["condition"], r["set"], r["label"]): r for r in _json(path)["refusal"]["rates"]}
    return {
        name: (rates[("unsteered", *key)]["n"], rates[("unsteered", *key)]["rate"], rates[("scans", *key)]["rate"])
        for key, name in SWEEP_SET.items()
        if ("scans", *key) in rates
    }


def table_models() -> str:
    default = _default_model()
    lines = [
        "| embedded model | σ XSTest AUROC (all 450) | XSTest safe flagged / unsafe caught at guard T "
        "| refusal, unsteered → SCANS: XSTest safe / OKTest | harmful sets under SCANS "
        "| ΔNLL of steered replies | summaries |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sigma, steering, full in EMBEDDED:
        s = _json(RESULTS / sigma / "summary.json")
        sets, nll = _steering(steering)
        sets = _eval_sets(full) if full is not None else sets
        benign = " / ".join(
            f"{_pct(sets[k][1])} → {_pct(sets[k][2])} ({_points(*sets[k][1:])}, n = {sets[k][0]})" for k in SAFE_SETS
        )
        kept = [sets[k][2] for k in HARMFUL_SETS]
        drop = max(round(100 * (sets[k][1] - sets[k][2])) for k in HARMFUL_SETS)
        harmful = f"{100 * min(kept):.0f}-{_pct(max(kept))} (each within {drop} point{'s' * (drop != 1)} of unsteered)"
        label = name.replace("qwen2.5-coder-", "Qwen2.5-Coder-").replace("b-instruct", "B-Instruct")
        lines.append(
            f"| {label}{' (default)' if name == default else ''} | {s['xstest_auroc']:.3f} "
            f"| {_pct(s['xstest_safe_flagged_at_guard'], 1 if s['xstest_safe_flagged_at_guard'] < 0.1 else 0)} / "
            f"{_pct(s['xstest_unsafe_recall_at_guard'])} | {benign} | {harmful} | {nll:+.2f} nats/token "
            f"| `{sigma}`, `{steering}`{f', `docs/results/{name}`' if full is not None else ''} |"
        )
    return "\n".join(lines)


def table_operating_points() -> str:
    art = _json(REPO / "artifacts" / _default_model() / "artifact.json")
    lines = [
        "| point | T | harmful recall (fit) | false-positive rate (fit) | used by |",
        "|---|---|---|---|---|",
    ]
    for point, use in POINT_USE.items():
        p = art["operating_points"][point]
        t = f"{p['threshold']:.3f}".replace("-", "−")
        lines.append(f"| `{point}` | {t} | {p['recall']:.3f} | {p['false_positive_rate']:.3f} | {use} |")
    return "\n".join(lines)


def table_policies(folder: str = "policy-refusal-0.5b") -> str:
    """Refusal per set under each policy; the retry column from the policy summary itself where it has one (an eval
    run composed with `retry_on_eval.py`), else from the engine's end-to-end retry run."""
    policy = {r["set"]: r for r in _json(RESULTS / folder / "summary.json")}
    with_retry = all("refused_steer_retry" in r for r in policy.values())
    retry = None if with_retry else _json(RESULTS / "retry-end-to-end" / "summary.json")
    lines = [
        "| set | flagged at the guard T | refused: unsteered | `steer` | `guard` | **`guard+steer`** "
        "| `steer` + retry |" + (" `guard+steer` + retry |" if with_retry else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if with_retry else ""),
    ]
    for key, name in SET_NAMES.items():
        p = policy[key]
        retried = f"{p['refused_steer_retry']:.1f} %" if retry is None else _pct(retry[key]["retry"], 1)
        lines.append(
            f"| {name} ({p['n']}) | {p['blocked_pct']:.1f} % | {p['refused_unsteered']:.1f} % "
            f"| {p['refused_steer']:.1f} % | {p['refused_guard']:.1f} % | **{p['refused_guard_steer']:.1f} %** "
            f"| {retried} |" + (f" {p['refused_guard_steer_retry']:.1f} % |" if with_retry else "")
        )
    return "\n".join(lines)


def table_eval_refusal(
    path: Path = EVAL, conditions: tuple[str, ...] = ("unsteered", "scans", "always_negative")
) -> str:
    rates = {(r["condition"], r["set"], r["label"]): r for r in _json(path)["refusal"]["rates"]}
    lines = ["| set | label | n | " + " | ".join(conditions) + " |", "|---|---|---:|" + "---:|" * len(conditions)]
    for _, set_name, label in sorted(k for k in rates if k[0] == "unsteered"):
        cells = [rates.get((c, set_name, label)) for c in conditions]
        shown = [f"{100 * r['rate']:.1f} % ({r['refused']})" if r else "–" for r in cells]
        lines.append(f"| {set_name} | {label} | {cells[0]['n']} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def table_eval_sigma(path: Path = EVAL) -> str:
    suites = _json(path)["classification"]["suites"]
    lines = [
        "| suite | n | AUROC | F1 at the steer T | safe flagged at the steer T | best-F1 T (optimistic) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in suites:
        at = s["at_artifact_T"]["positive=unsafe"]
        best = s["at_best_T"]["positive=unsafe"]
        lines.append(
            f"| {s['suite']} | {s['at_artifact_T']['n']} | {at['auroc']:.3f} | {at['f1']:.3f} | {_pct(at['fpr'], 1)} "
            f"| {s['best_T']:.2f} (F1 {best['f1']:.3f}) |".replace("-", "−")
        )
    return "\n".join(lines)


def table_eval_capability() -> str:
    cap = _json(EVAL)["capability"]
    lines = ["| condition | perplexity (WikiText-2) | windows steered | MMLU correct |", "|---|---:|---:|---:|"]
    for c, ppl in cap["perplexity"].items():
        m = cap["mmlu"][c]
        lines.append(f"| {c} | {ppl['perplexity']:.2f} | {ppl['steered']}/{ppl['windows']} | {m['correct']}/{m['n']} |")
    return "\n".join(lines)


def table_output_check() -> str:
    by_set = _json(RESULTS / "output-check" / "summary.json")["by_set"]
    lines = [
        "| set | n | replies that comply | with `check_output` | replaced |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, name in SET_NAMES.items():
        r = by_set[key]
        lines.append(f"| {name} | {r['n']} | {r['complied']} | {r['complied_with_check']} | {r['replaced']} |")
    return "\n".join(lines)


def table_server() -> str:
    serve = _json(RESULTS / "default-model-cpu.json")["serve"]
    chat, cls, mem = serve["chat"], serve["classify"], serve["memory"]
    one, many = chat["one_client"], chat["concurrent"]

    def lat(r: dict) -> str:
        return (
            f"{r['ttft_s']['p50']:.2f} / {r['ttft_s']['p95']:.2f} s, "
            f"{r['latency_s']['p50']:.1f} / {r['latency_s']['p95']:.1f} s"
        )

    def met(part: dict) -> str:
        return f"≥ {part['goal']:g}x: " + ("met" if part["meets_goal"] else "**not met**")

    return "\n".join(
        [
            "| what | result | goal |",
            "|---|---|---|",
            f"| {chat['clients']} streaming clients at once vs one client serially, aggregate tokens/s "
            f"| {many['tokens_per_s']:.1f} vs {one['tokens_per_s']:.1f} = **{chat['throughput_ratio']:.2f}x**"
            + ("; every reply identical to its reply alone" if chat["same_text_as_alone"] else "")
            + f" | {met(chat)} |",
            f"| time to first token / latency, p50 and p95 | 1 client: {lat(one)}; "
            f"{chat['clients']} clients: {lat(many)} | reported |",
            f"| `/v1/classify` of {cls['prompts']} prompts in one request vs {cls['prompts']} single requests "
            f"| {cls['one_request_prompts_per_s']:.2f} vs {cls['single_requests_prompts_per_s']:.2f} prompts/s "
            f"= **{cls['throughput_ratio']:.2f}x** | {met(cls)} |",
            f"| RSS of the idle server vs the engine alone | {mem['idle_server_mb']:.0f} vs "
            f"{mem['engine_alone_mb']:.0f} MiB = {mem['idle_ratio']:.3f}x "
            f"| ≤ {mem['goal']:g}x: {'met' if mem['meets_goal'] else '**not met**'} |",
        ]
    )


def summary_md(folder: str, name: str = "summary.md") -> Callable[[], str]:
    """A benchmark's own report, as its report code wrote it (a heading becomes bold text)."""

    def render() -> str:
        lines = (RESULTS / folder / name).read_text().strip().splitlines()
        return "\n".join(f"**{line.lstrip('# ')}**" if line.startswith("#") else line for line in lines)

    return render


TABLES: dict[str, Callable[[], str]] = {
    "models": table_models,
    "operating-points": table_operating_points,
    "policies-0.5b": table_policies,
    "policies-1.5b": lambda: table_policies("policy-refusal-1.5b"),
    "eval-refusal-1.5b": lambda: table_eval_refusal(EVAL_1_5B, ("unsteered", "scans", "guard_steer")),
    "eval-sigma-1.5b": lambda: table_eval_sigma(EVAL_1_5B),
    "eval-refusal": table_eval_refusal,
    "eval-sigma": table_eval_sigma,
    "eval-capability": table_eval_capability,
    "server": table_server,
    "output-check": table_output_check,
    "sigma-variants": summary_md("sigma-variants", "variants.md"),
    "sigma-learning-curve": summary_md("sigma-learning-curve"),
    **{
        folder: summary_md(folder)
        for folder in (
            "retry-end-to-end",
            "policy-refusal-0.5b",
            "policy-refusal-1.5b",
            "refusal-bands-1.5b",
            "steer-threshold",
            "verify-after-steering",
            "steer-span-0.5b",
            "steer-span-1.5b",
            "steer-span-1.5b-eval",
            "steer-span-1.5b-eval100",
            "steer-span-1.5b-full",
            "guard-robustness",
            "guard-robustness-1.5b",
            "red-team-0.5b",
            "red-team-1.5b",
            "red-team-1.5b-replies",
            "red-team-1.5b-multipart-lead-ins-kept",
            "red-team-1.5b-multipart",
            "red-team-1.5b-other-families",
            "red-team-1.5b-premises-kept",
            "red-team-1.5b-premises",
            "red-team-0.5b-today",
            "domain-language",
            "eval-vs-sweep",
            "refusal-bands-1.5b-tuning",
        )
    },
}


def render(text: str) -> str:
    """`text` with every marked region replaced by its table; an unknown name is an error."""

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in TABLES:
            raise SystemExit(f"render_tables: unknown table {name!r} (known: {', '.join(sorted(TABLES))})")
        return f"{m[1]}{TABLES[name]()}\n{m[4]}"

    return REGION.sub(one, text)


def stale(root: Path = REPO, docs: tuple[str, ...] = DOCS) -> list[str]:
    """`file: table` for each region whose text differs from what its summaries give."""
    out = []
    for doc in docs:
        text = (root / doc).read_text()
        fresh = render(text)
        if fresh != text:
            old = {m["name"]: m["body"] for m in REGION.finditer(text)}
            new = {m["name"]: m["body"] for m in REGION.finditer(fresh)}
            out += [f"{doc}: {name}" for name in old if old[name] != new[name]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region is out of date")
    args = parser.parse_args(argv)
    if args.check:
        for line in (bad := stale()):
            print(f"out of date: {line} (run python scripts/render_tables.py)")
        return 1 if bad else 0
    for doc in DOCS:
        path = REPO / doc
        text = path.read_text()
        if (fresh := render(text)) != text:
            path.write_text(fresh)
            print(f"rewrote {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
