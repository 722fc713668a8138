"""The routing page's governance in a real browser: an edit, a conflict, the audit list, a test.

Playwright drives Debian's ``chromium`` (``executable_path``; no browser is downloaded) against
``datasette serve`` in a subprocess, whose models are llm's own OpenAI plugin pointed at the
local provider of ``tests/openai_server.py``. The signed-in actor is ``editor``, allowed
``llm-view-routing`` and ``llm-manage-routing`` in the server's datasette.yaml, as is
``auditor``; only ``editor`` may use the purpose ``translations``, which has a budget that two
answers spend (``primary-gpt`` is priced so that each answer of the provider costs $0.80).

``DATASETTE_LLM_SCREENSHOTS=DIR`` saves the pages it sees there (the docs' screenshots).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from datasette.app import Datasette

from tests.openai_server import Provider, Reply, serve, write_extra_models
from tests.served import free_port, wait_until_up

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM: Final = shutil.which("chromium") or shutil.which("chromium-browser")
SECRET: Final = "governance-browser-test-secret"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


ANSWER_USD: Final = 0.8
"""What one answer of the local provider costs at ``primary-gpt``'s price: it reports 3 input
tokens and 5 output tokens (the words of its default reply), at $100,000 a million tokens."""


def _config() -> dict[str, Any]:
    budget = {"usd": 1, "per": "month", "then": "refuse", "estimate_usd": 0.01}
    return {
        "permissions": {
            "llm-view-routing": {"id": ["editor", "auditor"]},
            "llm-manage-routing": {"id": ["editor", "auditor"]},
        },
        "plugins": {
            "datasette-llm": {
                "pricing": {"primary-gpt": {"input": 100_000, "output": 100_000}},
                "purposes": {
                    "summaries": {"model": "primary-gpt", "fallbacks": ["backup-gpt"]},
                    # After summaries, so that the first "Test this route" stays summaries'.
                    "translations": {
                        "model": "primary-gpt",
                        "budget": budget,
                        "allow": {"id": ["editor"]},
                    },
                },
            }
        },
    }


class Site:
    def __init__(self, base: str, provider: Provider, shots: Path | None) -> None:
        self.base = base
        self.provider = provider
        self.shots = shots
        self.cookie = self.sign("editor")

    @staticmethod
    def sign(actor_id: str) -> str:
        """The ``ds_actor`` cookie of the actor ``{"id": actor_id}``."""
        return str(Datasette(secret=SECRET).sign({"a": {"id": actor_id}}, "actor"))

    def shot(self, page: Any, name: str) -> None:
        if self.shots is not None:
            page.screenshot(path=str(self.shots / f"{name}.png"), full_page=False)


@pytest.fixture
def site(tmp_path: Path, llm_user_dir: Path) -> Iterator[Site]:
    user_dir = llm_user_dir
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps(_config()))
    port = free_port()
    datasette = Path(sys.executable).with_name("datasette")
    shots = os.environ.get("DATASETTE_LLM_SCREENSHOTS")
    with serve() as provider:
        write_extra_models(user_dir, provider, primary_gpt=None, backup_gpt=None)
        server = subprocess.Popen(
            [
                *(str(datasette), "serve", "--memory", "-c", str(config), "--secret", SECRET),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            env={**os.environ, "LLM_USER_PATH": str(user_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{base}/-/versions.json", server)
            yield Site(base, provider, Path(shots) if shots else None)
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def signed_in(browser: Any, site: Site, actor_id: str = "editor") -> Any:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    cookie = site.cookie if actor_id == "editor" else site.sign(actor_id)
    context.add_cookies([{"name": "ds_actor", "value": cookie, "url": site.base}])
    return context


def override_form(page: Any, purpose: str) -> Any:
    return page.locator(".llm-override", has=page.locator(f"h3:text-is('{purpose}')"))


def run_route_test(page: Any, purpose: str) -> str:
    """Click "Test this route" of ``purpose`` on the page shown; return the test's outcome."""
    form = page.locator(f"form.llm-test-route[action$='/-/llm/test/{purpose}']")
    form.get_by_role("button", name="Test this route").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == f"Test of {purpose}"
    return str(page.locator(".llm-test-outcome").inner_text())


def status_row(page: Any, purpose: str) -> Any:
    """The row of ``purpose`` in the status table of ``/-/llm``."""
    link = page.get_by_role("link", name=purpose, exact=True)
    return page.locator("table.llm-status tbody tr", has=link)


def classes(element: Any) -> list[str]:
    """The element's CSS classes."""
    return str(element.get_attribute("class") or "").split()


def cells(table: Any, row: Any) -> dict[str, str]:
    """A row's cells, by the heading of their column."""
    headings = [text.strip() for text in table.locator("thead th").all_inner_texts()]
    texts = [text.strip() for text in row.locator("td").all_inner_texts()]
    return dict(zip(headings, texts, strict=True))


def budget_row(page: Any, purpose: str) -> dict[str, str]:
    """The row of ``purpose`` in the Budgets table of ``/-/llm``, by column."""
    table = page.locator("table.llm-budgets")
    rows = table.locator("tbody tr", has=page.locator(f"code:text-is('{purpose}')"))
    assert rows.count() == 1
    return cells(table, rows)


def usage_lines(page: Any, caption: str) -> dict[str, dict[str, str]]:
    """The lines of the usage table of that caption (``By actor``), by column, under their first
    cell; a line of a purpose under an actor's as ``actor / purpose``."""
    table = page.locator("table.llm-usage", has=page.locator(f"caption:text-is('{caption}')"))
    assert table.count() == 1, caption
    lines: dict[str, dict[str, str]] = {}
    owner = ""
    for row in table.locator("tbody tr").all():
        line = cells(table, row)
        name = next(iter(line.values())).removeprefix("\u21b3").strip()
        if "llm-usage-part" in (row.get_attribute("class") or ""):
            name = f"{owner} / {name}"
        else:
            owner = name
        lines[name] = line
    return lines


def test_an_edit_takes_effect_and_the_audit_list_records_who_changed_what(
    site: Site, browser: Any
) -> None:
    page = signed_in(browser, site).new_page()
    page.goto(f"{site.base}/-/llm#overrides")
    form = override_form(page, "summaries")
    form.locator("select[name=model]").select_option("backup-gpt")
    site.shot(page, "governance-edit")
    form.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    section = override_form(page, "summaries")
    assert "override by editor" in section.inner_text()
    audit = page.locator("table.llm-audit tbody tr").first.inner_text()
    assert "editor" in audit and "summaries" in audit and "backup-gpt" in audit
    site.shot(page, "governance-audit")

    site.provider.requests.clear()
    page.locator("form.llm-test-route").first.get_by_role("button", name="Test this route").click()
    page.wait_for_load_state()
    outcome = page.locator(".llm-test-outcome").inner_text()
    assert "answered" in outcome and "backup-gpt" in outcome
    assert [seen.body["model"] for seen in site.provider.requests] == ["backup-gpt-upstream"]
    site.shot(page, "governance-test")


def test_a_second_editor_working_from_an_old_version_sees_a_conflict_and_loses_nothing(
    site: Site, browser: Any
) -> None:
    context = signed_in(browser, site)
    first, second = context.new_page(), context.new_page()
    for page in (first, second):
        page.goto(f"{site.base}/-/llm#overrides")
    override_form(first, "summaries").locator("textarea[name=fallbacks]").fill("none")
    override_form(first, "summaries").get_by_role("button", name="Save").click()
    first.wait_for_load_state()
    assert "override by editor" in override_form(first, "summaries").inner_text()

    override_form(second, "summaries").locator("select[name=model]").select_option("backup-gpt")
    with second.expect_response(lambda response: response.request.method == "POST") as posted:
        override_form(second, "summaries").get_by_role("button", name="Save").click()
    assert posted.value.status == 409
    second.wait_for_load_state()
    heading = second.locator("h1").inner_text()
    assert heading == "Routing of purpose summaries: not saved"
    assert "What changed since version" in second.content()
    site.shot(second, "governance-conflict")
    first.reload()
    layers = override_form(first, "summaries").locator("ul > li").all_inner_texts()
    [model] = [layer for layer in layers if layer.startswith("model:")]
    [fallbacks] = [layer for layer in layers if layer.startswith("fallbacks:")]
    assert "primary-gpt" in model and "datasette.yaml" in model  # the second edit was not saved
    assert "override by editor" in fallbacks  # the first edit was kept

    # The conflict page's form is the new version with only the second editor's field set to
    # theirs: sending it applies that over the first edit, which stays.
    retry = second.locator("form.llm-override-form")
    assert retry.locator("select[name=model]").input_value() == "backup-gpt"
    assert retry.locator("textarea[name=fallbacks]").input_value() == "none"
    with second.expect_response(lambda response: response.request.method == "POST") as posted:
        retry.get_by_role("button", name="Save").click()
    assert posted.value.status == 302
    first.reload()
    layers = override_form(first, "summaries").locator("ul > li").all_inner_texts()
    [model] = [layer for layer in layers if layer.startswith("model:")]
    [fallbacks] = [layer for layer in layers if layer.startswith("fallbacks:")]
    assert "backup-gpt" in model and "override by editor" in model  # the second edit, applied
    assert fallbacks.startswith("fallbacks: none") and "override by editor" in fallbacks  # kept


def test_the_provider_answers_each_test_of_a_route(site: Site, browser: Any) -> None:
    site.provider.script = [Reply(status=500, message="down")] * 3  # retries: 2 (the default)
    page = signed_in(browser, site).new_page()
    page.goto(f"{site.base}/-/llm")
    page.locator("form.llm-test-route").first.get_by_role("button", name="Test this route").click()
    page.wait_for_load_state()
    outcome = page.locator(".llm-test-outcome").inner_text()
    assert "backup-gpt" in outcome and "answered by a fallback" in outcome
    rows = page.locator("table tbody tr").all_inner_texts()
    assert "server_error" in rows[0] and "primary-gpt" in rows[0]


def test_an_anonymous_visitor_gets_no_forms_and_a_403_on_every_write(
    site: Site, browser: Any
) -> None:
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(f"{site.base}/-/llm")
    assert response is not None and response.status == 403
    for path in ("/-/llm/purposes/summaries", "/-/llm/test/summaries"):
        answer = context.request.post(f"{site.base}{path}", form={"model": "backup-gpt"})
        assert answer.status == 403, path


def test_the_status_shows_a_purpose_falling_back_after_its_provider_failed(
    site: Site, browser: Any
) -> None:
    site.provider.script = [Reply(status=500, message="down")] * 3  # retries: 2 (the default)
    page = signed_in(browser, site).new_page()
    page.goto(f"{site.base}/-/llm")
    assert "ok" in page.locator("tr.llm-status-ok", has_text="summaries").inner_text()
    page.locator("form.llm-test-route").first.get_by_role("button", name="Test this route").click()
    page.wait_for_load_state()
    page.goto(f"{site.base}/-/llm")
    row = page.locator("table.llm-status tr", has_text="summaries").inner_text()
    assert "degraded" in row and "'backup-gpt' answers its prompts instead of 'primary-gpt'" in row
    failures = page.locator("table.llm-failures tbody tr").all_inner_texts()
    assert len(failures) == 3 and all("server_error" in row for row in failures)
    site.shot(page, "governance-status")
    # The overview links to the purpose's own page: its status, chain, usage and override.
    page.locator("table.llm-status").get_by_role("link", name="summaries").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "Purpose summaries"
    assert "degraded" in page.locator("p.llm-status-degraded").inner_text()
    assert page.locator("form.llm-override-form").count() == 1
    site.shot(page, "governance-purpose")


def test_a_purpose_that_spent_its_budget_is_refused_and_shown_over_budget(
    site: Site, browser: Any
) -> None:
    page = signed_in(browser, site).new_page()
    page.goto(f"{site.base}/-/llm")
    assert "llm-status-ok" in classes(status_row(page, "translations"))
    site.provider.requests.clear()
    assert "answered" in run_route_test(page, "translations")  # $0.80 of $1
    page.goto(f"{site.base}/-/llm")
    assert "llm-status-ok" in classes(status_row(page, "translations"))
    spent = budget_row(page, "translations")
    assert spent["Spent"].startswith("$0.8000 this month") and spent["Used"] == "80%"
    assert spent["Budget"] == "$1.00 per month" and spent["Once spent"] == "prompts are refused"

    assert "answered" in run_route_test(page, "translations")  # admitted: $0.80 < $1; now $1.60
    page.goto(f"{site.base}/-/llm")
    row = status_row(page, "translations")
    assert "llm-status-over_budget" in classes(row)
    text = row.inner_text()
    assert "over budget" in text
    assert "its $1 budget for the month is spent: its prompts are refused" in text
    # The budget is the purpose's: another purpose of the same model is not over it.
    assert "llm-status-ok" in classes(status_row(page, "summaries"))
    spent = budget_row(page, "translations")
    assert spent["Spent"].startswith("$1.60 this month") and spent["Used"] == "160%"
    table = page.locator("table.llm-budgets")
    used = table.locator("tbody tr", has=page.locator("code:text-is('translations')"))
    assert used.locator(".llm-tag.llm-missing").inner_text() == "160%"  # marked exceeded
    page.locator("table.llm-status").scroll_into_view_if_needed()
    site.shot(page, "governance-budget")

    # The next prompt is refused before it reaches the provider; the purpose's page says why.
    page.goto(f"{site.base}/-/llm/purposes/translations")
    assert "over budget" in page.locator("p.llm-status-over_budget").inner_text()
    outcome = run_route_test(page, "translations")
    assert "failed" in outcome and "budget" in outcome
    message = page.locator(".llm-test-message").inner_text()
    assert "has spent $1.60 of its $1 budget for the month" in message
    assert [seen.body["model"] for seen in site.provider.requests] == ["primary-gpt-upstream"] * 2


def test_the_usage_tables_show_each_actors_attempts_and_spend_in_every_period(
    site: Site, browser: Any
) -> None:
    editor = signed_in(browser, site).new_page()
    auditor = signed_in(browser, site, "auditor").new_page()
    for page, purpose in ((editor, "translations"), (editor, "summaries"), (auditor, "summaries")):
        page.goto(f"{site.base}/-/llm")
        assert "answered" in run_route_test(page, purpose)
    editor.goto(f"{site.base}/-/llm")
    assert editor.locator("p.llm-periods strong").inner_text() == "Last 24 hours"
    actors = usage_lines(editor, "By actor")
    assert set(actors) == {
        "editor",
        "editor / translations",
        "editor / summaries",
        "auditor",
        "auditor / summaries",
    }
    assert actors["editor"]["Attempts"] == "2" and actors["editor"]["Spend"] == "$1.60"
    assert actors["editor"]["OK"] == "2" and actors["editor"]["Output tokens"] == "10"
    for part in ("editor / translations", "editor / summaries", "auditor / summaries"):
        assert actors[part]["Attempts"] == "1" and actors[part]["Spend"] == "$0.8000", part
    assert actors["auditor"]["Attempts"] == "1" and actors["auditor"]["Spend"] == "$0.8000"
    assert [name for name in actors if " / " not in name] == ["editor", "auditor"]  # by spend

    editor.locator("p.llm-periods").get_by_role("link", name="Last 7 days").click()
    editor.wait_for_load_state()
    assert "period=7d" in editor.url
    assert editor.locator("p.llm-periods strong").inner_text() == "Last 7 days"
    assert editor.locator("#usage ~ h3").first.inner_text() == "Last 7 days"
    assert usage_lines(editor, "By actor") == actors  # every attempt is a minute old

    # A purpose's own page counts its own attempts only, by actor.
    editor.goto(f"{site.base}/-/llm/purposes/translations?period=7d")
    assert editor.locator("p.llm-periods strong").inner_text() == "Last 7 days"
    own = usage_lines(editor, "By actor")
    assert set(own) == {"editor"}
    assert {**own["editor"], "Actor": ""} == {**actors["editor / translations"], "Actor": ""}


def test_checking_an_actor_names_the_rule_that_allows_or_refuses_it(
    site: Site, browser: Any
) -> None:
    page = signed_in(browser, site).new_page()
    page.goto(f"{site.base}/-/llm")
    page.get_by_role("link", name="check an actor", exact=True).first.click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "May an actor use a purpose?"

    def check(actor: str, purpose: str) -> Any:
        form = page.locator("form.llm-check-actor")
        form.get_by_label("Actor (JSON)").fill(actor)
        form.get_by_label("Purpose").fill(purpose)
        form.get_by_role("button", name="Check").click()
        page.wait_for_load_state()
        # The answer comes with the form filled in as it was sent, to change and check again.
        assert form.get_by_label("Actor (JSON)").input_value() == actor
        assert form.get_by_label("Purpose").input_value() == purpose
        return page.locator("p.llm-check-answer")

    rule = "plugins.datasette-llm.purposes.translations.allow"
    answer = check('{"id": "editor"}', "translations")
    assert "llm-ok" in classes(answer)
    text = answer.inner_text()
    assert text.startswith(f"Allowed: {rule} lets it through (the actor editor)")
    assert f'({rule}: {{"id": ["editor"]}})' in text

    answer = check('{"id": "auditor"}', "translations")
    assert "llm-none" in classes(answer)
    text = answer.inner_text()
    assert text.startswith(f"Refused: {rule} lets through only the actor editor")
    assert f'({rule}: {{"id": ["editor"]}})' in text
    site.shot(page, "governance-check-actor")

    # Another purpose has no rule of its own, and none is global: the default allows.
    answer = check('{"id": "auditor"}', "summaries")
    assert "llm-ok" in classes(answer)
    assert answer.inner_text() == "Allowed: llm-use is allowed by default and no rule restricts it."

    # What the page answered is what a call gets: auditor's test of translations is refused,
    # before the provider sees it; editor's is answered.
    site.provider.requests.clear()
    auditor = signed_in(browser, site, "auditor").new_page()
    auditor.goto(f"{site.base}/-/llm")
    outcome = run_route_test(auditor, "translations")
    assert "failed" in outcome and "not_allowed" in outcome
    assert rule in auditor.locator(".llm-test-message").inner_text()
    assert site.provider.requests == []
    page.goto(f"{site.base}/-/llm")
    assert "answered" in run_route_test(page, "translations")
