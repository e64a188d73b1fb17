"""The real app served by web/serve.py on 127.0.0.1 (a free port), SQLite, and Debian's Chromium
driven by Playwright. One server and one browser per module; each test gets its own browser context
(its own cookies), so tests do not share a login."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from appliance.config import Settings
from appliance.db import Database, create_database
from tests.webadmin_world import PASSWORD, World, make_users, make_world
from web import serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "webadmin"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Kiln:
    url: str
    db: Database
    settings: Settings
    world: World
    browser: Browser

    def context(self, width: int = 1280, height: int = 860) -> BrowserContext:
        return self.browser.new_context(viewport={"width": width, "height": height}, base_url=self.url)

    def login(self, context: BrowserContext, username: str) -> Page:
        page = context.new_page()
        page.goto("/admin/login")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/admin/")
        return page


@pytest.fixture(scope="module")
def kiln(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kiln]:
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (scripts/bootstrap installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("kiln-web")
    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KILN_CONFIG", str(root / "absent.toml"))
        settings = Settings(
            state_dir=root / "state",
            database_url=f"sqlite:///{root / 'kiln.db'}",
            secret_key="browser-test-secret-key",
            tftp_root=root / "tftp",
            web_bind=f"127.0.0.1:{port}",
        )
    db = create_database(settings.effective_database_url)
    make_users(db)
    world = make_world(db, root)
    stop = threading.Event()
    thread = threading.Thread(
        target=serve.serve, args=(settings, db, stop), name="kiln-web-test", daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the web server did not come up")
        time.sleep(0.05)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield Kiln(url, db, settings, world, browser)
        finally:
            browser.close()
            stop.set()
            thread.join(timeout=15)
            db.dispose()
