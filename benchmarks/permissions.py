"""Measure what the ``llm-use`` check adds to ``LLM(ds).model(purpose=P, actor=A)``.

Writes benchmarks/PERMISSIONS.md with ``--write``.

Runs in this interpreter (``.venv/newest/bin/python benchmarks/permissions.py``), with llm-echo's
``echo`` as the model. Each case is timed as the fastest of ``ROUNDS`` loops of ``CALLS`` calls
(the loop least disturbed by other work), after a warm-up, the cases interleaved by round:

- ``actor, check removed``: ``model(purpose=P, actor=A)`` with ``datasette_llm.prompting.client``'s
  ``check_use`` replaced by a coroutine that does nothing: the cost before the check existed;
- ``no actor``: ``model(purpose=P)``, which is not checked (routing for an actor does a little
  more: the actor goes to the hooks and the wrapped model);
- ``actor, nothing configured``: ``model(purpose=P, actor=A)``, Datasette's default allow;
- ``actor, permissions block``: the same under ``permissions: {llm-use: {id: [alice, root]}}``;
- ``datasette.allowed()``: one uncached ``allowed(action="llm-use", ...)``, for scale.

Target: each checked case at most 1.05 x ``actor, check removed``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

os.environ["LLM_USER_PATH"] = tempfile.mkdtemp(prefix="datasette-llm-bench-")

from datasette.app import Datasette

import datasette_llm.prompting.client
from datasette_llm import LLM
from datasette_llm.routing.permissions import USE, PurposeResource

HERE: Final = Path(__file__).resolve().parent
PURPOSE: Final = "bench"
ACTOR: Final = {"id": "alice"}
CALLS: Final = 5000
ROUNDS: Final = 25
TARGET: Final = 1.05
BASE: Final = "actor, check removed"
CHECKED: Final = ("actor, nothing configured", "actor, permissions block")
LLM_CONFIG: Final = {"purposes": {PURPOSE: {"model": "echo"}}}


async def datasette_with(permissions: dict[str, Any] | None) -> Datasette:
    config: dict[str, Any] = {"plugins": {"datasette-llm": LLM_CONFIG}}
    if permissions is not None:
        config["permissions"] = permissions
    datasette = Datasette(memory=True, config=config)
    await datasette.invoke_startup()
    return datasette


async def per_call(call: Callable[[], Awaitable[object]], calls: int) -> float:
    """Return the mean microseconds of one ``call()`` over ``calls`` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict[str, float]:
    open_ = await datasette_with(None)
    restricted = await datasette_with({USE: {"id": ["alice", "root"]}})
    resource = PurposeResource(PURPOSE)
    checked = datasette_llm.prompting.client.check_use

    async def unchecked(datasette: Datasette, actor: object, purpose: str | None) -> None:
        pass

    async def without_check() -> object:
        datasette_llm.prompting.client.check_use = unchecked
        try:
            return await LLM(open_).model(purpose=PURPOSE, actor=ACTOR)
        finally:
            datasette_llm.prompting.client.check_use = checked

    cases: dict[str, tuple[Callable[[], Awaitable[object]], int]] = {
        BASE: (without_check, calls),
        "no actor": (lambda: LLM(open_).model(purpose=PURPOSE), calls),
        "actor, nothing configured": (
            lambda: LLM(open_).model(purpose=PURPOSE, actor=ACTOR),
            calls,
        ),
        "actor, permissions block": (
            lambda: LLM(restricted).model(purpose=PURPOSE, actor=ACTOR),
            calls,
        ),
        "datasette.allowed()": (
            lambda: restricted.allowed(action=USE, resource=resource, actor=ACTOR),
            max(1, calls // 50),
        ),
    }
    for call, count in cases.values():
        await per_call(call, count)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (call, count) in cases.items():
            samples[name].append(await per_call(call, count))
    return {name: min(values) for name, values in samples.items()}


def table(results: dict[str, float]) -> str:
    base = results[BASE]
    lines = ["| case | µs per call | x check removed |", "|---|---:|---:|"]
    for name, value in results.items():
        lines.append(f"| {name} | {value:.2f} | {value / base:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; do not commit it")
    parser.add_argument("--write", action="store_true", help="write benchmarks/PERMISSIONS.md")
    args = parser.parse_args()
    calls, rounds = (500, 3) if args.quick else (CALLS, ROUNDS)
    results = asyncio.run(measure(calls, rounds))
    worst = max(results[name] for name in CHECKED) / results[BASE]
    verdict = "met" if worst <= TARGET else "NOT met"
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("datasette", "llm", "llm-echo")
    )
    report = (
        f"{table(results)}\n\nTarget (each checked case <= {TARGET} x check removed): {verdict} "
        f"(worst {worst:.3f}).\n\n{versions}; Python {platform.python_version()}; "
        f"{calls} calls per loop, fastest of {rounds} rounds.\n"
    )
    print(report)
    if args.write:
        header = (HERE / "PERMISSIONS.md").read_text().split("<!-- results -->")[0]
        (HERE / "PERMISSIONS.md").write_text(f"{header}<!-- results -->\n\n{report}")
    sys.exit(0 if worst <= TARGET else 1)


if __name__ == "__main__":
    main()
