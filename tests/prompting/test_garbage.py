"""A prompt answered at once leaves no reference cycle behind: its response, record and routing
are freed when the caller lets go of them, not by the garbage collector's passes (which cost
CPU on every prompt of a busy process: benchmarks/THROUGHPUT.md).

Counted with ``gc.DEBUG_SAVEALL`` against llm's own OpenAI plugin and the local provider,
streaming and not, and for a reply; a retried prompt may make garbage (stamina's retry context
is cyclic), a prompt answered on its first try may not.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from datasette_llm import LLM
from tests.conftest import MakeDatasette
from tests.openai_server import Provider, serve, write_extra_models

PROMPTS = 20


@pytest.fixture
def provider(llm_user_dir: Path) -> Iterator[Provider]:
    with serve() as running:
        write_extra_models(llm_user_dir, running, primary_gpt=None)
        yield running


def ours(garbage: list[object]) -> list[str]:
    """The kinds of datasette-llm's objects (and llm's responses) the prompts left as cyclic
    garbage: those found once a prompt or more (``PROMPTS`` prompts ran, and as many
    replies). An object of another test's Datasette let go meanwhile (its ledger, once its
    writer task has ended) is found once, not once a prompt."""
    counts: dict[str, int] = {}
    for thing in garbage:
        module = getattr(type(thing), "__module__", "") or ""
        name = type(thing).__qualname__
        if module.startswith(("datasette_llm", "stamina", "tenacity")) or name.endswith("Response"):
            kind = f"{module}.{name}"
            counts[kind] = counts.get(kind, 0) + 1
    return sorted(kind for kind, count in counts.items() if count >= PROMPTS)


@pytest.mark.parametrize("stream", [False, True], ids=["not streaming", "streaming"])
async def test_a_prompt_answered_at_once_makes_no_cyclic_garbage(
    make_datasette: MakeDatasette, provider: Provider, stream: bool
) -> None:
    ds = make_datasette({"purposes": {"summaries": {"model": "primary-gpt"}}})
    llm_ = LLM(ds)
    await (await (await llm_.model(purpose="summaries")).prompt("warm up")).text()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for number in range(PROMPTS):
            model = await llm_.model(purpose="summaries")
            response = await model.prompt(f"prompt {number}", stream=stream)
            assert await response.text()
            reply = await response.reply("and then?")
            assert await reply.text()
        del model, response, reply
        gc.collect()
        found = ours(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == []
    assert len(provider.requests) == 1 + 2 * PROMPTS
