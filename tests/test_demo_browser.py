"""The demo page (``im_plugins.demo``) in real headless Chromium: two users, one pushes
to the other from the page's console, over WebSocket and over SSE."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from im_core import Options, Server, hookimpl
from im_core.plugins import get_plugin_manager

from .conftest import MakeServer, http_url
from .test_acks import AckLog

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "demo.png"
PLUGIN = "demo"  # the optional built-in, by its short name


def require_browser() -> None:
    """Skip without Chromium or Selenium, unless IM_TEST_REQUIRE_BROWSER is set (CI)."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            missing.append(path)
    if missing:
        reason = "browser test needs " + ", ".join(missing)
        if os.environ.get("IM_TEST_REQUIRE_BROWSER"):
            pytest.fail(reason + " (IM_TEST_REQUIRE_BROWSER is set)")
        pytest.skip(reason)


@contextmanager
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="im-demo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,420",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def log_in(driver: Any, url: str, user: str, tags: str = "") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "tagsin").send_keys(tags)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 10).until(
        ec.text_to_be_present_in_element((By.ID, "status"), f"connected as {user}")
    )


def scenario(base: str, sse: bool) -> None:
    """alice and bob log in; bob pushes to alice from the console; alice sees and acks it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url = base + "/demo" + ("?transport=sse" if sse else "")
    with browser() as alice, browser() as bob:
        log_in(alice, url, "alice", tags="room:1")
        log_in(bob, url, "bob")
        kind = "sse" if sse else "websocket"
        assert alice.find_element(By.ID, "transport").text == kind
        WebDriverWait(alice, 10).until(ec.text_to_be_present_in_element((By.ID, "online"), "2"))
        WebDriverWait(alice, 10).until(ec.text_to_be_present_in_element((By.ID, "tags"), "room:1"))

        bob.find_element(By.ID, "to").send_keys("alice")
        bob.find_element(By.ID, "text").send_keys(f"hello alice over {kind}")
        bob.find_element(By.ID, "wantack").click()
        bob.find_element(By.ID, "send").click()
        WebDriverWait(bob, 10).until(ec.text_to_be_present_in_element((By.ID, "result"), "200"))

        WebDriverWait(alice, 10).until(
            ec.text_to_be_present_in_element((By.ID, "messages"), f"hello alice over {kind}")
        )
        item = alice.find_element(By.CSS_SELECTOR, "#messages li.message")
        assert int(item.get_attribute("data-sid")) > 0  # asked for an ack: it has a sid
        WebDriverWait(alice, 10).until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#messages li.message"), "acked")
        )
        if os.environ.get("IM_DEMO_SCREENSHOT") == "1" and not sse:
            alice.save_screenshot(str(SCREENSHOT))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sse", [False, True], ids=["websocket", "sse"])
async def test_push_from_one_page_reaches_another(make_server: MakeServer, sse: bool) -> None:
    require_browser()
    acks = AckLog()
    server = await make_server(names=(PLUGIN,), plugins=(acks,))
    await asyncio.to_thread(scenario, http_url(server), sse)
    # the page's auto-ack reached the server over the transport it used
    for _ in range(200):
        if acks.acked:
            break
        await asyncio.sleep(0.02)
    assert [user for user, _ in acks.acked] == ["alice"]


async def test_demo_page_is_served_only_with_the_plugin(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    with_demo = await make_server(names=(PLUGIN,))
    async with session.get(http_url(with_demo, "/demo")) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        body = await resp.text()
    for element in ("user", "login", "messages", "to", "text", "send", "online", "tags"):
        assert f'id="{element}"' in body
    assert "http://" not in body and "https://" not in body  # no external assets
    plain: Server = await make_server()
    async with session.get(http_url(plain, "/demo")) as resp:
        assert resp.status == 404


def test_async_route_hook_is_refused() -> None:
    class Late:
        @hookimpl
        async def im_http_routes(self, add_get: Any) -> None:
            add_get("/late", None)

    pm = get_plugin_manager(autoload=False)
    pm.register(Late())
    from im_core.plugins import Hooks

    with pytest.raises(TypeError, match="plain function"):
        Hooks(pm).http_routes(lambda path, handler: None, Server(Options(), pm))
