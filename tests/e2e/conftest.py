"""A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Playwright's sync API runs an event loop in the main thread while it is started; Django refuses ORM
calls from a thread with a running loop unless DJANGO_ALLOW_ASYNC_UNSAFE is set. These tests set it
only for themselves, and start and stop Playwright per test so no loop outlives the e2e tests (a
session-wide Playwright, as pytest-playwright's fixtures keep, would make every later test in the
run see a running loop). The browser must launch: if it can't, the test fails (it is never skipped).
"""

import os
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"


@pytest.fixture
def allow_orm_beside_playwright(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def chromium(allow_orm_beside_playwright):
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
            # While Playwright's loop runs, asgiref gives ORM calls in this thread a separate (context)
            # database connection; close it now, or it outlives the test and blocks dropping the test DB.
            connections.close_all()


@pytest.fixture
def screenshots():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str):
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    return shot
