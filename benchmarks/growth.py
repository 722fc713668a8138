"""Time what must not grow with the work: configured purposes, the routing page, installed models.

Run with the interpreter of a venv that has an implementation installed (``benchmarks/run.py``
does, for 0.1a8 and for this checkout); it prints JSON on stdout. Cases:

- ``model(purpose)`` with N configured purposes, each naming its own ``key`` secret for a model
  that needs one (N = 10 and 3,000);
- ``GET /-/llm.json`` and the page ``GET /-/llm``, every section included, with N registered
  and configured purposes, each with a ``model`` and a ``models`` list (N = 100 and 1,000;
  0.1a8 has no routing page);
- ``model(purpose)`` with 5,000 installed models (the harness measures 2 and 500).

Timing, environment isolation and model plugins come from the shared routing harness
(``../shared/bench/bench_routing.py``), imported from its file.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from datasette import hookimpl

HARNESS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "bench_routing.py"
KEYED_MODEL = "echo-needs-key"  # llm-echo's model that needs a key


def load_harness(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_routing", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"Cannot load the harness from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keyed_purposes(count: int) -> dict[str, Any]:
    """``count`` purposes, each routed to a keyed model with its own key secret (all set)."""
    for index in range(count):
        os.environ[f"DATASETTE_SECRETS_KEY_{index}"] = f"sk-bench-{index}"
    return {
        f"purpose-{index}": {"model": {"model": KEYED_MODEL, "key": f"KEY_{index}"}}
        for index in range(count)
    }


class Declares:
    """A plugin registering ``count`` purposes."""

    def __init__(self, count: int) -> None:
        self.count = count

    @hookimpl
    def register_llm_purposes(self, datasette: object) -> list[object]:
        from datasette_llm import Purpose

        return [Purpose(f"purpose-{index}") for index in range(self.count)]


async def timed(
    bench: ModuleType, config: dict[str, Any], op: Callable[[], Awaitable[Any]]
) -> float:
    median: float = (await bench.bench_async(op, config))["median_us"]
    return median


async def purposes_case(bench: ModuleType, config: dict[str, Any], count: int) -> float:
    from datasette.app import Datasette

    from datasette_llm import LLM

    datasette = Datasette(
        memory=True, config={"plugins": {"datasette-llm": {"purposes": keyed_purposes(count)}}}
    )
    await datasette.invoke_startup()
    asked = f"purpose-{count // 2}"
    model = await LLM(datasette).model(purpose=asked)
    assert model.model_id == KEYED_MODEL, model.model_id
    return await timed(bench, config, lambda: LLM(datasette).model(purpose=asked))


async def page_case(
    bench: ModuleType, config: dict[str, Any], count: int, path: str = "/-/llm.json"
) -> float | None:
    from datasette.app import Datasette
    from datasette.plugins import pm

    pm.register(Declares(count), name="bench-declares")
    try:
        datasette = Datasette(
            memory=True,
            config={
                "plugins": {
                    "datasette-llm": {
                        "purposes": {
                            f"purpose-{i}": {"model": "echo", "models": ["echo", KEYED_MODEL]}
                            for i in range(count)
                        }
                    }
                }
            },
        )
        datasette.root_enabled = True
        await datasette.invoke_startup()
        cookies = {"ds_actor": datasette.client.actor_cookie({"id": "root"})}
        response = await datasette.client.get(path, cookies=cookies)
        if response.status_code == 404:
            return None  # no routing page (0.1a8)
        assert response.status_code == 200, response.text[:300]
        if path.endswith(".json"):
            assert len(response.json()["purposes"]) == count
        return await timed(bench, config, lambda: datasette.client.get(path, cookies=cookies))
    finally:
        pm.unregister(name="bench-declares")


async def installed_case(bench: ModuleType, config: dict[str, Any], count: int) -> float:
    from datasette_llm import LLM

    datasette = await bench.make_datasette()
    registry = bench.Registry(False)
    try:
        registry.set_total(count)
        assert (await LLM(datasette).model(purpose=bench.PURPOSE)).model_id == "echo"
        return await timed(bench, config, lambda: LLM(datasette).model(purpose=bench.PURPOSE))
    finally:
        registry.set_total(0)


async def measure(bench: ModuleType, quick: bool) -> dict[str, float | None]:
    config = dict(bench.QUICK if quick else bench.FULL)
    results: dict[str, float | None] = {}
    for count in (10, 3000):
        results[f"model(purpose), {count} keyed purposes"] = await purposes_case(
            bench, config, count
        )
        bench.log(f"  {count} keyed purposes done")
    for path in ("/-/llm.json", "/-/llm"):
        for count in (100, 1000):
            # The page takes milliseconds: fewer, shorter repeats keep the run short.
            page_config = {**config, "repeats": 5}
            timing = await page_case(bench, page_config, count, path)
            results[f"{path}, {count} purposes"] = timing
            bench.log(f"  {path} with {count} purposes done")
    results["model(purpose), 5000 installed models"] = await installed_case(bench, config, 5000)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--harness", type=Path, default=HARNESS)
    args = parser.parse_args()
    bench = load_harness(args.harness)
    bench.isolate_environment()
    print(json.dumps(asyncio.run(measure(bench, args.quick)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
