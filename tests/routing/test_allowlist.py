"""A purpose's allowlist and its order, worked out once: ``routing.policy.allowlist_of``.

The allowlist is the purpose's ``model``, its ``models``, the global ``models``, then
``default_model``, each once. ``LLM.models()`` lists the routed model first and then the allowed
ones in that order; the routing page lists the allowlist in that order too; the policy admits
exactly those models.
"""

from __future__ import annotations

from typing import Any, Final

import pytest

from datasette_llm import LLM, ModelNotFoundError
from datasette_llm.config.parser import parse_config
from datasette_llm.routing.policy import allowlist_of
from datasette_llm.typing import Datasette
from tests.conftest import MakeDatasette

pytestmark = pytest.mark.usefixtures("test_models")

CONFIGS: Final[list[dict[str, Any]]] = [
    {"models": ["test-b", "test-a"], "default_model": "test-c", "purposes": {"p": {}}},
    {"models": ["test-a"], "purposes": {"p": {"model": "test-c", "models": ["test-b", "echo"]}}},
    {
        "default_model": "test-c",
        "models": ["echo", "test-b", "test-a", "test-c", "test-fails"],
        "purposes": {"p": {"models": ["test-fails", "test-a"]}},
    },
    {"default_model": "test-b", "models": ["test-a"], "purposes": {"p": {"model": "test-c"}}},
    {"default_model": "test-b", "purposes": {"p": {"model": "test-c", "models": ["echo"]}}},
]


def test_the_order_is_the_purposes_model_its_models_the_global_models_then_the_default() -> None:
    config = parse_config(
        {
            "default_model": "test-b",
            "models": ["test-a", "echo", "test-keyed"],
            "purposes": {
                "p": {"model": "test-c", "models": ["test-fails", {"model": "echo"}]},
                "q": {},
            },
        }
    )
    assert allowlist_of(config, "p") == (
        "test-c",
        "test-fails",
        "echo",
        "test-a",
        "test-keyed",
        "test-b",
    )
    assert allowlist_of(config, "q") == ("test-a", "echo", "test-keyed", "test-b")
    assert allowlist_of(config, None) == ("test-a", "echo", "test-keyed", "test-b")


def test_without_a_models_list_there_is_no_allowlist() -> None:
    config = parse_config({"default_model": "test-b", "purposes": {"p": {"model": "test-c"}}})
    assert allowlist_of(config, "p") is None
    assert allowlist_of(config, None) is None


async def page_allowlist(datasette: Datasette, name: str) -> list[str] | None:
    datasette.root_enabled = True
    cookies = {"ds_actor": datasette.client.actor_cookie({"id": "root"})}
    data = (await datasette.client.get("/-/llm.json", cookies=cookies)).json()
    [purpose] = [purpose for purpose in data["purposes"] if purpose["name"] == name]
    allowed = purpose["allowed_models"]
    return None if allowed is None else [model["model_id"] for model in allowed]


@pytest.mark.parametrize("raw", CONFIGS)
async def test_models_and_the_routing_page_follow_the_allowlist_and_its_order(
    make_datasette: MakeDatasette, raw: dict[str, Any]
) -> None:
    raw = {**raw, "require_keys": False}
    datasette = make_datasette(raw)
    config = parse_config(raw)
    for purpose in ("p", None):
        written = allowlist_of(config, purpose)
        if written is None:
            continue  # every installed model, in llm's order
        listed = [model.model_id for model in await LLM(datasette).models(purpose=purpose)]
        try:
            routed = [(await LLM(datasette).resolve(purpose=purpose)).model_id]
        except ModelNotFoundError:
            routed = []  # nothing configured for calls without a purpose
        assert listed == [*routed, *(model_id for model_id in written if model_id not in routed)]
    assert await page_allowlist(datasette, "p") == list(allowlist_of(config, "p") or ())
