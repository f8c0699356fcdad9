"""``/docs`` and ``/redoc`` work offline: their pages name only this server's URLs, and
the assets they name are served by it; ``/`` and ``/ui`` lead to the dashboard."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import Settings

REF = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp: Path = tmp_path_factory.mktemp("docs")
    settings = Settings(
        home=tmp, db_url=f"sqlite:///{tmp / 'db.sqlite'}", cache=str(tmp / "cache"), workers=0
    )
    with TestClient(create_app(settings, background=False)) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_only_local_assets(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    refs = [a or b for a, b in REF.findall(html)]
    assert refs, html
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        got = client.get(ref)
        assert got.status_code == 200, ref
        assert got.content, ref
    assert "http://" not in html and "https://" not in html
    assert "fonts.googleapis" not in html and "cdn" not in html.lower()


def test_docs_assets_have_their_types(client: TestClient) -> None:
    js = client.get("/static/docs/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"] and "SwaggerUIBundle" in js.text
    css = client.get("/static/docs/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")
    redoc = client.get("/static/redoc.js")
    assert "javascript" in redoc.headers["content-type"] and len(redoc.content) > 100_000
    assert b"cdn.redoc.ly" not in redoc.content  # its footer logo points here instead


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_root_and_ui_redirect_to_the_dashboard(client: TestClient, path: str) -> None:
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/dashboard/"
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_pages_stay_out_of_the_api_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/ui", "/docs", "/redoc"} & set(paths)


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/js/app.js", "/dashboard/style.css"])
def test_dashboard_pages_carry_a_strict_content_security_policy(
    client: TestClient, path: str
) -> None:
    r = client.get(path)
    assert r.status_code == 200
    csp = {
        d.split()[0]: d.split()[1:]
        for d in r.headers["content-security-policy"].split(";")
        if d.strip()
    }
    assert csp["script-src"] == ["'self'"]  # no inline script, no eval, nothing from elsewhere
    assert csp["default-src"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["connect-src"] == ["'self'"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def test_dashboard_html_has_no_inline_script_or_handler(client: TestClient) -> None:
    html = client.get("/dashboard/").text
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert all(
        not body.strip() for body in re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    )
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no onclick= and the like
    assert "javascript:" not in html.lower()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_allow_only_their_own_inline_script(client: TestClient, page: str) -> None:
    import base64
    import hashlib

    r = client.get(page)
    csp = r.headers["content-security-policy"]
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src")).split()
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
    for body in re.findall(r"<script>(.*?)</script>", r.text, re.S):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/v1/dashboard/studies", "/v1/studies", "/healthz"])
def test_api_answers_are_never_sniffed(client: TestClient, path: str) -> None:
    assert client.get(path).headers["x-content-type-options"] == "nosniff"
