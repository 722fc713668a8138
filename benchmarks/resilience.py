"""Measure resilient routing against local OpenAI-compatible providers; write RESILIENCE.md.

``python3 benchmarks/resilience.py`` orchestrates. Each provider runs in its own process
(``--serve SETTINGS``: ``tests/openai_server.py``); each scenario runs in its own process with
the interpreter of a venv from ``benchmarks/run.py`` (``--worker SPEC``): ``ours`` (this
checkout, reinstalled first unless ``--skip-install``) or ``anchor`` (``datasette-llm==0.1a8``).
A worker builds a real Datasette with datasette-llm and llm's own OpenAI plugin pointed at the
providers (``extra-openai-models.yaml`` in a temporary ``LLM_USER_PATH``), and makes every
prompt as ``await (await LLM(datasette).model(purpose="bench")).prompt(...)`` then
``await response.text()``, at most ``CONCURRENCY`` at once. Scenarios:

- a: a provider admitting R requests a second, 5% of them answered 500; ours with ``rpm``
  just under 60 R on the model reference. Target: every prompt answers, wall <= 1.15 x N / R.
- b: scenario a against 0.1a8 (no resilience settings), side by side.
- c: the primary answers 429 to everything (quota exhausted); a fallback on a second provider
  admits R_f a second. Target: every prompt answers through the fallback, wall <= 1.15 x N / R_f.
- d: 10% of requests dropped, answered too late (beyond the attempt ``timeout``) or cut mid-stream.
  Target: every prompt ends in its exact text or one ``ProviderError`` within its deadline, none
  hangs, and each attempt's ``llm_prompt_context`` is entered and exited exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
HERE: Final = ROOT / "benchmarks"
VENVS: Final = HERE / ".venvs"
SERVER: Final = ROOT / "tests" / "openai_server.py"
TEXT: Final = "hello from the local provider"
CONCURRENCY: Final = 50
RATE: Final = 20.0  # R: requests a second the provider of scenarios a and b admits
FALLBACK_RATE: Final = 20.0  # R_f: the fallback's provider in scenario c
HEADROOM: Final = 0.92  # ours asks for rpm = HEADROOM x 60 x R (room for the client's retries)
FALLBACK_HEADROOM: Final = 0.97  # the fallback of scenario c fails nothing: less room needed
DEADLINE: Final = 30.0
ATTEMPT_TIMEOUT: Final = 2.0
RATIO_TARGET: Final = 1.15


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def python_of(label: str) -> str:
    return str(VENVS / label / "bin" / "python")


# --- the provider process -------------------------------------------------------------------


def load_server() -> Any:
    """Import ``tests/openai_server.py`` from its file (the checkout must not shadow the venv)."""
    spec = importlib.util.spec_from_file_location("openai_server", SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["openai_server"] = module
    spec.loader.exec_module(module)
    return module


def serve_until_stdin_closes(settings: dict[str, Any]) -> None:
    with load_server().serve(**settings) as provider:
        print(json.dumps({"api_base": provider.api_base}), flush=True)
        sys.stdin.read()
        print(json.dumps(dataclasses.asdict(provider.counts)), flush=True)


class Upstream:
    """A provider running in its own process."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        command = [
            python_of("ours"),
            str(Path(__file__).resolve()),
            "--serve",
            json.dumps(settings),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.api_base: str = json.loads(self.process.stdout.readline())["api_base"]

    def stop(self) -> dict[str, int]:
        """Stop the provider; return what it did."""
        counts, _ = self.process.communicate("", timeout=30)
        tally: dict[str, int] = json.loads(counts)
        return tally


# --- the scenario process -------------------------------------------------------------------


async def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    logging.disable(logging.WARNING)  # stamina logs every retry it schedules
    user_dir = tempfile.mkdtemp()
    os.environ["LLM_USER_PATH"] = user_dir
    os.environ.setdefault("OPENAI_API_KEY", "sk-local-benchmark")
    entries = [
        {"model_id": name, "model_name": f"{name}-upstream", "api_base": base}
        for name, base in spec["models"].items()
    ]
    Path(user_dir, "extra-openai-models.yaml").write_text(json.dumps(entries))
    from datasette.app import Datasette

    from datasette_llm import LLM

    datasette = Datasette(memory=True, config={"plugins": {"datasette-llm": spec["config"]}})
    await datasette.invoke_startup()
    contexts = contexts_plugin()
    if spec.get("count_contexts"):
        from datasette.plugins import pm

        pm.register(contexts, name="resilience-benchmark-contexts")
    semaphore = asyncio.Semaphore(CONCURRENCY)
    outcomes: list[dict[str, Any]] = []

    async def one(number: int) -> None:
        prompt = f"prompt {number}"
        async with semaphore:
            started = time.monotonic()
            outcome: dict[str, Any] = {"prompt": prompt}
            try:
                model = await LLM(datasette).model(purpose="bench")
                response = await model.prompt(prompt)
                text = await response.text()
                outcome["kind"] = "ok" if text == TEXT else "wrong text"
                outcome["text"] = text
            except Exception as error:
                kind = getattr(error, "kind", None)
                outcome["kind"] = f"ProviderError {kind}" if kind else type(error).__name__
                attempts = getattr(error, "attempts", None)
                if attempts is not None:
                    outcome["attempts"] = len(attempts)
            outcome["duration"] = time.monotonic() - started
            outcomes.append(outcome)

    started = time.monotonic()
    tasks = [asyncio.ensure_future(one(number)) for number in range(spec["prompts"])]
    _, pending = await asyncio.wait(tasks, timeout=spec["overall_timeout"])
    wall = time.monotonic() - started
    for task in pending:
        task.cancel()
    report = summarise(outcomes, len(pending), wall)
    if spec.get("count_contexts"):
        report["contexts"] = contexts.check(outcomes)
    report["versions"] = {
        name: importlib.metadata.version(name)
        for name in ("datasette-llm", "datasette", "llm", "openai")
    }
    return report


def summarise(outcomes: list[dict[str, Any]], hung: int, wall: float) -> dict[str, Any]:
    kinds = Counter(outcome["kind"] for outcome in outcomes)
    durations = sorted(outcome["duration"] for outcome in outcomes) or [0.0]
    wrong = [outcome["text"] for outcome in outcomes if outcome["kind"] == "wrong text"]
    return {
        "successes": kinds.pop("ok", 0),
        "failures": dict(kinds),
        "hung": hung,
        "wall": wall,
        "longest": durations[-1],
        "median": durations[len(durations) // 2],
        "wrong_texts": wrong[:5],
    }


def contexts_plugin() -> Any:
    """Return a plugin counting, per prompt, the ``llm_prompt_context`` entries and exits."""
    from contextlib import asynccontextmanager

    from datasette import hookimpl

    class Contexts:
        def __init__(self) -> None:
            self.entered: Counter[str] = Counter()
            self.exited: Counter[str] = Counter()
            self.results: dict[str, Any] = {}

        @hookimpl
        def llm_prompt_context(self, model_id: str, prompt: str, purpose: str | None) -> Any:
            @asynccontextmanager
            async def around(result: Any) -> Any:
                self.entered[prompt] += 1
                self.results[prompt] = result
                try:
                    yield
                finally:
                    self.exited[prompt] += 1

            return around

        def check(self, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
            """Compare each prompt's entries and exits with the attempts it made."""
            mismatched = []
            attempts_total = 0
            for outcome in outcomes:
                prompt = outcome["prompt"]
                result = self.results.get(prompt)
                attempts = outcome.get("attempts")
                if attempts is None:
                    attempts = len(result.attempts) if result is not None else 0
                attempts_total += attempts
                seen = (self.entered[prompt], self.exited[prompt])
                if seen != (attempts, attempts):
                    mismatched.append(f"{prompt}: {attempts} attempts, entered/exited {seen}")
            return {
                "attempts": attempts_total,
                "entered": sum(self.entered.values()),
                "exited": sum(self.exited.values()),
                "mismatched": len(mismatched),
                "examples": mismatched[:5],
            }

    return Contexts()


# --- orchestration --------------------------------------------------------------------------


def scenario(
    label: str, providers: dict[str, dict[str, Any]], config: dict[str, Any], **options: Any
) -> dict[str, Any]:
    """Run one scenario: its providers in their processes, its prompts in ``label``'s venv."""
    upstreams = {name: Upstream(settings) for name, settings in providers.items()}
    spec = {
        "models": {name: upstream.api_base for name, upstream in upstreams.items()},
        "config": config,
        "prompts": options.pop("prompts"),
        "overall_timeout": options.pop("overall_timeout", 600),
        **options,
    }
    command = [python_of(label), str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        with tempfile.TemporaryDirectory() as empty:  # no checkout to shadow the installed one
            output = subprocess.run(command, cwd=empty, stdout=subprocess.PIPE, text=True)
        report: dict[str, Any] = json.loads(output.stdout)
    finally:
        report_counts = {name: upstream.stop() for name, upstream in upstreams.items()}
    report["providers"] = report_counts
    return report


def run_all(prompts: int) -> dict[str, Any]:
    rpm = round(HEADROOM * 60 * RATE, 1)
    primary_a = {"rate_limit": RATE, "server_errors": 0.05, "seed": 1}
    ours_a = {
        "retries": 4,
        "deadline": DEADLINE,
        "purposes": {"bench": {"model": {"model": "primary", "rpm": rpm}}},
    }
    anchor_a = {"purposes": {"bench": {"model": "primary"}}}
    fallback_rpm = round(FALLBACK_HEADROOM * 60 * FALLBACK_RATE, 1)
    ours_c = {
        "deadline": DEADLINE,
        "purposes": {
            "bench": {
                "model": "primary",
                "fallbacks": [{"model": "fallback", "rpm": fallback_rpm}],
            }
        },
    }
    faults_d = {"drops": 0.034, "timeouts": 0.033, "cuts": 0.033, "timeout_delay": 5, "seed": 4}
    ours_d = {
        "retries": 4,
        "timeout": ATTEMPT_TIMEOUT,
        "deadline": 10.0,
        "purposes": {"bench": {"model": "primary"}},
    }
    results: dict[str, Any] = {"prompts": prompts}
    log("[a] ours: rate-limited provider with 5% 500s")
    results["a"] = scenario("ours", {"primary": primary_a}, ours_a, prompts=prompts)
    log("[b] 0.1a8: the same")
    results["b"] = scenario("anchor", {"primary": primary_a}, anchor_a, prompts=prompts)
    log("[c] ours: primary out of quota, fallback rate-limited")
    providers_c: dict[str, dict[str, Any]] = {
        "primary": {"quota_exhausted": True},
        "fallback": {"rate_limit": FALLBACK_RATE},
    }
    results["c"] = scenario("ours", providers_c, ours_c, prompts=prompts)
    log("[d] ours: 10% drops, timeouts and cuts")
    results["d"] = scenario(
        "ours", {"primary": faults_d}, ours_d, prompts=prompts, count_contexts=True
    )
    results["config"] = {"a": ours_a, "c": ours_c, "d": ours_d, "faults_d": faults_d}
    return results


def shown(seconds: float) -> str:
    return f"{seconds:.1f} s"


def failures(report: dict[str, Any]) -> str:
    failed = dict(report["failures"])
    if report["hung"]:
        failed["hung"] = report["hung"]
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(failed.items())) or "none"


def verdicts(results: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Return, per scenario, the measured figure and whether it meets its target."""
    prompts = results["prompts"]
    a, c, d = results["a"], results["c"], results["d"]
    ideal_a, ideal_c = prompts / RATE, prompts / FALLBACK_RATE
    ratio_a, ratio_c = a["wall"] / ideal_a, c["wall"] / ideal_c
    through_fallback = c["providers"]["fallback"]["ok"]
    contexts = d["contexts"]
    ended = all(kind.startswith("ProviderError") for kind in d["failures"]) and not d["hung"]
    within = d["longest"] <= results["config"]["d"]["deadline"] + 1.0
    return {
        "a": (f"wall / (N/R) = {ratio_a:.3f}", a["successes"] == prompts and ratio_a <= 1.15),
        "c": (
            f"wall / (N/R_f) = {ratio_c:.3f}; {through_fallback} answered by the fallback",
            c["successes"] == prompts and through_fallback >= prompts and ratio_c <= 1.15,
        ),
        "d": (
            f"longest prompt {shown(d['longest'])} (deadline "
            f"{shown(results['config']['d']['deadline'])}); {len(d['wrong_texts'])} wrong texts; "
            f"contexts entered {contexts['entered']} / exited {contexts['exited']} / attempts "
            f"{contexts['attempts']}, {contexts['mismatched']} prompts mismatched",
            ended and within and not d["wrong_texts"] and not contexts["mismatched"],
        ),
    }


def markdown(results: dict[str, Any], command: str) -> str:
    prompts = results["prompts"]
    a, b, c, d = (results[name] for name in "abcd")
    versions = a["versions"]
    checks = verdicts(results)
    lines = [
        "# Resilience benchmark",
        "",
        f"Reproduce: `{command}` (builds the venvs of `benchmarks/run.py` if missing, reinstalls",
        "this checkout into `ours`, then writes this file). One run; the ratios are from that run",
        "and move by a few percent between runs on a busy machine.",
        "",
        f"- Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        f"- ours: datasette-llm {versions['datasette-llm']}, datasette {versions['datasette']}, "
        f"llm {versions['llm']}, openai {versions['openai']}; anchor: datasette-llm "
        f"{b['versions']['datasette-llm']}",
        f"- {prompts} prompts per scenario, at most {CONCURRENCY} at once; providers are "
        "`tests/openai_server.py`, each in its own process, streaming answers (llm's default)",
        f"- R = {RATE:g} requests/s (scenarios a, b), R_f = {FALLBACK_RATE:g} requests/s (c); "
        f"ours asks for rpm = {HEADROOM} x 60 x R",
        "",
        "| scenario | implementation | successes | failures by kind | wall | target | result |",
        "| --- | --- | ---: | --- | ---: | --- | --- |",
    ]

    def row(name: str, label: str, report: dict[str, Any], target: str, verdict: str) -> None:
        lines.append(
            f"| {name} | {label} | {report['successes']} | {failures(report)} | "
            f"{shown(report['wall'])} | {target} | {verdict} |"
        )

    def passed(name: str) -> str:
        figure, ok = checks[name]
        return f"{'pass' if ok else 'FAIL'}: {figure}"

    ratio_b = b["wall"] / (prompts / RATE)
    row("a: R rps, 5% 500s", "ours", a, f"all succeed, wall <= 1.15 x {prompts}/R", passed("a"))
    row("b: same as a", "0.1a8", b, "(comparison)", f"wall / (N/R) = {ratio_b:.3f}")
    row("c: primary 429s all", "ours", c, "all via fallback, <= 1.15 x N/R_f", passed("c"))
    row("d: 10% drop/slow/cut", "ours", d, "ends in deadline, exact text", passed("d"))
    lines += ["", "What each provider did (requests, by outcome):", ""]
    for name in "abcd":
        for provider, counts in results[name]["providers"].items():
            done = ", ".join(f"{key} {value}" for key, value in counts.items() if value)
            lines.append(f"- {name}, {provider}: {done}")
    lines += ["", "Notes:", "", *NOTES]
    lines += ["", "Configuration of ours (`plugins: datasette-llm:`):", ""]
    for name in "acd":
        lines.append(f"- {name}: `{json.dumps(results['config'][name])}`")
    lines.append(f"- d's faults: `{json.dumps(results['config']['faults_d'])}`")
    return "\n".join(lines) + "\n"


NOTES: Final = [
    "- One worker process makes every prompt; on this 2-core machine it tops out near 34",
    "  prompts/s (llm builds an openai client per prompt), so R is kept well below that: the",
    "  wall time then measures routing against the provider's limit, not the client's CPU.",
    "- The provider is a sliding one-second window; ours spaces requests evenly (one every",
    "  60 / rpm seconds). The openai client's own retries of 500s happen inside one attempt and",
    "  do not pass the limiter, so ours asks for a little less than R to leave them room.",
]


def ensure_venvs(skip_install: bool) -> None:
    sys.path.insert(0, str(HERE))
    import run  # benchmarks/run.py: the venvs and their pins

    for label, requirements in run.IMPLEMENTATIONS.items():
        if not Path(python_of(label)).exists():
            run.build(label, requirements)
    if not skip_install:
        log("[install] this checkout into the ours venv")
        pip = [python_of("ours"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--force-reinstall", "--no-deps", str(ROOT)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--render", metavar="JSON", help="only write the table from a run's JSON")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_until_stdin_closes(json.loads(args.serve))
        return 0
    if args.worker:
        print(json.dumps(asyncio.run(run_worker(json.loads(args.worker)))))
        return 0
    if args.render:  # the table again from a run's JSON, without running it
        results = json.loads(Path(args.render).read_text())
    else:
        ensure_venvs(args.skip_install)
        results = run_all(args.prompts)
    name = "RESILIENCE.md" if results["prompts"] == 2000 else "RESILIENCE-quick.md"
    text = markdown(results, "python3 benchmarks/resilience.py")
    (HERE / name).write_text(text)
    if not args.render:
        (HERE / name).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
