"""``/docs`` in a real browser, with no network beyond loopback: headless Chromium (Debian's ``chromium``, which
scripts/install-system-deps.sh installs) renders Swagger UI from the running API alone, shows every operation of
``/openapi.json``, and asks nothing of any other host.

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON commands, each ended by
a NUL byte, on its fd 3, replies and events on its fd 4), which sees every request the page makes. Anything not on
loopback goes to a proxy port where nothing listens, so it fails as it would in an air-gapped deployment; Chromium's
own background traffic (updates, clock) goes there too but is not the page's, so it is not counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.stack import free_port

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
REQUEST = "Network.requestWillBeSent"
#: URLs that name no host: what a page builds in memory
LOCAL_SCHEMES = ("data", "blob")

#: each operation Swagger UI rendered, as [method, path]
RENDERED_OPERATIONS = """
[...document.querySelectorAll('.opblock')].map(block => [
    block.querySelector('.opblock-summary-method')?.textContent.toLowerCase(),
    block.querySelector('.opblock-summary-path')?.dataset.path,
])
"""


class DevTools:
    """A headless Chromium and its DevTools protocol over a pipe; the events read while waiting are kept."""

    def __init__(self, chromium: str, profile: Path, log_path: Path) -> None:
        commands_in, self._commands = os.pipe()  # Chromium reads its fd 3
        self._replies, replies_out = os.pipe()  # and writes its fd 4
        # above 4, so that putting one end at 3 or 4 closes no other
        commands_in, replies_out = (_above_4(fd) for fd in (commands_in, replies_out))
        args = [
            chromium,
            "--headless",
            "--no-sandbox",  # root, in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            f"--user-data-dir={profile}",
            # loopback bypasses any proxy; everything else is sent to a port where nothing listens
            f"--proxy-server=http://127.0.0.1:{free_port()}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # the shell puts the pipe's ends at the fds Chromium expects, then becomes Chromium
        shell = f'exec "$@" 3<&{commands_in} 4>&{replies_out} {commands_in}<&- {replies_out}>&-'
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", shell, "chromium", *args],
                pass_fds=(commands_in, replies_out),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its renderers and helpers in one process group, stopped together
            )
        os.close(commands_in)
        os.close(replies_out)
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, timeout_s: float = 30, **params: Any) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data) :]
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read(deadline)
            if reply.get("id") != self._last_id:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return dict(reply["result"])

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Chromium did not answer")
            if select.select([self._replies], [], [], remaining)[0]:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise ConnectionError(f"Chromium closed its pipe (exit status {self.process.poll()})")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, ConnectionError):
            self.call("Browser.close", timeout_s=10)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # a helper left behind by the browser
            os.killpg(self.process.pid, signal.SIGKILL)
        os.close(self._commands)
        os.close(self._replies)


def _above_4(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return high


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: scripts/install-system-deps.sh (run by make) installs it")
    devtools = DevTools(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield devtools
    finally:
        devtools.close()


def operations(base_url: str) -> set[tuple[str, str]]:
    paths = httpx.get(base_url + "/openapi.json", timeout=30).json()["paths"]
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


def test_docs_render_every_operation_from_the_server_alone(base_url: str, browser: DevTools) -> None:
    expected = operations(base_url)
    assert len(expected) > 10  # the whole API, not a stub

    page = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
    browser.call("Network.enable", session)
    browser.call("Page.navigate", session, url=base_url + "/docs")
    rendered: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 60
    while not expected <= rendered and time.monotonic() < deadline:
        time.sleep(0.25)
        with contextlib.suppress(RuntimeError):  # no page to evaluate in yet, while it navigates
            result = browser.call("Runtime.evaluate", session, expression=RENDERED_OPERATIONS, returnByValue=True)
            rendered = {(method, path) for method, path in result["result"].get("value") or []}
    time.sleep(1)  # anything the page asks for once it has rendered
    browser.call("Runtime.evaluate", session, expression="document.readyState")  # reads the events so far

    events = [event for event in browser.events if event.get("sessionId") == session]
    requested = [event["params"]["request"]["url"] for event in events if event["method"] == REQUEST]
    own = urlsplit(base_url).netloc
    elsewhere = [url for url in requested if urlsplit(url).scheme not in LOCAL_SCHEMES and urlsplit(url).netloc != own]
    assert not elsewhere, f"the docs page asked for {elsewhere}"
    assert rendered == expected, f"missing {sorted(expected - rendered)}, unexpected {sorted(rendered - expected)}"
    # the recording saw the page load: the page itself, its assets and the schema
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/openapi.json"):
        assert base_url + path in requested, (path, requested)
    responses = [event["params"]["response"] for event in events if event["method"] == "Network.responseReceived"]
    assert all(response["status"] == 200 for response in responses), [(r["url"], r["status"]) for r in responses]
    assert not [event["params"] for event in events if event["method"] == "Network.loadingFailed"]
