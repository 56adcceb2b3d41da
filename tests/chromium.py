"""Headless Chromium for the browser tests, driven through the DevTools protocol over
`--remote-debugging-pipe` (JSON messages separated by NUL bytes on file descriptors 3 and
4), so that no websocket client is needed and no debugging port is opened.  Tests that
use it skip when /usr/bin/chromium is missing (Debian package `chromium`).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

CHROMIUM = "/usr/bin/chromium"

needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: apt-get install chromium to test the page in a browser")


class Browser:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, profile: str, flags: Sequence[str] = ()):
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # High, fixed descriptor numbers for the shell to move onto 3 and 4.
        fds = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 20) for fd in (to_browser_r, from_browser_w)]
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,900",
                 "--remote-debugging-pipe", *flags, "about:blank"]
        # posix_spawn puts the pipe ends on 3 and 4 in the child (no preexec_fn: the
        # fake ITSP's threads are running).
        self.pid = os.posix_spawn(CHROMIUM, [CHROMIUM, *flags], dict(os.environ), file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, fds[0], 3),
            (os.POSIX_SPAWN_DUP2, fds[1], 4),
        ])
        for fd in fds:
            os.close(fd)
        self._out = to_browser_w
        self._in = from_browser_r
        self._next = 0
        self._answers: "queue.Queue[dict]" = queue.Queue()
        self.events: List[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget",
                                     {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=self.session)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._in, 65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    self._answers.put(message)
                else:
                    with self._lock:
                        self.events.append(message)

    def call(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: float = 30.0) -> dict:
        self._next += 1
        message: Dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self._answers.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            if answer["id"] == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def page(self, method: str, params: Optional[dict] = None) -> dict:
        return self.call(method, params, self.session)

    def wait_event(self, name: str, after: int, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for event in self.events[after:]:
                    if event.get("method") == name:
                        return event
            time.sleep(0.02)
        raise TimeoutError(f"no {name} within {timeout} s")

    def load(self, url: str) -> None:
        mark = len(self.events)
        self.page("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired", mark)

    def js(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) in the middle of the element."""
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      " e.scrollIntoView({block: 'center'});"
                      " const r = e.getBoundingClientRect();"
                      " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                   "button": "left", "clickCount": 1})

    def screenshot(self, path: Path, first_screen: bool = False) -> None:
        """The whole page, not only what fits in the window (or only the first screen)."""
        metrics = self.page("Page.getLayoutMetrics")
        size = metrics["cssLayoutViewport" if first_screen else "cssContentSize"]
        width = size.get("width", size.get("clientWidth"))
        height = size.get("height", size.get("clientHeight"))
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = self.page("Page.captureScreenshot", {"format": "png", "clip": clip,
                                                    "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def _events(self, method: str) -> List[dict]:
        with self._lock:
            return [e for e in self.events if e.get("method") == method]

    def dialogs(self) -> List[dict]:
        """The dialogs (alert, confirm...) a page opened: a script from a message would."""
        return self._events("Page.javascriptDialogOpening")

    def policy_errors(self) -> List[str]:
        """What the page's Content-Security-Policy blocked (logged as errors)."""
        return [e["params"]["entry"].get("text", "") for e in self._events("Log.entryAdded")
                if e["params"]["entry"].get("level") == "error"
                and "Content Security Policy" in e["params"]["entry"].get("text", "")]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass


def open_browser(flags: Sequence[str] = ()):
    """A generator for a fixture: a Browser with a profile of its own, closed after."""
    profile = tempfile.mkdtemp(prefix="websmsd-chromium-")
    try:
        b = Browser(profile, flags)
        yield b
        b.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
