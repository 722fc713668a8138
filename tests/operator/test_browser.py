"""The routing page's governance in a real browser: an edit, a conflict, the audit list, a test.

Playwright drives Debian's ``chromium`` (``executable_path``; no browser is downloaded) against
``datasette serve`` in a subprocess, whose models are llm's own OpenAI plugin pointed at the
local provider of ``tests/openai_server.py``. The signed-in actor is ``editor``, allowed
``llm-view-routing`` and ``llm-manage-routing`` in the server's datasette.yaml.

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


def _config() -> dict[str, Any]:
    return {
        "permissions": {
            "llm-view-routing": {"id": "editor"},
            "llm-manage-routing": {"id": "editor"},
        },
        "plugins": {
            "datasette-llm": {
                "purposes": {
                    "summaries": {"model": "primary-gpt", "fallbacks": ["backup-gpt"]},
                }
            }
        },
    }


class Site:
    def __init__(self, base: str, provider: Provider, shots: Path | None) -> None:
        self.base = base
        self.provider = provider
        self.shots = shots
        self.cookie = Datasette(secret=SECRET).sign({"a": {"id": "editor"}}, "actor")

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


def signed_in(browser: Any, site: Site) -> Any:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.add_cookies([{"name": "ds_actor", "value": site.cookie, "url": site.base}])
    return context


def override_form(page: Any, purpose: str) -> Any:
    return page.locator(".llm-override", has=page.locator(f"h3:text-is('{purpose}')"))


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
