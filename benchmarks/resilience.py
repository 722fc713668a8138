"""Measure resilient routing and the books against local OpenAI-compatible providers; write
RESILIENCE.md.

``python3 benchmarks/resilience.py`` orchestrates. Each provider runs in its own process
(``--serve SETTINGS``: ``tests/openai_server.py``); each scenario runs in its own process with
the interpreter of a venv from ``benchmarks/run.py`` (``--worker SPEC``): ``ours`` (this
checkout, reinstalled first unless ``--skip-install``) or ``anchor`` (``datasette-llm==0.1a8``).
A worker builds a real Datasette with datasette-llm and llm's own OpenAI plugin pointed at the
providers (``extra-openai-models.yaml`` in a temporary ``LLM_USER_PATH``), and makes every
prompt as ``await (await LLM(datasette).model(purpose="bench")).prompt(...)`` then
``await response.text()`` (streaming, llm's default), at most ``CONCURRENCY`` at once. Scenarios:

- a: a provider admitting R requests a second (429 with ``Retry-After`` beyond that), 5% of
  them answered 500; ours with ``rpm`` = 60 R on the model reference, R itself. Target: every
  prompt answers, wall <= 1.10 x N / R. 0.1a8 (no resilience settings) side by side.
- b: ``CONCURRENCY`` prompts at once against a budget worth ``BUDGET_PROMPTS`` prompts, each
  reserving ``estimate_usd`` (one prompt's cost) while in flight. Target: what the ledger
  counts as spent is at most the budget plus one prompt's estimate. 0.1a8 has no budgets.
- c: 20% of prompts cancelled at a random point (before, during and after their request, and
  mid-stream). Target: the ledger's rows = the requests the provider received.
- d: the primary answers 429 to everything (quota exhausted); a fallback on a second provider
  admits R_f a second. Target: every prompt answers through the fallback, wall <= 1.10 x N / R_f.
- e: 10% of requests dropped, answered too late (beyond the attempt ``timeout``) or cut mid-stream.
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
import random
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
RATE: Final = 50.0  # R: requests a second the provider of scenario a admits
FALLBACK_RATE: Final = 50.0  # R_f: the fallback's provider in scenario d
DEADLINE: Final = 30.0
ATTEMPT_TIMEOUT: Final = 2.0
RATIO_TARGET: Final = 1.10
ANCHOR_PROMPTS: Final = 500  # 0.1a8 builds an openai client per prompt (~30 ms of CPU each)
SMALL_PROMPTS: Final = 500  # scenarios c, d, e
BUDGET_PROMPTS: Final = 10  # scenario b's budget, in prompts
PROMPT_USD: Final = 1.0  # what one prompt costs at scenario b's price (5 output tokens)
CANCELLED: Final = 0.2  # scenario c: the share of prompts cancelled
CANCEL_WITHIN: Final = 0.4  # scenario c: a cancelled prompt is cancelled within this, seconds


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
    server = load_server()
    if "default" in settings:
        settings = {**settings, "default": server.Reply(**settings["default"])}
    with server.serve(**settings) as provider:
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
    chooser = random.Random(spec.get("seed", 0))
    loop = asyncio.get_running_loop()

    async def answer(prompt: str) -> str:
        model = await LLM(datasette).model(purpose="bench")
        response = await model.prompt(prompt)
        text: str = await response.text()
        return text

    async def one(number: int) -> None:
        prompt = f"prompt {number}"
        cancel_at = None
        if chooser.random() < spec.get("cancel", 0.0):
            cancel_at = chooser.uniform(0.0, CANCEL_WITHIN)
        async with semaphore:
            started = time.monotonic()
            outcome: dict[str, Any] = {"prompt": prompt}
            inner = asyncio.ensure_future(answer(prompt))
            if cancel_at is not None:
                loop.call_later(cancel_at, inner.cancel)
            try:
                text = await inner
                outcome["kind"] = "ok" if text == TEXT else "wrong text"
                outcome["text"] = text
            except asyncio.CancelledError:
                outcome["kind"] = "cancelled"
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
    if spec.get("books"):
        report["books"] = await books(datasette)
    report["versions"] = {
        name: importlib.metadata.version(name)
        for name in ("datasette-llm", "datasette", "llm", "openai")
    }
    return report


async def books(datasette: Any) -> dict[str, Any]:
    """What ours' ledger holds once every row is written: rows by outcome, and what they cost."""
    from datasette_llm.coordination.local import LocalCoordinator
    from datasette_llm.usage.budgets import coordinator_of, period_start, settled
    from datasette_llm.usage.ledger import flush_usage, ledger_for, read_records

    await asyncio.sleep(0.5)  # let cancelled attempts hand over their rows
    await flush_usage(datasette)
    await settled(datasette)  # every prompt's hold given back, every cost charged
    ledger = ledger_for(datasette)
    records = await read_records(ledger, None, None)
    coordinator = coordinator_of(datasette)
    assert isinstance(coordinator, LocalCoordinator)
    return {
        "rows": len(records),
        "outcomes": dict(Counter(str(record.outcome) for record in records)),
        "spent": sum(record.cost or 0.0 for record in records),
        "reserved": coordinator.reserved("bench", period_start("day", time.time())),
    }


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
        "label": label,
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


def run_all(prompts: int, small: int) -> dict[str, Any]:
    price = {"primary": {"input": 0.0, "output": PROMPT_USD / 5 * 1e6}}  # 5 output tokens
    primary_a = {"rate_limit": RATE, "server_errors": 0.05, "seed": 1}
    ours_a = {
        "retries": 4,
        "deadline": DEADLINE,
        "purposes": {"bench": {"model": {"model": "primary", "rpm": 60 * RATE}}},
    }
    anchor = {"purposes": {"bench": {"model": "primary"}}}
    budget = {"usd": BUDGET_PROMPTS * PROMPT_USD, "per": "day", "estimate_usd": PROMPT_USD}
    ours_b = {"pricing": price, "purposes": {"bench": {"model": "primary", "budget": budget}}}
    primary_b = {"latency": 0.2}
    ours_c = {"pricing": price, "purposes": {"bench": {"model": "primary"}}}
    primary_c = {"latency": 0.05, "default": {"interval": 0.03}}
    ours_d = {
        "deadline": DEADLINE,
        "purposes": {
            "bench": {
                "model": "primary",
                "fallbacks": [{"model": "fallback", "rpm": 60 * FALLBACK_RATE}],
            }
        },
    }
    faults_e = {"drops": 0.034, "timeouts": 0.033, "cuts": 0.033, "timeout_delay": 5, "seed": 4}
    ours_e = {
        "retries": 4,
        "timeout": ATTEMPT_TIMEOUT,
        "deadline": 10.0,
        "purposes": {"bench": {"model": "primary"}},
    }
    anchor_prompts = min(prompts, ANCHOR_PROMPTS)
    results: dict[str, Any] = {"prompts": prompts, "small": small, "anchor_prompts": anchor_prompts}
    log("[a] ours: rate-limited provider with 5% 500s")
    results["a"] = scenario("ours", {"primary": primary_a}, ours_a, prompts=prompts)
    log("[a] 0.1a8: the same")
    results["a_anchor"] = scenario("anchor", {"primary": primary_a}, anchor, prompts=anchor_prompts)
    log("[b] ours: 50 at once against a budget")
    results["b"] = scenario("ours", {"primary": primary_b}, ours_b, prompts=CONCURRENCY, books=True)
    log("[b] 0.1a8: the same (no budgets)")
    results["b_anchor"] = scenario("anchor", {"primary": primary_b}, anchor, prompts=CONCURRENCY)
    log("[c] ours: 20% cancelled")
    results["c"] = scenario(
        "ours", {"primary": primary_c}, ours_c, prompts=small, books=True, cancel=CANCELLED
    )
    log("[d] ours: primary out of quota, fallback rate-limited")
    providers_d: dict[str, dict[str, Any]] = {
        "primary": {"quota_exhausted": True},
        "fallback": {"rate_limit": FALLBACK_RATE},
    }
    results["d"] = scenario("ours", providers_d, ours_d, prompts=small)
    log("[e] ours: 10% drops, timeouts and cuts")
    results["e"] = scenario(
        "ours", {"primary": faults_e}, ours_e, prompts=small, count_contexts=True
    )
    results["config"] = {
        "a": ours_a,
        "b": ours_b,
        "c": ours_c,
        "d": ours_d,
        "e": ours_e,
        "providers": {"a": primary_a, "b": primary_b, "c": primary_c, "e": faults_e},
    }
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
    prompts, small = results["prompts"], results["small"]
    a, b, c, d, e = (results[name] for name in "abcde")
    ratio_a, ratio_d = a["wall"] / (prompts / RATE), d["wall"] / (small / FALLBACK_RATE)
    budget_usd = BUDGET_PROMPTS * PROMPT_USD
    spent = b["books"]["spent"]
    requests_c = c["providers"]["primary"]["requests"]
    rows_c = c["books"]["rows"]
    through_fallback = d["providers"]["fallback"]["ok"]
    contexts = e["contexts"]
    ended = all(kind.startswith("ProviderError") for kind in e["failures"]) and not e["hung"]
    within = e["longest"] <= results["config"]["e"]["deadline"] + 1.0
    return {
        "a": (
            f"wall / (N/R) = {ratio_a:.3f}",
            a["successes"] == prompts and not a["hung"] and ratio_a <= RATIO_TARGET,
        ),
        "b": (
            f"spent ${spent:.2f} of ${budget_usd:.2f}, overspend "
            f"${max(0.0, spent - budget_usd):.2f}; {b['successes']} answered, "
            f"{b['books']['rows']} rows, "
            f"${b['books']['reserved']:.2f} still reserved",
            spent <= budget_usd + PROMPT_USD and abs(b["books"]["reserved"]) < 1e-9,
        ),
        "c": (
            f"{rows_c} rows, {requests_c} requests received; {c['failures'].get('cancelled', 0)} "
            f"cancelled",
            rows_c == requests_c and not c["hung"],
        ),
        "d": (
            f"wall / (N/R_f) = {ratio_d:.3f}; {through_fallback} answered by the fallback",
            d["successes"] == small and through_fallback >= small and ratio_d <= RATIO_TARGET,
        ),
        "e": (
            f"longest prompt {shown(e['longest'])} (deadline "
            f"{shown(results['config']['e']['deadline'])}); {len(e['wrong_texts'])} wrong texts; "
            f"contexts entered {contexts['entered']} / exited {contexts['exited']} / attempts "
            f"{contexts['attempts']}, {contexts['mismatched']} prompts mismatched",
            ended and within and not e["wrong_texts"] and not contexts["mismatched"],
        ),
    }


def markdown(results: dict[str, Any], command: str) -> str:
    prompts, small, anchor_prompts = results["prompts"], results["small"], results["anchor_prompts"]
    a, b, c, d, e = (results[name] for name in "abcde")
    a_anchor, b_anchor = results["a_anchor"], results["b_anchor"]
    versions = a["versions"]
    checks = verdicts(results)
    lines = [
        "# Resilience benchmark",
        "",
        f"Reproduce: `{command}` (builds the venvs of `benchmarks/run.py` if missing, reinstalls",
        "this checkout into `ours`, then writes this file and RESILIENCE.json beside it; about",
        "4 minutes on 2 cores). One run; wall-time ratios move by a few percent between runs",
        "on a busy machine.",
        "",
        f"- Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        f"- ours: datasette-llm {versions['datasette-llm']}, datasette {versions['datasette']}, "
        f"llm {versions['llm']}, openai {versions['openai']}; 0.1a8: datasette-llm "
        f"{a_anchor['versions']['datasette-llm']}",
        f"- At most {CONCURRENCY} prompts at once; providers are `tests/openai_server.py`, each "
        "in its own process, streaming answers (llm's default)",
        f"- Prompts: a {prompts} (0.1a8: {anchor_prompts}, as it builds an openai client per "
        f"prompt, about 30 ms of CPU each); b {CONCURRENCY}; c, d, e {small} each",
        f"- R = {RATE:g} requests/s (a), R_f = {FALLBACK_RATE:g} requests/s (d); ours asks for "
        "rpm = 60 x R itself",
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

    ratio_anchor = a_anchor["wall"] / (anchor_prompts / RATE)
    spent_anchor = b_anchor["providers"]["primary"]["ok"] * PROMPT_USD
    row(
        "a: R rps, 5% 500s, 429s",
        "ours",
        a,
        f"all succeed, wall <= {RATIO_TARGET} x N/R",
        passed("a"),
    )
    row("a", "0.1a8", a_anchor, "(comparison)", f"wall / (N/R) = {ratio_anchor:.3f}")
    row("b: 50 at once, budget", "ours", b, "overspend <= one estimate", passed("b"))
    row(
        "b",
        "0.1a8",
        b_anchor,
        "(no budgets)",
        f"${spent_anchor:.2f} sent against a ${BUDGET_PROMPTS * PROMPT_USD:.2f} budget",
    )
    row("c: 20% cancelled", "ours", c, "ledger rows = requests received", passed("c"))
    row(
        "d: primary 429s all",
        "ours",
        d,
        f"all via fallback, <= {RATIO_TARGET} x N/R_f",
        passed("d"),
    )
    row("e: 10% drop/slow/cut", "ours", e, "ends in deadline, exact text", passed("e"))
    lines += ["", "What each provider did (requests, by outcome):", ""]
    for name in ("a", "a_anchor", "b", "b_anchor", "c", "d", "e"):
        for provider, counts in results[name]["providers"].items():
            done = ", ".join(f"{key} {value}" for key, value in counts.items() if value)
            label = name.replace("_anchor", ", 0.1a8")
            lines.append(f"- {label}, {provider}: {done}")
    requests_a = a["providers"]["primary"]["requests"]
    rate_a = requests_a / a["wall"]
    lines += [
        "",
        "Where the wall time goes:",
        "",
        f"- a: ours sent {requests_a} requests (the retries of the 500s included) at "
        f"{rate_a:.1f} a second against R = {RATE:g}: wall / (requests / R) = "
        f"{a['wall'] / (requests_a / RATE):.3f}, and "
        f"{a['providers']['primary'].get('rate_limited', 0)} answered 429. Prompts took "
        f"{a['median']:.2f} s at the median, {a['longest']:.2f} s at the longest.",
        f"- d: prompts took {d['median']:.2f} s at the median and {d['longest']:.2f} s at the "
        f"longest; the primary received {d['providers']['primary']['requests']} requests.",
    ]
    lines += ["", "What ours' ledger holds:", ""]
    for name in "bc":
        held = results[name]["books"]
        outcomes = ", ".join(f"{kind} {n}" for kind, n in sorted(held["outcomes"].items()))
        lines.append(f"- {name}: {held['rows']} rows ({outcomes}), spent ${held['spent']:.2f}")
    lines += ["", "Notes:", "", *NOTES]
    lines += ["", "Configuration of ours (`plugins: datasette-llm:`), and the providers:", ""]
    for name in "abcde":
        lines.append(f"- {name}: `{json.dumps(results['config'][name])}`")
    for name, settings in results["config"]["providers"].items():
        lines.append(f"- {name}'s provider: `{json.dumps(settings)}`")
    return "\n".join(lines) + "\n"


NOTES: Final = [
    "- Ours owns the openai client's HTTP behaviour (`datasette_llm/prompting/clients.py`):",
    "  its retries are off, so every request passes the `rpm` limiter and every 429 is seen",
    "  (the model cools down for its `Retry-After`), and one pooled client per endpoint and",
    "  key serves every prompt. `rpm` is therefore set to R itself, with no headroom.",
    "- The provider is a sliding one-second window; ours spaces requests evenly (one every",
    "  60 / rpm seconds), retries of the 500s included, so the ideal wall is a little over",
    "  N/R (5% more requests).",
    "- The `rpm` limiter is aiolimiter's bucket of one request, leaking one every 60 / rpm",
    "  seconds: when the event loop wakes a waiting request late, that lateness is not made up,",
    "  so the rate achieved is a little under `rpm` on a busy machine.",
    "- 0.1a8 leaves retries to the openai client (two, sleeping through `Retry-After`) and",
    "  builds a client per prompt: one process tops out near 35 prompts/s on this machine.",
    "- b: every prompt reserves `estimate_usd` while in flight and settles at its cost; the",
    "  provider answers after 200 ms, so all 50 are asked for at once.",
    "- c: a cancelled prompt is cancelled at a uniform random time within "
    f"{CANCEL_WITHIN:g} s of its",
    "  start: before its request, while the provider waits, mid-stream, or after it ended.",
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
    parser.add_argument("--small", type=int, default=SMALL_PROMPTS, help="prompts of c, d, e")
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
        results = run_all(args.prompts, args.small)
    name = "RESILIENCE.md" if results["prompts"] == 2000 else "RESILIENCE-quick.md"
    text = markdown(results, "python3 benchmarks/resilience.py")
    (HERE / name).write_text(text)
    if not args.render:
        (HERE / name).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
