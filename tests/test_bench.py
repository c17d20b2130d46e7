"""`scans-guard bench` on the tiny model: the JSON's structure and the equal-work mechanics, never its timings."""

import json

import pytest

from scans_guard import GenerationConfig
from scans_guard.bench.cli import config_from_args, format_table
from scans_guard.bench.runner import SCHEMA, BenchConfig, BenchResult, run_benchmark
from scans_guard.bench.threads import bench_threads
from scans_guard.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0


def _check_summary(s):
    assert set(s) == {"mean", "median", "min", "max", "p90", "n"}
    assert all(_number(v) for v in s.values())
    assert s["min"] <= s["median"] <= s["max"]


def _check_common(r, cfg):
    assert r["schema"] == SCHEMA
    m = r["machine"]
    assert m["torch_num_threads"] >= 1 and m["os_cpu_count"] >= 1
    assert {"torch", "transformers", "scans_guard", "python"} <= r["versions"].keys()
    assert r["model"]["n_layers"] == 4 and r["model"]["parameters"] > 0

    e = r["end_to_end"]
    assert e["equal_work"] == "eos_suppressed" and e["max_new_tokens"] == cfg.max_new_tokens
    for mode in ("plain", "scans"):
        x = e[mode]
        assert x["requests"] == cfg.n_prompts * cfg.repeats
        # Equal work: EOS is suppressed, so every request generates exactly max_new_tokens.
        assert x["completion_tokens"] == x["requests"] * cfg.max_new_tokens
        assert _number(x["tokens_per_s"])
        _check_summary(x["latency_s"])
        _check_summary(x["ms_per_token"])
        _check_summary(x["ttft_s"])
        _check_summary(x["decode_ms_per_token"])
        assert _number(x["decode_tokens_per_s"])
    # Plain: prefill + one forward per further token. SCANS: the sigma pass, then one forward per token.
    assert e["plain"]["forwards_per_request"]["max"] == cfg.max_new_tokens
    assert e["scans"]["forwards_per_request"]["min"] == cfg.max_new_tokens + 1
    assert sum(e["scans"]["directions"].values()) == cfg.n_prompts
    c = e["scans_vs_plain"]
    assert c["same_token_counts"] is True and c["goal"] == 0.99
    assert isinstance(c["meets_goal"], bool) and _number(c["throughput_ratio"])
    assert isinstance(c["decode_meets_goal"], bool) and _number(c["decode_throughput_ratio"])
    assert _number(c["ratio_if_only_one_extra_forward"]) and _number(c["ttft_ratio_median"])

    sigma = r["sigma"]["batches"]
    assert [row["batch_size"] for row in sigma] == cfg.sigma_batch_sizes
    for row in sigma:
        assert _number(row["prompts_per_s"]) and row["n_prompts"] >= row["batch_size"]
        _check_summary(row["ms_per_prompt"])
        _check_summary(row["pass_latency_ms"])
    shapes = {row["shape"]: row for row in r["sigma"]["readings"]}
    assert list(shapes) == ["single sentence", "system prompt", "three sentences", "three user turns"]
    assert (shapes["single sentence"]["readings"], shapes["single sentence"]["forward_passes"]) == (1, 1)
    for shape in ("system prompt", "three sentences", "three user turns"):  # one extra batched pass, no more
        assert shapes[shape]["readings"] >= 2 and shapes[shape]["forward_passes"] == 2, shape
        _check_summary(shapes[shape]["ms_per_prompt"])

    b = r["batched_steering"]
    assert [row["batch_size"] for row in b["batches"]] == cfg.steer_batch_sizes
    assert b["coefficients"][0] > 0 > b["coefficients"][1], "per-row signs alternate"
    assert len(b["coefficients"]) == max(cfg.steer_batch_sizes)
    for row in b["batches"]:
        assert row["completion_tokens"] == row["n_prompts"] * cfg.repeats * cfg.max_new_tokens
        assert _number(row["tokens_per_s"])
    assert isinstance(b["same_tokens_as_unbatched"], bool)
    assert b["same_tokens_as_unbatched"] is True and b["mismatched_rows"] == []  # the tiny model is batch-stable

    t = r["threads"]
    assert t["threads"] == cfg.generate_threads and t["max_new_tokens"] == cfg.max_new_tokens
    assert len(t["threads_s"]) == len(t["static_s"]) == cfg.repeats
    assert t["completion_tokens"] == cfg.generate_threads * cfg.max_new_tokens and t["same_tokens"] is True
    assert _number(t["threads_tokens_per_s"]) and _number(t["static_tokens_per_s"])
    assert t["ratio"] == pytest.approx(t["threads_tokens_per_s"] / t["static_tokens_per_s"])

    assert "scans_guard" in json.dumps(r)  # serialisable
    table = format_table(BenchResult.model_validate(r))  # the JSON reads back as the typed result
    assert "end to end" in table and "sigma alone" in table and "SCANS / plain" in table
    assert f"threads: {cfg.generate_threads} threads each calling generate" in table


def test_run_benchmark_in_process(tiny_engine):
    cfg = BenchConfig.quick_config(
        memory=False,
        load_time=False,
        threads=1,
        max_new_tokens=4,
        sigma_batch_sizes=[1, 4],
        steer_batch_sizes=[1, 2],
        n_prompts=2,
    )
    result = run_benchmark(cfg, engine=tiny_engine)
    r = json.loads(result.to_json())
    _check_common(r, cfg)
    assert result.memory.skipped == "--no-memory" and result.memory.plain is None
    assert r["load"]["skipped"] == "--no-load-time" and r["load"]["in_process_s"] is None
    assert all(not layer._forward_hooks for layer in tiny_engine.handle.layers)


def test_ignore_eos_decodes_every_token(tiny_engine):
    cfg = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    out = tiny_engine.generate(["Paris?", "How do I bake bread?"], cfg, steer=False)
    assert [o.completion_tokens for o in out] == [6, 6]
    assert all(o.finish_reason == "length" for o in out)


def test_cli_bench_quick_writes_json(tiny_on_disk, tmp_path, capsys):
    """The whole command, subprocesses included (memory per mode, warm load time)."""
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--model",
            str(tiny_on_disk / "model"),
            "--artifact",
            str(tiny_on_disk / "artifact"),
            "--quick",
            "--threads",
            "1",
            "--max-new-tokens",
            "3",
            "--cold",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "SCANS / plain" in captured.out and "memory (MiB)" in captured.out
    r = json.loads(out.read_text())
    cfg = BenchConfig(**r["config"])
    assert cfg.quick and cfg.max_new_tokens == 3 and cfg.threads == 1 and cfg.repeats == 1
    _check_common(r, cfg)
    assert r["machine"]["torch_num_threads"] == 1

    mem = r["memory"]
    for mode in ("plain", "scans"):
        assert "error" not in mem[mode], mem[mode]
        assert _number(mem[mode]["rss_after_warmup_mb"])
        assert mem[mode]["mode"] == mode and _number(mem[mode]["peak_rss_mb"]) and _number(mem[mode]["load_s"])
    assert mem["compared"] in {"generation_peak_rss_mb", "peak_rss_mb"}
    assert isinstance(mem["scans_minus_plain_mb"], float)

    load = r["load"]
    assert _number(load["in_process_s"])
    _check_summary(load["warm_subprocess_s"])
    assert load["cold_s"] is None and "default model only" in load["cold_skipped"]


def test_cli_bench_arguments():
    args = build_parser().parse_args(
        [
            "bench",
            "--quick",
            "--repeats",
            "2",
            "--sigma-batch-sizes",
            "1,4",
            "--natural-length",
            "--no-memory",
            "--cold",
        ]
    )
    from scans_guard.bench.cli import config_from_args

    cfg = config_from_args(args)
    assert cfg.quick and cfg.repeats == 2 and cfg.max_new_tokens == 8 and cfg.sigma_batch_sizes == [1, 4]
    assert not cfg.force_length and not cfg.memory and cfg.cold and cfg.model is None
    full = config_from_args(build_parser().parse_args(["bench"]))
    assert full.max_new_tokens == 48 and full.sigma_batch_sizes == [1, 8, 32] and full.steer_batch_sizes == [1, 8]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--sigma-batch-sizes", "0,x"])


def test_cli_bench_other_model_needs_an_artifact(tiny_on_disk, capsys, monkeypatch):
    assert main(["bench", "--model", str(tiny_on_disk / "model"), "--quick"]) == 2
    assert "needs an artifact" in capsys.readouterr().err
    # an embedded model gets its shipped artifact: the check passes and the run starts (stopped here)
    import scans_guard.bench.cli as bench_cli

    def started(cfg, progress):
        raise SystemExit(f"started with {cfg.model}")

    monkeypatch.setattr(bench_cli, "run_benchmark", started)
    with pytest.raises(SystemExit, match="started with qwen2.5-coder-0.5b-instruct"):
        main(["bench", "--model", "qwen2.5-coder-0.5b-instruct", "--quick"])


def test_natural_length_reports_per_token(tiny_engine):
    cfg = BenchConfig.quick_config(
        memory=False,
        load_time=False,
        threads=1,
        max_new_tokens=4,
        force_length=False,
        sigma_batch_sizes=[1],
        steer_batch_sizes=[1],
        n_prompts=1,
    )
    from scans_guard.bench.speed import bench_end_to_end

    e = bench_end_to_end(tiny_engine, ["Paris?"], cfg)
    assert e.equal_work == "natural_length_per_token"
    for mode in (e.plain, e.scans):
        assert 1 <= mode.completion_tokens <= 4


def test_threads_section_on_the_tiny_model(tiny_engine):
    cfg = BenchConfig.quick_config(generate_threads=3, max_new_tokens=4, warmup=0, repeats=2)
    result = bench_threads(tiny_engine, ["Paris?", "How do I bake bread?"], cfg)  # prompts cycle to 3 calls
    assert (result.threads, result.max_new_tokens) == (3, 4)
    assert result.completion_tokens == 12 and result.same_tokens
    assert len(result.threads_s) == len(result.static_s) == 2 and min(result.threads_s + result.static_s) > 0
    assert result.threads_tokens_per_s > 0 and result.static_tokens_per_s > 0
    assert result.ratio == pytest.approx(result.threads_tokens_per_s / result.static_tokens_per_s)
    args = build_parser().parse_args(["bench", "--generate-threads", "5"])
    assert config_from_args(args).generate_threads == 5 and BenchConfig().generate_threads == 8
