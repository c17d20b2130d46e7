"""How often does the domain check's language test call English prompts foreign, and foreign prompts English?

    python benchmarks/domain_language.py --data-dir ../shared/data --report benchmarks/results/domain-language

The language test (scans_guard/sigma/domain.py) runs py3langid on texts of 16 letters or more. It is only a gate: a
prompt it calls foreign is never steered away from refusal and is grey to the guards. Two rules, per set, share of
prompts the test puts outside the domain (no model needed):
- `mass`: the calibrated languages (with langid's English-lexified aliases) hold under half the probability mass;
- `mass or top`: the same, unless the identifier's single most likely language is a calibrated one.
English sets are the project's own and calibration data (a share here is lost steering); the other languages come
from the shipped multilingual set (a share missing here is a translation the guard would trust). XSTest is reported
only (never used for a choice).
"""

from __future__ import annotations

import argparse
import csv
from importlib import resources

from summary_io import write_summary

from scans_guard.data import contrast_set, load_set
from scans_guard.sigma.domain import DomainConfig, language_out


def multilingual() -> dict[str, list[str]]:
    path = resources.files("scans_guard") / "data" / "multilingual.csv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        f"multilingual {lang}": [r["prompt"] for r in rows if r["lang"] == lang]
        for lang in dict.fromkeys(r["lang"] for r in rows)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="for the unshipped English sets (RepE, OKTest held-out)")
    parser.add_argument("--report")
    args = parser.parse_args()
    sets = {
        "contrast (project's own)": [e.prompt for e in contrast_set()],
        "advbench": [e.prompt for e in load_set("advbench")],
        "truthfulqa": [e.prompt for e in load_set("truthfulqa")],
    }
    if args.data_dir:
        sets["repe train"] = [e.prompt for e in load_set("repe_train", args.data_dir)]
        sets["oktest held-out"] = [e.prompt for e in load_set("oktest_heldout", args.data_dir)]
    sets |= multilingual()
    sets["xstest (reported only)"] = [e.prompt for e in load_set("xstest")]
    rules = {"mass": DomainConfig(top_language_counts=False), "mass or top": DomainConfig(top_language_counts=True)}
    table = {}
    for name, prompts in sets.items():
        table[name] = {"n": len(prompts)} | {
            rule: sum(language_out(p, config) for p in prompts) / len(prompts) for rule, config in rules.items()
        }
    lines = ["| set | n | outside the domain: mass rule | mass or top |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {100 * v['mass']:.1f}% | {100 * v['mass or top']:.1f}% |" for k, v in table.items()]
    write_summary(args.report, table, lines)


if __name__ == "__main__":
    main()
