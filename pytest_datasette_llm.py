"""datasette-llm's pytest plugin: the ``fake_model_router`` fixture and its marker.

pytest loads this module in every test session of an environment where datasette-llm is
installed (the ``pytest11`` entry point), so it lives outside the ``datasette_llm`` package and
imports nothing but pytest: importing ``datasette_llm`` would load every installed Datasette
plugin. ``datasette_llm.testing`` is imported when a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Final

import pytest

if TYPE_CHECKING:
    from datasette_llm.testing import FakeModelRouter

__all__ = ["fake_model_router"]

MARKER: Final = "fake_model_router"
_OPT_OUT: Final = f"opt out for this test with @pytest.mark.{MARKER}(assert_all_replies_used=False)"
_call_failed = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that configures the fixture for one test."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(assert_all_replies_used=True): configure the fake_model_router fixture "
        "(datasette-llm) for this test.",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test itself failed, so teardown does not pile on a second failure."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_call_failed] = True
    return report


@pytest.fixture
def fake_model_router(request: pytest.FixtureRequest) -> Iterator[FakeModelRouter]:
    """Answer every model datasette-llm routes to from scripted replies; record each call.

    Configure with ``@pytest.mark.fake_model_router(...)``, which takes ``FakeModelRouter``'s
    keyword arguments, e.g. ``assert_all_replies_used=False`` or ``allow_embedding_models=[...]``.
    """
    from datasette_llm.testing import FakeModelRouter

    marker = request.node.get_closest_marker(MARKER)
    options = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise TypeError(
            f"@pytest.mark.{MARKER} takes keyword arguments only, e.g. "
            f"@pytest.mark.{MARKER}(assert_all_replies_used=False)"
        )
    router = FakeModelRouter(**options)
    router.start()
    try:
        yield router
    finally:
        router.stop()
    if request.node.stash.get(_call_failed, False):
        return
    problems = router.unmet_expectations(_OPT_OUT)
    if problems:
        pytest.fail(problems, pytrace=False)
