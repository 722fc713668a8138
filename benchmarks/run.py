"""Benchmark this checkout against the original datasette-llm 0.1a8 and write RESULTS.md.

Builds two venvs under ``benchmarks/.venvs/`` with the same pinned Datasette, llm and llm-echo
(``anchor``: ``datasette-llm==0.1a8`` from PyPI; ``ours``: this checkout, not editable). Then,
in rounds alternating the order (ABBA), it runs the shared routing harness
(``../shared/bench/bench_routing.py``) and ``benchmarks/growth.py`` under each, takes each
case's median over the rounds and writes ``benchmarks/RESULTS.md``. One timing method
throughout: the harness's (the median of repeated loops, each about 250 ms, after a warm-up).
Standard library only::

    python3 benchmarks/run.py               # 4 rounds, about 10 minutes on 2 cores
    python3 benchmarks/run.py --quick       # a smoke run; its numbers are not for committing
    python3 benchmarks/run.py --skip-build  # reuse the venvs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
VENVS = HERE / ".venvs"
HARNESS = ROOT.parent / "shared" / "bench" / "bench_routing.py"
PINS = ["datasette==1.0a41", "datasette-secrets==0.3a0", "llm==0.36", "llm-echo==0.5"]
IMPLEMENTATIONS = {"anchor": ["datasette-llm==0.1a8", *PINS], "ours": [str(ROOT), *PINS]}

Results = dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class Target:
    """One requirement: a ratio computed from the results, and the limit it must stay under."""

    name: str
    ratio: Callable[[Results], float | None]
    limit: float
    explain: str


def _div(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None or not bottom else top / bottom


def _vs_anchor(case: str) -> Callable[[Results], float | None]:
    return lambda results: _div(results["ours"].get(case), results["anchor"].get(case))


def _within(label: str, top: str, bottom: str) -> Callable[[Results], float | None]:
    return lambda results: _div(results[label].get(top), results[label].get(bottom))


def _prompt_overhead(case: str) -> Callable[[Results], float | None]:
    """Ours' wrapped prompt minus the raw one, in µs: what the attempt path adds to a call.

    0.1a8 handed llm's prompt through with nothing around it; each of our prompts is an
    attempt with a deadline, a ledger row, metering and telemetry, planned fallbacks and the
    hooks, so the limit is an absolute cost, held small against what a call costs in the
    provider's client library alone (about 1.4 ms of CPU against a local OpenAI-compatible
    provider: benchmarks/THROUGHPUT.md). The ratios to 0.1a8 are in the table of every case.
    """

    def overhead(results: Results) -> float | None:
        wrapped, raw = results["ours"].get(case), results["ours"].get("c.prompt.raw")
        return None if wrapped is None or raw is None else wrapped - raw

    return overhead


# The harness's smallest registry holds llm-echo's 2 models; it calls that row N=1.
TARGETS = [
    Target(
        "model(purpose), 500 models, ours / 0.1a8",
        _vs_anchor("a.model(purpose)/N=500"),
        0.05,
        "routing does not rebuild llm's registry",
    ),
    Target(
        "model(purpose), ours: 500 / 2 models",
        _within("ours", "a.model(purpose)/N=500", "a.model(purpose)/N=1"),
        1.5,
        "routing cost does not grow with installed models",
    ),
    Target(
        "models(purpose), 500 models, ours / 0.1a8",
        _vs_anchor("b.models(purpose)/N=500"),
        0.2,
        "listing reuses the registry snapshot",
    ),
    Target(
        "get_purposes(), 200 plugins, ours / 0.1a8",
        _vs_anchor("d.get_purposes/plugins=200"),
        0.05,
        "the catalog is cached",
    ),
    Target(
        "prompt, no hook: ours wrapped - raw, µs",
        _prompt_overhead("c.prompt.wrapped"),
        100.0,
        "an attempt (ledger row, metering, telemetry, planned fallbacks) costs under a tenth "
        "of a provider call's CPU in its client library",
    ),
    Target(
        "prompt, one hook: ours wrapped - raw, µs",
        _prompt_overhead("c.prompt.wrapped+1ctxhook"),
        100.0,
        "the same, with an llm_prompt_context hook entered around the attempt",
    ),
    Target(
        "model(purpose), ours: 3,000 / 10 keyed purposes",
        _within("ours", "model(purpose), 3000 keyed purposes", "model(purpose), 10 keyed purposes"),
        3.0,
        "cost does not grow with configuration",
    ),
    Target(
        "/-/llm.json, ours: 1,000 / 100 purposes",
        _within("ours", "/-/llm.json, 1000 purposes", "/-/llm.json, 100 purposes"),
        15.0,
        "the routing report is linear in purposes",
    ),
    Target(
        "/-/llm page, ours: 1,000 / 100 purposes",
        _within("ours", "/-/llm, 1000 purposes", "/-/llm, 100 purposes"),
        15.0,
        "the routing page is linear in purposes",
    ),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def python_of(label: str) -> str:
    return str(VENVS / label / "bin" / "python")


def build(label: str, requirements: list[str]) -> None:
    log(f"[build] {label}: {' '.join(requirements)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENVS / label)], check=True)
    pip = [python_of(label), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *requirements], check=True)


def run_json(command: list[str]) -> dict[str, Any]:
    """Run ``command`` from an empty directory (so no checkout shadows the installed package)."""
    with tempfile.TemporaryDirectory() as empty:
        output = subprocess.run(command, cwd=empty, check=True, stdout=subprocess.PIPE, text=True)
    data: dict[str, Any] = json.loads(output.stdout)
    return data


def measure(label: str, quick: bool) -> dict[str, float | None]:
    flags = ["--quick"] if quick else []
    harness = run_json([python_of(label), str(HARNESS), *flags])
    if not all(harness["checks"].values()):
        raise SystemExit(f"{label}: the harness's sanity checks failed: {harness['checks']}")
    growth = run_json([python_of(label), str(HERE / "growth.py"), *flags])
    return {**harness["summary"], **growth}


def run_rounds(rounds: int, quick: bool) -> Results:
    runs: dict[str, list[dict[str, float | None]]] = {label: [] for label in IMPLEMENTATIONS}
    for round_number in range(rounds):
        order = list(IMPLEMENTATIONS)
        if round_number % 2:
            order.reverse()
        for label in order:
            log(f"[round {round_number + 1}/{rounds}] {label}")
            runs[label].append(measure(label, quick))
    results: Results = {}
    for label, measured in runs.items():
        cases = dict.fromkeys(case for run in measured for case in run)
        results[label] = {}
        for case in cases:
            values = [run[case] for run in measured if run.get(case) is not None]
            results[label][case] = statistics.median(values) if values else None  # type: ignore[type-var]
    return results


def shown(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def report(results: Results, rounds: int, quick: bool) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `python3 benchmarks/run.py` (see its docstring); do not edit by hand.",
        f"{'Quick mode (smoke run). ' if quick else ''}{rounds} rounds, ABBA order; each figure "
        "is the median over the rounds of the harness's median per operation.",
        f"Python {platform.python_version()}, {platform.machine()}; pins: {', '.join(PINS)}.",
        "",
        "## Targets",
        "",
        "| target | figure | limit | why | |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for target in TARGETS:
        ratio = target.ratio(results)
        verdict = "n/a" if ratio is None else ("pass" if ratio <= target.limit else "FAIL")
        lines.append(
            f"| {target.name} | {shown(ratio, 3)} | {target.limit} | {target.explain} | {verdict} |"
        )
    lines += ["", "## Every case (µs per operation; `e.import.*` in ms)", ""]
    lines += ["| case | 0.1a8 | ours | ours / 0.1a8 |", "| --- | ---: | ---: | ---: |"]
    cases = dict.fromkeys([*results["anchor"], *results["ours"]])
    for case in cases:
        anchor, ours = results["anchor"].get(case), results["ours"].get(case)
        lines.append(
            f"| `{case}` | {shown(anchor)} | {shown(ours)} | {shown(_div(ours, anchor), 3)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    if not args.skip_build:
        for label, requirements in IMPLEMENTATIONS.items():
            build(label, requirements)
    rounds = 2 if args.quick else args.rounds
    results = run_rounds(rounds, args.quick)
    text = report(results, rounds, args.quick)
    (HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
