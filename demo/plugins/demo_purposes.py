"""A demo plugin: declares three purposes and prompts by purpose from a page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from datasette import Response

from datasette_llm import LLM, Purpose
from datasette_llm.typing import Datasette, hookimpl

if TYPE_CHECKING:
    from datasette.utils.asgi import Request

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


PAGE: Final = """{% extends "base.html" %}
{% block title %}datasette-llm demo{% endblock %}
{% block content %}
<h1>datasette-llm demo</h1>
<p>Each purpose below is prompted once; the operator's routing is at
<a href="{{ urls.path('/-/llm') }}">/-/llm</a>.</p>
{% for row in rows %}
<h2>{{ row.purpose }} → <code>{{ row.model_id }}</code> ({{ row.step }})</h2>
<p>{{ row.description }}</p>
<pre>{{ row.text }}</pre>
{% endfor %}
{% endblock %}
"""


async def demo_page(request: Request, datasette: Datasette) -> Response:
    rows = []
    for purpose in (SUMMARIES, CLASSIFY, TRANSLATE):
        model = await LLM(datasette).model(purpose=purpose)
        response = await model.prompt(f"Hello from {purpose.name}")
        rows.append(
            {
                "purpose": purpose.name,
                "description": purpose.description,
                "model_id": model.model_id,
                "step": model.resolution.step,
                "text": await response.text(),
            }
        )
    # Datasette's own page template (base.html): its header, footer, CSS and menu.
    template = datasette.get_jinja_environment(request).from_string(PAGE)
    html = await datasette.render_template(template, {"rows": rows}, request=request)
    return Response.html(html)


@hookimpl
def register_routes() -> list[tuple[str, object]]:
    return [(r"^/-/demo$", demo_page)]
