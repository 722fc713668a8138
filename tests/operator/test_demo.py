"""The demo plugin's /-/demo page: real prompts routed by purpose, in Datasette's own look."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from datasette.app import Datasette
from datasette.plugins import pm
from datasette.utils import parse_metadata

ROOT: Final = Path(__file__).resolve().parent.parent.parent
DEMO: Final = ROOT / "demo"


@pytest.fixture
def demo() -> Iterator[Datasette]:
    """Load demo/plugins as ``datasette serve --plugins-dir`` does; unload it afterwards."""
    pytest.importorskip("llm_echo")
    config = parse_metadata((DEMO / "datasette.yaml").read_text())
    before = set(pm.get_plugins())
    try:
        yield Datasette(memory=True, config=config, plugins_dir=str(DEMO / "plugins"))
    finally:
        for plugin in set(pm.get_plugins()) - before:
            pm.unregister(plugin)


@pytest.mark.asyncio
async def test_the_demo_page_renders_in_datasettes_base_template(demo: Datasette) -> None:
    response = await demo.client.get("/-/demo")
    assert response.status_code == 200
    html = response.text
    assert "<title>datasette-llm demo</title>" in html
    assert "/-/static/app.css" in html  # base.html's stylesheet
    assert "<footer" in html  # base.html's footer
    assert 'class="not-footer"' in html


@pytest.mark.asyncio
async def test_the_demo_page_prompts_each_purpose_through_its_route(demo: Datasette) -> None:
    html = (await demo.client.get("/-/demo")).text
    for purpose, step in (
        ("demo-summaries", "purpose_config"),
        ("demo-classify", "purpose_config"),
        ("demo-translate", "purpose_default"),
    ):
        assert f"<h2>{purpose} → <code>echo</code> ({step})</h2>" in html
        assert f"Hello from {purpose}" in html
    assert '<a href="/-/llm">/-/llm</a>' in html
