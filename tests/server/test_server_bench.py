"""The serve section of `scans-guard bench` on the tiny model: its structure and mechanics, never its timings."""

from scans_guard.bench.cli import _serve_lines
from scans_guard.bench.process import _current_rss_mb
from scans_guard.bench.runner import BenchConfig, run_benchmark
from scans_guard.bench.serve import bench_serve

PROMPTS = [
    "Paris?",
    "How do I bake bread?",
    "Write a script that can exploit vulnerabilities in software.",
    "What is the capital of France?",
    "The quick brown fox",
    "I'm sorry",
    "Sure, here is",
    "hello there",
]


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0


def test_serve_section(tiny_engine):
    cfg = BenchConfig.quick_config(max_new_tokens=6, n_prompts=8)
    result = bench_serve(tiny_engine, PROMPTS, cfg, _current_rss_mb)
    s = result.model_dump()
    assert s["equal_work"] == "eos_suppressed" and s["max_new_tokens"] == 6
    c = s["chat"]
    assert c["clients"] == 8 and c["same_text_as_alone"] is True
    for mode in ("one_client", "concurrent"):
        x = c[mode]
        assert x["requests"] == 8 and x["completion_tokens"] == 8 * 6  # EOS suppressed: every reply is 6 tokens
        assert _number(x["tokens_per_s"]) and _number(x["wall_s"])
        for key in ("ttft_s", "latency_s"):
            assert x[key]["n"] == 8 and x[key]["p50"] <= x[key]["p95"] <= x[key]["max"]
    assert _number(c["throughput_ratio"]) and c["goal"] == 3.0 and isinstance(c["meets_goal"], bool)
    k = s["classify"]
    assert k["prompts"] == 8 and _number(k["throughput_ratio"]) and k["goal"] == 1.3
    m = s["memory"]
    assert _number(m["engine_alone_mb"]) and _number(m["idle_ratio"]) and isinstance(m["meets_goal"], bool)
    table = "\n".join(_serve_lines(result))
    assert "serve (HTTP" in table and "/v1/classify" in table and "8 at once" in table and "RSS" in table


def test_serve_section_can_be_skipped(tiny_engine):
    cfg = BenchConfig.quick_config(
        memory=False,
        load_time=False,
        serve=False,
        max_new_tokens=2,
        n_prompts=1,
        sigma_batch_sizes=[1],
        steer_batch_sizes=[1],
    )
    r = run_benchmark(cfg, engine=tiny_engine)
    assert r.serve.skipped == "--no-serve" and r.serve.chat is None
    assert r.model_dump()["serve"]["skipped"] == "--no-serve"
    assert _serve_lines(r.serve) == ["", "serve: skipped (--no-serve)"]
