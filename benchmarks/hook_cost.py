"""Time the wrapped prompt against llm's raw one, and what one ``llm_prompt_context`` hook costs.

The harness's one-hook case (``c.prompt.wrapped+1ctxhook``) registers a hook that builds a new
``@asynccontextmanager`` function on every call. Part of that case's ratio over the raw prompt is
therefore the hook's own work, which any implementation has to run. This script measures, in one
process, on the harness's Datasette (imported from the harness file):

- ``raw``: ``await (await m.prompt("hi")).text()`` on llm's echo model;
- ``wrapped``: ``LLM(ds).model("echo")``'s prompt, no hook registered;
- ``raw+hook``: the raw prompt inside the same kind of hook, called and entered by hand;
- ``wrapped+hook``: the wrapped prompt with that hook registered.

The harness times each case for seconds on end, so a ratio of two cases also carries whatever
the shared machine did between them. Here the cases are interleaved instead: ``--rounds``
rounds, each timing a batch of about 10 ms of every case in turn (first ``raw`` and
``wrapped``, then, with the hook registered, the other three); each ratio is the median over
rounds of that round's ratio to ``raw``. Run it with the interpreter of a venv that has the
implementation installed; it prints JSON::

    benchmarks/.venvs/ours/bin/python benchmarks/hook_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Final

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


BATCH_SECONDS: Final = 0.01
"""How long one batch of one case runs: short, so the cases of a round see the same machine."""


async def batch(operation: Operation, count: int) -> float:
    """Run ``operation`` ``count`` times with the collector off; return µs per operation."""
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(count):
            await operation()
        return (time.perf_counter() - started) / count * 1e6
    finally:
        gc.enable()


async def interleave(cases: dict[str, Operation], rounds: int) -> dict[str, list[float]]:
    """Time ``rounds`` short batches of every case, rotating their order each round.

    Returns µs per operation for each case, one value per round. A case and the raw prompt are
    timed a few milliseconds apart, so a ratio taken within a round cancels most of what a
    shared machine does to its speed over seconds.
    """
    names = list(cases)
    for name in names:  # warm up, and size a batch to about BATCH_SECONDS
        await batch(cases[name], 200)
    count = max(20, int(BATCH_SECONDS * 1e6 / await batch(cases["raw"], 200)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await batch(cases[name], count))
    return samples


def summarize(samples: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Median µs of each case, and the median over rounds of each round's ratio to raw."""
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {
        name: statistics.median(
            value / raw for value, raw in zip(values, samples["raw"], strict=True)
        )
        for name, values in samples.items()
    }
    return medians, ratios


async def measure(bench: ModuleType, rounds: int) -> dict[str, Any]:
    """Interleave the cases: first with no hook registered, then with the harness's hook."""
    from datasette.plugins import pm

    cases, by_hand, registered = await make_cases(bench)
    # With nothing registered, the wrapped prompt runs no hook at all.
    unhooked = await interleave({"raw": cases["raw"], "wrapped": cases["wrapped+hook"]}, rounds)
    pm.register(registered, name="hook-cost-context")
    try:
        hooked = await interleave(cases, rounds)
    finally:
        pm.unregister(name="hook-cost-context")
    medians, ratios = summarize(hooked)
    unhooked_medians, unhooked_ratios = summarize(unhooked)
    medians["wrapped"] = unhooked_medians["wrapped"]
    ratios["wrapped"] = unhooked_ratios["wrapped"]
    return {
        "median_us": medians,
        "ratio_vs_raw": ratios,
        "checks": {"by_hand_entered": by_hand.entered > 0, "hook_entered": registered.entered > 0},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, help="rounds of batches (default 300, quick 40)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--harness", type=Path, default=DEFAULT_HARNESS)
    args = parser.parse_args()
    rounds = args.rounds or (40 if args.quick else 300)
    bench = load_harness(args.harness)
    bench.isolate_environment()
    results = asyncio.run(measure(bench, rounds))
    print(json.dumps(results, indent=2))
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
