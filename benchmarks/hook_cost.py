"""Time what one ``llm_prompt_context`` hook costs by itself, with no datasette-llm around it.

The harness's one-hook case (``c.prompt.wrapped+1ctxhook``) registers a hook that builds a new
``@asynccontextmanager`` function on every call. Part of that case's ratio over the raw prompt is
therefore the hook's own work, which any implementation has to run. This script measures, in one
process and with the harness's timing loop (imported from the harness file):

- ``raw``: ``await (await m.prompt("hi")).text()`` on llm's echo model;
- ``raw+hook``: the same prompt inside the same kind of hook, called and entered by hand;
- ``wrapped+hook``: ``LLM(ds).model("echo")``'s prompt with that hook registered.

The cases are interleaved over ``--rounds`` rounds; each reports the median of its rounds. Run it
with the interpreter of a venv that has the implementation installed; it prints JSON::

    benchmarks/.venvs/ours/bin/python benchmarks/hook_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from scaling import DEFAULT_HARNESS, load_harness

Factory = Callable[[object], AbstractAsyncContextManager[None]]


class ContextHook:
    """One ``llm_prompt_context`` implementation of the harness's shape: a new function per call."""

    def __init__(self) -> None:
        self.entered = 0

    def llm_prompt_context(
        self, datasette: object, model_id: str, prompt: str, purpose: object, actor: object
    ) -> Factory:
        @asynccontextmanager
        async def around(result: object) -> AsyncIterator[None]:
            self.entered += 1
            yield

        return around


Operation = Callable[[], Awaitable[None]]


async def make_cases(bench: ModuleType) -> tuple[dict[str, Operation], ContextHook, ContextHook]:
    """The three operations, the hook called by hand and the hook to register (not yet done)."""
    import llm
    from datasette import hookimpl

    datasette = await bench.make_datasette()
    from datasette_llm import LLM

    raw = llm.get_async_model("echo")
    wrapped = await LLM(datasette).model("echo")
    by_hand = ContextHook()

    class Registered(ContextHook):
        llm_prompt_context = hookimpl(ContextHook.llm_prompt_context)

    async def op_raw() -> None:
        await (await raw.prompt("hi")).text()

    async def op_raw_hook() -> None:
        factory = by_hand.llm_prompt_context(datasette, "echo", "hi", None, None)
        async with factory(None):
            response = raw.prompt("hi")
            await response
        await response.text()

    async def op_wrapped_hook() -> None:
        await (await wrapped.prompt("hi")).text()

    cases: dict[str, Operation] = {
        "raw": op_raw,
        "raw+hook": op_raw_hook,
        "wrapped+hook": op_wrapped_hook,
    }
    return cases, by_hand, Registered()


async def measure(bench: ModuleType, rounds: int, quick: bool) -> dict[str, Any]:
    from datasette.plugins import pm

    config = dict(bench.QUICK if quick else bench.FULL)
    cases, by_hand, registered = await make_cases(bench)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    pm.register(registered, name="hook-cost-context")
    try:
        for round_index in range(rounds):
            for name, operation in cases.items():
                samples[name].append((await bench.bench_async(operation, config))["median_us"])
            bench.log(f"  hook cost round {round_index + 1}/{rounds} done")
    finally:
        pm.unregister(name="hook-cost-context")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "median_us": medians,
        "ratio_vs_raw": {name: value / medians["raw"] for name, value in medians.items()},
        "checks": {"by_hand_entered": by_hand.entered > 0, "hook_entered": registered.entered > 0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--harness", type=Path, default=DEFAULT_HARNESS)
    args = parser.parse_args()
    bench = load_harness(args.harness)
    bench.isolate_environment()
    results = asyncio.run(measure(bench, args.rounds, args.quick))
    print(json.dumps(results, indent=2))
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
