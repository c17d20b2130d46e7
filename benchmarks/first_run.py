"""What a new user waits for: a fresh clone set up, the default model cached, the demo run; then a later load.

Each step runs in its own process, timed from outside: `bash scripts/setup.sh` in a fresh clone (optional: it
installs torch and every extra into a new .venv), the first `scans-guard demo` against an empty model cache (it
assembles, verifies and dequantises the default model, then loads it and answers the demo prompts), the disk the
cache takes, and a later load of the engine from the warm cache with its peak RSS.

    python benchmarks/first_run.py --out benchmarks/results/first-run-1.5b            # cache, demo, load
    python benchmarks/first_run.py --setup --out benchmarks/results/first-run-1.5b    # and a fresh clone's setup
    python benchmarks/first_run.py --load-only --out benchmarks/results/later-load-1.5b  # a later load alone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOAD = (
    "import resource, time; t = time.perf_counter(); from scans_guard import ScansEngine; "
    "e = ScansEngine.load({model!r}); "
    "now = [int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmRSS')][0] / 1024; "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, now)"
)


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, done.stdout


def _disk_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="an embedded model's name (default: the default model)")
    ap.add_argument("--setup", action="store_true", help="also time scripts/setup.sh in a fresh clone")
    ap.add_argument("--load-only", action="store_true", help="only a later load, from the user's own warm cache")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    summary: dict[str, object] = {"model": args.model or "default", "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if not args.load_only:  # an empty cache of its own
            env["SCANS_GUARD_CACHE"] = str(Path(tmp) / "cache")
        python = Path(sys.executable)
        if args.setup and not args.load_only:
            clone = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
            summary["setup_s"], _ = _timed(["bash", "scripts/setup.sh"], clone, env)
            python = clone / ".venv" / "bin" / "python"
        if not args.load_only:
            demo = [str(python), "-m", "scans_guard.cli", "demo"] + (["--model", args.model] if args.model else [])
            summary["first_demo_s"], out = _timed(demo, REPO, env)
            summary["demo_output"] = out
            summary["cache_gb"] = round(_disk_gb(Path(tmp) / "cache"), 2)
        model = args.model
        seconds, stdout = _timed([str(python), "-c", LOAD.format(model=model)], REPO, env)
        load_s, rss_mb, rss_after_mb = (float(x) for x in stdout.split()[-3:])
        # The peak counts the float16 file's pages, mapped while the float32 copy is built; they are clean page cache
        # the kernel can drop, and are unmapped once the load ends (rss_after_load_mb).
        summary |= {
            "later_load_process_s": round(seconds, 1),
            "later_load_s": round(load_s, 1),
            "rss_mb": round(rss_mb),
            "rss_after_load_mb": round(rss_after_mb),
        }
    if args.setup:
        summary["fresh_clone_to_demo_s"] = round(summary["setup_s"] + summary["first_demo_s"], 1)  # type: ignore[operator]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "demo_output"}, indent=2))


if __name__ == "__main__":
    main()
