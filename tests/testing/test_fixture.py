"""The ``fake_model_router`` fixture, run in a separate pytest session through ``pytester``."""

from __future__ import annotations

import pytest

CONFTEST = """
import pytest
from datasette.app import Datasette

from datasette_llm import LLM


@pytest.fixture
def datasette():
    return Datasette(
        memory=True,
        config={"plugins": {"datasette-llm": {
            "default_model": "gpt-test",
            "purposes": {"summarize": {"model": "gpt-summary"}},
        }}},
    )


@pytest.fixture
def summarize(datasette):
    async def summarize(text):
        model = await LLM(datasette).model(purpose="summarize")
        return await (await model.prompt(text)).text()

    return summarize
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytest project whose tests use datasette-llm, with asyncio tests enabled."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(CONFTEST)
    return pytester


def test_fixture_is_available_wherever_datasette_llm_is_installed(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_default_reply(fake_model_router, summarize):
            assert await summarize("Long text") == "Fake reply from gpt-summary to: Long text"
            assert fake_model_router.get_call().step == "purpose_config"
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_unused_replies_fail_the_test_at_teardown_listing_each(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import re

        async def test_unused(fake_model_router, summarize):
            fake_model_router.add_response(text="Short.", purpose="summarize")
            fake_model_router.add_response(text="Tags", prompt=re.compile("^Tag"))
            fake_model_router.add_exception(TimeoutError("slow"), model_id="gpt-test")
            assert await summarize("Long text") == "Short."
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "FakeModelRouter: 2 scripted replies were never used:",
            "  2. add_response(text='Tags', prompt=re.compile('^Tag'))",
            "  3. add_exception(TimeoutError('slow'), model_id='gpt-test')",
            "Remove them, pass is_optional=True when adding them, or opt out for this test "
            "with @pytest.mark.fake_model_router(assert_all_replies_used=False).",
        ],
        consecutive=True,
    )


def test_the_marker_opts_out_of_the_unused_reply_check(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.fake_model_router(assert_all_replies_used=False)
        async def test_unused(fake_model_router):
            fake_model_router.add_response(text="never asked for")
        """
    )
    inner.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_optional_replies_may_go_unused(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_optional(fake_model_router, summarize):
            fake_model_router.add_response(text="Short.")
            fake_model_router.add_response(text="Fallback", is_optional=True)
            await summarize("Long text")
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_the_marker_is_registered(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.fake_model_router(assert_all_replies_used=True): configure the "
            "fake_model_router fixture (datasette-llm) for this test.",
        ]
    )


def test_an_unmatched_prompt_fails_at_once_listing_every_reply(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_unmatched(fake_model_router, summarize):
            fake_model_router.add_response(text="Short.", purpose="other")
            fake_model_router.add_response(text="Only once")
            await summarize("first")
            await summarize("second")
            raise AssertionError("not reached")
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *datasette_llm.testing.UnmatchedPromptError: No scripted reply matches this "
            "call: purpose='summarize', model_id='gpt-summary', prompt='second'",
            "E *Scripted replies:",
            "E *1. add_response(text='Short.', purpose='other') - purpose is 'summarize', "
            "not 'other'",
            "E *2. add_response(text='Only once') - matches, but was already used",
            "E *Add another reply for this call, or pass is_reusable=True to let a reply "
            "answer every matching call.",
        ],
        consecutive=True,
    )
    result.stdout.no_fnmatch_line("*not reached*")
    result.stdout.no_fnmatch_line("*never used*")


def test_an_unmatched_prompt_swallowed_by_the_code_is_reported_at_teardown(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        async def test_swallowed(fake_model_router, summarize):
            fake_model_router.add_response(text="Short.", purpose="other", is_optional=True)
            try:
                await summarize("A view that turns every error into a 500")
            except Exception:
                pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "FakeModelRouter: 1 prompt matched no scripted reply (the UnmatchedPromptError was "
            "raised inside the code under test):",
            "  - purpose='summarize', model_id='gpt-summary', prompt='A view that turns every "
            "error into a 500'",
        ],
        consecutive=True,
    )


def test_a_failing_test_is_not_also_failed_at_teardown(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        async def test_fails(fake_model_router):
            fake_model_router.add_response(text="never asked for")
            assert 1 == 2
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1, errors=0)


def test_a_real_model_request_is_blocked(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import llm

        async def test_direct(fake_model_router):
            await llm.get_async_model("echo").prompt("hi").text()
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *datasette_llm.testing.RealModelRequestError: FakeModelRouter blocked a request "
            "to the real model 'echo' (EchoAsync): no prompt may reach a real model while the "
            "router is active. The code under test prompted an llm model it got without "
            "datasette-llm (llm.get_async_model(), LLM.models()); get it with "
            "LLM(datasette).model(...) or .group(...) so the router answers it.",
        ]
    )


def test_the_router_works_as_a_context_manager_without_pytest(inner: pytest.Pytester) -> None:
    script = inner.makepyfile(
        script="""
        import asyncio

        from datasette.app import Datasette

        from datasette_llm import LLM
        from datasette_llm.testing import FakeModelRouter


        async def main():
            datasette = Datasette(memory=True)
            with FakeModelRouter() as router:
                router.add_response(text="Hello from the script")
                model = await LLM(datasette).model("gpt-anything")
                print(await (await model.prompt("hi")).text())
            print(router)
            with FakeModelRouter() as router:
                router.add_response(text="unused")


        asyncio.run(main())
        """
    )
    result = inner.runpython(script)
    result.stdout.fnmatch_lines(
        ["Hello from the script", "<FakeModelRouter: 1 call, 1 scripted reply (0 unused)>"]
    )
    result.stderr.fnmatch_lines(
        [
            "AssertionError: FakeModelRouter: 1 scripted reply was never used:",
            "  1. add_response(text='unused')",
            "Remove it, pass is_optional=True when adding it, or pass "
            "assert_all_replies_used=False to FakeModelRouter().",
        ],
        consecutive=True,
    )


def test_loading_the_pytest_plugin_imports_neither_datasette_llm_nor_llm(
    pytester: pytest.Pytester,
) -> None:
    # pytest loads it in every session where datasette-llm is installed: importing datasette_llm
    # would load every installed Datasette plugin before the session's conftest runs.
    result = pytester.runpython_c(
        "import sys, pytest_datasette_llm; "
        "print('imported:', sorted(m for m in ('llm', 'datasette_llm', 'datasette.plugins') "
        "if m in sys.modules))"
    )
    result.stdout.fnmatch_lines(["imported: []"])


def test_a_model_kept_from_an_earlier_test_fails_clearly_in_a_later_one(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        from datasette_llm import LLM

        kept = []

        async def test_keeps_a_model(fake_model_router, datasette):
            kept.append(await LLM(datasette).model(purpose="summarize"))
            await (await kept[0].prompt("inside")).text()

        async def test_prompts_it_later():
            await (await kept[0].prompt("later")).text()
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *datasette_llm.testing.RouterStoppedError: The fake model 'gpt-summary' was "
            "prompted after the FakeModelRouter that made it stopped: a model obtained while the "
            "router was active (LLM(datasette).model(...) or .group(...)) answers only until the "
            "router stops. Nothing was sent to a real model and nothing was recorded. Prompt it "
            "inside the router's scope (the test that uses the fake_model_router fixture, or the "
            "`with FakeModelRouter():` block), or obtain the model again after the router has "
            "stopped to get the real one.",
        ]
    )


EMBEDDING_TESTS = """
import llm
import pytest
from llm.models import EmbeddingModel


class Lengths(EmbeddingModel):
    model_id = "test-lengths"

    def embed_batch(self, items, *, key=None):
        return ([float(len(item))] for item in items)


class Plugin:
    @llm.hookimpl
    def register_embedding_models(self, register):
        register(Lengths())


@pytest.fixture(autouse=True)
def lengths():
    llm.plugins.pm.register(Plugin(), name="inner-test-lengths")
    try:
        yield
    finally:
        llm.plugins.pm.unregister(name="inner-test-lengths")


async def test_blocked(fake_model_router):
    llm.get_embedding_model("test-lengths").embed("four")


@pytest.mark.fake_model_router(allow_embedding_models=["test-lengths"])
async def test_allowed(fake_model_router):
    assert llm.get_embedding_model("test-lengths").embed("four") == [4.0]


def test_after():
    assert llm.get_embedding_model("test-lengths").embed("four") == [4.0]
"""


def test_a_real_embedding_is_blocked_unless_the_marker_allows_its_model(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(EMBEDDING_TESTS)
    result = inner.runpytest("--strict-markers")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *datasette_llm.testing.RealModelRequestError: FakeModelRouter blocked a request "
            "to the real embedding model 'test-lengths' (Lengths.embed): no request may reach a "
            "real model while the router is active, and the router does not fake embeddings. "
            "Embed outside the router's scope or, for an embedding model of your test suite, "
            "allow it with @pytest.mark.fake_model_router(allow_embedding_models=["
            "'test-lengths']) (the fixture) or FakeModelRouter(allow_embedding_models=["
            "'test-lengths']).".replace("[", "[[]"),  # fnmatch: [ opens a character class
        ]
    )


def test_a_session_that_never_asks_for_the_fixture_leaves_llm_untouched(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import sys

        from llm import models

        def test_untouched():
            assert "datasette_llm.testing" not in sys.modules
            assert not hasattr(models.EmbeddingModel.embed, "__wrapped__")
            assert "__init_subclass__" not in vars(models.EmbeddingModel)
            assert models.AsyncResponse._ensure_async_generator.__module__ == "llm.models"
        """
    )
    inner.runpytest_subprocess().assert_outcomes(passed=1)  # a session of its own
