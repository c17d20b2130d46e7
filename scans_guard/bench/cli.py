"""`scans-guard bench` command: arguments, the printed table, and writing the JSON (measurements live in runner.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runner import BenchConfig, BenchResult, run_benchmark
from .serve import ServeResult


def _fmt(x: object, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def _end_to_end_lines(r: BenchResult) -> list[str]:
    e = r.end_to_end
    lines = [
        f"end to end ({e.n_prompts} prompts x {e.repeats} repeats, {e.max_new_tokens} new tokens, batch 1, "
        f"{e.equal_work})",
        f"  {'mode':<6} {'tok/s':>8} {'ms/token':>9} {'latency s':>10} {'p90':>7} {'TTFT s':>7} {'sigma s':>8} "
        f"{'decode tok/s':>13}",
    ]
    for mode, x in (("plain", e.plain), ("scans", e.scans)):
        lines.append(
            f"  {mode:<6} {_fmt(x.tokens_per_s):>8} {_fmt(x.ms_per_token and x.ms_per_token.median):>9} "
            f"{_fmt(x.latency_s.median, '.3f'):>10} {_fmt(x.latency_s.p90, '.3f'):>7} "
            f"{_fmt(x.ttft_s.median, '.3f'):>7} {_fmt(x.classify_s.median, '.3f'):>8} "
            f"{_fmt(x.decode_tokens_per_s):>13}"
        )
    c = e.scans_vs_plain
    lines.append(
        f"  SCANS / plain throughput {_fmt(c.throughput_ratio, '.3f')} (per-token paired median "
        f"{_fmt(c.per_token_ratio_median, '.3f')}); goal >= {c.goal}: {'met' if c.meets_goal else 'NOT met'}"
    )
    lines.append(
        f"  decode only (after the first token) {_fmt(c.decode_throughput_ratio, '.3f')}: "
        f"{'met' if c.decode_meets_goal else 'NOT met'}; end-to-end bound if SCANS cost only its one "
        f"extra forward: {_fmt(c.ratio_if_only_one_extra_forward, '.3f')}"
    )
    return lines


def _batch_lines(r: BenchResult) -> list[str]:
    lines = ["sigma alone (engine.classify)", f"  {'batch':>5} {'prompts/s':>10} {'ms/prompt':>10} {'ms/pass':>9}"]
    lines += [
        f"  {row.batch_size:>5} {_fmt(row.prompts_per_s):>10} {_fmt(row.ms_per_prompt.median):>10} "
        f"{_fmt(row.pass_latency_ms.median):>9}"
        for row in r.sigma.batches
    ]
    if r.sigma.readings:
        lines += [
            "",
            "sigma by input shape (one prompt at a time; readings: scans_guard.sigma.readings)",
            f"  {'shape':<17} {'readings':>8} {'passes':>6} {'ms/prompt':>10} {'x single':>8}",
        ]
        lines += [
            f"  {row.shape:<17} {row.readings:>8} {row.forward_passes:>6} {_fmt(row.ms_per_prompt.median):>10} "
            f"{_fmt(row.vs_single, '.2f'):>8}"
            for row in r.sigma.readings
        ]
    b = r.batched_steering
    signs = f"{b.coefficients[:4]}{'...' if len(b.coefficients) > 4 else ''}"
    lines += ["", f"batched steering, per-row signs {signs}", f"  {'batch':>5} {'tok/s':>8} {'s/call':>8}"]
    lines += [
        f"  {row.batch_size:>5} {_fmt(row.tokens_per_s):>8} {_fmt(row.call_latency_s.median, '.3f'):>8}"
        for row in b.batches
    ]
    lines.append(
        f"  same greedy tokens per row as unbatched (batch {b.checked_batch_size}): "
        f"{b.same_tokens_as_unbatched}" + (f" (rows {b.mismatched_rows} differ)" if b.mismatched_rows else "")
    )
    t = r.threads
    lines += [
        "",
        f"threads: {t.threads} threads each calling generate on one prompt vs one static batch of {t.threads}",
        f"  {'threads tok/s':>13} {'static tok/s':>12} {'ratio':>6}",
        f"  {_fmt(t.threads_tokens_per_s):>13} {_fmt(t.static_tokens_per_s):>12} {_fmt(t.ratio):>6}",
    ]
    return lines


def _memory_load_lines(r: BenchResult) -> list[str]:
    mem, ld = r.memory, r.load
    lines = ["memory (MiB)"]
    if mem.skipped:
        lines.append(f"  skipped: {mem.skipped}")
    for mode, x in (("plain", mem.plain), ("scans", mem.scans)):
        if x is not None:
            lines.append(
                f"  {mode:<6} error: {x['error']}"
                if "error" in x
                else f"  {mode:<6} after load {_fmt(x.get('rss_after_load_mb'), '.0f')}, generation peak "
                f"{_fmt(x.get('generation_peak_rss_mb'), '.0f')}, "
                f"process peak {_fmt(x.get('peak_rss_mb'), '.0f')}"
            )
    if mem.scans_minus_plain_mb is not None:
        lines.append(f"  SCANS - plain ({mem.compared}): {mem.scans_minus_plain_mb:+.0f}")
    why = ld.skipped or ld.cold_skipped
    lines += [
        "",
        f"load: in process {_fmt(ld.in_process_s)} s, warm (fresh process) "
        f"{_fmt(ld.warm_subprocess_s and ld.warm_subprocess_s.median)} s, cold {_fmt(ld.cold_s)} s"
        + (f" ({why})" if why else ""),
    ]
    return lines


def format_table(r: BenchResult) -> str:
    """A human-readable summary of a result."""
    m = r.machine
    lines = [
        f"scans-guard bench: {r.model.name} ({r.model.dtype}, {r.model.device}), torch {r.versions['torch']}, "
        f"transformers {r.versions['transformers']}",
        f"threads: torch {m['torch_num_threads']}, os.cpu_count {m['os_cpu_count']}, affinity {m['cpu_affinity']}; "
        f"loadavg {_fmt(m['loadavg'])} -> {_fmt(m.get('loadavg_end'))}",
        "",
        *_end_to_end_lines(r),
        "",
        *_batch_lines(r),
        *_serve_lines(r.serve),
        "",
        *_memory_load_lines(r),
    ]
    busy = max((m.get("loadavg") or [0])[0], (m.get("loadavg_end") or [0])[0])
    if busy > (m["cpu_affinity"] or m["os_cpu_count"] or 1):
        lines.append(
            f"\nwarning: load average {busy:.1f} exceeds the {m['cpu_affinity'] or m['os_cpu_count']} CPUs: "
            "other processes were running, timings are noisy (fewer --threads can help under contention)"
        )
    return "\n".join(lines)


def _serve_lines(s: ServeResult) -> list[str]:
    """The serve section of the table: concurrent clients vs one, /v1/classify batched vs single, idle memory."""
    if s.skipped or s.chat is None or s.classify is None or s.memory is None:
        return ["", f"serve: skipped ({s.skipped})"]
    c, k, m = s.chat, s.classify, s.memory
    lines = [
        "",
        f"serve (HTTP, streaming, {s.max_new_tokens} tokens per reply)",
        f"  {'clients':<12} {'tok/s':>8} {'TTFT p50':>9} {'p95':>7} {'latency p50':>12} {'p95':>7}",
    ]
    for name, x in (("1 (serial)", c.one_client), (f"{c.clients} at once", c.concurrent)):
        lines.append(
            f"  {name:<12} {_fmt(x.tokens_per_s):>8} {_fmt(x.ttft_s.p50, '.3f'):>9} "
            f"{_fmt(x.ttft_s.p95, '.3f'):>7} {_fmt(x.latency_s.p50, '.3f'):>12} "
            f"{_fmt(x.latency_s.p95, '.3f'):>7}"
        )
    lines.append(
        f"  concurrent / one client {_fmt(c.throughput_ratio)}x; goal >= {c.goal}: "
        f"{'met' if c.meets_goal else 'NOT met'}; same replies as alone: {c.same_text_as_alone}"
    )
    lines.append(
        f"  /v1/classify: {k.prompts} prompts in one request {_fmt(k.one_request_prompts_per_s)}/s vs "
        f"single requests {_fmt(k.single_requests_prompts_per_s)}/s = {_fmt(k.throughput_ratio)}x; "
        f"goal >= {k.goal}: {'met' if k.meets_goal else 'NOT met'}"
    )
    if m.idle_ratio is not None:
        lines.append(
            f"  RSS: engine alone {_fmt(m.engine_alone_mb, '.0f')} MiB, idle server "
            f"{_fmt(m.idle_server_mb, '.0f')} MiB ({_fmt(m.idle_ratio, '.3f')}x; goal <= {m.goal}: "
            f"{'met' if m.meets_goal else 'NOT met'}), after the load {_fmt(m.after_load_mb, '.0f')} MiB"
        )
    return lines


# -- command line ------------------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes look like '1,8,32', got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return sizes


# (flag, BenchConfig field, argparse options); a flag not given leaves the field at its default (or --quick's)
_FLAGS: list[tuple[str, str, dict]] = [
    (
        "--max-new-tokens",
        "max_new_tokens",
        dict(type=int, help="tokens per reply in every mode (default 48; --quick 8)"),
    ),
    ("--repeats", "repeats", dict(type=int, help="timed repeats of each measurement (default 3; --quick 1)")),
    ("--warmup", "warmup", dict(type=int, help="untimed warm-up runs before each measurement (default 1)")),
    ("--prompts", "n_prompts", dict(type=int, help="end-to-end prompts (default 8; --quick 2)")),
    ("--sigma-batch-sizes", "sigma_batch_sizes", dict(type=_sizes, help="default 1,8,32 (--quick 1,8)")),
    ("--steer-batch-sizes", "steer_batch_sizes", dict(type=_sizes, help="default 1,8 (--quick 1,2)")),
    (
        "--generate-threads",
        "generate_threads",
        dict(type=int, help="threads section: concurrent one-prompt generate calls (default 8; --quick 4)"),
    ),
    (
        "--cold",
        "cold",
        dict(
            action="store_true",
            help="also time a first load of the default model (GGUF -> cache) into a temporary cache",
        ),
    ),
    ("--no-memory", "memory", dict(action="store_false", help="skip the peak-RSS subprocesses")),
    (
        "--no-serve",
        "serve",
        dict(
            action="store_false",
            help="skip the serve section (HTTP server, concurrent clients; needs the [serve] extra)",
        ),
    ),
    ("--no-load-time", "load_time", dict(action="store_false", help="skip timing a warm load in a fresh process")),
    (
        "--natural-length",
        "force_length",
        dict(
            action="store_false",
            help="let rows stop at EOS (default: suppress EOS while timing so every row does equal work)",
        ),
    ),
    ("--threads", "threads", dict(type=int, help="torch.set_num_threads (default: torch's choice)")),
]


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="write the JSON result here (it is also printed as a table)")
    p.add_argument("--quick", action="store_true", help="a tiny sanity run: 2 prompts, 8 tokens, 1 repeat")
    for flag, field, options in _FLAGS:
        p.add_argument(flag, dest=field, default=None, **options)
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    given = {
        k: v
        for k in ("model", "artifact", "device", "dtype", *(f for _, f, _ in _FLAGS))
        if (v := getattr(args, k)) is not None
    }
    return BenchConfig.quick_config(**given) if args.quick else BenchConfig(**given)


def cmd_bench(args: argparse.Namespace) -> None:
    from ..calibration.artifacts import default_artifact_dir

    if args.artifact is None and args.model is not None:
        default_artifact_dir(args.model)  # before loading: an embedded model's shipped one, else what to run
    cfg = config_from_args(args)
    result = run_benchmark(cfg, progress=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.to_json())
    print(result.to_json() if args.json else format_table(result))
    if args.out:
        print(f"\nwrote {args.out}", file=sys.stderr)
