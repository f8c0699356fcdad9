"""The dashboard and the API docs in a real browser (Debian's chromium driven by selenium).

A live ``eeipu serve`` (with an API token) runs a small real study of
``synthetic-3stage-flat``; the page must show that study's trial count and best value in its
cards, its best-so-far plot and its trial table; it follows an ask/tell study while trials
are told; it stops a study only once the token is entered; it compares two studies; and
``/docs`` and ``/redoc`` render with nothing fetched from another origin. A screenshot of the
dashboard is saved to ``$EEIPU_TEST_ARTIFACTS`` (default: ``<tmp>/eeipu-artifacts``) as
``dashboard.png`` (and ``docs.png``); the path is printed.

Without chromium and chromedriver these tests skip, except under ``CI=true``, where they
fail (``scripts/test.sh`` installs both).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api._server import LiveServer, start_server

TOKEN = "dash-token"
REFERENCE = {
    "retrained_raw_sum": 7.5,
    "original_raw_sum": 20.0,
}  # as the unlearning pipelines report
WAIT = 60.0  # an upper bound for the page to catch up, not a timing assertion


def artifacts_dir() -> Path:
    d = Path(
        os.environ.get("EEIPU_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "eeipu-artifacts"
    )
    d.mkdir(parents=True, exist_ok=True)
    return d


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        msg = (
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1900",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("dash-browser")
    srv = start_server(tmp, db_url=f"sqlite:///{tmp / 'db.sqlite'}", workers=1, token=TOKEN)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def real_study(live: LiveServer) -> dict[str, Any]:
    """A finished study run by the server's worker: 12 EEIPU trials of synthetic-3stage-flat."""
    sid = live.api_client.create_study(
        "synthetic-3stage-flat", 3600, "eeipu", max_trials=12, seed=5, name="real"
    ).id
    return live.wait_study(sid)


def until(driver: Any, cond: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(cond)
    except TimeoutException:
        status = (
            driver.find_element("id", "status").text if "dashboard" in driver.current_url else ""
        )
        raise AssertionError(f"page never showed {what} (status: {status!r})") from None


def attr(driver: Any, css: str, name: str) -> str | None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", css).get_attribute(name)  # type: ignore[no-any-return]
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def csp_violations(driver: Any) -> list[str]:
    """The console's Content-Security-Policy refusals since the last call (the log is read
    and emptied)."""
    return [
        str(e.get("message"))
        for e in driver.get_log("browser")
        if "Content Security Policy" in str(e.get("message"))
    ]


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def test_dashboard_shows_the_real_study(
    browser: Any, live: LiveServer, real_study: dict[str, Any]
) -> None:
    sid, n, best = real_study["id"], real_study["trials_done"], real_study["best_value"]
    assert n == 12 and best is not None
    browser.get(f"{live.url}/ui#/study/{sid}")  # /ui redirects to /dashboard/
    until(browser, lambda d: attr(d, "#trial-count", "data-count") == str(n), f"{n} trials")
    assert "/dashboard/" in browser.current_url
    assert float(attr(browser, "#best-value", "data-value") or "nan") == best
    # the plot: one step line with a point per completed trial, ending at the best value
    path = "#best-plot path.series"
    until(browser, lambda d: attr(d, path, "data-n") == str(real_study["n_complete"]), "plot")
    assert float(attr(browser, path, "data-last") or "nan") == best
    # the table: every trial, and sorting by value puts the best first
    until(browser, lambda d: attr(d, "#trial-table", "data-total") == str(n), "table")
    rows = browser.find_elements("css selector", "#trial-table tbody tr")
    assert len(rows) == n
    browser.find_element("css selector", "#trial-table th[data-key='value']").click()
    first = "#trial-table tbody tr:first-child td[data-value]"
    until(browser, lambda d: attr(d, first, "data-value") is not None, "a sorted table")
    assert float(attr(browser, first, "data-value") or "nan") == best
    # the list: this study with its best value; the stage costs and importance are drawn
    row = f"#study-list tr[data-study-id='{sid}'] td[data-value]"
    assert float(attr(browser, row, "data-value") or "nan") == best
    assert attr(browser, "#stage-plot", "data-bars") == "3"
    until(browser, lambda d: int(attr(d, "#importance-plot", "data-bars") or 0) == 7, "importance")
    until(
        browser,
        lambda d: int(attr(d, "#parallel-plot", "data-lines") or 0) == real_study["n_complete"],
        "lines",
    )
    shot = artifacts_dir() / "dashboard.png"
    browser.save_screenshot(str(shot))
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_dashboard_follows_a_running_study(browser: Any, live: LiveServer) -> None:
    api = live.api_client
    sid = api.create_study("synthetic-3stage-flat", 3600, "random", mode="external", name="live").id
    browser.get(f"{live.url}/dashboard/#/study/{sid}")
    until(browser, lambda d: attr(d, "#study-view", "data-study-id") == str(sid), "the study")
    values = []
    for i in range(3):
        t = api.ask(sid, worker="w")
        value = -10.0 + i
        values.append(value)
        api.tell(
            sid,
            t.id,
            value,
            {"value": value, "raw_sum": -value, **REFERENCE},
            worker="w",
            cost_seconds=2.0,
        )
        until(
            browser,
            lambda d, k=i + 1: attr(d, "#trial-count", "data-count") == str(k),
            f"{i + 1} trials",
        )
        best = max(values)
        until(
            browser,
            lambda d, v=best: _float(attr(d, "#best-value", "data-value")) == v,
            "the new best",
        )
    assert attr(browser, "#trial-table", "data-total") == "3"
    # metrics with retrained_/original_ counterparts are shown next to them (unlearning)
    cells = [c.text for c in browser.find_elements("css selector", "#unlearning-table td")]
    assert not browser.find_element("id", "unlearning").get_attribute("hidden")
    assert cells == ["raw_sum", "8", "7.5", "20", "–", "–"]
    # stop needs the token: refused first, done once it is entered
    browser.find_element("id", "stop-btn").click()
    until(browser, lambda d: "token" in d.find_element("id", "action-msg").text, "a token request")
    assert api.study(sid).state == "running"
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#token-form button").click()
    browser.find_element("id", "stop-btn").click()
    until(browser, lambda d: "done" in d.find_element("id", "action-msg").text, "a stop")
    assert api.study(sid).state == "stopped"
    # the token stays in this tab's memory: in no address, no cookie, not in localStorage
    assert browser.execute_script("return window.localStorage.length") == 0
    assert TOKEN not in browser.current_url and not browser.get_cookies()
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls and not any(TOKEN in str(u) for u in urls)
    assert TOKEN not in (browser.find_element("id", "csv-link").get_attribute("href") or "")


def test_dashboard_compares_studies(
    browser: Any, live: LiveServer, real_study: dict[str, Any]
) -> None:
    other = live.api_client.create_study(
        "synthetic-3stage-flat", 3600, "random", max_trials=6, seed=6, name="random"
    ).id
    live.wait_study(other)
    browser.get(f"{live.url}/dashboard/")
    for sid in (real_study["id"], other):
        box = f"#study-list tr[data-study-id='{sid}'] input.compare-box"
        until(browser, lambda d, b=box: d.find_elements("css selector", b), f"study {sid}")
        browser.find_element("css selector", box).click()
    browser.find_element("id", "compare-btn").click()
    until(browser, lambda d: attr(d, "#compare-plot", "data-series") == "2", "two curves")
    labels = [
        p.get_attribute("data-label")
        for p in browser.find_elements("css selector", "#compare-plot path.series")
    ]
    assert any("random" in (x or "") for x in labels) and any("eeipu" in (x or "") for x in labels)


XSS = {  # each would set window.__xss if the page ever parsed it as HTML
    "name": '<img src=x onerror="window.__xss=1">name',
    "error": "<script>window.__xss=2</script><b>error</b>",
    "metric": "<svg onload=window.__xss=3>m",
    "stage": '"><img src=y onerror=window.__xss=4>',
}


def test_user_text_shows_literally_and_runs_nothing(browser: Any, live: LiveServer) -> None:
    """A study whose name, error, metric and stage names hold HTML and scripts: the page
    shows each as text, no element comes of them, nothing runs, and the page's own policy
    refuses nothing of the page itself."""
    api = live.api_client
    sid = api.create_study(
        "synthetic-3stage-flat", 3600, "random", mode="external", name=XSS["name"]
    ).id
    t = api.ask(sid, worker="w")
    api.tell(sid, t.id, state="FAILED", error=XSS["error"], worker="w", cost_seconds=1.0)
    t = api.ask(sid, worker="w")
    metrics = {"value": 1.0, XSS["metric"]: 0.5, f"retrained_{XSS['metric']}": 0.4}
    stages = [{"stage": XSS["stage"], "cost_seconds": 1.0, "hit": False}]
    api.tell(sid, t.id, 1.0, metrics, stages=stages, worker="w", cost_seconds=1.0)
    csp_violations(browser)  # forget what earlier pages logged
    browser.get(f"{live.url}/dashboard/#/study/{sid}")
    until(browser, lambda d: attr(d, "#trial-table", "data-total") == "2", "both trials")
    until(browser, lambda d: attr(d, "#stage-plot", "data-bars") == "1", "the stage bar")
    assert XSS["name"] in browser.find_element("id", "study-title").text
    row = browser.find_element("css selector", f"#study-list tr[data-study-id='{sid}']")
    assert XSS["name"] in row.text
    errors = [c.text for c in browser.find_elements("css selector", "#trial-table td")]
    assert XSS["error"] in errors
    cells = [c.text for c in browser.find_elements("css selector", "#unlearning-table td")]
    assert cells[0] == XSS["metric"]
    labels = browser.execute_script(
        "return [...document.querySelectorAll('#stage-plot text')].map(e => e.textContent)"
    )
    assert XSS["stage"] in labels
    made = browser.execute_script(
        "return document.querySelectorAll('img, b, main script, svg svg, [onerror], [onload]')"
        ".length"
    )
    assert made == 0
    assert browser.execute_script("return window.__xss === undefined")
    assert not csp_violations(browser)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_render_offline(browser: Any, live: LiveServer, page: str) -> None:
    browser.get(f"{live.url}{page}")
    css = ".swagger-ui .info .title" if page == "/docs" else "redoc h1"
    until(
        browser,
        lambda d: any("eeipu" in e.text for e in d.find_elements("css selector", css)),
        f"{page} rendered",
    )
    if page == "/docs":
        until(browser, lambda d: d.find_elements("css selector", ".opblock"), "the operations")
        browser.save_screenshot(str(artifacts_dir() / "docs.png"))
    assert not csp_violations(browser)  # the page's policy lets it work
    names = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert names, "the page loaded no resource"
    assert all(str(n).startswith(live.url) for n in names), names
