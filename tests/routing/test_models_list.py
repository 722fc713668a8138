"""``LLM.models()``: keys, allowlists, blocklists, filter hooks narrowing in turn, ordering."""

from __future__ import annotations

from typing import Any

import pytest
from llm import AsyncModel

from datasette_llm import LLM, Actor
from datasette_llm.typing import hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")


def ids(models: list[AsyncModel]) -> list[str]:
    return [model.model_id for model in models]


async def test_require_keys_leaves_out_models_without_a_key(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasette = make_datasette({})
    listed = ids(await LLM(datasette).models())
    assert "test-a" in listed and "echo" in listed
    assert "test-keyed" not in listed and "echo-needs-key" not in listed
    monkeypatch.setenv("DATASETTE_SECRETS_TESTPROV_API_KEY", "sk-test")
    listed = ids(await LLM(datasette).models())
    assert "test-keyed" in listed and "test-keyed-2" in listed


async def test_require_keys_false_lists_every_model(make_datasette: MakeDatasette) -> None:
    listed = ids(await LLM(make_datasette({"require_keys": False})).models())
    assert {"test-keyed", "echo-needs-key"} <= set(listed)


async def test_a_purposes_custom_key_counts_only_for_that_model(
    make_datasette: MakeDatasette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASETTE_SECRETS_TEAM_KEY", "sk-team")
    datasette = make_datasette(
        {"purposes": {"p": {"models": [{"model": "test-keyed", "key": "TEAM_KEY"}]}}}
    )
    assert ids(await LLM(datasette).models(purpose="p")) == ["test-keyed"]
    assert "test-keyed" not in ids(await LLM(datasette).models())


async def test_global_allowlist_includes_the_default_model(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette({"models": ["test-b", "test-a"], "default_model": "test-c"})
    assert ids(await LLM(datasette).models()) == ["test-c", "test-b", "test-a"]


async def test_purpose_models_widen_the_global_allowlist_and_include_both_defaults(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(
        {
            "models": ["test-a"],
            "purposes": {"p": {"model": "test-c", "models": ["test-b", {"model": "echo"}]}},
        }
    )
    assert ids(await LLM(datasette).models(purpose="p")) == ["test-c", "test-b", "echo", "test-a"]
    assert ids(await LLM(datasette).models(purpose="other")) == ["test-a"]


@pytest.mark.parametrize(
    ("purpose_model", "expected"),
    [
        (None, ["echo", "test-keyed-2", "test-a", "test-keyed", "test-b"]),
        ("test-keyed-2", ["test-keyed-2", "echo", "test-a", "test-keyed", "test-b"]),
        ({"model": "test-keyed-2"}, ["test-keyed-2", "echo", "test-a", "test-keyed", "test-b"]),
    ],
)
async def test_the_worked_example_of_compat_md(
    make_datasette: MakeDatasette, purpose_model: object, expected: list[str]
) -> None:
    # ../shared/COMPAT.md, with test models for gpt-4o, gpt-4o-mini, echo, gpt-4.1, gpt-4.1-mini.
    extract: dict[str, object] = {"models": ["echo", "test-keyed-2"]}
    if purpose_model is not None:
        extract["model"] = purpose_model
    datasette = make_datasette(
        {
            "require_keys": False,
            "models": ["test-a", "test-keyed", "echo", "test-b", "test-keyed-2"],
            "purposes": {"extract": extract},
        }
    )
    assert ids(await LLM(datasette).models(purpose="extract")) == expected


async def test_blocklists_global_and_per_purpose_apply(make_datasette: MakeDatasette) -> None:
    datasette = make_datasette(
        {"blocked_models": ["test-a"], "purposes": {"p": {"blocked_models": ["test-b"]}}}
    )
    everywhere = ids(await LLM(datasette).models())
    for_p = ids(await LLM(datasette).models(purpose="p"))
    assert "test-a" not in everywhere and "test-b" in everywhere
    assert "test-a" not in for_p and "test-b" not in for_p


async def test_ordering_default_then_purpose_list_then_global_list_then_registry_order(
    make_datasette: MakeDatasette,
) -> None:
    datasette = make_datasette(
        {
            "default_model": "test-c",
            "models": ["echo", "test-b", "test-a", "test-c", "test-fails"],
            "purposes": {"p": {"models": ["test-fails", "test-a"]}},
        }
    )
    assert ids(await LLM(datasette).models()) == [
        "test-c",
        "echo",
        "test-b",
        "test-a",
        "test-fails",
    ]
    # The purpose's list comes first, then the global one; the global default leads both.
    assert ids(await LLM(datasette).models(purpose="p")) == [
        "test-c",
        "test-fails",
        "test-a",
        "echo",
        "test-b",
    ]


async def test_without_configuration_models_come_in_registry_order(
    make_datasette: MakeDatasette,
) -> None:
    listed = ids(await LLM(make_datasette()).models())
    assert listed.index("test-a") < listed.index("test-b") < listed.index("test-c")


class Keep:
    def __init__(self, *keep: str, calls: list[tuple[str, list[str]]] | None = None) -> None:
        self.keep = keep
        self.calls = calls if calls is not None else []

    @hookimpl
    def llm_filter_models(
        self, models: list[AsyncModel], actor: Actor | None, purpose: str | None
    ) -> list[AsyncModel]:
        self.calls.append((",".join(self.keep), ids(models)))
        return [model for model in models if model.model_id in self.keep]


class BringsBack:
    def __init__(self, model: AsyncModel) -> None:
        self.model = model

    @hookimpl
    def llm_filter_models(self, models: list[AsyncModel]) -> list[AsyncModel]:
        return [*models, self.model]


async def test_hook_llm_filter_models_narrow_one_after_another(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    calls: list[tuple[str, list[str]]] = []
    register_plugin(Keep("test-a", "test-b", calls=calls), name="keeps-ab")
    register_plugin(Keep("test-b", "test-c", calls=calls), name="keeps-bc")
    datasette = make_datasette({"models": ["test-a", "test-b", "test-c"]})
    assert ids(await LLM(datasette).models()) == ["test-b"]
    # The later-registered plugin runs first (pluggy order); the next sees only what it left.
    assert calls == [
        ("test-b,test-c", ["test-a", "test-b", "test-c"]),
        ("test-a,test-b", ["test-b", "test-c"]),
    ]


async def test_hook_llm_filter_models_cannot_bring_back_a_blocked_model(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, caplog: pytest.LogCaptureFixture
) -> None:
    import llm

    register_plugin(BringsBack(llm.get_async_model("test-a")), name="brings-back")
    datasette = make_datasette({"blocked_models": ["test-a"]})
    assert "test-a" not in ids(await LLM(datasette).models())
    assert "llm_filter_models in plugin 'brings-back' returned 'test-a'" in caplog.text


async def test_hook_llm_filter_models_may_be_async_and_receives_actor_and_purpose(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    seen: list[Any] = []

    class AsyncFilter:
        @hookimpl
        def llm_filter_models(
            self, models: list[AsyncModel], actor: Actor | None, purpose: str | None
        ) -> Any:
            async def narrowed() -> list[AsyncModel]:
                seen.append((actor, purpose))
                return [model for model in models if model.model_id == "echo"]

            return narrowed()

    register_plugin(AsyncFilter(), name="async-filter")
    actor = {"id": "bob"}
    assert ids(await LLM(make_datasette()).models(actor=actor, purpose="p")) == ["echo"]
    assert seen == [(actor, "p")]


async def test_hook_llm_filter_models_returning_none_keeps_the_list(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    class Abstains:
        @hookimpl
        def llm_filter_models(self) -> None:
            return None

    register_plugin(Abstains(), name="abstains")
    assert "test-a" in ids(await LLM(make_datasette()).models())


async def test_models_are_llms_own_async_model_objects(make_datasette: MakeDatasette) -> None:
    models = await LLM(make_datasette({"default_model": "echo"})).models()
    echo = models[0]
    assert isinstance(echo, AsyncModel)
    assert (echo.model_id, str(echo)) == ("echo", "EchoAsync (async): echo")
    assert (echo.supports_schema, echo.supports_tools) == (False, True)
