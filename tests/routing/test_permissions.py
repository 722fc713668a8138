"""Who may use a purpose (``llm-use``) and who may change routing (``llm-manage-routing``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pytest

from datasette_llm import LLM, Purpose, PurposeNotAllowedError
from datasette_llm.routing.permissions import (
    MANAGE_ROUTING,
    USE,
    PurposeResource,
    can_manage_routing,
)
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin
from tests.llm_models import TestModelsPlugin

CONFIG: Final[dict[str, Any]] = {
    "default_model": "test-a",
    "purposes": {"enrichments": {"model": "test-b"}, "extract": {"model": "test-a"}},
}
ALICE: Final = {"id": "alice"}
ROOT: Final = {"id": "root"}


class Purposes:
    @hookimpl
    def register_llm_purposes(self, datasette: Datasette) -> list[Purpose]:
        return [Purpose("enrichments", owner="tests"), Purpose("extract", owner="tests")]


class ModelRoute:
    """A plugin page that gets the model for ``?purpose=`` for the visitor, as a plugin would."""

    @hookimpl
    def register_routes(self) -> list[tuple[str, object]]:
        from datasette.utils.asgi import Response

        async def view(datasette: Datasette, request: Any) -> Response:
            purpose = request.args.get("purpose")
            model = await LLM(datasette).model(purpose=purpose, actor=request.actor)
            return Response.text(model.model_id)

        return [(r"^/-/test-model$", view)]


@pytest.fixture
def make(
    test_models: TestModelsPlugin, register_plugin: RegisterPlugin, make_datasette: MakeDatasette
) -> MakeDatasette:
    register_plugin(Purposes())
    register_plugin(ModelRoute())

    def build(**config: Any) -> Datasette:
        datasette = make_datasette(CONFIG, config=config)
        datasette.root_enabled = True
        return datasette

    return build


def cookies(datasette: Datasette, actor: Mapping[str, object] | None) -> dict[str, Any]:
    if actor is None:
        return {}
    return {"cookies": {"ds_actor": datasette.client.actor_cookie(actor)}}


async def refused(
    datasette: Datasette, purpose: str | None, actor: Mapping[str, object]
) -> list[str]:
    """Call model(), models(), group() and resolve(); return the names of those refused."""
    llm = LLM(datasette)
    names: list[str] = []
    calls: dict[str, Any] = {
        "model": lambda: llm.model(purpose=purpose, actor=actor),
        "models": lambda: llm.models(actor=actor, purpose=purpose),
        "resolve": lambda: llm.resolve(purpose=purpose, actor=actor),
    }
    for name, call in calls.items():
        try:
            await call()
        except PurposeNotAllowedError:
            names.append(name)
    try:
        async with llm.group(purpose=purpose, actor=actor):
            pass
    except PurposeNotAllowedError:
        names.append("group")
    return names


# --- default: everyone may use every purpose ---------------------------------------------------


async def test_with_nothing_configured_any_actor_may_use_every_purpose(make: Any) -> None:
    datasette = make()
    await datasette.invoke_startup()
    for purpose in ("enrichments", "extract", None):
        assert await refused(datasette, purpose, ALICE) == []
    response = await datasette.client.get(
        "/-/test-model?purpose=enrichments", **cookies(datasette, ALICE)
    )
    assert (response.status_code, response.text) == (200, "test-b")


async def test_llm_use_is_registered_on_a_purpose_resource(make: Any) -> None:
    datasette = make()
    await datasette.invoke_startup()
    assert datasette.actions[USE].resource_class is PurposeResource
    assert datasette.actions[MANAGE_ROUTING].resource_class is None
    assert await datasette.allowed(action=USE, resource=PurposeResource("extract"), actor=ALICE)


# --- a permissions: block restricts it ----------------------------------------------------------


async def test_a_global_block_refuses_every_other_actor_on_every_call(make: Any) -> None:
    datasette = make(permissions={USE: {"id": "root"}})
    for purpose in ("enrichments", None):
        assert await refused(datasette, purpose, ALICE) == ["model", "models", "resolve", "group"]
        assert await refused(datasette, purpose, ROOT) == []


async def test_root_may_use_a_purpose_granted_to_root_without_root_enabled(make: Any) -> None:
    datasette = make(permissions={USE: {"id": "root"}})
    datasette.root_enabled = False
    assert await refused(datasette, "enrichments", ROOT) == []


async def test_a_refused_visitor_gets_403_from_a_plugin_page(make: Any) -> None:
    datasette = make(permissions={USE: {"id": "root"}})
    path = "/-/test-model?purpose=enrichments"
    refused_response = await datasette.client.get(path, **cookies(datasette, ALICE))
    assert refused_response.status_code == 403
    assert "alice" in refused_response.text
    allowed_response = await datasette.client.get(path, **cookies(datasette, ROOT))
    assert (allowed_response.status_code, allowed_response.text) == (200, "test-b")


async def test_a_call_without_an_actor_is_never_checked(make: Any) -> None:
    datasette = make(permissions={USE: False})
    llm = LLM(datasette)
    assert (await llm.model(purpose="enrichments")).model_id == "test-b"
    assert (await llm.models(purpose="enrichments"))[0].model_id == "test-b"
    async with llm.group(purpose="enrichments") as model:
        assert model.model_id == "test-b"


async def test_a_per_purpose_block_under_databases_grants_that_purpose_only(make: Any) -> None:
    datasette = make(
        permissions={USE: {"id": "root"}},
        databases={"extract": {"permissions": {USE: {"id": "alice"}}}},
    )
    assert await refused(datasette, "extract", ALICE) == []
    assert await refused(datasette, "enrichments", ALICE) == ["model", "models", "resolve", "group"]
    assert await refused(datasette, None, ALICE) == ["model", "models", "resolve", "group"]


async def test_a_permissions_plugin_may_grant_one_purpose(
    make: Any, register_plugin: RegisterPlugin
) -> None:
    from datasette.permissions import PermissionSQL

    class GrantExtract:
        @hookimpl
        def permission_resources_sql(
            self, actor: dict[str, Any] | None, action: str
        ) -> PermissionSQL | None:
            if action == USE and actor is not None and actor.get("id") == "alice":
                return PermissionSQL(
                    sql="SELECT 'extract' AS parent, NULL AS child, 1 AS allow, 'test' AS reason"
                )
            return None

    register_plugin(GrantExtract())
    datasette = make(permissions={USE: {"id": "root"}})
    assert await refused(datasette, "extract", ALICE) == []
    assert await refused(datasette, "enrichments", ALICE) == ["model", "models", "resolve", "group"]


async def test_default_deny_refuses_everyone_but_root(make: Any) -> None:
    datasette = make()
    datasette.default_deny = True
    assert await refused(datasette, "enrichments", ALICE) == ["model", "models", "resolve", "group"]
    assert await refused(datasette, "enrichments", ROOT) == []


async def test_a_new_configuration_is_seen_at_once(make: Any) -> None:
    datasette = make()
    assert await refused(datasette, "enrichments", ALICE) == []
    datasette.config = {**(datasette.config or {}), "permissions": {USE: {"id": "root"}}}
    assert await refused(datasette, "enrichments", ALICE) == ["model", "models", "resolve", "group"]


async def test_actors_differing_in_any_field_get_their_own_verdict(make: Any) -> None:
    datasette = make(permissions={USE: {"role": ["staff"]}})
    staff = {"id": "alice", "role": ["staff"]}
    assert await refused(datasette, "extract", staff) == []
    assert await refused(datasette, "extract", ALICE) == ["model", "models", "resolve", "group"]


# --- the refusal says what happened and how to grant it -----------------------------------------


async def test_the_refusal_names_the_purpose_the_actor_and_the_fix(make: Any) -> None:
    datasette = make(permissions={USE: {"id": "root"}})
    with pytest.raises(PurposeNotAllowedError) as raised:
        await LLM(datasette).model(purpose="enrichments", actor=ALICE)
    assert (raised.value.purpose, raised.value.actor_id) == ("enrichments", "alice")
    # The rule that refused, who it lets through, and the block to add the actor to.
    assert str(raised.value) == (
        "Actor 'alice' may not use the purpose 'enrichments': permissions.llm-use lets through "
        'only the actor root. To allow it, add "alice" to the block at permissions.llm-use '
        "(every purpose), or give the purpose a rule of its own with "
        'plugins: {datasette-llm: {purposes: {enrichments: {allow: {id: "alice"}}}}} '
        "(that purpose only)."
    )
    verdict = raised.value.verdict
    assert verdict is not None and verdict.rule is not None
    assert verdict.rule.path == "permissions.llm-use"


async def test_the_refusal_of_a_call_without_a_purpose_names_the_global_fix(make: Any) -> None:
    datasette = make(permissions={USE: {"id": "root"}})
    with pytest.raises(PurposeNotAllowedError) as raised:
        await LLM(datasette).model(actor={"name": "no id"})
    assert raised.value.purpose is None
    assert str(raised.value).startswith(
        "An actor without an id may not use a call without a purpose: "
    )
    assert "add <id> to the block at permissions.llm-use." in str(raised.value)


# --- the routing page shows who may use each purpose --------------------------------------------


async def test_the_page_says_everyone_when_nothing_is_configured(make: Any) -> None:
    datasette = make()
    document = (await datasette.client.get("/-/llm.json", **cookies(datasette, ROOT))).json()
    may_use = {purpose["name"]: purpose["may_use"] for purpose in document["purposes"]}
    assert may_use["enrichments"] == {"everyone": True, "rules": [], "text": "everyone"}
    html = (await datasette.client.get("/-/llm", **cookies(datasette, ROOT))).text
    assert "may use (<code>llm-use</code>): everyone" in html


async def test_the_page_shows_the_global_and_the_purposes_own_rule(make: Any) -> None:
    datasette = make(
        permissions={USE: {"id": "root"}},
        databases={"extract": {"permissions": {USE: {"id": ["alice"]}}}},
    )
    document = (await datasette.client.get("/-/llm.json", **cookies(datasette, ROOT))).json()
    may_use = {purpose["name"]: purpose["may_use"] for purpose in document["purposes"]}
    assert may_use["enrichments"]["rules"] == [
        {"path": "permissions.llm-use", "allow": {"id": "root"}, "who": "the actor root"}
    ]
    assert may_use["enrichments"]["text"] == "only the actor root"
    assert may_use["extract"]["everyone"] is False
    # The purpose's own rule decides for it: the global one does not widen or narrow it.
    assert may_use["extract"]["text"] == "only the actor alice"
    html = (await datasette.client.get("/-/llm", **cookies(datasette, ROOT))).text
    assert "may use (<code>llm-use</code>): only the actor alice (by " in html
    assert '<code title="{&#34;id&#34;: &#34;root&#34;}">permissions.llm-use</code>' in html


# --- llm-manage-routing -------------------------------------------------------------------------


async def test_managing_routing_is_denied_by_default_and_allowed_for_root(make: Any) -> None:
    datasette = make()
    await datasette.invoke_startup()
    assert not await can_manage_routing(datasette, ALICE)
    assert not await can_manage_routing(datasette, None)
    assert await can_manage_routing(datasette, ROOT)
    datasette.root_enabled = False
    assert not await can_manage_routing(datasette, ROOT)


async def test_managing_routing_may_be_granted_in_datasette_yaml(make: Any) -> None:
    datasette = make(permissions={MANAGE_ROUTING: {"id": "alice"}})
    await datasette.invoke_startup()
    assert await can_manage_routing(datasette, ALICE)
    assert not await can_manage_routing(datasette, {"id": "bob"})


async def test_a_purpose_name_that_is_not_text_is_refused_before_datasette_is_asked(
    make: Any,
) -> None:
    datasette = make()
    with pytest.raises(ValueError, match="purpose name '\\\\udc80' holds a lone surrogate"):
        await LLM(datasette).model(purpose="\udc80", actor={"id": "alice"})
