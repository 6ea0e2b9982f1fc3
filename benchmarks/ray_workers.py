"""The same small bench on a local Ray cluster with 1 and with 2 workers (CPUs), and on the local executor:
wall time and the ratio. A 64x128 ToyCity world, 2 methods x 2 seeds, three rounds of three epochs, the
source models trained in the bench (twelve epochs).

    python benchmarks/ray_workers.py --json docs/measurements/cpu/ray_workers.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import machine

from sfseg.data.toycity import ToyCitySpec, generate
from sfseg.engine.experiments.bench import run_bench

METHODS, SEEDS = ["naive_st", "ld"], [0, 1]
ADAPT = ["rounds=3", "epochs_per_round=3", "batch_size=4"]
SOURCE = ["epochs=12"]


def timed(data: Path, out: Path, **executor) -> float:
    t0 = time.perf_counter()
    run_bench(data, out, METHODS, SEEDS, overrides=ADAPT, source_overrides=SOURCE, progress=False, **executor)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="")
    args = p.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp())
    spec = replace(
        ToyCitySpec(), height=64, width=128, source_train=24, source_val=8, target_train=24, target_val=8
    )
    generate(tmp / "data", spec, progress=False)
    result = {"machine": machine(), "bench": f"{METHODS} x seeds {SEEDS}, {ADAPT}, sources {SOURCE}"}
    result["local_1_process_s"] = timed(tmp / "data", tmp / "local1", jobs=1)
    for cpus in (1, 2):
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            result[f"ray_{cpus}_workers_s"] = timed(tmp / "data", tmp / f"ray{cpus}", executor="ray")
        finally:
            ray.shutdown()
    result["ray_1_over_2_workers"] = result["ray_1_workers_s"] / result["ray_2_workers_s"]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
