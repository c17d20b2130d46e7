"""benchmarks/load_ramp.py at tiny sizes on the tiny model: every level answered, nothing accepted lost, and past the
server's capacity (max_batch + max_queue) some clients turned away with 429 rather than failed. No timing asserted."""

from __future__ import annotations

from server_helpers import slow_steps


def test_levels_ramp_to_four_times_capacity(script):
    assert script("load_ramp").levels(3) == [1, 2, 4, 8, 12]
    assert script("load_ramp").levels(8) == [1, 2, 4, 8, 16, 32]


def test_ramp_loses_nothing_accepted(script, tiny_engine):
    load_ramp = script("load_ramp")
    with slow_steps(tiny_engine.handle, 0.05):  # steps slower than 12 clients arriving: the queue fills
        report = load_ramp.ramp(
            tiny_engine, max_batch=2, max_queue=1, max_tokens=3, per_client=2, policy="steer", timeout=60
        )
    levels = report["levels"]
    assert [lv["clients"] for lv in levels] == [1, 2, 4, 8, 12] and report["capacity"] == 3
    assert report["lost"] == 0
    for lv in levels:
        assert lv["answered"] == lv["requests"] == lv["accepted"] + lv["rejected"], lv
        assert lv["failed"] == 0 and lv["lost"] == 0 and lv["left_running"] == 0, lv
        assert lv["accepted"] > 0 and lv["latency_s"]["p50"] <= lv["latency_s"]["p99"]
    assert levels[0]["rejected"] == 0  # one client never finds the queue full
    assert levels[-1]["rejected"] > 0  # 12 clients against a capacity of 3
    assert "clients" in load_ramp._table(report)
