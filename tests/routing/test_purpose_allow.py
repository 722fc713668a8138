"""A purpose's own ``allow:`` block decides who may use it (``llm-use``), in our configuration."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import pytest
from datasette.utils import StartupError

from datasette_llm import LLM, ConfigurationError, Purpose, PurposeNotAllowedError
from datasette_llm.routing.permissions import USE, PurposeResource
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin

ALICE: Final = {"id": "alice"}
CAROL: Final = {"id": "carol"}
ROOT: Final = {"id": "root"}
PATH: Final = "plugins.datasette-llm.purposes.extract"


class Purposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [Purpose("enrichments", owner="tests"), Purpose("extract", owner="tests")]


@pytest.fixture
def make(
    test_models: TestModelsPlugin, register_plugin: RegisterPlugin, make_datasette: MakeDatasette
) -> Any:
    """Build a Datasette (``--root``) whose purpose ``extract`` has ``allow`` (under ``key``)."""
    register_plugin(Purposes())

    def build(allow: object = None, key: str = "allow", **config: Any) -> Datasette:
        extract: dict[str, object] = {"model": "test-a"}
        if allow is not None:
            extract[key] = allow
        llm_config = {
            "default_model": "test-a",
            "purposes": {"enrichments": {"model": "test-b"}, "extract": extract},
        }
        datasette = make_datasette(llm_config, config=config)
        datasette.root_enabled = True
        return datasette

    return build


async def may(datasette: Datasette, purpose: str | None, actor: Mapping[str, object]) -> bool:
    """Return whether ``LLM.model()`` gives ``actor`` a model for ``purpose``; check Datasette
    agrees."""
    try:
        await LLM(datasette).model(purpose=purpose, actor=actor)
    except PurposeNotAllowedError as error:
        assert (error.purpose, error.actor_id) == (purpose, actor.get("id"))
        allowed = False
    else:
        allowed = True
    if purpose is not None and actor.get("id") != "root":
        resource = PurposeResource(purpose)
        assert await datasette.allowed(action=USE, resource=resource, actor=actor) is allowed
    return allowed


async def problems(datasette: Datasette) -> list[str]:
    """Return the configuration problems a call reports."""
    with pytest.raises(ConfigurationError) as caught:
        await LLM(datasette).model(purpose="extract", actor=CAROL)
    return [str(problem) for problem in caught.value.problems]


# --- an allow block restricts its purpose, and only it -------------------------------------------


async def test_an_actor_the_block_matches_may_use_the_purpose_and_another_may_not(
    make: Any,
) -> None:
    datasette = make({"id": ["carol"]})
    assert await may(datasette, "extract", CAROL)
    assert not await may(datasette, "extract", ALICE)


async def test_other_purposes_and_calls_without_a_purpose_stay_allowed_by_default(
    make: Any,
) -> None:
    datasette = make({"id": ["carol"]})
    assert await may(datasette, "enrichments", ALICE)
    assert await may(datasette, None, ALICE)


async def test_the_block_overrides_a_global_rule_for_its_purpose(make: Any) -> None:
    datasette = make({"id": "carol"}, permissions={USE: {"id": "alice"}})
    assert await may(datasette, "extract", CAROL)
    assert not await may(datasette, "extract", ALICE)
    assert await may(datasette, "enrichments", ALICE)
    assert not await may(datasette, "enrichments", CAROL)


async def test_false_refuses_everyone_but_root_under_root(make: Any) -> None:
    datasette = make(False)
    assert not await may(datasette, "extract", ALICE)
    assert await may(datasette, "extract", ROOT)
    assert await datasette.allowed(action=USE, resource=PurposeResource("extract"), actor=ROOT)
    assert await may(datasette, "enrichments", ALICE)
    datasette.root_enabled = False
    assert not await may(datasette, "extract", ROOT)


async def test_true_allows_everyone_even_under_default_deny(make: Any) -> None:
    datasette = make(True)
    datasette.default_deny = True
    assert await may(datasette, "extract", ALICE)
    assert not await may(datasette, "enrichments", ALICE)


async def test_default_deny_still_refuses_everyone_the_block_does_not_match(make: Any) -> None:
    datasette = make({"id": ["carol"]})
    datasette.default_deny = True
    assert await may(datasette, "extract", CAROL)
    assert not await may(datasette, "extract", ALICE)
    assert not await may(datasette, "enrichments", CAROL)
    assert await may(datasette, "enrichments", ROOT)


async def test_the_block_is_read_as_datasette_reads_one(make: Any) -> None:
    datasette = make({"roles": ["staff"]})
    assert await may(datasette, "extract", {"id": "dave", "roles": ["staff", "ops"]})
    assert not await may(datasette, "extract", {"id": "erin", "roles": ["ops"]})
    anyone = make({"id": "*"})
    assert await may(anyone, "extract", ALICE)
    assert not await may(anyone, "extract", {"name": "no id"})


async def test_an_id_may_come_from_an_environment_variable(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXTRACT_USER", "carol")
    datasette = make({"id": [{"$env": "EXTRACT_USER"}, "dave"]})
    assert await may(datasette, "extract", CAROL)
    assert not await may(datasette, "extract", ALICE)


async def test_a_purpose_name_with_a_quote_is_bound_not_spliced_into_sql(
    test_models: TestModelsPlugin, make_datasette: MakeDatasette
) -> None:
    datasette = make_datasette(
        {"default_model": "test-a", "purposes": {"o'brien": {"allow": False}}}
    )
    assert not await may(datasette, "o'brien", ALICE)
    assert await may(datasette, "o", ALICE)


# --- the deprecated databases: form -------------------------------------------------------------


async def test_a_block_under_databases_still_works(make: Any) -> None:
    datasette = make(databases={"extract": {"permissions": {USE: {"id": "carol"}}}})
    assert await may(datasette, "extract", CAROL)
    assert not await may(datasette, "extract", ALICE)
    assert await may(datasette, "enrichments", ALICE)


async def test_with_both_forms_an_actor_must_match_both(make: Any) -> None:
    datasette = make(
        {"id": ["carol", "dave"]},
        databases={"extract": {"permissions": {USE: {"id": ["carol", "alice"]}}}},
    )
    assert await may(datasette, "extract", CAROL)
    assert not await may(datasette, "extract", ALICE)
    assert not await may(datasette, "extract", {"id": "dave"})


# --- the refusal, the value, the page -----------------------------------------------------------


async def test_the_refusal_suggests_the_purposes_allow_block(make: Any) -> None:
    datasette = make({"id": ["carol"]})
    with pytest.raises(PurposeNotAllowedError) as raised:
        await LLM(datasette).model(purpose="extract", actor=ALICE)
    # The rule that refused, and the block to add the actor to.
    assert str(raised.value) == (
        f"Actor 'alice' may not use the purpose 'extract': {PATH}.allow lets through only the "
        f'actor carol. To allow it, add "alice" to the block at {PATH}.allow.'
    )


async def test_the_block_is_kept_frozen_and_given_to_datasette_as_written(make: Any) -> None:
    datasette = make({"id": ["carol"], "roles": "staff"})
    purpose = LLM(datasette).config.purpose("extract")
    assert purpose is not None
    assert purpose.allow == MappingProxyType({"id": ("carol",), "roles": "staff"})
    assert isinstance(purpose.allow, MappingProxyType)
    assert purpose.allow_block() == {"id": ["carol"], "roles": "staff"}
    assert hash(purpose) == hash(purpose)


async def test_the_routing_page_shows_the_block_as_the_purposes_own_rule(make: Any) -> None:
    datasette = make({"id": ["carol"]}, permissions={USE: {"id": "root"}})
    cookies = {"ds_actor": datasette.client.actor_cookie(ROOT)}
    document = (await datasette.client.get("/-/llm.json", cookies=cookies)).json()
    may_use = {purpose["name"]: purpose["may_use"] for purpose in document["purposes"]}
    assert may_use["extract"]["text"] == "only the actor carol"
    assert [rule["path"] for rule in may_use["extract"]["rules"]] == [
        f"{PATH}.allow",
        "permissions.llm-use",
    ]
    assert may_use["enrichments"]["rules"] == [
        {"path": "permissions.llm-use", "allow": {"id": "root"}, "who": "the actor root"}
    ]


async def test_a_changed_block_is_seen_at_once(make: Any) -> None:
    datasette = make({"id": ["carol"]})
    assert not await may(datasette, "extract", ALICE)
    config = datasette.config
    assert config is not None
    section = config["plugins"]["datasette-llm"]
    extract = {**section["purposes"]["extract"], "allow": {"id": ["alice"]}}
    purposes = {**section["purposes"], "extract": extract}
    config["plugins"] = {"datasette-llm": {**section, "purposes": purposes}}
    assert await may(datasette, "extract", ALICE)
    assert not await may(datasette, "extract", CAROL)


# --- a malformed block is a configuration error with its path -----------------------------------


async def test_a_misspelt_key_is_named_with_the_nearest_one(make: Any) -> None:
    datasette = make({"id": "carol"}, key="alow")
    [problem] = await problems(datasette)
    assert problem.startswith(f"{PATH}.alow: unknown key 'alow'. Did you mean 'allow'? ")


@pytest.mark.parametrize(
    ("allow", "where", "found"),
    [
        ("carol", "allow", "str: 'carol'"),
        (["carol"], "allow", "list: ['carol']"),
        (1, "allow", "int: 1"),
        ({"id": {"name": "carol"}}, "allow.id", "dict: {'name': 'carol'}"),
        ({"id": ["carol", ["dave"]]}, "allow.id[1]", "list: ['dave']"),
        ({"id": None}, "allow.id", "NoneType: None"),
    ],
)
async def test_a_malformed_block_is_an_error_at_its_path(
    make: Any, allow: object, where: str, found: str
) -> None:
    datasette = make(allow)
    [problem] = await problems(datasette)
    assert problem.startswith(f"{PATH}.{where}: expected ")
    assert problem.endswith(f", got {found}.")


async def test_a_malformed_configuration_does_not_break_the_permission_check(
    make: Any,
) -> None:
    datasette = make("carol")
    with pytest.raises(StartupError, match=f"{PATH}.allow"):
        await datasette.invoke_startup()
    resource = PurposeResource("extract")
    assert await datasette.allowed(action=USE, resource=resource, actor=ALICE)


# Permissions as outcomes: who may, in words, and the check of one actor.


async def test_who_may_use_a_purpose_is_said_in_words(make: Any) -> None:
    datasette = make({"id": ["carol", "dave"]}, permissions={USE: {"id": "*"}})
    cookies = {"ds_actor": datasette.client.actor_cookie(ROOT)}
    document = (await datasette.client.get("/-/llm.json", cookies=cookies)).json()
    words = {purpose["name"]: purpose["may_use"]["text"] for purpose in document["purposes"]}
    assert words["extract"] == "only the actors carol and dave"
    assert words["enrichments"] == "any signed-in actor"


async def test_checking_an_actor_answers_allowed_or_refused_and_the_rule_that_decided(
    make: Any,
) -> None:
    datasette = make({"id": ["carol"]}, permissions={USE: {"id": "*"}})
    cookies = {"ds_actor": datasette.client.actor_cookie(ROOT)}

    async def check(actor: str, purpose: str) -> Any:
        params = {"actor": actor, "purpose": purpose}
        response = await datasette.client.get(
            "/-/llm/check-actor.json", params=params, cookies=cookies
        )
        return response.json()

    refused = await check('{"id": "alice"}', "extract")
    assert refused["answer"]["allowed"] is False
    assert refused["answer"]["rule"]["path"] == f"{PATH}.allow"
    assert "lets through only the actor carol" in refused["answer"]["reason"]
    allowed = await check('{"id": "alice"}', "enrichments")
    assert allowed["answer"]["allowed"] is True
    assert allowed["answer"]["rule"]["path"] == "permissions.llm-use"
    assert refused["answer"]["warning"] is None
    # The answer agrees with what a call gets.
    assert not await may(datasette, "extract", ALICE) and await may(datasette, "enrichments", ALICE)
    # A mistyped purpose is answered, and said to be unknown, with the nearest name.
    mistyped = await check('{"id": "alice"}', "extrat")
    assert mistyped["answer"]["warning"].startswith(
        "Unknown purpose 'extrat' — did you mean 'extract'?"
    )
    # No actor: nothing is checked, so no rule decides.
    nobody = await check("", "extract")
    assert nobody["answer"]["allowed"] is True and nobody["answer"]["rule"] is None
    bad = await datasette.client.get(
        "/-/llm/check-actor.json", params={"actor": "alice"}, cookies=cookies
    )
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    page = await datasette.client.get(
        "/-/llm/check-actor",
        params={"actor": '{"id": "<b>x</b>"}', "purpose": "extract"},
        cookies=cookies,
    )
    assert (
        "Refused" in page.text
        and "&lt;b&gt;x&lt;/b&gt;" in page.text
        and "<b>x</b>" not in page.text
    )
    anonymous = await datasette.client.get("/-/llm/check-actor.json", params={"actor": "{}"})
    assert anonymous.status_code == 403
