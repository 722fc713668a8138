"""Measure three ``datasette serve`` processes against one rate-limited provider, with and
without sharing their limits through Redis; write COORDINATION.md.

``python benchmarks/coordination.py`` (with the Python of a venv where this checkout is
installed with its ``redis`` extra, e.g. ``.venv/newest/bin/python``; the runner itself uses the
standard library only) orchestrates:

- the provider (``tests/openai_server.py``) in its own process (``--serve SETTINGS``), admitting
  R requests in any one second and answering 429 with ``Retry-After`` beyond that
  (``Provider.rate_limit``);
- a ``redis-server`` on a free port of 127.0.0.1, keeping nothing on disk (Debian's package);
- for each mode, three ``datasette serve`` processes with one datasette.yaml
  (``tests/served.py`` ``start_served``), each loading the small plugin of ``PROMPT_PLUGIN``
  from ``--plugins-dir``: ``/-/test-prompt?purpose=bench`` routes, prompts (llm's own OpenAI
  plugin, pointed at the provider) and answers JSON. The model carries ``rpm: 60 R`` in both
  modes; the default ``retries`` (2) and no fallback.

  - ``without coordination``: each process keeps the rpm to itself, so together they may send
    three times what the provider admits;
  - ``with coordination``: ``coordination: {redis: {$env: REDIS_URL}}``, the rpm shared.

Each mode first answers one prompt through each process (its client built), then sends N
prompts spread round robin over the three from ``CONCURRENCY`` threads at once, over HTTP, and
times them from the first sent to the last answered. The provider's tallies are read before and
after, so the figures are the N prompts' only: requests received, 429s sent back, answers.
The target is the N prompts answered with no 429 in about N / R seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
HERE: Final = ROOT / "benchmarks"
SERVER: Final = ROOT / "tests" / "openai_server.py"
SERVED: Final = ROOT / "tests" / "served.py"
REDIS_SERVER: Final = ROOT / "tests" / "redis_server.py"
PROCESSES: Final = 3
RATE: Final = 20  # R: requests the provider admits in any one second
PROMPTS: Final = 600  # N: 30 s at the provider's rate
CONCURRENCY: Final = 30  # prompts in flight at once, spread over the three processes
QUICK_RATE: Final = 10
QUICK_PROMPTS: Final = 60
MODES: Final = ("without coordination", "with coordination")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(name: str, path: Path) -> ModuleType:
    """Import a module of ``tests/`` from its file (``tests`` need not be importable)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- the provider process -------------------------------------------------------------------


def serve_until_stdin_closes(settings: dict[str, Any]) -> None:
    """Run the provider; print its ``api_base``, then its tallies for each line read."""
    server = load("openai_server", SERVER)
    with server.serve(**settings) as provider:
        print(json.dumps({"api_base": provider.api_base}), flush=True)
        for _ in sys.stdin:
            print(json.dumps(dataclasses.asdict(provider.counts)), flush=True)


class Upstream:
    """The provider, running in its own process."""

    def __init__(self, python: str, settings: dict[str, Any]) -> None:
        command = [python, str(Path(__file__).resolve()), "--serve", json.dumps(settings)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        self.api_base: str = json.loads(self._stdout.readline())["api_base"]

    def counts(self) -> dict[str, int]:
        """What the provider has done so far."""
        self._stdin.write("counts\n")
        self._stdin.flush()
        tally: dict[str, int] = json.loads(self._stdout.readline())
        return tally

    def stop(self) -> None:
        self._stdin.close()
        self.process.wait(timeout=30)


# --- one mode -------------------------------------------------------------------------------


def config_of(rate: int, redis: bool) -> dict[str, Any]:
    """The datasette.yaml of the three processes."""
    llm: dict[str, Any] = {
        "purposes": {"bench": {"model": {"model": "limited", "rpm": 60 * rate}}},
    }
    if redis:
        llm["coordination"] = {"redis": {"$env": "REDIS_URL"}, "prefix": f"bench-{os.getpid()}"}
    return {"plugins": {"datasette-llm": llm}}


def run_mode(
    mode: str,
    served_module: ModuleType,
    upstream: Upstream,
    redis_url: str,
    python: str,
    rate: int,
    prompts: int,
) -> dict[str, Any]:
    """Start three processes in ``mode``, send the prompts, stop them; return the figures."""
    with tempfile.TemporaryDirectory(prefix="coordination-bench-") as scratch:
        directory = Path(scratch)
        user_dir = directory / "llm-user"
        user_dir.mkdir()
        entries = [
            {"model_id": "limited", "model_name": "limited-upstream", "api_base": upstream.api_base}
        ]
        (user_dir / "extra-openai-models.yaml").write_text(json.dumps(entries))
        config = directory / "datasette.yaml"
        config.write_text(json.dumps(config_of(rate, mode == "with coordination")))
        env = {**os.environ, "LLM_USER_PATH": str(user_dir), "REDIS_URL": redis_url}
        datasette = Path(python).with_name("datasette")
        served = served_module.start_served(PROCESSES, config, directory, env, datasette=datasette)
        try:
            for each in served:  # each builds its client: not part of what is timed
                answer = each.prompt("bench")
                if not answer.get("ok"):
                    raise RuntimeError(f"a warm-up prompt failed: {answer}")
            time.sleep(1.5)  # the provider's window forgets the warm-up
            before = upstream.counts()
            started = time.monotonic()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                answers = list(
                    pool.map(lambda n: served[n % PROCESSES].prompt("bench"), range(prompts))
                )
            wall = time.monotonic() - started
            after = upstream.counts()
            logged = [each.stderr() for each in served]
        finally:
            served_module.stop_served(served)
    failed = Counter(
        f"{a.get('error')} {a.get('kind') or ''}".strip() for a in answers if not a.get("ok")
    )
    counts = {name: after[name] - before[name] for name in after}
    return {
        "mode": mode,
        "prompts": prompts,
        "answered": sum(1 for a in answers if a.get("ok")),
        "failed": dict(failed),
        "requests": counts["requests"],
        "rate_limited": counts["rate_limited"],
        "ok": counts["ok"],
        "wall": wall,
        "ideal": prompts / rate,
        "cool_down_warnings": sum(text.count("is rate limited by its provider") for text in logged),
    }


# --- the report -----------------------------------------------------------------------------


def versions(python: str) -> str:
    code = (
        "import importlib.metadata as m; print(', '.join(f'{n}=={m.version(n)}' for n in "
        "('datasette-llm', 'datasette', 'llm', 'openai', 'redis')))"
    )
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return found.stdout.strip()


def redis_version(executable: str) -> str:
    found = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True)
    return found.stdout.strip()


def markdown(results: dict[str, Any], command: str) -> str:
    rate, prompts = results["rate"], results["prompts"]
    lines = [
        "# Three processes, one rate-limited provider: with and without coordination",
        "",
        f"Written by `{command}` (see its docstring); do not edit by hand.",
    ]
    if results["quick"]:
        lines += [
            "",
            "**A smoke run** (`--quick`: few prompts, a low rate): it shows the runner works, "
            "not the figures to keep. Run it without `--quick` for those.",
        ]
    lines += [
        "",
        f"Three `datasette serve` processes, one datasette.yaml; the model has `rpm: {60 * rate}`"
        f" (R = {rate} requests a second) and the provider admits R requests in any one second,"
        " answering 429 with `Retry-After` beyond that. "
        f"N = {prompts} prompts, spread round robin over the three, {CONCURRENCY} at once; "
        "timed from the first sent to the last answered, after one prompt through each process.",
        "",
        "| mode | answered | failed | requests | 429s | cool-downs logged | wall | N / R | "
        "wall / (N / R) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["modes"]:
        failed = ", ".join(f"{kind}: {n}" for kind, n in sorted(row["failed"].items())) or "none"
        lines.append(
            f"| {row['mode']} | {row['answered']} of {row['prompts']} | {failed} | "
            f"{row['requests']} | {row['rate_limited']} | {row['cool_down_warnings']} | "
            f"{row['wall']:.1f} s | {row['ideal']:.1f} s | {row['wall'] / row['ideal']:.2f} |"
        )
    lines += [
        "",
        "- *requests*: what the provider received for the N prompts, 429s included; *429s*: "
        "what it refused. *cool-downs logged*: the warnings of the three processes that a "
        "model started to cool down.",
        "- Without coordination each process spaces its own requests 60 / rpm apart, so the "
        "three send up to 3 R a second: the provider refuses the excess, each refusal cools the "
        "model down in the process that met it only, and a prompt whose tries all meet a 429 "
        "fails with `rate_limit`.",
        "- With coordination every request takes its turn in Redis (one Lua script on Redis's "
        "clock), so the three together leave one every 1 / R s.",
        "- `rpm` is exactly 60 R: no headroom. Turns are 1 / R s apart on Redis's clock, but "
        "each request reaches the provider a few milliseconds after its turn, more or less, and "
        "the provider's window is exactly one second: whenever a request arrives later after "
        "its turn than the one R turns after it, R + 1 arrive within one second and the last "
        "is refused. Any 429s with coordination are that; an `rpm` a little under the "
        "provider's limit leaves room for it.",
        "",
        f"- Machine: {results['machine']}",
        f"- Versions: {results['versions']}; {results['redis']}",
        "",
        "Reproduce: `.venv/newest/bin/python benchmarks/coordination.py` "
        "(`--prompts N --rate R`; `--quick` for a smoke run). Needs `redis-server` "
        "(Debian: `apt-get install redis-server`).",
    ]
    return "\n".join(lines) + "\n"


def run_all(python: str, rate: int, prompts: int, quick: bool) -> dict[str, Any]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    served_module = load("served", SERVED)
    upstream = Upstream(python, {"rate_limit": rate})
    results: dict[str, Any] = {"rate": rate, "prompts": prompts, "quick": quick, "modes": []}
    try:
        with tempfile.TemporaryDirectory(prefix="coordination-redis-") as scratch:
            redis = load("redis_server", REDIS_SERVER).RedisServer(executable, Path(scratch))
            redis.start()
            try:
                for mode in MODES:
                    log(f"[{mode}] {prompts} prompts, R = {rate}")
                    row = run_mode(mode, served_module, upstream, redis.url, python, rate, prompts)
                    log(f"[{mode}] {json.dumps(row)}")
                    results["modes"].append(row)
            finally:
                redis.stop()
    finally:
        upstream.stop()
    results["machine"] = (
        f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    results["versions"] = versions(python)
    results["redis"] = redis_version(executable)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--prompts", type=int, help=f"N (default {PROMPTS})")
    parser.add_argument("--rate", type=int, help=f"R, requests a second (default {RATE})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: N = {QUICK_PROMPTS}, R = {QUICK_RATE} unless given, written to "
        "COORDINATION-quick.md",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the Python whose venv has datasette-llm[redis] (and its datasette command)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_until_stdin_closes(json.loads(args.serve))
        return 0
    prompts = args.prompts or (QUICK_PROMPTS if args.quick else PROMPTS)
    rate = args.rate or (QUICK_RATE if args.quick else RATE)
    results = run_all(args.python, rate, prompts, args.quick)
    text = markdown(results, "python benchmarks/coordination.py")
    (HERE / ("COORDINATION-quick.md" if args.quick else "COORDINATION.md")).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
