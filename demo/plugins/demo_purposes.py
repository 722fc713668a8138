"""A demo plugin: declares three purposes and prompts by purpose from a page."""

from __future__ import annotations

import html
from typing import Final

from datasette import Response

from datasette_llm import LLM, Purpose
from datasette_llm.typing import Datasette, hookimpl

SUMMARIES: Final = Purpose(
    name="demo-summaries",
    owner="demo-plugin",
    description="Summarize a row of a table in one sentence",
    default_model="echo",
)
CLASSIFY: Final = Purpose(
    name="demo-classify",
    owner="demo-plugin",
    description="Put free-text answers into categories",
)
TRANSLATE: Final = Purpose(
    name="demo-translate",
    owner="demo-plugin",
    description="Translate column values (no model configured: uses the purpose's default)",
    default_model="echo",
)


@hookimpl
def register_llm_purposes(datasette: Datasette) -> list[Purpose]:
    return [SUMMARIES, CLASSIFY, TRANSLATE]


async def demo_page(request: object, datasette: Datasette) -> Response:
    rows = []
    for purpose in (SUMMARIES, CLASSIFY, TRANSLATE):
        model = await LLM(datasette).model(purpose=purpose)
        response = await model.prompt(f"Hello from {purpose.name}")
        text = await response.text()
        rows.append(
            f"<h2>{html.escape(purpose.name)} → {html.escape(model.model_id)} "
            f"({html.escape(model.resolution.step)})</h2><pre>{html.escape(text)}</pre>"
        )
    return Response.html(
        "<h1>datasette-llm demo</h1><p>Routing: <a href='/-/llm'>/-/llm</a></p>" + "".join(rows)
    )


@hookimpl
def register_routes() -> list[tuple[str, object]]:
    return [(r"^/-/demo$", demo_page)]
