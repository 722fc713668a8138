"""Benchmark datasette-llm against the original 0.1a8 and write benchmarks/RESULTS.md.

Builds two venvs under ``benchmarks/.venvs/`` (``anchor``: ``datasette-llm==0.1a8``; ``ours``:
this checkout, not editable), runs the shared routing harness side by side
(``../shared/bench/bench_routing.py --compare``, ABBA rounds), ``benchmarks/scaling.py`` for
2, 50, 500 and 5,000 installed models and ``benchmarks/hook_cost.py`` (what the one-hook case's
hook costs by itself), then writes the tables. Standard library only::

    python3 benchmarks/run.py               # full mode, 6 rounds (about 25 minutes on 2 cores)
    python3 benchmarks/run.py --quick       # a smoke run; do not commit its numbers
    python3 benchmarks/run.py --skip-build  # reuse the venvs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
VENVS = HERE / ".venvs"
HARNESS = ROOT.parent / "shared" / "bench" / "bench_routing.py"
PINS = ["datasette==1.0a41", "llm==0.36", "llm-echo==0.5"]
IMPLEMENTATIONS = {"anchor": ["datasette-llm==0.1a8", *PINS], "ours": [str(ROOT), *PINS]}
SCALING_COUNTS = (2, 50, 500, 5000)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def python_of(label: str) -> Path:
    return VENVS / label / "bin" / "python"


def build(label: str, requirements: list[str]) -> None:
    """Create ``benchmarks/.venvs/<label>`` and install ``requirements`` into it."""
    log(f"[build] {label}: {' '.join(requirements)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENVS / label)], check=True)
    pip = [str(python_of(label)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *requirements], check=True)


def check_imports() -> None:
    """Fail unless ``python -c "import datasette_llm"`` here finds each venv's installed one."""
    for label in IMPLEMENTATIONS:
        venv = (VENVS / label).resolve()
        found = subprocess.run(
            [str(python_of(label)), "-c", "import datasette_llm; print(datasette_llm.__file__)"],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout.strip()
        if not Path(found).resolve().is_relative_to(venv):
            raise SystemExit(
                f"{label}: `python -c 'import datasette_llm'` imports {found}, not the package "
                f"installed in {venv}. Unset PYTHONPATH and run again."
            )
        log(f"[check] {label}: datasette_llm from {found}")


def run_compare(rounds: int, quick: bool) -> dict[str, Any]:
    out = HERE / "compare.json"
    command = [
        sys.executable,
        str(HARNESS),
        "--compare",
        str(python_of("anchor")),
        str(python_of("ours")),
        "--labels",
        "anchor,ours",
        "--rounds",
        str(rounds),
        "--out",
        str(out),
    ]
    if quick:
        command.append("--quick")
    log(f"[compare] {' '.join(command)}")
    subprocess.run(command, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def run_script(label: str, script: str, arguments: list[str], quick: bool) -> dict[str, Any]:
    """Run ``benchmarks/<script>`` with ``label``'s interpreter and return the JSON it prints."""
    command = [str(python_of(label)), str(HERE / script), "--harness", str(HARNESS), *arguments]
    if quick:
        command.append("--quick")
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def run_abba(
    stage: str, rounds: int, script: str, arguments: list[str], quick: bool
) -> dict[str, list[dict[str, Any]]]:
    """Run ``script`` once per implementation per round, alternating the order (ABBA).

    Returns each implementation's JSON outputs, one per round, in the order they ran.
    """
    outputs: dict[str, list[dict[str, Any]]] = {label: [] for label in IMPLEMENTATIONS}
    labels = list(IMPLEMENTATIONS)
    for round_index in range(rounds):
        for label in labels if round_index % 2 == 0 else labels[::-1]:
            log(f"[{stage}] round {round_index + 1}/{rounds}: {label}")
            outputs[label].append(run_script(label, script, arguments, quick))
    return outputs


def run_scaling(rounds: int, quick: bool) -> dict[str, dict[str, dict[int, float]]]:
    """Return ``{label: {"model"|"models": {N: median µs over rounds}}}``, rounds in ABBA order."""
    counts = ",".join(map(str, SCALING_COUNTS))
    outputs = run_abba("scaling", rounds, "scaling.py", ["--counts", counts], quick)
    return {
        label: {
            case: {
                int(count): statistics.median(data[case][count] for data in runs)
                for count in runs[0][case]
            }
            for case in ("model", "models")
        }
        for label, runs in outputs.items()
    }


def run_hook_cost(rounds: int, quick: bool) -> dict[str, dict[str, Any]]:
    """Run ``benchmarks/hook_cost.py`` in ``max(rounds, 3)`` processes per implementation (ABBA).

    Each process interleaves its cases in short batches, so its ratios barely feel the shared
    machine's drift; several processes show how much one process's luck (memory layout, hash
    seed) still moves them. ``median_us`` is the median over processes of each case, and
    ``ratio_vs_raw`` the median over processes of each process's own ratio, with
    ``ratio_range`` its lowest and highest.
    """
    outputs = run_abba("hook cost", max(rounds, 3), "hook_cost.py", [], quick)
    return {label: combine_hook_cost(results) for label, results in outputs.items()}


def combine_hook_cost(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine several processes' ``hook_cost.py`` JSON (see ``run_hook_cost``)."""
    cases = list(results[0]["median_us"])
    ratios = {case: [result["ratio_vs_raw"][case] for result in results] for case in cases}
    return {
        "processes": len(results),
        "median_us": {
            case: statistics.median(result["median_us"][case] for result in results)
            for case in cases
        },
        "ratio_vs_raw": {case: statistics.median(values) for case, values in ratios.items()},
        "ratio_range": {case: (min(values), max(values)) for case, values in ratios.items()},
    }


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "platform": platform.platform(),
        "load": load,
    }


def targets(compare: dict[str, Any]) -> list[tuple[str, str, float, str, bool]]:
    """Return ``(target, measured as, value, limit, passed)`` for each target of issue 6."""
    anchor = compare["runs"]["anchor"]["summary"]
    ours = compare["runs"]["ours"]["summary"]
    rows: list[tuple[str, str, float, str, bool]] = []

    def add(name: str, how: str, value: float, limit: float, text: str) -> None:
        rows.append((name, how, value, text, value <= limit))

    add(
        "model(purpose), 500 models",
        "ours / 0.1a8",
        ours["a.model(purpose)/N=500"] / anchor["a.model(purpose)/N=500"],
        1 / 20,
        "≤ 0.05",
    )
    add(
        "model(purpose), 500 vs 2 models",
        "ours N=500 / ours N=2",
        ours["a.model(purpose)/N=500"] / ours["a.model(purpose)/N=1"],
        1.5,
        "≤ 1.5",
    )
    add(
        "models(purpose), 500 models",
        "ours / 0.1a8",
        ours["b.models(purpose)/N=500"] / anchor["b.models(purpose)/N=500"],
        1 / 5,
        "≤ 0.2",
    )
    add(
        "wrapped prompt(), no hooks",
        "ours wrapped / raw llm",
        ours["c.prompt.wrapped"] / ours["c.prompt.raw"],
        1.10,
        "≤ 1.10",
    )
    add(
        "wrapped prompt(), one llm_prompt_context hook",
        "ours wrapped+hook / raw llm",
        ours["c.prompt.wrapped+1ctxhook"] / ours["c.prompt.raw"],
        1.25,
        "≤ 1.25",
    )
    add(
        "get_purposes(), 200 plugins",
        "ours / 0.1a8",
        ours["d.get_purposes/plugins=200"] / anchor["d.get_purposes/plugins=200"],
        1 / 20,
        "≤ 0.05",
    )
    add(
        "import datasette_llm over import datasette",
        "ours, ms (paired median; 0.1a8: "
        f"{anchor['e.import.datasette_llm-minus-datasette_ms']:.1f} ms)",
        ours["e.import.datasette_llm-minus-datasette_ms"],
        40,
        "≤ 40 ms",
    )
    return rows


NOISE_LIMIT = 0.05
"""How far a same-code ratio may stray from 1 before a run is called noisy."""


def noise_checks(
    compare: dict[str, Any], hook_cost: dict[str, dict[str, Any]]
) -> list[tuple[str, float]]:
    """Return ``(case, ours / anchor)`` for cases that run the same code in both venvs.

    Raw llm prompts and ``import datasette`` do not involve datasette-llm, so each ratio should
    be 1; how far it strays shows how much the shared machine disturbed this run.
    """
    anchor = compare["runs"]["anchor"]["summary"]
    ours = compare["runs"]["ours"]["summary"]
    checks = [
        (f"harness {case}", ours[case] / anchor[case])
        for case in ("c.prompt.raw", "e.import.datasette_ms", "e.import.llm_ms")
    ]
    # hook_cost.py reports ratios to a raw prompt timed alongside, so its same-code control is
    # a ratio too: the hook by hand over raw, which involves no datasette-llm.
    anchor_ratio = hook_cost["anchor"]["ratio_vs_raw"]["raw+hook"]
    ours_ratio = hook_cost["ours"]["ratio_vs_raw"]["raw+hook"]
    checks.append(("hook_cost.py raw+hook / raw", ours_ratio / anchor_ratio))
    return checks


def versions(compare: dict[str, Any], label: str) -> str:
    meta = compare["runs"][label]["meta"]
    return (
        f"datasette-llm {meta.get('datasette_llm_version')}, datasette "
        f"{meta.get('datasette_version')}, llm {meta.get('llm_version')}, llm-echo "
        f"{meta.get('llm_echo_version')}, datasette-secrets "
        f"{meta.get('datasette_secrets_version')}, "
        f"pluggy {meta.get('pluggy_version')}, Python {meta.get('python')}"
    )


def report(
    compare: dict[str, Any],
    scaling: dict[str, dict[str, dict[int, float]]],
    hook_cost: dict[str, dict[str, Any]],
    info: dict[str, str],
    rounds: int,
    quick: bool,
) -> str:
    checks_ok = {
        label: all(all(checks.values()) for checks in compare["runs"][label]["checks"])
        for label in ("anchor", "ours")
    }
    noise = noise_checks(compare, hook_cost)
    strays = [f"{case} {ratio:.3f}" for case, ratio in noise if abs(ratio - 1) > NOISE_LIMIT]
    steadiness = (
        f"NOISY, do not use these numbers (same-code ratios off by more than {NOISE_LIMIT:.0%}: "
        + "; ".join(strays)
        + ")"
        if strays
        else f"steady (every same-code ratio within {NOISE_LIMIT:.0%} of 1)"
    )
    lines = [
        "# Benchmark results",
        "",
        "Written by `python3 benchmarks/run.py`"
        + (" (QUICK MODE: smoke numbers only)" if quick else "")
        + f". Harness: `../shared/bench/bench_routing.py --compare`, {rounds} ABBA rounds, "
        + ("quick" if quick else "full")
        + " mode. Times are medians; compare ratios, not absolute times, on a shared machine.",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} memory, "
        f"{info['platform']}; load average at the end: {info['load']}",
        f"- anchor: {versions(compare, 'anchor')}",
        f"- ours: {versions(compare, 'ours')}",
        f"- Harness sanity checks passed: anchor {checks_ok['anchor']}, ours {checks_ok['ours']}",
        f"- Noise check: {steadiness}",
        "",
        "## Targets (issue 6)",
        "",
        "| target | measured as | value | limit | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for name, how, value, limit, passed in targets(compare):
        shown = f"{value:.1f}" if name.startswith("import") else f"{value:.3f}"
        lines.append(f"| {name} | {how} | {shown} | {limit} | {'pass' if passed else 'FAIL'} |")
    lines += [
        "",
        "## Scaling with the number of installed models",
        "",
        "µs per call (median of rounds), from `benchmarks/scaling.py`; 2 is llm-echo alone.",
        "",
        "| installed models | model(): 0.1a8 | model(): ours | ratio | models(): 0.1a8 "
        "| models(): ours | ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count in SCALING_COUNTS:
        cells = [f"{count:,}"]
        for case in ("model", "models"):
            anchor = scaling["anchor"][case][count]
            ours = scaling["ours"][case][count]
            cells += [f"{anchor:,.1f}", f"{ours:,.1f}", f"{ours / anchor:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## The prompt cases interleaved, and what the hook costs by itself",
        "",
        "From `benchmarks/hook_cost.py`, run in "
        f"{next(iter(hook_cost.values()))['processes']} processes per implementation (ABBA). "
        "Each process times batches of about 10 ms of every case in turn, a few hundred rounds, "
        "so each case is compared with a raw prompt timed milliseconds apart, not seconds as in "
        "the harness. µs per prompt are medians over processes; each ratio is the median over "
        "processes of that process's median ratio to its raw prompt, with the lowest and "
        "highest process in brackets. `raw+hook` runs the harness's kind of hook (a new "
        "`@asynccontextmanager` function per call) by hand around llm's raw prompt, with no "
        "datasette-llm involved. The last column is what the implementation adds on top of it.",
        "",
        "| implementation | raw | wrapped, no hook | ratio | raw+hook by hand | ratio "
        "| wrapped+hook | ratio | wrapper's share, µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(result: dict[str, Any], case: str) -> str:
        low, high = result["ratio_range"][case]
        return (
            f"{result['median_us'][case]:.1f} | {result['ratio_vs_raw'][case]:.3f} "
            f"({low:.3f} to {high:.3f})"
        )

    for label, result in hook_cost.items():
        median = result["median_us"]
        lines.append(
            f"| {label} | {median['raw']:.1f} | {cell(result, 'wrapped')} | "
            f"{cell(result, 'raw+hook')} | {cell(result, 'wrapped+hook')} | "
            f"{median['wrapped+hook'] - median['raw+hook']:.1f} |"
        )
    lines += [
        "",
        "## Noise check",
        "",
        "These cases run the same code in both venvs (raw llm, `import datasette`), so ours / "
        f"0.1a8 should be 1. A run where any strays by more than {NOISE_LIMIT:.0%} was disturbed "
        "by the shared machine: run it again rather than read its other ratios.",
        "",
        "| same-code case | ours / 0.1a8 |",
        "| --- | ---: |",
    ]
    lines += [f"| {case} | {ratio:.3f} |" for case, ratio in noise]
    lines += [
        "",
        "## Every harness case",
        "",
        "```",
        compare["table"],
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run, not for RESULTS.md")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip-build", action="store_true", help="reuse benchmarks/.venvs")
    args = parser.parse_args()
    if not HARNESS.exists():
        log(f"The harness is missing: {HARNESS}")
        return 2
    for label, requirements in IMPLEMENTATIONS.items():
        if not (args.skip_build and python_of(label).exists()):
            build(label, requirements)
    # Measure from an empty directory. The harness times ``python -c "import datasette_llm"``,
    # and ``-c`` puts the working directory first on sys.path: from the checkout, both venvs
    # would import the checkout's ``datasette_llm/`` (source files, maybe without bytecode).
    started_in = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="datasette-llm-bench-") as empty:
        os.chdir(empty)
        try:
            check_imports()
            compare = run_compare(args.rounds, args.quick)
            scaling = run_scaling(args.rounds, args.quick)
            hook_cost = run_hook_cost(args.rounds, args.quick)
        finally:
            os.chdir(started_in)
    text = report(compare, scaling, hook_cost, machine(), args.rounds, args.quick)
    (HERE / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
