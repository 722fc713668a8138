"""Time ``LLM(ds).model(purpose=...)`` and ``LLM(ds).models(purpose=...)`` at chosen model counts.

The routing harness (``../shared/bench/bench_routing.py``) measures 2, 50 and 500 installed models.
This script reuses its environment isolation, model plugins and timing loop, imported from the
harness file itself, to measure any count (5,000 by default too). Run it with the interpreter of
a venv that has the implementation installed; it prints JSON on stdout::

    benchmarks/.venvs/ours/bin/python benchmarks/scaling.py --counts 2,50,500,5000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_HARNESS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "bench_routing.py"


def load_harness(path: Path) -> ModuleType:
    """Import the routing harness from its file."""
    spec = importlib.util.spec_from_file_location("bench_routing", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"Cannot load the harness from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def measure(bench: ModuleType, counts: list[int], quick: bool) -> dict[str, Any]:
    """Return ``{"model": {N: µs}, "models": {N: µs}, "checks": {...}}``."""
    config = dict(bench.QUICK if quick else bench.FULL)
    datasette = await bench.make_datasette()
    from datasette_llm import LLM

    registry = bench.Registry(False)
    results: dict[str, Any] = {"model": {}, "models": {}, "checks": {}}
    for count in counts:
        total = registry.set_total(count)
        model = await LLM(datasette).model(purpose=bench.PURPOSE)
        models = await LLM(datasette).models(purpose=bench.PURPOSE)
        results["checks"][f"N={total}"] = model.model_id == "echo" and (
            models[0].model_id == "echo"
        )

        async def op_model() -> None:
            await LLM(datasette).model(purpose=bench.PURPOSE)

        async def op_models() -> None:
            await LLM(datasette).models(purpose=bench.PURPOSE)

        results["model"][total] = (await bench.bench_async(op_model, config))["median_us"]
        results["models"][total] = (await bench.bench_async(op_models, config))["median_us"]
        bench.log(f"  scaling N={total} done")
    registry.set_total(0)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--counts", default="2,50,500,5000")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--harness", type=Path, default=DEFAULT_HARNESS)
    args = parser.parse_args()
    bench = load_harness(args.harness)
    bench.isolate_environment()
    counts = [int(count) for count in args.counts.split(",")]
    results = asyncio.run(measure(bench, counts, args.quick))
    print(json.dumps(results, indent=2))
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
