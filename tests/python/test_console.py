"""The web console at /console in a real browser: Debian's chromium, headless, driven by
Playwright, against the real binary and the mock upstream. A key holder signs in and sees the
API's own numbers after a known workload, pages through their requests and regenerates their
key (the old one then gets 401); an operator creates a key, tops it up, changes its tier and
revokes it; a wrong key and a wrong admin token are refused in the product's words. Every test
saves a screenshot under target/console-screenshots/ (ignored by git), and the first load's
page weight is measured from what the browser transferred.

Playwright never downloads a browser here: it launches /usr/bin/chromium (scripts/e2e.sh
installs it when missing)."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest
from playwright.sync_api import expect

from harness import REPO_ROOT, Gateway, auth, make_client

ADMIN_TOKEN = f"e2e-admin-{uuid.uuid4().hex}"
CONSOLE_CONFIG = """
[admin]
token_env = "TOLLGATE_ADMIN_TOKEN"

[[tiers]]
name = "console_small"
rpm = 7
monthly_requests = 50
"""
SCREENSHOTS = REPO_ROOT / "target" / "console-screenshots"
# Every wait for the page is bounded by this (milliseconds).
UI_TIMEOUT_MS = 15_000
# The first load's bytes, measured in test_key_holder..., printed at the end of the run.
PAGE_WEIGHT: dict[str, int] = {}


@pytest.fixture(scope="module")
def gateway(mock, tmp_path_factory):
    gw = Gateway(
        tmp_path_factory.mktemp("tollgate-console"),
        mock,
        CONSOLE_CONFIG,
        {"TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    yield gw
    gw.stop()


@pytest.fixture
def page(browser, request):
    """A fresh browser context (empty sessionStorage) per test; its console errors (a CSP
    violation among them) fail the test; a screenshot is saved whatever the outcome."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.console_errors = errors
    yield pg
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    # Refused calls (401 in the sign-in tests) log "Failed to load resource"; nothing else may.
    unexpected = [e for e in errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


def usd(text: str | None) -> str:
    """What the console shows for an exact USD string (format.js `usd`)."""
    if text is None:
        return "—"
    s = str(text)
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return f"-${s[1:]}" if s.startswith("-") else f"${s}"


def sign_in(page, gateway: Gateway, role: str, secret: str) -> None:
    page.goto(f"{gateway.http_base}/console")
    page.check(f"input[name=role][value={role}]")
    page.fill("#secret", secret)
    page.click("#sign-in-form button[type=submit]")


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def test_console_assets_are_cached_by_etag_under_a_strict_policy(gateway: Gateway):
    redirect = httpx.get(f"{gateway.http_base}/console", timeout=10)
    assert redirect.status_code == 308 and redirect.headers["location"] == "/console/"
    first = httpx.get(f"{gateway.http_base}/console/app.js", timeout=10)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/javascript")
    csp = first.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert first.headers["cache-control"] == "no-cache"
    again = httpx.get(
        f"{gateway.http_base}/console/app.js", headers={"if-none-match": first.headers["etag"]}, timeout=10
    )
    assert again.status_code == 304 and again.content == b""
    missing = httpx.get(f"{gateway.http_base}/console/nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_the_dashboard_routes_show_only_the_callers_requests_and_rotate_once_a_minute(gateway: Gateway):
    mine, theirs = gateway.create_key("enterprise"), gateway.create_key("enterprise")
    for key, n in ((mine, 2), (theirs, 3)):
        with make_client(gateway, key) as client:
            for i in range(n):
                client.chat.completions.create(
                    model="deepseek-v4-flash", messages=[{"role": "user", "content": f"rows {i}"}]
                )
    listed = httpx.get(f"{gateway.base_url}/dashboard/requests", headers=auth(mine), timeout=10).json()
    assert listed["object"] == "list" and listed["has_more"] is False and listed["next_cursor"] is None
    assert len(listed["data"]) == 2
    row = listed["data"][0]
    assert row["id"].startswith("chatcmpl-") and row["model"] == "deepseek-v4-flash"
    assert row["status"] == "succeeded" and row["estimated"] is False
    assert listed["data"][0]["created_at_ms"] >= listed["data"][1]["created_at_ms"]
    theirs_ids = {r["id"] for r in httpx.get(f"{gateway.base_url}/dashboard/requests", headers=auth(theirs), timeout=10).json()["data"]}
    assert len(theirs_ids) == 3 and not theirs_ids & {r["id"] for r in listed["data"]}
    bad = httpx.get(f"{gateway.base_url}/dashboard/requests", params={"cursor": "x"}, headers=auth(mine), timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cursor"

    rotated = httpx.post(f"{gateway.base_url}/dashboard/key/rotate", headers=auth(mine), timeout=10)
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert httpx.get(f"{gateway.base_url}/dashboard/requests", headers=auth(mine), timeout=10).status_code == 401
    again = httpx.post(f"{gateway.base_url}/dashboard/key/rotate", headers=auth(new), timeout=10)
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limit_exceeded"
    # Same key, same history.
    after = httpx.get(f"{gateway.base_url}/dashboard/requests", headers=auth(new), timeout=10).json()
    assert [r["id"] for r in after["data"]] == [r["id"] for r in listed["data"]]

    report = httpx.get(f"{gateway.http_base}/admin/usage", params={"top_keys": 100}, headers=auth(ADMIN_TOKEN), timeout=10)
    assert report.status_code == 200
    body = report.json()
    assert {mine.name, theirs.name} <= {k["name"] for k in body["top_keys"]}
    assert httpx.get(f"{gateway.http_base}/admin/usage", headers=auth(new), timeout=10).status_code == 401


def test_key_holder_sees_the_apis_numbers_pages_requests_and_regenerates(gateway: Gateway, page):
    key = gateway.create_key("enterprise")
    client = make_client(gateway, key)
    for i in range(13):
        client.chat.completions.create(
            model="deepseek-v4-flash" if i % 3 else "deepseek-v4-pro",
            messages=[{"role": "user", "content": f"console workload {i}"}],
            max_tokens=20,
        )
    client.close()
    api_usage = httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(key), timeout=10).json()
    api_sub = httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(key), timeout=10).json()

    transferred: list[int] = []
    page.on("requestfinished", lambda r: transferred.append(sum(r.sizes()[k] for k in ("responseBodySize", "responseHeadersSize"))))
    page.goto(f"{gateway.http_base}/console")
    page.wait_for_load_state("networkidle")
    PAGE_WEIGHT["first load (page, styles, modules)"] = sum(transferred)
    PAGE_WEIGHT["first load files"] = len(transferred)
    # Keyboard only: the secret field has focus; Enter submits.
    assert page.evaluate("document.activeElement.id") == "secret"
    page.keyboard.type(key.secret)
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=total-cost]")
    page.wait_for_selector("[data-testid=models-table]")
    page.wait_for_selector("[data-testid=requests-table] tbody tr[data-request-id]")
    page.wait_for_load_state("networkidle")
    PAGE_WEIGHT["signed in, all data loaded"] = sum(transferred)

    assert text(page, "[data-testid=tier]") == "enterprise" == api_usage["tier"]
    assert text(page, "[data-testid=monthly-requests]") == f"13 of {api_usage['monthly_limit']:,}"
    assert text(page, "[data-testid=spend-month]") == usd(api_sub["spend_month_usd"])
    assert text(page, "[data-testid=total-cost]") == usd(api_usage["total_usage_usd"])
    assert text(page, "[data-testid=total-requests]") == "13"
    for testid, field in [
        ("total-prompt", "total_prompt_tokens"),
        ("total-cached", "total_cached_prompt_tokens"),
        ("total-completion", "total_completion_tokens"),
        ("total-reasoning", "total_reasoning_tokens"),
    ]:
        assert text(page, f"[data-testid={testid}]") == f"{api_usage[field]:,}", testid
    api_lines = [usd(i["cost_usd"]) for d in api_usage["daily_costs"] for i in d["line_items"]]
    assert page.locator("[data-testid=line-cost]").all_inner_texts() == api_lines
    assert page.locator(".chart svg rect").count() == len(api_lines)
    assert page.get_attribute("#quota-bar", "value") == "13"
    # The catalogue, aliases marked.
    models = httpx.get(f"{gateway.base_url}/models", timeout=10).json()["data"]
    assert page.locator("[data-testid=models-table] tbody tr").count() == len(models)
    alias = next(m for m in models if m.get("alias_of"))
    assert f"alias of {alias['alias_of']}" in text(page, f"tr[data-model='{alias['id']}']")

    # Paging: the API's pages, in the same order.
    def api_page(cursor: str | None) -> dict:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        return httpx.get(f"{gateway.base_url}/dashboard/requests", params=params, headers=auth(key), timeout=10).json()

    first = api_page(None)
    second = api_page(first["next_cursor"])
    assert len(first["data"]) == 10 and len(second["data"]) == 3 and not second["has_more"]
    shown = lambda: page.eval_on_selector_all("tr[data-request-id]", "rows => rows.map(r => r.dataset.requestId)")  # noqa: E731
    assert shown() == [r["id"] for r in first["data"]]
    page.click("#requests-older")
    expect(page.locator("tr[data-request-id]")).to_have_count(3)
    assert shown() == [r["id"] for r in second["data"]]
    assert page.is_disabled("#requests-older")
    page.click("#requests-newer")
    expect(page.locator("tr[data-request-id]")).to_have_count(10)
    assert shown() == [r["id"] for r in first["data"]]

    # Regenerate: one confirmation, the new secret shown once, the old one refused at once.
    page.click("#regenerate")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")
    new_secret = page.locator("[data-testid=new-secret]").input_value()
    assert new_secret.startswith("sk-") and new_secret != key.secret
    assert new_secret.startswith(text(page, "[data-testid=key-prefix]").removesuffix("..."))
    with pytest.raises(openai.AuthenticationError):
        make_client(gateway, key).chat.completions.create(
            model="deepseek-v4-flash", messages=[{"role": "user", "content": "old key"}]
        )
    assert httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(key), timeout=10).status_code == 401
    assert httpx.get(f"{gateway.base_url}/dashboard/billing/usage", headers=auth(new_secret), timeout=10).status_code == 200
    # The page goes on with the new key, and the session holds it, not the old one.
    page.click("#requests-older")
    expect(page.locator("tr[data-request-id]")).to_have_count(3)
    stored = page.evaluate("sessionStorage.getItem('tollgate.console')")
    assert json.loads(stored)["secret"] == new_secret
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    print(f"\nconsole page weight: {PAGE_WEIGHT}")


def test_operator_creates_tops_up_changes_tier_and_revokes(gateway: Gateway, page):
    name = f"console-{uuid.uuid4().hex[:8]}"
    sign_in(page, gateway, "operator", ADMIN_TOKEN)
    page.wait_for_selector("[data-testid=keys-table]")

    page.fill("#new-name", name)
    page.fill("#new-tier", "enterprise")
    page.click("#create-title + form button[type=submit]")
    secret = page.locator("[data-testid=new-secret]").input_value()
    assert secret.startswith("sk-")
    assert httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(secret), timeout=10).status_code == 200
    # The key answers a request, so it shows among the top spenders.
    make_client(gateway, secret).chat.completions.create(
        model="deepseek-v4-flash", messages=[{"role": "user", "content": "operator workload"}]
    )

    page.fill("#key-search", name)
    row = page.locator(f"tr[data-key-name='{name}']")
    assert page.locator("[data-testid=keys-table] tbody tr").count() == 1
    row.get_by_role("button", name=f"Manage {name}").click()

    # A bad amount: the Admin API's own words.
    page.fill("#topup-amount", "lots")
    page.click("#topup-title ~ div button")
    api_error = httpx.post(
        f"{gateway.http_base}/admin/keys/{row.get_attribute('data-key-id')}/topup",
        headers=auth(ADMIN_TOKEN),
        json={"amount_usd": "lots"},
        timeout=10,
    ).json()["error"]["message"]
    expect(page.locator("#manage-error")).to_have_text(api_error)

    page.fill("#topup-amount", "2.5")
    page.click("#topup-title ~ div button")
    expect(page.locator("#manage-notice")).to_have_text("Balance topped up.")
    assert text(page, f"tr[data-key-name='{name}'] [data-testid=key-balance]") == "$2.5"

    page.fill("#edit-tier", "console_small")
    page.click("#edit-title ~ button")
    expect(page.locator("#manage-notice")).to_have_text("Saved.")
    listed = {k["name"]: k for k in httpx.get(f"{gateway.http_base}/admin/keys", headers=auth(ADMIN_TOKEN), timeout=10).json()["data"]}
    assert listed[name]["tier"] == "console_small" and listed[name]["rpm_limit"] == 7
    assert listed[name]["balance_usd"].startswith("2.5")

    page.click("#revoke-key")
    page.click("#confirm-ok")
    expect(page.locator("#manage-notice")).to_have_text("Revoked.")
    assert text(page, f"tr[data-key-name='{name}'] [data-testid=key-status]") == "revoked"
    assert httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(secret), timeout=10).status_code == 401

    # Usage across keys: the key is among the top spenders, at the Admin API's figure.
    report = httpx.get(f"{gateway.http_base}/admin/usage", headers=auth(ADMIN_TOKEN), timeout=10).json()
    spent = next(k for k in report["top_keys"] if k["name"] == name)
    page.click("#all-usage-title ~ form button[type=submit]")
    top = page.locator("[data-testid=top-keys] tbody tr", has_text=name)
    expect(top).to_contain_text(usd(spent["cost_usd"]))
    expect(page.locator("#all-usage-title ~ div [data-testid=total-cost]")).to_have_text(usd(report["total_cost_usd"]))


def test_a_wrong_key_and_a_wrong_admin_token_are_refused_in_the_products_words(gateway: Gateway, page):
    wrong_key = "sk-" + "x" * 40
    expected = httpx.get(f"{gateway.base_url}/dashboard/billing/subscription", headers=auth(wrong_key), timeout=10).json()
    assert expected["error"]["message"] == "Invalid API key provided"
    sign_in(page, gateway, "holder", wrong_key)
    expect(page.locator("#sign-in-error")).to_have_text(expected["error"]["message"])
    assert page.is_visible("#sign-in") and page.is_hidden("#view")
    assert page.evaluate("sessionStorage.length") == 0

    expected = httpx.get(f"{gateway.http_base}/admin/keys", headers=auth("not-the-token"), timeout=10).json()
    page.check("input[name=role][value=operator]")
    page.fill("#secret", "not-the-token")
    page.click("#sign-in-form button[type=submit]")
    assert expected["error"]["message"].startswith("Missing or wrong admin token")
    expect(page.locator("#sign-in-error")).to_have_text(expected["error"]["message"])
    # An API key is not an admin token either.
    key = gateway.create_key("enterprise")
    page.fill("#secret", key.secret)
    with page.expect_response(lambda r: r.url.endswith("/admin/keys")) as refused:
        page.click("#sign-in-form button[type=submit]")
    assert refused.value.status == 401
    expect(page.locator("#sign-in-error")).to_have_text(expected["error"]["message"])


def test_the_console_fits_a_phone(gateway: Gateway, browser):
    key = gateway.create_key("enterprise")
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    pg = context.new_page()
    sign_in(pg, gateway, "holder", key.secret)
    pg.wait_for_selector("[data-testid=models-table]")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SCREENSHOTS / "test_the_console_fits_a_phone.png"), full_page=True)
    # Wide tables scroll inside their own box; the page itself never scrolls sideways.
    assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # Every form control has a label.
    unlabelled = pg.evaluate(
        """[...document.querySelectorAll('input, select')].filter(i => i.type !== 'hidden'
             && !(i.labels && i.labels.length) && !i.getAttribute('aria-label')).map(i => i.id || i.name)"""
    )
    assert unlabelled == []
    context.close()
