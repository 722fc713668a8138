"""Count the CPU instructions of one prompt, with valgrind, for 0.1a8 and for this checkout.

Timing the one-hook case on a shared 2-CPU machine moves by about ±0.03 between runs, which is
the size of the margin against its target. Instruction counts barely move: callgrind counts
every instruction the process executes, and with a fixed hash seed two runs differ by under 1%
(memory addresses still vary), where timings differ by several. This script runs each case of
``benchmarks/hook_cost.py`` (``raw``, ``raw+hook``, ``wrapped+hook``) under callgrind twice, for
``--small`` and ``--large`` operations after the same warm-up, so that start-up cancels out:
``(large - small) / (large - small operations)`` is the count of one operation.

An instruction count is not a time (a cache miss costs more than an add), so this is a second,
noise-free view next to ``benchmarks/run.py``'s timings, not a replacement. It needs
``valgrind`` on the PATH and the venvs ``benchmarks/run.py`` builds; it writes
``benchmarks/INSTRUCTIONS.md``::

    python3 benchmarks/instructions.py            # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from run import HARNESS, python_of

HERE = Path(__file__).resolve().parent
LABELS = ("anchor", "ours")
CASES = ("raw", "raw+hook", "wrapped+hook")
WARM_UP = 300


def child(case: str, operations: int, harness: Path) -> None:
    """Run ``case`` ``WARM_UP`` times, then ``operations`` times with the collector off."""
    from datasette.plugins import pm
    from hook_cost import make_cases
    from scaling import load_harness

    bench = load_harness(harness)
    bench.isolate_environment()

    async def run() -> None:
        cases, _by_hand, registered = await make_cases(bench)
        pm.register(registered, name="hook-cost-context")
        operation = cases[case]
        for _ in range(WARM_UP):
            await operation()
        gc.collect()
        gc.disable()
        for _ in range(operations):
            await operation()

    asyncio.run(run())


def instructions(python: Path, case: str, operations: int, harness: Path) -> int:
    """The instructions callgrind counted for a whole child process."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        str(python),
        str(Path(__file__).resolve()),
        "--child",
        case,
        str(operations),
        "--harness",
        str(harness),
    ]
    # A fixed hash seed: string hashing changes dict and set layouts, and so the count.
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    finished = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    found = re.search(r"Collected : (\d+)", finished.stderr)
    if finished.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    return int(found.group(1))


def per_operation(label: str, case: str, small: int, large: int, harness: Path) -> float:
    python = python_of(label)
    if not python.exists():
        raise SystemExit(f"{python} is missing: run `python3 benchmarks/run.py` first.")
    counts = [instructions(python, case, n, harness) for n in (small, large)]
    return (counts[1] - counts[0]) / (large - small)


def report(counts: dict[tuple[str, str], float], small: int, large: int) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    python = subprocess.run(
        [str(python_of("ours")), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
    )
    lines = [
        "# Instructions per prompt",
        "",
        "Written by `python3 benchmarks/instructions.py`: valgrind's callgrind count for one "
        f"operation, from runs of {small} and {large} operations after {WARM_UP} warm-up ones. "
        "Two runs differ by under 1%, against several % for the timings in `RESULTS.md`; but an "
        "instruction is not a unit of time, so read it beside them. The cases are "
        "`benchmarks/hook_cost.py`'s: `raw+hook` "
        "is the harness's kind of hook entered by hand with `async with` around llm's raw "
        'prompt, `wrapped+hook` is `LLM(ds).model("echo").prompt()` with that hook registered.',
        "",
        f"- Date: {date}",
        f"- Python {python.stdout.strip()} (the venvs' interpreter), {valgrind.stdout.strip()}",
        "",
        "| implementation | raw | raw+hook | ratio | wrapped+hook | ratio | wrapper's share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in LABELS:
        raw, by_hand, wrapped = (counts[(label, case)] for case in CASES)
        lines.append(
            f"| {'0.1a8' if label == 'anchor' else label} | {raw / 1000:,.1f}k "
            f"| {by_hand / 1000:,.1f}k | {by_hand / raw:.3f} | {wrapped / 1000:,.1f}k "
            f"| {wrapped / raw:.3f} | {(wrapped - by_hand) / 1000:+,.1f}k |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--harness", type=Path, default=HARNESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.harness)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing to count.", file=sys.stderr)
        return 1
    jobs = [(label, case) for label in LABELS for case in CASES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        values = pool.map(
            lambda job: per_operation(*job, args.small, args.large, args.harness), jobs
        )
        counts = dict(zip(jobs, values, strict=True))
    text = report(counts, args.small, args.large)
    (HERE / "INSTRUCTIONS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
