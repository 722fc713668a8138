"""Three ``datasette serve`` processes sharing one Redis behave as one site toward a provider.

A real ``redis-server`` (``tests/coordination/conftest.py``) and three ``datasette serve``
subprocesses with one datasette.yaml: ``coordination: {redis: {$env: REDIS_URL}}``, REDIS_URL in
their environment, every purpose routed to models of llm's own OpenAI plugin pointed at ONE
local provider (``tests/openai_server.py``) running in this process, which notes when each
request arrives. Each process loads a small plugin from ``--plugins-dir``, as a user writes one
(``tests/served.py`` ``PROMPT_PLUGIN``): ``/-/test-prompt?purpose=P`` routes, prompts and answers
JSON. The tests drive the three at once over HTTP, from threads, and read what reached the
provider.

The rate is checked over 10 s at ``rpm: 300`` (five requests a second), not the 30 s the issue
names: three processes each allowed the whole rpm send three times that, so any second of the
run shows it (the check is the busiest one-second window of the run, not an average), and ten
seconds already holds over forty such windows; thirty would triple the time without checking
anything more. The rate tests first answer one prompt through each process (``warm_up``); what
processes just started send is checked on its own.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import pytest
from datasette.app import Datasette

from tests.openai_server import Provider, Reply, serve, write_extra_models
from tests.redis_server import RedisServer
from tests.served import ServedProcess, free_port, start_served, stop_served

PROCESSES: Final = 3
RPM: Final = 300.0
"""``paced-gpt``'s rpm: five requests a second, for the three processes together."""
PER_SECOND: Final = RPM / 60
RUN_SECONDS: Final = 10.0
IN_FLIGHT: Final = 4
"""Prompts each process is kept busy with: with the provider answering at once, each process
alone would send far more than the rpm, so three each keeping the rpm to itself send 3 x rpm."""
COOL_DOWN: Final = 5
"""The provider's ``Retry-After`` in the cool-down test."""
ANSWER_USD: Final = 0.8
"""What one answer of the provider costs at ``budget-gpt``'s price: it reports 3 input tokens
and 5 output tokens (the words of its default reply), at $100,000 a million tokens."""
BUDGET_PROMPTS: Final = 10
BUDGET_USD: Final = BUDGET_PROMPTS * ANSWER_USD
AT_ONCE: Final = 150
SECRET: Final = "coordination-processes-test-secret"
SHARED_AGAIN_WITHIN: Final = 3.0
"""Seconds after Redis is back by which the processes share their limits again: each pings it
every second once it failed, and the turns they took meanwhile have passed."""
MODELS: Final = (
    "paced-gpt",
    "primary-gpt",
    "backup-gpt",
    "budget-gpt",
    "route-a-gpt",
    "route-b-gpt",
)


def upstream(model_id: str) -> str:
    """The model name the provider sees for ``model_id`` (``write_extra_models``)."""
    return f"{model_id}-upstream"


def site_config(coordination: Mapping[str, object]) -> dict[str, Any]:
    """The datasette.yaml every process of a site reads."""
    budget = {"usd": BUDGET_USD, "per": "month", "estimate_usd": ANSWER_USD}
    return {
        "permissions": {
            "llm-view-routing": {"id": "editor"},
            "llm-manage-routing": {"id": "editor"},
        },
        "plugins": {
            "datasette-llm": {
                "coordination": dict(coordination),
                "pricing": {"budget-gpt": {"input": 100_000, "output": 100_000}},
                "purposes": {
                    "paced": {"model": {"model": "paced-gpt", "rpm": RPM}},
                    "cooled": {"model": "primary-gpt", "fallbacks": ["backup-gpt"], "retries": 0},
                    "budgeted": {"model": "budget-gpt", "budget": budget},
                    "routed": {"model": "route-a-gpt"},
                },
            }
        },
    }


@dataclass
class Site:
    """The processes of one site and the provider they all send to."""

    provider: Provider
    served: list[ServedProcess]


def start_site(
    provider: Provider,
    directory: Path,
    redis_url: str,
    *,
    processes: int | None = None,
    internal: bool = False,
) -> list[ServedProcess]:
    """Start the ``PROCESSES`` processes of a site with its own Redis keys.

    Args:
        processes: ``coordination.processes``.
        internal: Share one ``--internal`` database file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    user_dir = directory / "llm-user"
    user_dir.mkdir(exist_ok=True)
    write_extra_models(user_dir, provider, **{name.replace("-", "_"): None for name in MODELS})
    coordination: dict[str, object] = {
        "redis": {"$env": "REDIS_URL"},
        "prefix": f"test-{uuid.uuid4().hex[:8]}",
    }
    if processes is not None:
        coordination["processes"] = processes
    config = directory / "datasette.yaml"
    config.write_text(json.dumps(site_config(coordination)))
    env = {**os.environ, "LLM_USER_PATH": str(user_dir), "REDIS_URL": redis_url}
    return start_served(
        PROCESSES,
        config,
        directory,
        env,
        internal=directory / "internal.db" if internal else None,
        secret=SECRET,
    )


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with serve() as running:
        yield running


@pytest.fixture(scope="module")
def site(
    provider: Provider, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """Three processes sharing the session's Redis and one internal database file."""
    served = start_site(provider, tmp_path_factory.mktemp("site"), redis_server.url, internal=True)
    try:
        yield Site(provider, served)
    finally:
        stop_served(served)


class Load:
    """Keep ``per_process`` prompts of ``purpose`` in flight at every process, each sent as the
    one before it is answered, until the block ends (then wait for those in flight).

    Attributes:
        answers: Each answer of ``/-/test-prompt``, with ``process`` (its index), ``asked``
            and ``answered`` (``time.monotonic()``).
    """

    def __init__(
        self, served: Sequence[ServedProcess], purpose: str, per_process: int = IN_FLIGHT
    ) -> None:
        self.served = served
        self.purpose = purpose
        self.per_process = per_process
        self.answers: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(len(served) * per_process)
        self._clients: list[Future[None]] = []

    def __enter__(self) -> Load:
        for index in range(len(self.served)):
            for _ in range(self.per_process):
                self._clients.append(self._pool.submit(self._client, index))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for client in self._clients:
            client.result()
        self._pool.shutdown()

    def _client(self, index: int) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            answer = self.served[index].prompt(self.purpose)
            answered = time.monotonic()
            self.answers.append({**answer, "process": index, "asked": asked, "answered": answered})

    def failed(self) -> list[dict[str, Any]]:
        """The answers that are not ``ok``."""
        return [answer for answer in self.answers if not answer.get("ok")]


def per_second(provider: Provider, model: str, since: float, until: float) -> list[int]:
    """Requests to ``model`` in each whole second from ``since`` (for failure messages)."""
    counts = [0] * max(1, int(until - since) + 1)
    for at in provider.received_at(model, since, until):
        counts[int(at - since)] += 1
    return counts


def shown(answers: Sequence[Mapping[str, Any]]) -> str:
    """The first few failed answers, for a failure message."""
    return "\n".join(
        f"  process {a.get('process')}: {a.get('error')} {a.get('kind')}: {a.get('message')}"
        for a in answers[:5]
    )


def redis_failures(served: ServedProcess, url: str) -> list[str]:
    """The lines of ``served``'s stderr saying that the Redis at ``url`` failed."""
    start = f"datasette-llm: Redis at {url} failed ("
    return [line for line in served.stderr().splitlines() if start in line]


def warm_up(served: Sequence[ServedProcess], purpose: str) -> None:
    """Answer one prompt of ``purpose`` through each process, then let its turns pass: a
    process's first prompt builds its client while the turns after it pass (see
    ``test_the_first_prompts_of_fresh_processes_stay_within_the_rpm_too``)."""
    for each in served:
        answer = each.prompt(purpose)
        assert answer["ok"], answer
    time.sleep(1.0)


# rpm


def test_the_processes_together_send_no_more_requests_a_second_than_the_rpm(site: Site) -> None:
    warm_up(site.served, "paced")
    since = time.monotonic()
    with Load(site.served, "paced") as load:
        time.sleep(RUN_SECONDS)
    until = time.monotonic()
    assert not load.failed(), f"{len(load.failed())} prompts failed:\n{shown(load.failed())}"
    model = upstream("paced-gpt")
    busiest = site.provider.busiest_second(model, since)
    counts = per_second(site.provider, model, since, until)
    assert busiest <= PER_SECOND + 1, (
        f"{busiest} requests reached the provider within one second, where rpm {RPM:g} allows "
        f"{PER_SECOND:g} (+1) for the three processes together; each second: {counts}"
    )
    # The limit is the whole site's: its requests still come at the rpm, not a third of it.
    sent = len(site.provider.received_at(model, since, since + RUN_SECONDS))
    assert sent >= 0.8 * PER_SECOND * RUN_SECONDS, f"each second: {counts}"


def test_the_first_prompts_of_fresh_processes_stay_within_the_rpm_too(
    provider: Provider, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Just started, as after a deploy: each process's first prompt imports and builds its
    # client, which takes longer than a turn; a turn taken before that would leave late,
    # together with the next turns' requests.
    served = start_site(provider, tmp_path, redis_server.url)
    model = upstream("paced-gpt")
    try:
        since = time.monotonic()
        with Load(served, "paced"):
            time.sleep(3.0)
        until = time.monotonic()
        busiest = provider.busiest_second(model, since)
        times = [round(at - since, 3) for at in provider.received_at(model, since)[:10]]
        assert busiest <= PER_SECOND + 1, (
            f"{busiest} requests within one second from processes just started, where rpm "
            f"{RPM:g} allows {PER_SECOND:g} (+1); each second: "
            f"{per_second(provider, model, since, until)}; the first at (s): {times}"
        )
    finally:
        stop_served(served)


# cool-downs


def test_after_a_retry_after_seen_by_one_process_no_process_sends_to_that_model(
    site: Site,
) -> None:
    provider = site.provider
    limited = Reply(
        status=429,
        message="Rate limit reached for requests",
        headers={"retry-after": str(COOL_DOWN)},
    )
    provider.script = [limited]
    since = time.monotonic()
    first = site.served[0].prompt("cooled")
    assert first["ok"] and first["model_id"] == "backup-gpt", first  # it falls back at once
    [rate_limited] = provider.received_at(upstream("primary-gpt"), since)
    cooled = rate_limited + COOL_DOWN
    with Load(site.served, "cooled", per_process=2) as load:
        while time.monotonic() < cooled + 2.0:
            time.sleep(0.05)
    assert not load.failed(), f"{len(load.failed())} prompts failed:\n{shown(load.failed())}"
    during = provider.received_at(upstream("primary-gpt"), rate_limited + 0.001, cooled - 0.05)
    assert not during, (
        f"{len(during)} requests reached primary-gpt while it cooled down, the first "
        f"{during[0] - rate_limited:.2f} s after its 429 with Retry-After: {COOL_DOWN}"
    )
    meanwhile = [a for a in load.answers if a["answered"] < cooled]
    fell_back = {a["process"] for a in meanwhile if a["model_id"] == "backup-gpt"}
    assert fell_back == set(range(PROCESSES))  # every process fell back meanwhile
    after = provider.received_at(upstream("primary-gpt"), cooled - 0.05)
    assert after, "no process tried primary-gpt again once it had cooled down"
    assert after[0] < cooled + 1.5, f"primary-gpt was tried again {after[0] - cooled:.2f} s late"


# budgets


def test_prompts_at_once_through_every_process_spend_at_most_the_budget_and_one_estimate(
    site: Site,
) -> None:
    provider = site.provider
    since = time.monotonic()
    provider.latency = 0.3  # every prompt is in flight while the others are admitted
    try:
        with ThreadPoolExecutor(AT_ONCE) as pool:
            answers = list(
                pool.map(
                    lambda n: site.served[n % PROCESSES].prompt("budgeted"),
                    range(AT_ONCE),
                )
            )
    finally:
        provider.latency = 0.0
    answered = [a for a in answers if a["ok"]]
    refused = [a for a in answers if a.get("kind") == "budget"]
    others = [a for a in answers if not a["ok"] and a.get("kind") != "budget"]
    assert not others, f"{len(others)} prompts failed otherwise:\n{shown(others)}"
    sent = len(provider.received_at(upstream("budget-gpt"), since))
    assert sent == len(answered)
    spent = sent * ANSWER_USD
    assert spent <= BUDGET_USD + ANSWER_USD + 1e-9, (
        f"the three processes spent ${spent:.2f} ({sent} answers at ${ANSWER_USD}) of a "
        f"${BUDGET_USD:g} budget: more than one prompt's estimate over it"
    )
    assert len(answered) >= BUDGET_PROMPTS - 1  # the budget is spent, not refused early
    assert len(refused) == AT_ONCE - len(answered)


# overrides


class _Forms(HTMLParser):
    """The fields each form of a page sends as it stands, by the form's ``action``."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, str]] = {}
        self._form: dict[str, str] | None = None
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = self.forms.setdefault(a.get("action", ""), {})
        elif self._form is None:
            return
        elif tag == "option" and self._select is not None and "selected" in a:
            self._form[self._select] = a.get("value", "")
        elif "name" not in a:
            return
        elif tag == "input" and a.get("type") not in ("checkbox", "radio", "submit"):
            self._form[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = a["name"]
        elif tag == "textarea":
            self._textarea = a["name"]
            self._form[a["name"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._form is not None and self._textarea is not None:
            self._form[self._textarea] += data


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Editor:
    """A browser signed in as ``editor`` (allowed ``llm-manage-routing``) on one process."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = {"ds_actor": Datasette(secret=SECRET).sign({"a": {"id": "editor"}}, "actor")}
        self._opener = urllib.request.build_opener(_NoRedirects)

    def request(self, path: str, form: Mapping[str, str] | None = None) -> tuple[int, str]:
        """GET ``path``, or POST ``form`` to it; keep the cookies it sets; return the status
        and the body."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        request = urllib.request.Request(self.base + path, data=data, headers={"Cookie": cookie})
        try:
            response = self._opener.open(request, timeout=30)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            for header in response.headers.get_all("Set-Cookie") or []:
                jar: SimpleCookie = SimpleCookie()
                jar.load(header)
                self.cookies.update({name: morsel.value for name, morsel in jar.items()})
            return response.status, response.read().decode()

    def save_override(self, purpose: str, **fields: str) -> int:
        """Change ``fields`` of ``purpose``'s form on ``/-/llm`` and save it; return the status."""
        status, page = self.request("/-/llm")
        assert status == 200, page
        forms = _Forms()
        forms.feed(page)
        action = f"/-/llm/purposes/{purpose}"
        form = forms.forms[action]
        assert set(fields) <= set(form), f"the form of {purpose!r} has no {sorted(fields)}"
        status, page = self.request(action, {**form, **fields, "action": "save"})
        assert status == 302, f"{status}: {re.sub(r'<[^>]+>', ' ', page)[:2000]}"
        return status


def test_an_override_saved_through_one_process_routes_the_next_call_of_every_other(
    site: Site,
) -> None:
    writer, *others = site.served
    for served in site.served:
        assert served.prompt("routed")["model_id"] == "route-a-gpt"
    since = time.monotonic()
    Editor(writer.base).save_override("routed", model="route-b-gpt")
    for served in [*others, writer]:
        answer = served.prompt("routed")
        assert answer["ok"] and answer["model_id"] == "route-b-gpt", (
            f"process {site.served.index(served)} still routes by {answer.get('model_id')!r} "
            "after the override was saved"
        )
    assert site.provider.received_at(upstream("route-a-gpt"), since) == []


# Redis failing


def test_with_redis_stopped_mid_run_every_prompt_is_answered_and_limits_are_shared_again(
    provider: Provider, own_redis_server: RedisServer, tmp_path: Path
) -> None:
    # No ``processes``: while Redis is down each process keeps the whole rpm to itself, so the
    # provider sees when the three stop sharing it and when they share it again.
    served = start_site(provider, tmp_path, own_redis_server.url)
    model = upstream("paced-gpt")
    try:
        warm_up(served, "paced")
        since = time.monotonic()
        with Load(served, "paced") as load:
            time.sleep(3.0)
            own_redis_server.stop()
            stopped = time.monotonic()
            time.sleep(4.0)
            own_redis_server.start()
            restarted = time.monotonic()
            time.sleep(SHARED_AGAIN_WITHIN + 4.0)
        until = time.monotonic()
        assert not load.failed(), f"{len(load.failed())} prompts failed:\n{shown(load.failed())}"
        for index, each in enumerate(served):
            failures = redis_failures(each, own_redis_server.url)
            assert len(failures) == 1, f"process {index} logged:\n{each.stderr()}"
        counts = per_second(provider, model, since, until)
        shared = provider.busiest_second(model, since, stopped)
        assert shared <= PER_SECOND + 1, f"each second: {counts}"
        alone = provider.busiest_second(model, stopped + 1.0, restarted)
        assert alone > PER_SECOND + 1, f"the processes shared their limits without Redis: {counts}"
        again = provider.busiest_second(model, restarted + SHARED_AGAIN_WITHIN, until)
        assert again <= PER_SECOND + 1, (
            f"{again} requests within one second {SHARED_AGAIN_WITHIN:g} s after Redis came "
            f"back, where rpm {RPM:g} allows {PER_SECOND:g} (+1); each second from the start "
            f"(Redis stopped at {stopped - since:.1f} s, back at {restarted - since:.1f} s): "
            f"{counts}"
        )
    finally:
        stop_served(served)


def test_while_redis_cannot_be_reached_each_of_n_processes_keeps_a_nth_of_the_rpm(
    provider: Provider, tmp_path: Path
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    served = start_site(provider, tmp_path, nowhere, processes=PROCESSES)
    model = upstream("paced-gpt")
    try:
        warm_up(served, "paced")
        since = time.monotonic()
        with Load(served, "paced") as load:
            time.sleep(RUN_SECONDS)
        until = time.monotonic()
        assert not load.failed(), f"{len(load.failed())} prompts failed:\n{shown(load.failed())}"
        for index, each in enumerate(served):
            [failure] = redis_failures(each, nowhere) or [each.stderr()]
            assert f"keeps 1/{PROCESSES} of each model's rpm" in failure, f"process {index}"
        # Each process's third leaves evenly spaced once its first turn is taken.
        counts = per_second(provider, model, since, until)
        sent = len(provider.received_at(model, since + 1.0, since + RUN_SECONDS))
        allowed = PER_SECOND * (RUN_SECONDS - 1.0)
        assert sent <= allowed + PROCESSES, f"{sent} requests, each second: {counts}"
        assert sent >= 0.8 * allowed, f"{sent} requests, each second: {counts}"
    finally:
        stop_served(served)
