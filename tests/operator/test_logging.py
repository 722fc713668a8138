"""What ``datasette serve`` logs: each change of state once, never once per prompt.

- a model starts cooling down after a rate limit (a warning), and answers again (info);
- a purpose's prompts start being answered by a fallback (a warning), and by its routed model
  again (info);
- a purpose's budget first refuses (a warning), and admits again in a new period or with a
  higher ``usd`` (info);
- at startup, each configured model that has no API key (a warning naming the secret).

Against a real Datasette, the suite's keyless llm models, llm's own OpenAI plugin and the local
provider (``tests/openai_server.py``) for rate limits, through the project's logger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import llm
import pytest
from datasette.utils import StartupError

from datasette_llm import LLM, Actor, BudgetExceededError, ProviderError, Purpose
from datasette_llm._operator.checks import defer_startup_validation
from datasette_llm.config.parser import parse_config
from datasette_llm.typing import Datasette, hookimpl
from datasette_llm.usage.budgets import admit
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import FreeModel, ServerErrorModel, SyncStub
from tests.openai_server import Provider, Reply, serve, write_extra_models

ROOT: Final = "plugins.datasette-llm"
CANARY: Final = "sk-canary-0123456789abcdef"

pytestmark = pytest.mark.usefixtures("test_models")


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The records of datasette-llm's logger, from INFO up."""
    caplog.set_level(logging.INFO, logger="datasette_llm")
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(record.levelname, record.getMessage()) for record in caplog.records]


async def prompt(ds: Datasette, text: str = "hi") -> str:
    model = await LLM(ds).model(purpose="summaries")
    return await (await model.prompt(text)).text()


async def prompt_at_once(ds: Datasette, count: int) -> list[object]:
    prompts = (prompt(ds, f"prompt {number}") for number in range(count))
    return list(await asyncio.gather(*prompts, return_exceptions=True))


# A model cools down after a rate limit, and recovers


def too_many(seconds: str) -> Reply:
    return Reply(status=429, message="slow down", headers={"retry-after": seconds})


@pytest.fixture
def primary(llm_user_dir: Path) -> Iterator[Provider]:
    """The provider of ``primary-gpt``; ``backup-gpt``'s answers ``from the backup``."""
    with serve() as first, serve(default=Reply(text="from the backup")) as backup:
        write_extra_models(llm_user_dir, {"primary-gpt": first, "backup-gpt": backup})
        yield first


COOLING: Final = (
    "WARNING",
    "datasette-llm: model 'primary-gpt' is rate limited by its provider and cools down for 0.3 s "
    "(its provider's Retry-After): prompts that may fall back on rate_limit go to their "
    "fallbacks meanwhile, the others wait. If this recurs, set rpm or concurrency on the model "
    "to stay under the provider's limit, or raise that limit.",
)
COOLED: Final = (
    "INFO",
    "datasette-llm: model 'primary-gpt' answers again after its rate limits: its cool-down is "
    "over and prompts go to it again. Nothing to do.",
)


async def test_five_rate_limited_prompts_log_one_cool_down_and_one_recovery(
    make_datasette: MakeDatasette, primary: Provider, logged: pytest.LogCaptureFixture
) -> None:
    settings = {"model": "primary-gpt", "fallbacks": ["backup-gpt"], "retries": 0}
    ds = make_datasette({"purposes": {"summaries": settings}})
    primary.default = too_many("0.3")
    assert await prompt_at_once(ds, 5) == ["from the backup"] * 5
    assert len(primary.requests) >= 1
    fell_back = (
        "WARNING",
        "datasette-llm: fallback 'backup-gpt' answers prompts of purpose 'summaries' instead of "
        "their routed model 'primary-gpt' (it failed with rate_limit), until 'primary-gpt' "
        "answers again. Set rpm or concurrency on 'primary-gpt' to stay under its provider's "
        "rate limit, or raise that limit.",
    )
    assert lines(logged) == [COOLING, fell_back]
    primary.default = Reply(text="the primary has recovered")
    await asyncio.sleep(0.4)
    assert await prompt(ds) == "the primary has recovered"
    assert await prompt(ds) == "the primary has recovered"
    assert lines(logged)[2:] == [
        COOLED,
        (
            "INFO",
            "datasette-llm: routed model 'primary-gpt' answers prompts of purpose 'summaries' "
            "again (they fell back to 'backup-gpt'). Nothing to do.",
        ),
    ]


async def test_a_rate_limit_while_cooling_extends_the_cool_down_silently(
    make_datasette: MakeDatasette, primary: Provider, logged: pytest.LogCaptureFixture
) -> None:
    # No fallback: each prompt waits out the cool-down, then meets another rate limit.
    ds = make_datasette({"purposes": {"summaries": {"model": "primary-gpt", "retries": 0}}})
    primary.script = [too_many("0.3"), too_many("0.3")]
    primary.default = Reply(text="at last")
    for _ in range(2):
        with pytest.raises(ProviderError, match="rate_limit"):
            await prompt(ds)
    assert len(primary.requests) == 2
    assert await prompt(ds) == "at last"  # waits out the second cool-down
    assert lines(logged) == [COOLING, COOLED]


# A purpose falls back, and its routed model answers again


class Flaky(ServerErrorModel):
    """A keyless model whose provider fails with a server error while ``down``."""

    down = True

    async def execute(self, prompt: Any, stream: bool, response: Any, conversation: Any) -> Any:
        provider = ServerErrorModel.execute if self.down else FreeModel.execute
        async for chunk in provider(self, prompt, stream, response, conversation):
            yield chunk


class FlakyPlugin:
    __test__ = False

    def __init__(self) -> None:
        self.model = Flaky("test-flaky")

    @llm.hookimpl
    def register_models(self, register: Any) -> None:
        register(SyncStub("test-flaky"), self.model)


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    plugin = FlakyPlugin()
    llm.plugins.pm.register(plugin, name="datasette-llm-test-flaky")
    try:
        yield plugin.model
    finally:
        llm.plugins.pm.unregister(name="datasette-llm-test-flaky")


FALLS_BACK: Final = {
    "purposes": {"summaries": {"model": "test-flaky", "fallbacks": ["test-a"], "retries": 0}}
}


async def test_ten_prompts_falling_back_log_one_warning_and_the_recovery_one_info(
    make_datasette: MakeDatasette, flaky: Flaky, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette(FALLS_BACK)
    answers = await prompt_at_once(ds, 10)
    assert answers == [f"test-a:prompt {number}" for number in range(10)]
    assert await prompt(ds) == "test-a:hi"
    assert lines(logged) == [
        (
            "WARNING",
            "datasette-llm: fallback 'test-a' answers prompts of purpose 'summaries' instead of "
            "their routed model 'test-flaky' (it failed with server_error), until 'test-flaky' "
            "answers again. Check the provider of 'test-flaky' (its status page, its key), or "
            "route the purpose to another model (/-/llm shows its chain).",
        )
    ]
    flaky.down = False
    assert await prompt_at_once(ds, 3) == [f"test-flaky:prompt {number}" for number in range(3)]
    assert lines(logged)[1:] == [
        (
            "INFO",
            "datasette-llm: routed model 'test-flaky' answers prompts of purpose 'summaries' "
            "again (they fell back to 'test-a'). Nothing to do.",
        )
    ]


async def test_falling_back_again_after_recovering_logs_again(
    make_datasette: MakeDatasette, flaky: Flaky, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette(FALLS_BACK)
    for down in (True, False, True, False):
        flaky.down = down
        await prompt(ds)
        await prompt(ds)
    assert [level for level, _ in lines(logged)] == ["WARNING", "INFO", "WARNING", "INFO"]


async def test_each_purpose_falls_back_on_its_own(
    make_datasette: MakeDatasette, flaky: Flaky, logged: pytest.LogCaptureFixture
) -> None:
    settings = {"model": "test-flaky", "fallbacks": ["test-a"], "retries": 0}
    ds = make_datasette({"purposes": {"summaries": settings, "extract": settings}})
    for purpose in ("summaries", "extract", "summaries", "extract"):
        model = await LLM(ds).model(purpose=purpose)
        assert await (await model.prompt("hi")).text() == "test-a:hi"
    assert [line.partition(" instead")[0] for _, line in lines(logged)] == [
        "datasette-llm: fallback 'test-a' answers prompts of purpose 'summaries'",
        "datasette-llm: fallback 'test-a' answers prompts of purpose 'extract'",
    ]


# A budget runs out, and renews

PRICING: Final = {"test-a": {"input": 1000.0, "output": 1000.0}}  # "hi": $0.011 a prompt


def budgeted(usd: float, then: str = "refuse") -> dict[str, Any]:
    budget = {"usd": usd, "per": "day", "then": then}
    purpose = {"model": "test-a", "fallbacks": ["test-b"], "budget": budget}
    return {"pricing": PRICING, "purposes": {"summaries": purpose}}


def spent_warning(then: str) -> str:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    return (
        f"datasette-llm: purpose 'summaries' has spent its $0.01 budget for the day starting "
        f"{today} (UTC): its prompts {then} until the next day. Raise "
        f"{ROOT}.purposes.summaries.budget.usd to allow more"
    )


async def test_a_spent_budget_logs_one_warning_for_many_refusals_and_one_info_when_raised(
    make_datasette: MakeDatasette, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette(budgeted(0.01))
    assert await prompt(ds) == "test-a:hi"  # spends the budget
    refusals = await prompt_at_once(ds, 10)
    assert all(isinstance(refusal, BudgetExceededError) for refusal in refusals)
    assert lines(logged) == [
        (
            "WARNING",
            spent_warning("are refused with BudgetExceededError")
            + f", or set {ROOT}.purposes.summaries.budget.then: fallback to send its prompts "
            "to its fallbacks.",
        )
    ]
    assert ds.config is not None
    ds.config["plugins"]["datasette-llm"] = budgeted(1)  # a new section: read again
    assert await prompt(ds) == "test-a:hi"
    assert await prompt(ds) == "test-a:hi"
    assert lines(logged)[1:] == [
        (
            "INFO",
            "datasette-llm: purpose 'summaries' is within its $1 budget for the day again (its "
            "usd was raised from $0.01): its prompts go to its routed model again. Nothing to do.",
        )
    ]


async def test_a_budget_that_falls_back_logs_it_once_and_renews_in_a_new_period(
    make_datasette: MakeDatasette, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette(budgeted(0.01, then="fallback"))
    assert await prompt(ds) == "test-a:hi"
    assert await prompt_at_once(ds, 5) == [f"test-b:prompt {number}" for number in range(5)]
    assert lines(logged) == [
        (
            "WARNING",
            spent_warning("go to its fallbacks (and are refused when it has none)") + ".",
        ),
        (
            "WARNING",
            "datasette-llm: fallback 'test-b' answers prompts of purpose 'summaries' instead of "
            "their routed model 'test-a' (the purpose has spent its budget), until 'test-a' "
            "answers again. The budget's own warning says more.",
        ),
    ]
    budget = parse_config(budgeted(0.01, then="fallback")).purposes["summaries"].budget
    assert budget is not None
    tomorrow = time.time() + 86_400
    held = await admit(ds, "summaries", budget, 0.0, tomorrow)
    held.release()
    assert lines(logged)[2:] == [
        (
            "INFO",
            "datasette-llm: purpose 'summaries' is within its $0.01 budget for the day again (a "
            "new day began): its prompts go to its routed model again. Nothing to do.",
        )
    ]


async def test_room_freed_by_prompts_ending_near_the_limit_logs_nothing(
    make_datasette: MakeDatasette, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette(budgeted(0.01))
    budget = parse_config(budgeted(0.01)).purposes["summaries"].budget
    assert budget is not None
    now = time.time()
    held = await admit(ds, "summaries", budget, 0.01, now)  # holds the whole budget
    with pytest.raises(BudgetExceededError):
        await admit(ds, "summaries", budget, 0.01, now)
    held.release()
    held = await admit(ds, "summaries", budget, 0.01, now)  # room again, the same budget: no news
    with pytest.raises(BudgetExceededError):
        await admit(ds, "summaries", budget, 0.01, now)
    held.release()
    assert [level for level, _ in lines(logged)] == ["WARNING"]


# At startup: each configured model without a key


class Routes:
    """An ``llm_default_model`` that answers nothing, noting each purpose routed."""

    def __init__(self) -> None:
        self.routed: list[str | None] = []

    @hookimpl
    def llm_default_model(self, purpose: str | None, actor: Actor | None) -> None:
        self.routed.append(purpose)


class Declares:
    """Registers the purposes the startup tests configure (else startup warns of each)."""

    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [Purpose(name, owner="tests") for name in ("extract", "enrichments", "summaries")]


@pytest.fixture
def routes(register_plugin: RegisterPlugin) -> Routes:
    """Note each purpose routed, with the configured purposes registered."""
    register_plugin(Declares(), name="declares")
    hook = Routes()
    register_plugin(hook, name="notes-routing")
    return hook


def no_key(purpose: str, model_id: str, goes: str) -> tuple[str, str]:
    return (
        "WARNING",
        f"datasette-llm: {ROOT}.purposes.{purpose}.model: '{model_id}' has no API key, so calls "
        f"for purpose '{purpose}' {goes}. Set the secret TESTPROV_API_KEY (datasette-secrets, or "
        "the environment variable DATASETTE_SECRETS_TESTPROV_API_KEY), or configure another "
        "model.",
    )


async def test_hook_startup_warns_of_each_configured_model_without_a_key_naming_the_secret(
    make_datasette: MakeDatasette,
    routes: Routes,
    logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENRICHMENTS_KEY", CANARY)
    ds = make_datasette(
        {
            "default_model": "test-a",
            "purposes": {
                "extract": {"model": "test-keyed"},
                "enrichments": {
                    "model": {"model": "test-keyed-2", "key": {"$env": "ENRICHMENTS_KEY"}}
                },
                "summaries": {"model": "test-b"},
            },
        }
    )
    await ds.invoke_startup()
    assert lines(logged) == [no_key("extract", "test-keyed", "go to 'test-a' instead")]
    assert routes.routed == ["extract"]  # only the purpose whose key is missing is routed
    assert CANARY not in logged.text
    assert all(CANARY not in logging.Formatter().format(record) for record in logged.records)


async def test_hook_startup_warns_when_no_other_model_may_serve_a_purpose_without_a_key(
    make_datasette: MakeDatasette, routes: Routes, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette({"purposes": {"extract": {"model": "test-keyed"}}})
    await ds.invoke_startup()
    assert lines(logged) == [no_key("extract", "test-keyed", "fail: no other model may serve them")]


async def test_hook_startup_with_strict_stops_on_a_configured_model_without_a_key(
    make_datasette: MakeDatasette, routes: Routes, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette(
        {
            "strict": True,
            "default_model": "test-a",
            "purposes": {"extract": {"model": "test-keyed"}},
        }
    )
    with pytest.raises(StartupError) as raised:
        await ds.invoke_startup()
    message = str(raised.value)
    assert f"{ROOT}.purposes.extract.model: 'test-keyed' has no API key" in message
    assert "Set the secret TESTPROV_API_KEY" in message
    assert message.endswith("Warnings count as errors because strict: true is set.")
    assert lines(logged) == []


async def test_hook_startup_routes_nothing_when_no_configured_model_needs_a_key(
    make_datasette: MakeDatasette, routes: Routes, logged: pytest.LogCaptureFixture
) -> None:
    ds = make_datasette({"default_model": "test-a", "purposes": {"summaries": {"model": "test-b"}}})
    await ds.invoke_startup()
    assert (routes.routed, lines(logged)) == ([], [])


@pytest.mark.parametrize("why", ["require_keys: false", "a datasette llm command"])
async def test_hook_startup_leaves_keys_alone_when_they_are_not_its_to_report(
    make_datasette: MakeDatasette, routes: Routes, logged: pytest.LogCaptureFixture, why: str
) -> None:
    config: dict[str, Any] = {"purposes": {"extract": {"model": "test-keyed"}}}
    if why == "require_keys: false":
        config["require_keys"] = False
    ds = make_datasette(config)
    if why == "a datasette llm command":
        defer_startup_validation(ds)  # check reports the warnings itself
    await ds.invoke_startup()
    assert (routes.routed, lines(logged)) == ([], [])
