"""Real headless-Chromium checks of an HTML page: do its videos load and play, do its images load.

Drives Chromium over the Chrome DevTools Protocol (CDP) through ``--remote-debugging-pipe``, pure
stdlib: the browser reads commands on its fd 3 and writes replies and events on its fd 4, each
message one JSON object terminated by a NUL byte (the transport Puppeteer's PipeTransport uses).
No selenium, playwright or websocket dependency.

Playback is checked in real time: under ``--virtual-time-budget`` Chromium decodes a video
(readyState 4) but ``currentTime`` never advances, so it cannot tell a playing video from a frozen
one.

    from browser import check_page, find_chromium
    report = check_page("page.html", screenshot=Path("page.png"))
    assert report["playing"] == report["videos"] and not report["broken"]
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "headless_shell")
ENV_VAR = "DEFI_CHROMIUM"
MAX_SCREENSHOT_HEIGHT = 16384  # px; a full-page capture taller than this is cut (PNG size, GPU-less raster time)
MAX_TEXT = 300  # characters kept of one console message (data: URIs in messages can be megabytes)


class BrowserError(RuntimeError):
    """Chromium could not be started, exited, or did not answer the protocol in time."""


def find_chromium() -> str | None:
    """Path of a Chromium-like browser: ``$DEFI_CHROMIUM`` (a path or a name on PATH), else the first
    of chromium, chromium-browser, google-chrome, headless_shell on PATH; None when there is none.

    A set but unusable ``$DEFI_CHROMIUM`` raises instead of falling back, so a misconfigured CI
    fails loudly rather than silently testing some other browser (or skipping)."""
    env = os.environ.get(ENV_VAR)
    if env:
        found = shutil.which(env)
        if found is None:
            raise FileNotFoundError(f"${ENV_VAR}={env!r} is not an executable file or a command on PATH")
        return found
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


# Runs in the page. For each <video>: start it if paused, then report its state. A video counts as
# playing once readyState >= HAVE_CURRENT_DATA (2) and currentTime > 0 (or it already ended).
# The result is an array of plain objects, returned by value.
_POLL_JS = r"""
(() => {
  const out = [];
  const vids = Array.from(document.querySelectorAll('video'));
  vids.forEach((v, i) => {
    const srcEl = v.querySelector('source[src]');
    const src = v.currentSrc || v.getAttribute('src') || (srcEl ? srcEl.getAttribute('src') : '') || '';
    // a data: URI is megabytes: keep its head; keep a URL whole (up to 300 chars) so it names the file
    if (v.paused && !v.ended && !v.error && !v.__defiPlayTried) {
      v.__defiPlayTried = true;
      v.muted = true;  // muted playback needs no user gesture under any autoplay policy
      const p = v.play();
      if (p && p.catch) p.catch(e => { v.__defiPlayError = String(e); });
    }
    // a video far below the fold may be suspended by the media player; bring it into view once
    if (v.__defiPlayTried && !v.__defiScrolled && v.readyState < 2 && performance.now() - (v.__defiT0 || (v.__defiT0 = performance.now())) > 1000) {
      v.__defiScrolled = true;
      v.scrollIntoView({block: 'center'});
    }
    out.push({
      index: i, src_prefix: src.slice(0, src.startsWith('data:') ? 64 : 300),
      error_code: v.error ? v.error.code : null,
      ready_state: v.readyState, network_state: v.networkState,
      current_time: v.currentTime, paused: v.paused, ended: v.ended,
      play_error: v.__defiPlayError || null,
    });
  });
  return out;
})()
"""

_IMAGES_JS = r"""
(() => Array.from(document.images).map((im, i) => ({
  index: i, src_prefix: ((s) => s.slice(0, s.startsWith('data:') ? 64 : 300))(im.currentSrc || im.getAttribute('src') || ''),
  complete: im.complete, natural_width: im.naturalWidth, natural_height: im.naturalHeight,
})))()
"""


class _Pipe:
    """One CDP connection over a pair of pipes; synchronous request/response, events buffered."""

    def __init__(self, write_fd: int, read_fd: int, proc: _Process):
        self.write_fd, self.read_fd, self.proc = write_fd, read_fd, proc
        self.buf = bytearray()
        self.scan = 0  # bytes of buf already searched for a NUL
        self.next_id = 0
        self.events: list[dict] = []
        self.poller = select.poll()
        self.poller.register(read_fd, select.POLLIN)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None, deadline: float) -> dict:
        """Send one command and return its ``result``; raise BrowserError on a protocol error,
        on browser exit, or when ``deadline`` (time.monotonic seconds) passes."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self.write_fd, data) :]
        except (BrokenPipeError, OSError) as e:
            raise BrowserError(f"Chromium closed the protocol pipe while sending {method}: {e}{self.proc.describe_exit()}") from e
        while True:
            reply = self._read_message(deadline, method)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"CDP {method} failed: {reply['error'].get('message')} ({reply['error'].get('data', '')})")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, *, deadline: float, session: str | None = None) -> dict:
        """Return (and consume) the first buffered or incoming event named ``method``."""
        for i, ev in enumerate(self.events):
            if ev["method"] == method and (session is None or ev.get("sessionId") == session):
                return self.events.pop(i)
        while True:
            msg = self._read_message(deadline, f"waiting for {method}")
            if msg.get("method") == method and (session is None or msg.get("sessionId") == session):
                return msg
            if "method" in msg:
                self.events.append(msg)

    def _read_message(self, deadline: float, what: str) -> dict:
        while True:
            nul = self.buf.find(b"\0", self.scan)
            if nul >= 0:
                raw = bytes(self.buf[:nul])
                del self.buf[: nul + 1]
                self.scan = 0
                return json.loads(raw)
            self.scan = len(self.buf)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer in time ({what}){self.proc.describe_exit()}")
            # poll, not select: select() fails on fd numbers >= 1024 (a long pytest run with Ray)
            if not self.poller.poll(min(left, 0.5) * 1000):
                if self.proc.poll() is not None:
                    raise BrowserError(f"Chromium exited ({what}){self.proc.describe_exit()}")
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the protocol pipe ({what}){self.proc.describe_exit()}")
            self.buf += chunk


class _Process:
    """The browser, started in its own process group so that it and its helpers (zygote,
    renderer, GPU process) are killed together."""

    def __init__(self, argv: list[str], to_browser: int, from_browser: int, log_path: Path):
        self.log_path = log_path
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # posix_spawn maps the pipe ends onto the child's fds 3 and 4 without a preexec_fn
            # (which is unsafe in a process with threads, e.g. one running Ray).
            self.pid = os.posix_spawn(
                argv[0],
                argv,
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                    (os.POSIX_SPAWN_DUP2, to_browser, 3),
                    (os.POSIX_SPAWN_DUP2, from_browser, 4),
                ],
                setpgroup=0,
            )
        finally:
            os.close(log_fd)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def describe_exit(self) -> str:
        rc = self.poll()
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-8:]
        except OSError:
            tail = []
        head = "" if rc is None else f"; exit status {rc}"
        return head + ("; its log ends:\n  " + "\n  ".join(tail) if tail else "")

    def kill(self, grace_s: float = 2.0, polite: bool = True) -> None:
        """With ``polite``, give the browser ``grace_s`` seconds to exit by itself (after
        Browser.close it reaps its helpers); then SIGTERM the whole group, then SIGKILL it, and
        reap the browser."""
        steps = ((None, grace_s),) if polite else ()
        for sig, wait in (*steps, (signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                if sig is not None:
                    os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            end = time.monotonic() + wait
            while self.poll() is None and time.monotonic() < end:
                time.sleep(0.02)
            if self.returncode is not None:
                break
        # helpers that outlived the browser (same group) go too
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _high_fd(fd: int) -> int:
    """Move ``fd`` to a number >= 10 (close-on-exec), so mapping it onto 3 or 4 cannot clobber
    the other pipe end."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def _text(s: str) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + "..."


def _console_errors(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(_text("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(_text("exception: " + (d.get("exception", {}).get("description") or d.get("text", ""))))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(_text(f"{e.get('source', 'log')}: {e.get('text', '')} {e.get('url', '')}".strip()))
    return out


def check_page(
    html_path: str | Path,
    *,
    screenshot: Path | None = None,
    timeout_s: float = 30,
    width: int = 1280,
    height: int = 900,
    chromium: str | None = None,
) -> dict:
    """Open ``html_path`` in headless Chromium and check that its media work.

    Every ``<video>`` is started (``play()`` if paused, muted) and watched in real time until it
    plays (readyState >= 2 and currentTime > 0), fails (``video.error`` set, or no usable source),
    or the wait runs out; images count as broken when loaded with no pixels.

    Args:
        html_path: a local HTML file, opened as ``file://``.
        screenshot: where to write a PNG of the page after the videos were checked: full page
            (up to MAX_SCREENSHOT_HEIGHT px tall), ``width`` px wide at device scale 1.
        timeout_s: wall-clock seconds for the whole check, browser start included; the video wait
            leaves a few seconds of it for the screenshot.
        width, height: viewport in CSS px.
        chromium: browser executable; default ``find_chromium()``.

    Returns:
        {"videos": n, "playing": n_ok, "broken": [{"index", "src_prefix", "error_code",
        "ready_state", "network_state", "current_time", "reason"}], "images": n,
        "broken_images": [{"index", "src_prefix"}], "console_errors": [str], "title": str}.
        ``error_code`` is the MediaError code (1 aborted, 2 network, 3 decode, 4 source not
        supported), or None when no ``<source>`` child was usable or the video never advanced
        (``reason`` says which).

    Raises:
        FileNotFoundError: ``html_path`` is not a file.
        BrowserError: no browser, the browser exited, or it did not answer the protocol in time.
        The browser is killed on every path out of this function.
    """
    exe = shutil.which(chromium) if chromium else find_chromium()
    if chromium and exe is None:
        raise BrowserError(f"{chromium!r} is not an executable file or a command on PATH")
    if exe is None:
        raise BrowserError(f"no Chromium found (set ${ENV_VAR} or install one of {', '.join(CANDIDATES)})")
    if not Path(html_path).is_file():
        raise FileNotFoundError(f"no such page: {html_path}")
    url = Path(html_path).resolve().as_uri()
    start = time.monotonic()
    deadline = start + timeout_s
    reserve = min(5.0, timeout_s / 4)  # seconds kept for the screenshot after the video wait

    # ignore_cleanup_errors: a helper process dying a moment after the browser may still hold files
    with tempfile.TemporaryDirectory(prefix="defi-chromium-", ignore_cleanup_errors=True) as profile:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _high_fd(to_browser_r), _high_fd(from_browser_w)
        argv = [
            exe,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--autoplay-policy=no-user-gesture-required",
            "--mute-audio",
            "--no-first-run",
            "--disable-gpu",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",  # CI containers often have a tiny /dev/shm
            # keep media and timers running in a page nobody looks at
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
        ]
        if os.geteuid() == 0:
            argv.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
        argv.append("about:blank")
        proc, answered = None, False
        try:
            try:
                proc = _Process(argv, to_browser_r, from_browser_w, Path(profile) / "chromium.log")
            except OSError as e:
                raise BrowserError(f"could not start {exe}: {e}") from e
            finally:
                os.close(to_browser_r)  # the child holds its own copies now
                os.close(from_browser_w)
            cdp = _Pipe(to_browser_w, from_browser_r, proc)
            report = _drive(cdp, url, screenshot, width, height, deadline, reserve)
            answered = True
            return report
        finally:
            if proc is not None:
                if answered:  # a browser that talks closes itself (and its helpers) cleanly and fast
                    try:
                        os.write(to_browser_w, json.dumps({"id": 10**9, "method": "Browser.close"}).encode() + b"\0")
                    except OSError:
                        answered = False
                proc.kill(polite=answered)
            os.close(to_browser_w)
            os.close(from_browser_r)


def _drive(cdp: _Pipe, url: str, screenshot: Path | None, width: int, height: int, deadline: float, reserve: float) -> dict:
    target = cdp.send("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
    session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True}, deadline=deadline)["sessionId"]

    def call(method: str, params: dict | None = None) -> dict:
        return cdp.send(method, params, session=session, deadline=deadline)

    for domain in ("Page", "Runtime", "Log"):
        call(f"{domain}.enable")
    call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    nav = call("Page.navigate", {"url": url})
    if nav.get("errorText"):
        raise BrowserError(f"navigation to {url} failed: {nav['errorText']}")
    cdp.wait_event("Page.loadEventFired", deadline=deadline, session=session)

    def evaluate(expr: str) -> Any:
        res = call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise BrowserError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    # real-time wait: poll every 100 ms until every video plays or fails, or the wait runs out
    video_deadline = deadline - reserve
    ok: set[int] = set()  # sticky: a looping clip's currentTime may be back at 0 on a later poll
    while True:
        states = evaluate(_POLL_JS)
        failed = {}
        for s in states:
            i = s["index"]
            if s["ready_state"] >= 2 and (s["current_time"] > 0 or s["ended"]):
                ok.add(i)
            elif s["error_code"] is not None:
                failed[i] = f"media error {s['error_code']}"
            elif s["network_state"] == 3:  # NETWORK_NO_SOURCE: every <source> failed or none given
                failed[i] = "no usable source"
        pending = [s for s in states if s["index"] not in ok and s["index"] not in failed]
        if not pending or time.monotonic() >= video_deadline:
            break
        time.sleep(0.1)

    broken = []
    for s in states:
        if s["index"] in ok:
            continue
        reason = failed.get(s["index"]) or (
            f"play() rejected: {s['play_error']}" if s["play_error"] else f"did not play within the wait (paused={s['paused']})"
        )
        broken.append(
            {k: s[k] for k in ("index", "src_prefix", "error_code", "ready_state", "network_state", "current_time")}
            | {"reason": _text(reason)}
        )

    images = evaluate(_IMAGES_JS)
    broken_images = [
        {"index": im["index"], "src_prefix": im["src_prefix"]}
        for im in images
        if im["src_prefix"] and (not im["complete"] or im["natural_width"] == 0)
    ]
    title = evaluate("document.title")

    if screenshot is not None:
        evaluate("window.scrollTo(0, 0)")
        m = call("Page.getLayoutMetrics")
        size = m.get("cssContentSize") or m["contentSize"]
        full_h = int(min(max(height, size["height"]), MAX_SCREENSHOT_HEIGHT))
        shot = call(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": width, "height": full_h, "scale": 1}},
        )
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))

    return {
        "videos": len(states),
        "playing": len(ok),
        "broken": broken,
        "images": len(images),
        "broken_images": broken_images,
        "console_errors": _console_errors(cdp.events),
        "title": title,
    }
