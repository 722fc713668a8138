"""Resolution: which model serves a call, step by step, and why."""

from __future__ import annotations

from typing import Any

import llm
import pytest

from datasette_llm import LLM, Actor, KeyStatus, ModelNotFoundError, Purpose, Resolution
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin

pytestmark = pytest.mark.usefixtures("test_models")

SUMMARIES = Purpose("summaries", owner="tests", default_model="test-b")


class DefaultModel:
    def __init__(self, answer: str | None, *, is_async: bool = False) -> None:
        self.answer = answer
        self.is_async = is_async
        self.calls: list[tuple[str | None, Actor | None]] = []

    @hookimpl
    def llm_default_model(self, purpose: str | None, actor: Actor | None) -> Any:
        self.calls.append((purpose, actor))
        if self.is_async:

            async def later() -> str | None:
                return self.answer

            return later()
        return self.answer


class Declares:
    def __init__(self, *purposes: Purpose) -> None:
        self.purposes = list(purposes)

    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return self.purposes


async def test_explicit_model_id_wins_and_is_not_checked_against_allowlists(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette({"models": ["test-a"], "blocked_models": ["test-c"]})
    resolution = await LLM(datasette).resolve("test-b", purpose="summaries")
    assert resolution == Resolution("test-b", "summaries", "explicit", KeyStatus("not_needed"))


async def test_explicit_unknown_model_id_raises_llms_unknown_model_error(
    make_datasette: MakeDatasette,
) -> None:
    with pytest.raises(llm.UnknownModelError, match="Unknown model: no-such-model"):
        await LLM(make_datasette()).model("no-such-model")


async def test_nothing_given_or_configured_raises_model_not_found_listing_what_was_tried(
    make_datasette: MakeDatasette,
) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        await LLM(make_datasette()).model(purpose="summaries")
    message = str(caught.value)
    assert message == (
        "No model_id provided and no default_model configured for purpose 'summaries': no "
        "llm_default_model hook answered and nothing is configured. Pass model_id=, or set "
        "plugins.datasette-llm.purposes.summaries.model or plugins.datasette-llm.default_model "
        "in datasette.yaml."
    )


async def test_hook_llm_default_model_runs_before_configuration(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    hook = DefaultModel("test-c")
    register_plugin(hook, name="picks-c")
    datasette = make_datasette({"default_model": "test-a", "purposes": {"s": {"model": "test-b"}}})
    actor = {"id": "alice"}
    resolution = await LLM(datasette).resolve(purpose="s", actor=actor)
    assert (resolution.model_id, resolution.step, resolution.chosen_by) == (
        "test-c",
        "hook",
        "picks-c",
    )
    assert hook.calls == [("s", actor)]


async def test_hook_llm_default_model_may_return_an_awaitable_or_none(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    register_plugin(DefaultModel(None), name="abstains")
    datasette = make_datasette({"default_model": "test-a"})
    assert (await LLM(datasette).resolve()).step == "default_model"
    register_plugin(DefaultModel("test-b", is_async=True), name="async-picks-b")
    assert (await LLM(datasette).resolve()).model_id == "test-b"


async def test_hook_llm_default_model_returning_a_blocked_model_is_skipped(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    register_plugin(DefaultModel("test-c"), name="picks-blocked")
    datasette = make_datasette({"default_model": "test-a", "blocked_models": ["test-c"]})
    resolution = await LLM(datasette).resolve(purpose="s")
    assert resolution.model_id == "test-a"
    assert resolution.skipped == (
        "llm_default_model in plugin 'picks-blocked' chose 'test-c', skipped because it is "
        "in blocked_models",
    )


async def test_purpose_configuration_comes_before_the_global_default(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(
        {"default_model": "test-a", "purposes": {"s": {"model": {"model": "test-b"}}}}
    )
    assert (await LLM(datasette).resolve(purpose="s")).step == "purpose_config"
    assert (await LLM(datasette).resolve(purpose="s")).model_id == "test-b"
    assert (await LLM(datasette).resolve(purpose="other")).model_id == "test-a"
    assert (await LLM(datasette).resolve()).model_id == "test-a"


async def test_purpose_default_model_is_used_when_the_operator_configured_none(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    register_plugin(Declares(SUMMARIES), name="declares")
    datasette = make_datasette({"default_model": "test-a"})
    resolution = await LLM(datasette).resolve(purpose="summaries")
    assert (resolution.model_id, resolution.step) == ("test-b", "purpose_default")
    # A Purpose object carries its default_model even when no plugin registered it.
    unregistered = Purpose("unregistered", default_model="test-c")
    assert (await LLM(datasette).resolve(purpose=unregistered)).model_id == "test-c"


@pytest.mark.parametrize(
    ("default_model", "llm_config", "reason"),
    [
        ("not-installed", {}, "recommends 'not-installed', skipped because it is not installed"),
        ("test-b", {"models": ["test-a"]}, "not in the allowlist for this purpose"),
        ("test-b", {"blocked_models": ["test-b"]}, "skipped because it is in blocked_models"),
        (
            "test-b",
            {"purposes": {"p": {"blocked_models": ["test-b"]}}},
            "it is in purposes.p.blocked_models",
        ),
        ("test-keyed", {}, "because it has no API key (set the secret TESTPROV_API_KEY)"),
    ],
)
async def test_purpose_default_model_is_skipped_unless_installed_allowed_and_keyed(
    make_datasette: MakeDatasette,
    default_model: str,
    llm_config: dict[str, Any],
    reason: str,
) -> None:
    datasette = make_datasette({"default_model": "test-a", **llm_config})
    resolution = await LLM(datasette).resolve(purpose=Purpose("p", default_model=default_model))
    assert resolution.model_id == "test-a"
    assert resolution.step == "default_model"
    assert len(resolution.skipped) == 1
    assert reason in resolution.skipped[0]


async def test_purpose_default_model_with_a_key_in_the_environment_is_used(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESTPROV_KEY", "sk-from-env")
    resolution = await LLM(make_datasette()).resolve(
        purpose=Purpose("p", default_model="test-keyed")
    )
    assert (resolution.model_id, resolution.step, resolution.key) == (
        "test-keyed",
        "purpose_default",
        KeyStatus("llm"),
    )


async def test_every_candidate_blocked_raises_model_not_found_with_reasons(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(
        {
            "default_model": "test-a",
            "blocked_models": ["test-a"],
            "purposes": {"p": {"model": "test-b", "blocked_models": ["test-b"]}},
        }
    )
    with pytest.raises(ModelNotFoundError) as caught:
        await LLM(datasette).model(purpose="p")
    message = str(caught.value)
    assert (
        "purposes.p.model chose 'test-b', skipped because it is in purposes.p.blocked_models"
        in (message)
    )
    assert "default_model chose 'test-a', skipped because it is in blocked_models" in message


async def test_purpose_may_be_a_string_or_a_purpose_and_nothing_else(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette({"purposes": {"summaries": {"model": "test-c"}}})
    assert (await LLM(datasette).model(purpose=SUMMARIES)).purpose == "summaries"
    assert (await LLM(datasette).model(purpose="summaries")).model_id == "test-c"
    with pytest.raises(TypeError, match=r"purpose= must be a string, a datasette_llm\.Purpose"):
        await LLM(datasette).model(purpose=3)  # type: ignore[arg-type]  # the point of the test


async def test_aliases_resolve_to_the_aliased_model(
    make_datasette: MakeDatasette, llm_user_dir: Any
) -> None:
    (llm_user_dir / "aliases.json").write_text('{"fast": "test-a"}')
    datasette = make_datasette({"default_model": "fast"})
    assert (await LLM(datasette).model()).model_id == "test-a"


async def test_resolution_never_contains_the_key(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch, test_models: TestModelsPlugin
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "sk-canary-123")
    resolution = await LLM(make_datasette({"default_model": "test-keyed"})).resolve()
    assert resolution.key == KeyStatus("secret", "TESTPROV_API_KEY")
    assert "sk-canary-123" not in repr(resolution)
