"""Measure prompts per second and CPU per prompt through one process; write THROUGHPUT.md.

``python3 benchmarks/throughput.py`` orchestrates, with the processes of
``benchmarks/resilience.py``: the provider (``tests/openai_server.py``, answering at once, no
faults) runs in its own process, so its CPU is not counted; each series runs in its own worker
process (``--worker SPEC``) with the interpreter of a venv of ``benchmarks/run.py``, and makes
its prompts through llm's own OpenAI plugin, ``CONCURRENCY`` at once, streaming and not:

- ``bare llm``: ``llm.get_async_model(...).prompt(...)`` directly; llm builds an
  ``openai.AsyncOpenAI`` client for every prompt.
- ``bare llm, reused client``: the same, with llm's ``get_client`` patched in the worker to
  build one client per endpoint and key and hand it back every time (the fair comparison).
- ``0.1a8`` and ``0.1a8, reused client``: ``datasette-llm==0.1a8``,
  ``await LLM(datasette).model(purpose=...)`` then ``prompt()``, without and with that patch.
- ``today``: the same through datasette-llm as it was before it pooled its clients (the
  commit ``TODAY``, from this repository's history, in the ``today`` venv): the figure the
  issue's "ten times today's prompts per second" is measured against, the same on every
  machine.
- ``ours``: this checkout (reinstalled into ``ours`` first unless ``--skip-install``), which
  pools the clients itself; and ``ours`` with parts switched off to see where its CPU goes:
  the usage ledger (``usage: {enabled: false}``), OpenTelemetry (``telemetry.observe`` replaced
  by a no-op in the worker), stamina (``stamina.set_active(False)``), and all three.

Each prompt is ``await response.text()`` of a ``prompt(..., stream=...)``. A worker makes
``WARM_UP`` prompts first, then times its prompts with ``time.perf_counter`` (wall) and
``time.process_time`` (CPU of every thread of the process, Datasette's write thread included,
until the ledger has written every row); it also times the garbage collector's passes
(``gc.callbacks``). ``ours`` and ``bare llm, reused client`` run three times (first, in the
middle, last): the CPU targets take the median, and the spread shows how far a figure moves
within one run. The speed target (ours against ``today``) is judged on ``SPEED_ROUNDS`` rounds
of today, ours and bare llm run one after another: the median of each round's ratio.
The heap rounds (``HEAP_SERIES``) ask how much of ours' extra time is the process it runs in:
bare llm beside a started Datasette, and ``gc.freeze()`` after the warm-up.
``--profile`` adds one cProfile run of each of ``ours`` and ``bare llm, reused client``.
``--render JSON`` writes THROUGHPUT.md again from a run's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import logging
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
HERE: Final = ROOT / "benchmarks"
TEXT: Final = "hello from the local provider"
CONCURRENCY: Final = 50
PROMPTS: Final = 2000
PROMPTS_CLIENT_PER_PROMPT: Final = 500  # each builds a client (~30 ms of CPU): fewer prompts
PROFILED: Final = 1000
WARM_UP: Final = 2 * CONCURRENCY  # every connection of the pool is open before timing
CPU_TARGET: Final = 1.2
SPEED_TARGET: Final = 10.0
TODAY: Final = "2ee3d6c438c275de84d7fdfe170d9128a8158f81"
"""The last commit before datasette-llm pooled its clients (the next one, db687f1, did)."""

sys.path.insert(0, str(HERE))
import resilience  # noqa: E402  the provider process, the venvs
import run  # noqa: E402  the venvs and their pins


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the worker process ---------------------------------------------------------------------


def reuse_clients() -> None:
    """Make llm's OpenAI models build one async client per endpoint and key, then reuse it."""
    from llm.default_plugins.openai_models import AsyncChat

    built = AsyncChat.get_client
    clients: dict[tuple[object, ...], object] = {}

    def get_client(self: Any, key: Any = None, *, async_: bool = False) -> object:
        if not async_:
            return built(self, key, async_=False)
        identity = (self.api_base, self.get_key(key) if self.needs_key else None)
        client = clients.get(identity)
        if client is None:
            client = clients[identity] = built(self, key, async_=True)
        return client

    AsyncChat.get_client = get_client  # type: ignore[method-assign]


def switch_off(parts: list[str]) -> None:
    """Switch off parts of ours in this process (the ledger is switched off in its config)."""
    if "telemetry" in parts:
        from datasette_llm.usage import telemetry

        telemetry.observe = lambda *args, **kwargs: None  # type: ignore[assignment]
    if "stamina" in parts:
        import stamina

        stamina.set_active(False)


class GcTimer:
    """Time every pass of the garbage collector."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.passes = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.passes += 1


async def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    logging.disable(logging.WARNING)
    user_dir = tempfile.mkdtemp()
    os.environ["LLM_USER_PATH"] = user_dir
    os.environ["OPENAI_API_KEY"] = "sk-local-benchmark"
    entry = {"model_id": "primary", "model_name": "primary-upstream", "api_base": spec["api_base"]}
    Path(user_dir, "extra-openai-models.yaml").write_text(json.dumps([entry]))
    import llm

    if spec["reuse"]:
        reuse_clients()
    stream: bool = spec["stream"]
    if spec["routed"]:
        from datasette.app import Datasette

        from datasette_llm import LLM

        switch_off(spec["off"])
        plugin_config: dict[str, Any] = {"purposes": {"bench": {"model": "primary"}}}
        if "ledger" in spec["off"]:
            plugin_config["usage"] = {"enabled": False}
        datasette = Datasette(memory=True, config={"plugins": {"datasette-llm": plugin_config}})
        await datasette.invoke_startup()

        async def one(prompt: str) -> str:
            model = await LLM(datasette).model(purpose="bench")
            response = await model.prompt(prompt, stream=stream)
            text: str = await response.text()
            return text

    else:
        if spec.get("beside"):
            # Bare llm in a process holding what ours' holds: a started Datasette with this
            # plugin, the purpose's model resolved (not prompted: its pool would adapt the
            # model llm hands bare llm too).
            from datasette.app import Datasette

            from datasette_llm import LLM

            plugin_config = {"purposes": {"bench": {"model": "primary"}}}
            datasette = Datasette(memory=True, config={"plugins": {"datasette-llm": plugin_config}})
            await datasette.invoke_startup()
            await LLM(datasette).model(purpose="bench")
        bare = llm.get_async_model("primary")

        async def one(prompt: str) -> str:
            return await bare.prompt(prompt, stream=stream).text()

    async def drain() -> None:
        if not spec["routed"] or "ledger" in spec["off"]:
            return
        try:
            from datasette_llm.usage.ledger import flush_usage
        except ImportError:
            return  # 0.1a8 keeps no ledger
        await flush_usage(datasette)

    wrong: list[str] = []

    async def worker(numbers: list[int]) -> None:
        while numbers:
            text = await one(f"prompt {numbers.pop()}")
            if text != TEXT:
                wrong.append(text)

    async def prompts(count: int) -> None:
        numbers = list(range(count))
        await asyncio.gather(*(worker(numbers) for _ in range(CONCURRENCY)))
        await drain()

    await prompts(spec.get("warm_up", WARM_UP))
    gc.collect()
    if spec.get("freeze"):
        gc.freeze()  # what start-up and warm-up made, out of every later collection
    timer = GcTimer()
    gc.callbacks.append(timer)
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    await prompts(spec["prompts"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
    gc.callbacks.remove(timer)
    report: dict[str, Any] = {
        "prompts": spec["prompts"],
        "wall": wall,
        "cpu": cpu,
        "gc": timer.seconds,
        "gc_passes": timer.passes,
        "wrong": len(wrong),
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("datasette-llm", "datasette", "llm", "openai", "httpx")
            if _installed(name)
        },
    }
    if profiler is not None:
        report["profile"] = profile_summary(pstats.Stats(profiler), spec["prompts"])
    return report


BREAKDOWN: Final = (
    "bare llm, reused client",
    "ours",
    "ours, ledger off",
    "ours, telemetry off",
    "ours, stamina off",
    "ours, all three off",
)
BLOCK: Final = 250
ROUNDS: Final = 4


async def run_breakdown(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleave blocks of every ``BREAKDOWN`` series in this one process, in rotating order, so
    that the machine's drift weighs on each alike; return each block's CPU and GC time."""
    logging.disable(logging.WARNING)
    user_dir = tempfile.mkdtemp()
    os.environ["LLM_USER_PATH"] = user_dir
    os.environ["OPENAI_API_KEY"] = "sk-local-benchmark"
    entry = {"model_id": "primary", "model_name": "primary-upstream", "api_base": spec["api_base"]}
    Path(user_dir, "extra-openai-models.yaml").write_text(json.dumps([entry]))
    import llm
    import stamina
    from datasette.app import Datasette

    from datasette_llm import LLM
    from datasette_llm.usage import telemetry
    from datasette_llm.usage.ledger import flush_usage

    stream: bool = spec["stream"]
    purposes = {"purposes": {"bench": {"model": "primary"}}}
    on = Datasette(memory=True, config={"plugins": {"datasette-llm": purposes}})
    off = Datasette(
        memory=True,
        config={"plugins": {"datasette-llm": {**purposes, "usage": {"enabled": False}}}},
    )
    await on.invoke_startup()
    await off.invoke_startup()
    bare = llm.get_async_model("primary")
    reused = type(bare).get_client(bare, None, async_=True)
    bare.get_client = lambda key=None, *, async_=False: reused  # type: ignore[method-assign]
    observe = telemetry.observe

    def routed(datasette: Any) -> Any:
        async def one(prompt: str) -> str:
            model = await LLM(datasette).model(purpose="bench")
            response = await model.prompt(prompt, stream=stream)
            text: str = await response.text()
            return text

        return one

    async def bare_one(prompt: str) -> str:
        return await bare.prompt(prompt, stream=stream).text()

    def switched(label: str) -> None:
        quiet = "telemetry" in label or "all three" in label
        telemetry.observe = (lambda *args, **kwargs: None) if quiet else observe  # type: ignore[assignment]
        stamina.set_active(not ("stamina" in label or "all three" in label))

    wrong = 0

    async def block(label: str, count: int) -> tuple[float, float, float]:
        nonlocal wrong
        switched(label)
        datasette = off if ("ledger" in label or "all three" in label) else on
        one = bare_one if label.startswith("bare") else routed(datasette)
        numbers = list(range(count))

        async def worker() -> None:
            nonlocal wrong
            while numbers:
                wrong += await one(f"prompt {numbers.pop()}") != TEXT

        timer = GcTimer()
        gc.callbacks.append(timer)
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        if datasette is on and not label.startswith("bare"):
            await flush_usage(on)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gc.callbacks.remove(timer)
        return wall, cpu, timer.seconds

    for label in BREAKDOWN:
        await block(label, WARM_UP)
    blocks: dict[str, list[tuple[float, float, float]]] = {label: [] for label in BREAKDOWN}
    for number in range(spec["rounds"]):
        shift = number % len(BREAKDOWN)
        for label in BREAKDOWN[shift:] + BREAKDOWN[:shift]:
            blocks[label].append(await block(label, spec["block"]))
    switched("ours")
    return {"stream": stream, "block": spec["block"], "blocks": blocks, "wrong": wrong}


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def area(filename: str) -> str:
    """Where a profiled function lives: a module of datasette_llm, else a library."""
    path = filename.replace("\\", "/")
    if "/datasette_llm/" in path:
        return "datasette_llm/" + path.split("/datasette_llm/", 1)[1]
    for library in ("stamina", "opentelemetry", "openai", "httpx", "httpcore", "h11", "anyio"):
        if f"/{library}/" in path or f"/{library}2/" in path:
            return library
    for library in ("llm", "datasette", "pluggy", "pydantic", "asyncio", "aiolimiter"):
        if f"/{library}/" in path:
            return library
    if path.startswith("~") or path.startswith("<"):
        return "built-ins"
    return "other Python"


# Where a prompt of ours spends its time: (file's path ends with, function, what it is).
ENTRIES: Final = (
    ("datasette_llm/prompting/client.py", "model", "`LLM(datasette).model(purpose=...)`: routing"),
    ("datasette_llm/prompting/send.py", "send", "`prompt()`: hooks, attempts, the response"),
    ("datasette_llm/prompting/attempts.py", "_tries", "one model's tries in stamina's context"),
    ("datasette_llm/prompting/clients.py", "__call__", "the pooled client with the timeout"),
    ("datasette_llm/prompting/metering.py", "_make", "an attempt's record, span and row"),
    ("datasette_llm/usage/telemetry.py", "observe", "its span and histograms"),
    ("datasette_llm/usage/ledger.py", "record", "its ledger row, queued"),
    ("uuid.py", "uuid4", "the record's id"),
)


def profile_summary(stats: pstats.Stats, prompts: int) -> dict[str, Any]:
    """Own time (µs per prompt) by area, the datasette_llm functions costing the most, and the
    cumulative time of ``ENTRIES``."""
    by_area: dict[str, float] = {}
    functions: list[tuple[float, float, str]] = []
    entries: dict[str, float] = {}
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        own, cumulative = row[2], row[3]
        for suffix, function, label in ENTRIES:
            if filename.endswith(suffix) and name == function:
                entries[label] = max(entries.get(label, 0.0), cumulative * 1e6 / prompts)
        where = area(filename)
        by_area[where] = by_area.get(where, 0.0) + own
        if where.startswith("datasette_llm/"):
            functions.append((own, cumulative, f"{where}:{line} {name}"))
    per = 1e6 / prompts
    top = sorted(functions, reverse=True)[:15]
    return {
        "areas": {where: own * per for where, own in sorted(by_area.items(), key=lambda i: -i[1])},
        "functions": [
            {"function": label, "own": own * per, "cumulative": cumulative * per}
            for own, cumulative, label in top
        ],
        "entries": entries,
    }


# --- orchestration --------------------------------------------------------------------------

# label, venv, routed, reused client, parts switched off, prompts
SERIES: Final[list[tuple[str, str, bool, bool, list[str], int]]] = [
    ("bare llm, reused client", "ours", False, True, [], PROMPTS),
    ("ours", "ours", True, False, [], PROMPTS),
    ("bare llm", "ours", False, False, [], PROMPTS_CLIENT_PER_PROMPT),
    ("0.1a8", "anchor", True, False, [], PROMPTS_CLIENT_PER_PROMPT),
    ("today", "today", True, False, [], PROMPTS_CLIENT_PER_PROMPT),
    ("0.1a8, reused client", "anchor", True, True, [], PROMPTS),
    ("ours", "ours", True, False, [], PROMPTS),
    ("bare llm, reused client", "ours", False, True, [], PROMPTS),
    ("ours, ledger off", "ours", True, False, ["ledger"], PROMPTS),
    ("ours, telemetry off", "ours", True, False, ["telemetry"], PROMPTS),
    ("ours, stamina off", "ours", True, False, ["stamina"], PROMPTS),
    ("ours, all three off", "ours", True, False, ["ledger", "telemetry", "stamina"], PROMPTS),
    ("ours", "ours", True, False, [], PROMPTS),
    ("bare llm, reused client", "ours", False, True, [], PROMPTS),
]


def provider_cpu(pid: int) -> float:
    """CPU seconds the provider process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(venv: str, spec: dict[str, Any], scale: float) -> dict[str, Any]:
    """Run one series in its own worker process against a provider of its own."""
    upstream = resilience.Upstream({})
    spec = {
        **spec,
        "api_base": upstream.api_base,
        "prompts": max(1, round(spec["prompts"] * scale)),
    }
    command = [run.python_of(venv), str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        before = provider_cpu(upstream.process.pid)
        with tempfile.TemporaryDirectory() as empty:  # no checkout to shadow the installed one
            output = subprocess.run(
                command, cwd=empty, check=True, stdout=subprocess.PIPE, text=True
            )
        report: dict[str, Any] = json.loads(output.stdout)
        report["provider_cpu"] = provider_cpu(upstream.process.pid) - before
    finally:
        report_counts = upstream.stop()
    report["provider"] = report_counts
    return report


def run_breakdowns(scale: float) -> list[dict[str, Any]]:
    """Run the interleaved breakdown, not streaming then streaming, each in its own process."""
    found = []
    for stream in (False, True):
        upstream = resilience.Upstream({})
        spec = {
            "api_base": upstream.api_base,
            "stream": stream,
            "block": max(1, round(BLOCK * scale)),
            "rounds": ROUNDS,
        }
        command = [
            run.python_of("ours"),
            str(Path(__file__).resolve()),
            "--breakdown",
            json.dumps(spec),
        ]
        log(f"[breakdown] {'streaming' if stream else 'not streaming'}")
        try:
            with tempfile.TemporaryDirectory() as empty:
                output = subprocess.run(
                    command, cwd=empty, check=True, stdout=subprocess.PIPE, text=True
                )
        finally:
            upstream.stop()
        found.append(json.loads(output.stdout))
    return found


SPEED_ROUNDS: Final = 5
TRIO: Final = (
    ("today", "today", True, False, PROMPTS_CLIENT_PER_PROMPT),
    ("ours", "ours", True, False, PROMPTS),
    ("bare llm, reused client", "ours", False, True, PROMPTS),
)
"""The series of the speed target: each round runs the three, one process after another."""


def run_speed_rounds(scale: float) -> list[dict[str, Any]]:
    """Run ``TRIO`` ``SPEED_ROUNDS`` times per streaming mode, the order rotated each round.

    The three series of one round run within a minute of each other, so the speed target is
    taken round by round (ours' prompts/s over today's in the same round) and the median of
    those ratios judged: the machine's drift over the whole run, which moves one series by tens
    of per cent, weighs on both sides of each ratio alike.
    """
    rounds = []
    for stream in (False, True):
        for number in range(SPEED_ROUNDS):
            order = TRIO[number % len(TRIO) :] + TRIO[: number % len(TRIO)]
            found = {}
            for label, venv, routed, reuse, prompts in order:
                spec = {"routed": routed, "reuse": reuse, "off": [], "stream": stream}
                log(f"[speed round {number + 1}] {label}, {'streaming' if stream else 'not'}")
                report = measure(venv, {**spec, "prompts": prompts}, scale)
                found[label] = {key: report[key] for key in ("prompts", "wall", "cpu", "wrong")}
            rounds.append({"stream": stream, "round": number + 1, "series": found})
    return rounds


# label, routed, beside a Datasette, gc.freeze() after the warm-up
HEAP_SERIES: Final = (
    ("bare llm, reused client", False, False, False),
    ("bare llm, reused client, beside a Datasette", False, True, False),
    ("ours", True, False, False),
    ("bare llm, reused client, beside a Datasette, frozen", False, True, True),
    ("ours, frozen", True, False, True),
)
"""The series of the heap rounds: how much of ours' extra time is the process it runs in."""
HEAP_ROUNDS: Final = 3


def run_heap_rounds(scale: float) -> list[dict[str, Any]]:
    """Run ``HEAP_SERIES`` ``HEAP_ROUNDS`` times per streaming mode, the order rotated each
    round (every series with a reused client, each in its own process)."""
    rounds = []
    for stream in (False, True):
        for number in range(HEAP_ROUNDS):
            order = (
                HEAP_SERIES[number % len(HEAP_SERIES) :] + HEAP_SERIES[: number % len(HEAP_SERIES)]
            )
            found = {}
            for label, routed, beside, freeze in order:
                spec = {
                    "routed": routed,
                    "reuse": not routed,
                    "off": [],
                    "stream": stream,
                    "beside": beside,
                    "freeze": freeze,
                    "prompts": PROMPTS,
                }
                log(f"[heap round {number + 1}] {label}, {'streaming' if stream else 'not'}")
                report = measure("ours", spec, scale)
                found[label] = {
                    key: report[key] for key in ("prompts", "wall", "cpu", "gc", "wrong")
                }
            rounds.append({"stream": stream, "round": number + 1, "series": found})
    return rounds


def round_ratio(found: dict[str, Any], label: str) -> float:
    """``label``'s prompts/s over today's in one speed round."""
    series = found["series"]
    return figures({**series[label], "gc": 0})[0] / figures({**series["today"], "gc": 0})[0]


def run_profiles(scale: float) -> dict[str, Any]:
    """One cProfile run each of bare llm with a reused client and ours, not streaming."""
    profiles = {}
    for label, routed in (("bare llm, reused client", False), ("ours", True)):
        spec = {"routed": routed, "reuse": not routed, "off": [], "stream": False}
        log(f"[profile] {label}")
        profiles[label] = measure("ours", {**spec, "prompts": PROFILED, "profile": True}, scale)
    return profiles


INSTRUCTION_SERIES: Final = (
    # label, venv, routed, reuse, prompts of the shorter run, of the longer run
    ("today", "today", True, False, 20, 80),
    ("ours", "ours", True, False, 100, 500),
    ("bare llm, reused client", "ours", False, True, 100, 500),
)
"""The series counted by callgrind; a client built for every prompt costs far more: fewer prompts.
0.1a8 is left out: under callgrind's slowdown its client's connections time out."""
INSTRUCTION_WARM_UP: Final = CONCURRENCY


def instructions(venv: str, spec: dict[str, Any]) -> int:
    """Instructions the worker executed, all threads, from start to exit, under callgrind."""
    upstream = resilience.Upstream({})
    spec = {**spec, "api_base": upstream.api_base, "warm_up": INSTRUCTION_WARM_UP}
    with tempfile.TemporaryDirectory() as empty:  # no checkout to shadow the installed one
        report = Path(empty, "callgrind.log")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            f"--log-file={report}",
            run.python_of(venv),
            str(Path(__file__).resolve()),
            "--worker",
            json.dumps(spec),
        ]
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        try:
            subprocess.run(
                command, cwd=empty, env=environment, check=True, stdout=subprocess.DEVNULL
            )
        finally:
            upstream.stop()
        for line in report.read_text().splitlines():
            if "Collected :" in line:
                return int(line.rsplit(":", 1)[1].strip().replace(",", ""))
    raise RuntimeError(f"callgrind reported no instruction count for {spec}")


def run_instructions() -> list[dict[str, Any]]:
    """Count each ``INSTRUCTION_SERIES``' instructions per prompt, streaming and not.

    Each series runs twice under callgrind, with a shorter and a longer timed part after the
    same start-up and warm-up; the difference over the difference in prompts is what one more
    prompt costs, all threads included (Datasette's write thread too). Callgrind counts
    instructions, not time: it does not see the machine's other load, so the figure repeats
    from run to run, but neither does it see the kernel's work (system calls, switching
    threads) nor what cache misses make an instruction cost.
    """
    if shutil.which("valgrind") is None:
        log("[instructions] valgrind is not installed (apt install valgrind): skipped")
        return []
    found = []
    for stream in (False, True):
        for label, venv, routed, reuse, fewer, more in INSTRUCTION_SERIES:
            spec = {"routed": routed, "reuse": reuse, "off": [], "stream": stream}
            log(f"[instructions] {label}, {'streaming' if stream else 'not streaming'}")
            counts = [instructions(venv, {**spec, "prompts": n}) for n in (fewer, more)]
            found.append(
                {
                    "label": label,
                    "stream": stream,
                    "prompts": [fewer, more],
                    "instructions": counts,
                    "per_prompt": (counts[1] - counts[0]) / (more - fewer),
                }
            )
    return found


def run_all(scale: float, profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"scale": scale, "series": []}
    for label, venv, routed, reuse, off, prompts in SERIES:
        for stream in (False, True):
            spec = {"routed": routed, "reuse": reuse, "off": off, "stream": stream}
            log(f"[{label}] {'streaming' if stream else 'not streaming'}")
            report = measure(venv, {**spec, "prompts": prompts}, scale)
            results["series"].append({"label": label, "venv": venv, **spec, **report})
    if profile:
        for label, venv, routed in (
            ("bare llm, reused client", "ours", False),
            ("ours", "ours", True),
        ):
            spec = {"routed": routed, "reuse": not routed, "off": [], "stream": False}
            log(f"[profile] {label}")
            report = measure(venv, {**spec, "prompts": PROFILED, "profile": True}, scale)
            results.setdefault("profiles", {})[label] = report
    results["machine"] = f"{platform.platform()}, {os.cpu_count()} cores"
    results["python"] = platform.python_version()
    return results


# --- the report ------------------------------------------------------------------------------


def figures(series: dict[str, Any]) -> tuple[float, float, float]:
    """Prompts a second, CPU ms and garbage-collection ms per prompt."""
    prompts = series["prompts"]
    return prompts / series["wall"], 1000 * series["cpu"] / prompts, 1000 * series["gc"] / prompts


def runs_of(results: dict[str, Any], label: str, stream: bool) -> list[dict[str, Any]]:
    return [s for s in results["series"] if s["label"] == label and s["stream"] == stream]


def median_of(results: dict[str, Any], label: str, stream: bool) -> tuple[float, float, float]:
    """The median of a series' runs' figures (its one run's, if it ran once)."""
    runs = [figures(s) for s in runs_of(results, label, stream)]
    rate, cpu, collected = (statistics.median(run[index] for run in runs) for index in range(3))
    return rate, cpu, collected


def spread(results: dict[str, Any], label: str, stream: bool, index: int) -> float:
    """How far apart the runs of one series are (highest - lowest), as a fraction of their
    median."""
    values = [figures(s)[index] for s in runs_of(results, label, stream)]
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def markdown(results: dict[str, Any]) -> str:
    versions = runs_of(results, "ours", False)[0]["versions"]
    anchor = runs_of(results, "0.1a8", False)[0]["versions"]
    labels = list(dict.fromkeys(s["label"] for s in results["series"]))
    lines = [
        "# Throughput benchmark",
        "",
        "Reproduce: `python3 benchmarks/throughput.py` (builds the venvs of `benchmarks/run.py`",
        "and a `today` venv from the commit before clients were pooled, if missing; reinstalls",
        "this checkout into `ours`, then writes this file and THROUGHPUT.json beside it; about",
        "20 minutes on 2 cores). `--profile` adds the cProfile runs. One run; the figures are",
        "from that run.",
        *(
            [
                "This file's breakdown and profiles were added to the run's JSON right after it "
                "by `--extend` (the same code a `--profile` run runs)."
            ]
            if results.get("extended") and "instructions_commit" not in results
            else []
        ),
        *(
            [
                "The instruction counts were added to the run's JSON later, by `--extend "
                f"--instructions`, on commit {results['instructions_commit']} (the timed "
                "series ran on an earlier commit)."
            ]
            if "instructions_commit" in results
            else []
        ),
        "",
        f"- Machine: {results['machine']}, Python {results['python']}",
        f"- ours: datasette-llm {versions['datasette-llm']}, datasette {versions['datasette']}, "
        f"llm {versions['llm']}, openai {versions['openai']}; anchor: datasette-llm "
        f"{anchor['datasette-llm']}; today: commit {TODAY[:7]}, before clients were pooled",
        "- The provider: `tests/openai_server.py` in its own process (its CPU not counted), "
        "answering at once, no faults",
        f"- {CONCURRENCY} prompts at once, after {WARM_UP} warm-up prompts; each series in its "
        "own process; CPU is the worker process's, all threads, until the ledger has written "
        "every row; GC is the time in the garbage collector's passes (part of the CPU)",
        f"- {PROMPTS} prompts a series; {PROMPTS_CLIENT_PER_PROMPT} for the series whose client "
        "is built for every prompt (about 30 ms of CPU each), to keep the run short"
        + (f"; all scaled by {results['scale']:g} in this run" if results["scale"] != 1 else ""),
        "",
        "| series | streaming | prompts | prompts/s | CPU ms / prompt | GC ms / prompt | "
        "provider CPU ms / request | wrong texts |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for series in results["series"]:
        rate, cpu, collected = figures(series)
        provider = 1000 * series["provider_cpu"] / max(1, series["provider"]["requests"])
        lines.append(
            f"| {series['label']} | {'yes' if series['stream'] else 'no'} | {series['prompts']} | "
            f"{rate:.0f} | {cpu:.2f} | {collected:.2f} | {provider:.2f} | {series['wrong']} |"
        )
    lines += ["", "## Targets", ""]
    lines += [
        "| target | streaming | figure | limit | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for stream in (False, True):
        yes = "yes" if stream else "no"
        ours_rate, ours_cpu, _ = median_of(results, "ours", stream)
        today_rate, _, _ = median_of(results, "today", stream)
        _, bare_cpu, _ = median_of(results, "bare llm, reused client", stream)
        speed, cpu_ratio = ours_rate / today_rate, ours_cpu / bare_cpu
        rounds = [found for found in results.get("speed_rounds", []) if found["stream"] == stream]
        if rounds:
            speed = statistics.median(round_ratio(found, "ours") for found in rounds)
            floor = statistics.median(
                round_ratio(found, "bare llm, reused client") for found in rounds
            )
            lines.append(
                f"| ours / today, prompts/s, median of the speed rounds' ratios | {yes} | "
                f"{speed:.1f}x | >= {SPEED_TARGET:g}x | {verdict(speed >= SPEED_TARGET)} |"
            )
            lines.append(
                f"| (bare llm with a reused client / today, the same rounds: not a target) | "
                f"{yes} | {floor:.1f}x | | |"
            )
        else:
            lines.append(
                f"| ours / today, prompts/s | {yes} | {speed:.1f}x | >= {SPEED_TARGET:g}x | "
                f"{verdict(speed >= SPEED_TARGET)} |"
            )
        lines.append(
            f"| ours / bare llm with a reused client, CPU per prompt | {yes} | {cpu_ratio:.2f}x "
            f"| <= {CPU_TARGET}x | {verdict(cpu_ratio <= CPU_TARGET)} |"
        )
        counted = {
            found["label"]: found["per_prompt"]
            for found in results.get("instructions", [])
            if found["stream"] == stream
        }
        if counted:
            ratio = counted["ours"] / counted["bare llm, reused client"]
            lines.append(
                f"| the same, instructions per prompt (callgrind, below) | {yes} | {ratio:.2f}x "
                f"| <= {CPU_TARGET}x | {verdict(ratio <= CPU_TARGET)} |"
            )
            lines.append(
                f"| (today / ours, instructions per prompt: not a target, see below) | {yes} | "
                f"{counted['today'] / counted['ours']:.1f}x | | |"
            )
        for found in results.get("breakdown", []):
            if found["stream"] != stream:
                continue
            runs = found["blocks"]
            interleaved = sum(run[1] for run in runs["ours"]) / sum(
                run[1] for run in runs["bare llm, reused client"]
            )
            lines.append(
                f"| the same, interleaved in one process (the breakdown below) | {yes} | "
                f"{interleaved:.2f}x | <= {CPU_TARGET}x | {verdict(interleaved <= CPU_TARGET)} |"
            )
    lines += [
        "",
        "`ours` and `bare llm, reused client` ran three times (first, in the middle and last); "
        "the CPU targets use the median of the three. Between their highest and lowest run, their "
        "figures moved by:",
        "",
    ]
    for label in ("ours", "bare llm, reused client"):
        for stream in (False, True):
            lines.append(
                f"- {label}, {'streaming' if stream else 'not streaming'}: prompts/s "
                f"{spread(results, label, stream, 0):.1%}, CPU per prompt "
                f"{spread(results, label, stream, 1):.1%}"
            )
    lines += instruction_table(results.get("instructions"))
    lines += heap_table(results.get("heap_rounds"), results.get("heap_commit"))
    lines += speed_table(results.get("speed_rounds"), results.get("speed_rounds_commit"))
    lines += breakdown_tables(results.get("breakdown"))
    lines += [
        "",
        "The same switches as separate series of the run above (each its own process, one "
        "after another), for comparison: CPU ms per prompt.",
        "",
        "| series | not streaming | streaming |",
        "| --- | ---: | ---: |",
    ]
    for label in labels:
        if label.startswith("ours") or label.startswith("bare llm, reused"):
            plain, streamed = median_of(results, label, False), median_of(results, label, True)
            lines.append(f"| {label} | {plain[1]:.2f} | {streamed[1]:.2f} |")
    profiles = results.get("profiles")
    if profiles:
        lines += profile_tables(profiles)
    lines += ["", "Notes:", "", *NOTES]
    lines += ["", "What the provider of each series did (requests, connections):", ""]
    for series in results["series"]:
        counts = series["provider"]
        lines.append(
            f"- {series['label']}, {'streaming' if series['stream'] else 'not streaming'}: "
            f"requests {counts['requests']} (ok {counts['ok']}), "
            f"connections {counts['connections']}"
        )
    return "\n".join(lines) + "\n"


def instruction_table(counted: list[dict[str, Any]] | None) -> list[str]:
    if not counted:
        return []
    lines = [
        "",
        "## Instructions per prompt",
        "",
        "Each series run twice under callgrind (`valgrind --tool=callgrind`), with a shorter and "
        "a longer timed part after the same start-up and warm-up: the difference in "
        "instructions over the difference in prompts is what one more prompt costs, every "
        "thread of the worker included. Instructions are not time: the count repeats from run "
        "to run whatever else the machine does, but it leaves out the kernel's work (system "
        "calls, switching to Datasette's write thread) and what cache misses make an "
        "instruction cost. Today's prompts go mostly to OpenSSL loading the CA bundle into a "
        "new SSL context, whose tight loops run more instructions a clock cycle than Python's "
        "interpreter does: against today, the count overstates what the time shows (the speed "
        "rounds above); against bare llm, Python against Python, the two measure alike.",
        "",
        "| series | streaming | prompts (shorter, longer run) | million instructions / prompt "
        "| / bare llm, reused |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for stream in (False, True):
        rows = [found for found in counted if found["stream"] == stream]
        bare = next(f["per_prompt"] for f in rows if f["label"] == "bare llm, reused client")
        for found in rows:
            fewer, more = found["prompts"]
            lines.append(
                f"| {found['label']} | {'yes' if stream else 'no'} | {fewer}, {more} | "
                f"{found['per_prompt'] / 1e6:.2f} | {found['per_prompt'] / bare:.2f}x |"
            )
    return lines


def heap_table(rounds: list[dict[str, Any]] | None, commit: str | None) -> list[str]:
    if not rounds:
        return []
    where = f" (on commit {commit})" if commit else ""
    lines = [
        "",
        "## The process ours runs in",
        "",
        f"Why ours costs more time than instructions over bare llm: {HEAP_ROUNDS} rounds per "
        f"streaming mode{where}, each series in its own process, the order rotated each round; "
        "the medians of CPU and garbage-collection ms per prompt. `beside a Datasette`: bare "
        "llm in a process that has also started a Datasette with this plugin and resolved the "
        "purpose's model, so it holds most of what ours' process holds. `frozen`: `gc.freeze()` "
        "after the warm-up, which takes every object made so far out of later garbage "
        "collections (a benchmark switch, not something datasette-llm does: it would change "
        "the host process's collector for every plugin).",
        "",
        "| series | streaming | CPU ms / prompt | GC ms / prompt | / bare llm, reused |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for stream in (False, True):
        found = [r["series"] for r in rounds if r["stream"] == stream]
        medians = {
            label: (
                statistics.median(figures(f[label])[1] for f in found),
                statistics.median(figures(f[label])[2] for f in found),
            )
            for label, *_ in HEAP_SERIES
        }
        bare = medians["bare llm, reused client"][0]
        for label, (cpu, collected) in medians.items():
            lines.append(
                f"| {label} | {'yes' if stream else 'no'} | {cpu:.2f} | {collected:.2f} | "
                f"{cpu / bare:.2f}x |"
            )
    return lines


def speed_table(rounds: list[dict[str, Any]] | None, commit: str | None) -> list[str]:
    if not rounds:
        return []
    where = f" (run again on commit {commit})" if commit else ""
    lines = [
        "",
        "## The speed rounds",
        "",
        f"{SPEED_ROUNDS} rounds per streaming mode{where} of today, ours and bare llm with a "
        "reused client, one process after another, the order rotated each round; the speed target "
        "is the median of the rounds' ratios (each ratio from series run within a minute of "
        "each other). Prompts/s:",
        "",
        "| streaming | round | today | ours | bare llm, reused client | ours / today | "
        "bare / today |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for found in rounds:
        rate = {label: figures({**series, "gc": 0})[0] for label, series in found["series"].items()}
        lines.append(
            f"| {'yes' if found['stream'] else 'no'} | {found['round']} | {rate['today']:.0f} | "
            f"{rate['ours']:.0f} | {rate['bare llm, reused client']:.0f} | "
            f"{round_ratio(found, 'ours'):.1f}x | "
            f"{round_ratio(found, 'bare llm, reused client'):.1f}x |"
        )
    return lines


def breakdown_tables(breakdowns: list[dict[str, Any]] | None) -> list[str]:
    if not breakdowns:
        return []
    first = breakdowns[0]
    rounds = len(first["blocks"]["ours"])
    readings: list[str] = []
    lines = [
        "",
        "## Where ours' extra CPU goes",
        "",
        f"One process per streaming mode runs blocks of {first['block']} prompts of each series "
        f"below in turn, {rounds} rounds, the order rotated each round, so that the machine's "
        "drift weighs on every series alike; each switch is flipped between blocks. CPU ms per "
        "prompt over all its blocks (the range: its blocks' lowest and highest), and what "
        "switching a part off saves against ours:",
        "",
        "| series | streaming | CPU ms / prompt | blocks' range | saved vs ours | "
        "GC ms / prompt | / bare llm, reused |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for found in breakdowns:
        block = found["block"]

        def per_prompt(label: str, index: int, found: dict[str, Any] = found) -> float:
            runs = found["blocks"][label]
            return 1000 * sum(run[index] for run in runs) / (found["block"] * len(runs))

        ours, bare = per_prompt("ours", 1), per_prompt("bare llm, reused client", 1)
        ours_blocks = [1000 * run[1] / found["block"] for run in found["blocks"]["ours"]]
        collected = per_prompt("ours", 2) - per_prompt("bare llm, reused client", 2)
        readings.append(
            f"- {'Streaming' if found['stream'] else 'Not streaming'}: ours costs "
            f"{ours - bare:.2f} ms a prompt more than bare llm ({ours / bare:.2f}x); the garbage "
            f"collector's share of that is {collected:.2f} ms. "
            f"Ours' own blocks span {max(ours_blocks) - min(ours_blocks):.2f} ms: a saving "
            "smaller than about half that is within the noise."
        )
        for label, runs in found["blocks"].items():
            cpu = per_prompt(label, 1)
            each = [1000 * run[1] / block for run in runs]
            saved = "" if label == "ours" else f"{ours - cpu:+.2f}"
            lines.append(
                f"| {label} | {'yes' if found['stream'] else 'no'} | {cpu:.2f} | "
                f"{min(each):.2f}-{max(each):.2f} | {saved} | {per_prompt(label, 2):.2f} | "
                f"{cpu / bare:.2f}x |"
            )
    return [*lines, "", *readings]


def profile_tables(profiles: dict[str, Any]) -> list[str]:
    bare, ours = profiles["bare llm, reused client"], profiles["ours"]
    lines = [
        "",
        f"cProfile, not streaming, {ours['prompts']} prompts each (the event loop's thread only; "
        "profiling slows every call, so only the shares count): own time in µs per prompt, by "
        "where the function lives.",
        "",
        "| area | bare llm, reused client | ours | ours - bare |",
        "| --- | ---: | ---: | ---: |",
    ]
    bare_areas, ours_areas = bare["profile"]["areas"], ours["profile"]["areas"]
    areas = sorted(
        set(bare_areas) | set(ours_areas),
        key=lambda a: -(ours_areas.get(a, 0.0) - bare_areas.get(a, 0.0)),
    )
    for where in areas:
        b, o = bare_areas.get(where, 0.0), ours_areas.get(where, 0.0)
        if max(b, o) >= 5:
            lines.append(f"| {where} | {b:.0f} | {o:.0f} | {o - b:+.0f} |")
    total_b, total_o = sum(bare_areas.values()), sum(ours_areas.values())
    lines.append(f"| total | {total_b:.0f} | {total_o:.0f} | {total_o - total_b:+.0f} |")
    lines += [
        "",
        "The datasette_llm functions with the most own time (µs per prompt, profiled):",
        "",
        "| function | own | cumulative |",
        "| --- | ---: | ---: |",
    ]
    for row in ours["profile"]["functions"]:
        lines.append(f"| `{row['function']}` | {row['own']:.0f} | {row['cumulative']:.0f} |")
    entries = ours["profile"].get("entries")
    if entries:
        lines += [
            "",
            "The steps of one prompt of ours, cumulative (µs per prompt, profiled; the `prompt()` "
            "step includes the request and llm's handling of the response, as bare llm's does):",
            "",
            "| step | cumulative |",
            "| --- | ---: |",
        ]
        for _, _, label in ENTRIES:
            if label in entries:
                lines.append(f"| {label} | {entries[label]:.0f} |")
    return lines


NOTES: Final = [
    "- `bare llm, reused client` and `0.1a8, reused client` patch llm's `get_client` in the",
    "  worker to reuse one client per endpoint and key; ours pools its clients itself (and",
    "  copies the pooled client with the attempt's timeout for every attempt).",
    "- The switches are the benchmark's, not options of ours: `telemetry off` replaces",
    "  `datasette_llm.usage.telemetry.observe` with a no-op; `stamina off` is",
    "  `stamina.set_active(False)` (one try, no retry machinery); `ledger off` is the",
    "  configuration's `usage: {enabled: false}`.",
    "- cProfile sees the event loop's thread only: the ledger's writes in Datasette's write",
    "  thread and the garbage collector's passes are in the CPU figures above, not in it.",
    "- The worker and the provider share the machine's 2 cores with whatever else runs: runs",
    "  of one series can differ by tens of per cent (above), so the ratios of the interleaved",
    "  breakdown, where each series meets the same drift, are the steadier ones.",
]


def head_commit() -> str:
    """The checkout's commit, short, with ``+`` when it has changes not committed."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "datasette_llm"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    return commit + ("+" if changed else "")


def ensure_today_venv() -> None:
    """Build the ``today`` venv from the commit ``TODAY``, if missing."""
    if Path(run.python_of("today")).exists():
        return
    tree = Path(tempfile.mkdtemp(prefix="datasette-llm-today-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", TODAY], check=True, stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    run.build("today", [str(tree), *run.PINS])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every prompt count")
    parser.add_argument("--profile", action="store_true", help="add the cProfile runs")
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--render", metavar="JSON", help="only write the tables from a run's JSON")
    parser.add_argument(
        "--extend",
        metavar="JSON",
        help="add to a run's JSON the interleaved breakdown if it lacks one (and, with "
        "--profile, the cProfile runs), then write the tables",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="with --extend: count the instructions per prompt again under callgrind",
    )
    parser.add_argument(
        "--speed",
        action="store_true",
        help="with --extend: run the speed rounds again",
    )
    parser.add_argument(
        "--heap",
        action="store_true",
        help="with --extend: run the heap rounds again",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--breakdown", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(run_worker(json.loads(args.worker)))))
        return 0
    if args.breakdown:
        print(json.dumps(asyncio.run(run_breakdown(json.loads(args.breakdown)))))
        return 0
    if args.extend:
        resilience.ensure_venvs(args.skip_install)
        results = json.loads(Path(args.extend).read_text())
        if args.speed or "speed_rounds" not in results:
            results["speed_rounds"] = run_speed_rounds(results["scale"])
            results["speed_rounds_commit"] = head_commit()
        if "breakdown" not in results:
            results["breakdown"] = run_breakdowns(results["scale"])
        if args.profile:
            results["profiles"] = run_profiles(results["scale"])
        if args.heap or "heap_rounds" not in results:
            results["heap_rounds"] = run_heap_rounds(results["scale"])
            results["heap_commit"] = head_commit()
        if args.instructions or "instructions" not in results:
            results["instructions"] = run_instructions()
            results["instructions_commit"] = head_commit()
        results["extended"] = True
        Path(args.extend).write_text(json.dumps(results, indent=1))
    elif args.render:
        results = json.loads(Path(args.render).read_text())
    else:
        resilience.ensure_venvs(args.skip_install)
        ensure_today_venv()
        results = run_all(args.scale, args.profile)
        results["speed_rounds"] = run_speed_rounds(args.scale)
        results["breakdown"] = run_breakdowns(args.scale)
        results["instructions"] = run_instructions()
        results["heap_rounds"] = run_heap_rounds(args.scale)
    name = "THROUGHPUT.md" if results["scale"] == 1 else "THROUGHPUT-quick.md"
    if not args.render and not args.extend:
        (HERE / name).with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (HERE / name).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
