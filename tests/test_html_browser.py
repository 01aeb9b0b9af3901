"""The HTML report and leaderboard in a real browser: headless Chromium loads each page,
takes a screenshot, and the page must log no console error, throw nothing, request nothing
but itself, and decode every embedded image.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
messages ending in NUL on file descriptors 3 and 4, the transport Puppeteer and Playwright
use), so the test needs no Python package beyond the standard library and sees the same
console, exception and network events that DevTools shows. Skipped when no `chromium` binary
is installed (.ci/run installs the Debian package).

CLBENCH_SCREENSHOTS=docs/img pytest tests/test_html_browser.py  re-creates the README's
screenshots (docs/img/report.png, docs/img/leaderboard.png) from the committed toy runs.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cl_bench.analysis.leaderboard import render_leaderboard
from cl_bench.analysis.report_html import report_html

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RUNS = ROOT / "results" / "toy" / "xtail" / "runs"
WIDTH, HEIGHT = 1200, 1500
TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH")


class Chromium:
    """A headless Chromium driven over --remote-debugging-pipe."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Above 4, so that moving them onto fds 3 and 4 in the child cannot overwrite either.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)

        def onto_3_and_4() -> None:
            os.dup2(high[0], 3)  # Chromium reads commands from fd 3 ...
            os.dup2(high[1], 4)  # ... and writes replies and events to fd 4

        assert CHROMIUM is not None
        args = [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # containers and CI runners (root, no user namespaces)
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            close_fds=False,
            preexec_fn=onto_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in high:
            os.close(fd)
        self.write_fd, self.read_fd = to_chrome_w, from_chrome_r
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.read_fd], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        seen = lambda: any(  # noqa: E731
            e.get("method") == method and e.get("sessionId") == session for e in self.events
        )
        while not seen():
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.write_fd)
        os.close(self.read_fd)


def load(browser: Chromium, page: Path) -> dict[str, Any]:
    """Open `page` in a fresh tab: its screenshot, problems, requests and images."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.call(f"{domain}.enable", session=session)
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        session,
    )
    start = len(browser.events)
    nav = browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
    assert "errorText" not in nav, nav
    browser.wait_for("Page.loadEventFired", session)
    images = browser.call(
        "Runtime.evaluate",
        {
            "expression": "JSON.stringify(Array.from(document.images)"
            ".map(i => [i.complete, i.naturalWidth, i.naturalHeight]))",
            "returnByValue": True,
        },
        session,
    )["result"]["value"]
    shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
    events = [e for e in browser.events[start:] if e.get("sessionId") == session]
    problems = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            thrown = details.get("exception", {}).get("description", "")
            problems.append(f"exception: {details.get('text')} {thrown}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"log: {params['entry'].get('text')} {params['entry'].get('url')}")
    requests = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    browser.call("Target.closeTarget", {"targetId": target})
    return {
        "png": base64.b64decode(shot),
        "problems": problems,
        "requests": requests,
        "images": json.loads(images),
    }


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    chrome = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two pages, rendered from the committed toy X-TAIL runs."""
    out = tmp_path_factory.mktemp("pages")
    report = report_html(RUNS / "toy-xtail-drslora-seed0", out)
    text, skipped = render_leaderboard([RUNS], fmt="html")
    assert skipped == []
    board = out / "leaderboard.html"
    board.write_text(text, encoding="utf-8")
    return {"report": report, "leaderboard": board}


def check_screenshot(png: bytes) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    assert img.size == (WIDTH, HEIGHT)
    gray = img.convert("L")
    lo, hi = gray.getextrema()
    assert hi - lo > 100  # text and plots on a white page, not a blank one
    colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 200  # embedded plots decode into many colours


@pytest.mark.parametrize("name", ["report", "leaderboard"])
def test_page_renders_without_console_errors(
    browser: Chromium, pages: dict[str, Path], name: str
) -> None:
    page = pages[name]
    result = load(browser, page)
    assert result["problems"] == []
    fetched = [u for u in result["requests"] if not u.startswith("data:image/png;base64,")]
    assert fetched == [page.resolve().as_uri()]  # nothing but the page and its data URIs
    expected = page.read_text(encoding="utf-8").count("<img ")
    assert expected >= (4 if name == "report" else 1)
    assert len(result["images"]) == expected
    assert all(done and w > 100 and h > 100 for done, w, h in result["images"]), result["images"]
    check_screenshot(result["png"])
    target = os.environ.get("CLBENCH_SCREENSHOTS")
    if target:
        save_screenshot(result["png"], Path(target) / f"{name}.png")


def save_screenshot(png: bytes, path: Path) -> None:
    """A README image: the top of the page at 3/4 size, in 256 colours (PNGs < 300 KB)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_the_check_catches_a_broken_page(browser: Chromium, tmp_path: Path) -> None:
    """The same checks fail on a page with a script error and a missing external image."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><img src='missing.png'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    result = load(browser, page)
    text = "\n".join(result["problems"])
    assert "console.error" in text and "undefinedFunction" in text and "missing.png" in text
    assert any(url.endswith("missing.png") for url in result["requests"])
    assert result["images"] == [[True, 0, 0]]
