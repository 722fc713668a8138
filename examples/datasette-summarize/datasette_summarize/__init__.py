"""Summarize text and table rows with whichever model the operator routes each purpose to."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import pydantic
from datasette import Request, Response

from datasette_llm import LLM, Actor, ProviderError, Purpose
from datasette_llm.typing import Datasette, hookimpl

__all__ = [
    "SUMMARIZE",
    "SUMMARIZE_ROWS",
    "RowSummary",
    "summarize_rows",
    "summarize_text",
]

OWNER: Final = "datasette-summarize"

SUMMARIZE: Final = Purpose(
    name="summarize",
    owner=OWNER,
    description="Summarize text pasted into /-/summarize",
    default_model="gpt-5.4-nano",
)
SUMMARIZE_ROWS: Final = Purpose(
    name="summarize-rows",
    owner=OWNER,
    description="Summarize every row of a table, with its sentiment",
    default_model="gpt-5.4-nano",
)

SYSTEM: Final = "Summarize the user's text in one sentence."
ROW_SYSTEM: Final = "Summarize this database row in a few words and judge its sentiment."


class RowSummary(pydantic.BaseModel):
    """What the model returns for each row."""

    summary: str
    sentiment: Literal["positive", "neutral", "negative"]


@hookimpl
def register_llm_purposes() -> list[Purpose]:
    """Declare the two things this plugin uses models for."""
    return [SUMMARIZE, SUMMARIZE_ROWS]


async def summarize_text(datasette: Datasette, text: str, actor: Actor | None) -> str:
    """Return a one-sentence summary of ``text``."""
    model = await LLM(datasette).model(purpose=SUMMARIZE, actor=actor)
    response = await model.prompt(text, system=SYSTEM)
    return await response.text()


async def summarize_rows(
    datasette: Datasette, database: str, table: str, actor: Actor | None
) -> list[dict[str, object]]:
    """Summarize every row of ``table``: one prompt per row, all in one group."""
    quoted = '"' + table.replace('"', '""') + '"'
    rows = (await datasette.get_database(database).execute(f"select rowid, * from {quoted}")).rows
    summaries: list[dict[str, object]] = []
    async with LLM(datasette).group(purpose=SUMMARIZE_ROWS, actor=actor) as model:
        for row in rows:
            values = {key: row[key] for key in row.keys() if key != "rowid"}
            response = await model.prompt(json.dumps(values), system=ROW_SYSTEM, schema=RowSummary)
            summary = RowSummary.model_validate_json(await response.text())
            summaries.append({"rowid": row["rowid"], **summary.model_dump()})
    return summaries


async def summarize_view(request: Request, datasette: Datasette) -> Response:
    """``GET /-/summarize?text=...`` → ``{"summary": ...}``."""
    text = request.args.get("text", "").strip()
    if not text:
        return Response.json({"error": "Pass the text to summarize as ?text=..."}, status=400)
    try:
        summary = await summarize_text(datasette, text, request.actor)
    except ProviderError as error:  # every retry and fallback failed: a clear 502
        message = f"The model is unavailable ({error.kind}): try again later."
        return Response.json({"error": message}, status=502)
    return Response.json({"summary": summary})


async def summarize_rows_view(request: Request, datasette: Datasette) -> Response:
    """``GET /<database>/<table>/-/summarize-rows`` → ``{"rows": [...]}``."""
    database, table = request.url_vars["database"], request.url_vars["table"]
    rows = await summarize_rows(datasette, database, table, request.actor)
    return Response.json({"rows": rows})


View = Callable[[Request, Datasette], Awaitable[Response]]


@hookimpl
def register_routes() -> list[tuple[str, View]]:
    """Serve the two views."""
    return [
        (r"^/-/summarize$", summarize_view),
        (r"^/(?P<database>[^/]+)/(?P<table>[^/]+)/-/summarize-rows$", summarize_rows_view),
    ]
