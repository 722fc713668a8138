"""FakeModelRouter: real embedding models are blocked while it is active, as real prompts are."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import llm
import pytest
import sqlite_utils
from datasette import Response
from llm.models import EmbeddingModel

from datasette_llm.testing import FakeModelRouter, RealModelRequestError
from datasette_llm.typing import Datasette, hookimpl
from tests.conftest import MakeDatasette, RegisterPlugin

PLUGIN_NAME = "datasette-llm-test-embedding-models"

get_embedding_model = cast("Callable[[str], EmbeddingModel]", llm.get_embedding_model)


class CountingEmbedding(EmbeddingModel):
    """A real llm embedding model: ``[len(text), number of words]``."""

    model_id = "test-embed"
    batch_size = 2

    def embed_batch(
        self, items: Iterable[str | bytes], *, key: str | None = None
    ) -> Iterator[list[float]]:
        for item in items:
            text = item.decode() if isinstance(item, bytes) else item
            yield [float(len(text)), float(len(text.split()))]


class EmbeddingModelsPlugin:
    @llm.hookimpl
    def register_embedding_models(self, register: Any) -> None:
        register(CountingEmbedding(), aliases=("counting",))


@pytest.fixture(autouse=True)
def embedding_models() -> Iterator[None]:
    """Register ``test-embed`` through llm's ``register_embedding_models`` hook."""
    llm.plugins.pm.register(EmbeddingModelsPlugin(), name=PLUGIN_NAME)
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name=PLUGIN_NAME)


def blocked(method: str, model_id: str = "test-embed", cls: str = "CountingEmbedding") -> str:
    allowed = f"allow_embedding_models=[{model_id!r}]"
    return (
        f"FakeModelRouter blocked a request to the real embedding model {model_id!r} "
        f"({cls}.{method}): no request may reach a real model while the router is active, and "
        "the router does not fake embeddings. Embed outside the router's scope or, for an "
        f"embedding model of your test suite, allow it with @pytest.mark.fake_model_router("
        f"{allowed}) (the fixture) or FakeModelRouter({allowed})."
    )


def test_each_way_to_embed_is_blocked_while_the_router_is_active() -> None:
    model = get_embedding_model("counting")
    with pytest.raises(AssertionError) as stopped:
        with FakeModelRouter():
            with pytest.raises(RealModelRequestError) as single:
                model.embed("one two")
            with pytest.raises(RealModelRequestError) as multi:
                list(model.embed_multi(["a", "b c"]))
            with pytest.raises(RealModelRequestError) as batch:
                list(model.embed_batch(["a"]))
    assert [str(single.value), str(multi.value), str(batch.value)] == [
        blocked("embed"),
        blocked("embed_multi"),
        blocked("embed_batch"),
    ]
    assert str(stopped.value) == (
        "FakeModelRouter: 3 requests to a real model were blocked:\n"
        "  - 'test-embed' (CountingEmbedding.embed)\n"
        "  - 'test-embed' (CountingEmbedding.embed_multi)\n"
        "  - 'test-embed' (CountingEmbedding.embed_batch)"
    )


def test_an_embedding_model_class_defined_while_the_router_is_active_is_blocked() -> None:
    with pytest.raises(AssertionError, match="2 requests to a real model were blocked"):
        with FakeModelRouter():

            class Late(CountingEmbedding):
                model_id = "test-late"

                def embed_batch(
                    self, items: Iterable[str | bytes], *, key: str | None = None
                ) -> Iterator[list[float]]:
                    return iter([[0.0]])

            with pytest.raises(RealModelRequestError, match=r"\(Late\.embed\)"):
                Late().embed("x")
            with pytest.raises(RealModelRequestError, match=r"\(Late\.embed_batch\)"):
                list(Late().embed_batch(["x"]))
    assert list(Late().embed_batch(["x"])) == [[0.0]]


def test_llms_own_openai_embedding_model_is_blocked_before_it_needs_a_key() -> None:
    model = get_embedding_model("3-small")
    with pytest.raises(AssertionError, match="1 request to a real model was blocked"):
        with FakeModelRouter():
            with pytest.raises(RealModelRequestError) as error:
                model.embed("hello")
    assert str(error.value) == blocked("embed", "text-embedding-3-small", "OpenAIEmbeddingModel")


def test_a_collection_cannot_embed_while_the_router_is_active() -> None:
    collection = llm.Collection("notes", sqlite_utils.Database(memory=True), model_id="test-embed")
    with pytest.raises(AssertionError, match="1 request to a real model was blocked"):
        with FakeModelRouter():
            with pytest.raises(RealModelRequestError, match=r"\(CountingEmbedding.embed_multi\)"):
                collection.embed_multi([("1", "first note"), ("2", "second note")])
    assert collection.count() == 0


@pytest.mark.asyncio
async def test_a_view_that_embeds_is_blocked_inside_a_request(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin
) -> None:
    async def embed(datasette: Datasette, request: Any) -> Response:
        try:
            vector = get_embedding_model("test-embed").embed(request.args["q"])
        except RealModelRequestError as error:
            return Response.json({"error": str(error)}, status=500)
        return Response.json({"vector": vector})

    class Routes:
        @hookimpl
        def register_routes(self) -> list[tuple[str, Any]]:
            return [(r"^/-/embed$", embed)]

    register_plugin(Routes())
    datasette = make_datasette()
    with pytest.raises(AssertionError, match="1 request to a real model was blocked"):
        with FakeModelRouter():
            blocked_response = await datasette.client.get("/-/embed?q=two+words")
    assert (blocked_response.status_code, blocked_response.json()) == (
        500,
        {"error": blocked("embed")},
    )
    response = await datasette.client.get("/-/embed?q=two+words")
    assert response.json() == {"vector": [9.0, 2.0]}


def test_embedding_works_again_after_the_router_stops() -> None:
    with pytest.raises(AssertionError):
        with FakeModelRouter():
            with pytest.raises(RealModelRequestError):
                get_embedding_model("test-embed").embed("x")
    model = get_embedding_model("test-embed")
    assert model.embed("one two") == [7.0, 2.0]
    assert list(model.embed_multi(["a", "b c", "d"])) == [[1.0, 1.0], [3.0, 2.0], [1.0, 1.0]]
    assert list(model.embed_batch(["a"])) == [[1.0, 1.0]]


def test_allowed_embedding_models_embed_while_the_router_is_active() -> None:
    with pytest.raises(AssertionError) as stopped:
        with FakeModelRouter(allow_embedding_models=["test-embed"]) as router:
            model = get_embedding_model("counting")
            assert model.embed("one two") == [7.0, 2.0]
            assert list(model.embed_multi(["a", "b c"])) == [[1.0, 1.0], [3.0, 2.0]]
            with pytest.raises(RealModelRequestError):
                get_embedding_model("3-small").embed("still blocked")
    assert str(stopped.value) == (
        "FakeModelRouter: 1 request to a real model was blocked:\n"
        "  - 'text-embedding-3-small' (OpenAIEmbeddingModel.embed)"
    )
    assert router.calls == ()


def test_allow_embedding_models_takes_a_list_of_model_ids() -> None:
    with pytest.raises(TypeError) as error:
        FakeModelRouter(allow_embedding_models="test-embed")
    assert str(error.value) == (
        "allow_embedding_models takes a list of embedding model ids, e.g. "
        "allow_embedding_models=['my-test-embedder'], got 'test-embed'"
    )
