"""Run `clbench bench` for every registered learner on the toy world; write one JSON file.

    python benchmarks/run_benchmarks.py                       # -> results/benchmarks/<machine>.json
    python benchmarks/run_benchmarks.py --learners drslora,finetune --steps 20 --threads 1
    python benchmarks/run_benchmarks.py --device cuda --precision bf16

Each learner runs in its own process (`clbench bench --json`), so peak memory is per learner
and no state leaks between them. The file records the machine, the load average before and
after every learner (a shared machine's wall times mean little without it) and each learner's
full bench result. A learner that fails is recorded with its error; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path


def machine_name(device: str) -> str:
    """A stable, descriptive file name: CPU model + core count, or the GPU's name."""
    if device == "cuda":
        import torch

        return _slug(torch.cuda.get_device_name(0)) + "-x1"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    return f"{_slug(model)}-{os.cpu_count()}cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def all_learners() -> list[str]:
    from cl_bench.api.registry import available_learners

    return list(available_learners())


def bench_one(learner: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "cl_bench.cli",
        "bench",
        "--learner",
        learner,
        "--world",
        args.world,
    ]
    cmd += ["--setting", args.setting, "--steps", str(args.steps), "--repeats", str(args.repeats)]
    cmd += ["--device", args.device, "--precision", args.precision, "--json"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.eval_limit:
        cmd += ["--eval-limit", str(args.eval_limit)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"learner": learner, "error": tail, "process_wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "process_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", default="all", help="comma-separated names, or all")
    parser.add_argument("--world", default="toy")
    parser.add_argument("--setting", default="xtail")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=None, help="default results/benchmarks/<machine>.json"
    )
    args = parser.parse_args()

    learners = all_learners() if args.learners == "all" else args.learners.split(",")
    machine = machine_name(args.device)
    out = args.out or Path("results") / "benchmarks" / f"{machine}.json"
    record = {
        "machine": machine,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": {},
    }
    for learner in learners:
        print(f"bench {learner} ...", file=sys.stderr, flush=True)
        record["results"][learner] = bench_one(learner, args)
        r = record["results"][learner]
        summary = r.get("error") or f"train ratio {r['train_ratio']}  eval ratio {r['eval_ratio']}"
        print(f"  {summary}", file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(record, indent=2) + "\n"
        )  # after every learner: partial results survive
        tmp.replace(out)
    print(out)


if __name__ == "__main__":
    main()
