"""benchmarks/guard_robustness.py builds its work list (the sets and framings its committed tables report)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "guard_robustness.py"


def test_work_items(tiny_engine, shared_data):
    spec = importlib.util.spec_from_file_location("guard_robustness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    items = module.work_items(tiny_engine, str(shared_data))
    per = {}
    for it in items:
        per.setdefault((it["condition"], it["kind"]), []).append(it)
    assert len(per[("none", "harmful")]) == 150 and len(per[("none", "benign")]) == module.N_BENIGN
    assert len(per[("lang:es", "harmful")]) == module.N_MULTILINGUAL
    framed = per[("system:terse", "harmful")]
    assert [it["prompt"] for it in framed] == [it["prompt"] for it in per[("none", "harmful")]]
    assert all(it["conversation"] != it["prompt"] for it in framed)  # wrapped in the framing
    anchors = tiny_engine.artifact.meta.anchor_hashes()
    from scans_guard.data import text_sha256

    assert not any(text_sha256(it["prompt"]) in anchors for it in items if it["kind"] == "harmful")
