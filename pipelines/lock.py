"""One writer per corpus root: ``ROOT/writer.lock``, taken by `defi curate`, `defi label` and
`defi index` for the whole run.

The lock file is JSON naming its holder (command, run id, host, pid, the pid's start time) and a
heartbeat a background thread refreshes every ``heartbeat_s`` seconds. A second writer is refused
with one line naming the holder. A lock is stale, and is taken over, when its holder is on this
host and its pid is gone (or is another process now: the start time differs), or when its heartbeat
is older than ``stale_s`` (a holder on another host, or on an object store). So a SIGKILLed run
blocks nobody on its own host, and blocks other hosts for at most ``stale_s``.

Taking the lock is atomic on local disk (the complete file is hard-linked to its name, which
fails if the name exists; a stale lock is renamed away, which only one taker can do). On an object
store it is best effort: write if absent, wait ``settle_s``, read back and keep it only if the
token is still ours (two starts within the same instant could both see it absent; the later PUT
wins and the earlier run sees a foreign token and stops).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from defi.schemas.corpus import Corpus, CorpusError

LOCK_FILE = "writer.lock"
STALE_S = float(os.environ.get("DEFI_LOCK_STALE_S", 300))
HEARTBEAT_S = float(os.environ.get("DEFI_LOCK_HEARTBEAT_S", 30))


class LockHeld(CorpusError):
    """Another live writer holds the root (one-line message naming it)."""


def _pid_start(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return _pid_state(pid) not in ("Z", "X")  # a killed child not yet reaped is gone too


@dataclass
class WriterLock:
    """``with WriterLock(corpus, "curate", run_id): ...`` holds ``ROOT/writer.lock`` for the block."""

    corpus: Corpus
    command: str
    run_id: str
    stale_s: float = STALE_S
    heartbeat_s: float = HEARTBEAT_S
    settle_s: float = 1.0  # object stores: how long to wait before reading our write back

    def __post_init__(self) -> None:
        self.path = self.corpus.path(LOCK_FILE)
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder replaced, if any
        self._started = time.time()

    # -- the record ----------------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "command": self.command,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "token": self.token,
            "started_at": self._started,
            "heartbeat_at": now,
        }

    def read(self) -> dict[str, Any] | None:
        """The current holder's record (None when there is no lock file)."""
        try:
            return json.loads(self.corpus.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {"unreadable": True, "heartbeat_at": self._mtime()}

    def _mtime(self) -> float:
        try:
            m = self.corpus.fs.info(self.path).get("mtime") or self.corpus.fs.modified(self.path)
            return m.timestamp() if hasattr(m, "timestamp") else float(m)
        except Exception:
            return 0.0

    def stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why ``holder`` is no longer a live writer, or None if it may still be one."""
        age = time.time() - float(holder.get("heartbeat_at") or 0)
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            if not _pid_alive(pid):
                return f"its process {pid} on this host is gone"
            if holder.get("pid_start") and _pid_start(pid) != holder["pid_start"]:
                return f"pid {pid} on this host is another process now"
        if age > self.stale_s:
            return f"its heartbeat is {age:.0f} s old (stale after {self.stale_s:.0f} s)"
        return None

    # -- taking and giving back ----------------------------------------------------------------
    def acquire(self) -> WriterLock:
        for _ in range(5):
            try:
                created = self._create()
            except OSError as e:  # a read-only root (or no permission): nothing can be written there
                raise CorpusError(f"cannot write to {self.corpus.root}: {e.strerror or e}") from None
            if created:
                self._start_heartbeat()
                return self
            holder = self.read()
            if holder is None:
                continue  # released between our try and our read
            why = self.stale_reason(holder)
            if why is None:
                raise LockHeld(self._held_message(holder))
            self._break(holder)
            self.took_over = dict(holder, stale_because=why)
        raise LockHeld(f"could not take {self.path}: other writers keep taking it")

    def _held_message(self, h: dict[str, Any]) -> str:
        if h.get("unreadable"):
            return (
                f"{self.corpus.root} is locked by an unreadable {LOCK_FILE} written "
                f"{time.time() - h['heartbeat_at']:.0f} s ago; it goes stale after {self.stale_s:.0f} s"
            )
        age = time.time() - float(h.get("heartbeat_at") or 0)
        return (
            f"{self.corpus.root} is being written by `defi {h.get('command')}` run {h.get('run_id')} "
            f"(pid {h.get('pid')} on {h.get('host')}, heartbeat {age:.0f} s ago); one writer per root: wait for it "
            f"to finish (a killed run's lock is taken over once its pid is gone or its heartbeat is {self.stale_s:.0f} s old)"
        )

    def _create(self) -> bool:
        data = json.dumps(self._record()).encode()
        fs = self.corpus.fs
        fs.makedirs(self.corpus.path_root, exist_ok=True)
        if self.corpus.is_local:
            tmp = f"{self.path}.tmp-{self.token}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)  # atomic, fails if a lock exists; the file is complete
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if fs.exists(self.path):
            return False
        fs.pipe_file(self.path, data)
        time.sleep(self.settle_s)
        got = self.read()
        return bool(got and got.get("token") == self.token)

    def _break(self, holder: dict[str, Any]) -> None:
        """Remove a stale lock, making sure it is the one we judged stale."""
        fs = self.corpus.fs
        if self.corpus.is_local:
            aside = f"{self.path}.stale-{uuid.uuid4().hex}"
            try:
                os.rename(self.path, aside)  # only one taker wins this
            except FileNotFoundError:
                return
            try:
                with open(aside) as f:
                    moved = json.load(f)
            except (OSError, ValueError):
                moved = {"unreadable": True}
            if moved.get("token") != holder.get("token") and not (moved.get("unreadable") and holder.get("unreadable")):
                try:  # we moved a fresh lock someone took meanwhile: put it back
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            os.unlink(aside)
            return
        current = self.read()
        if current is not None and current.get("token") == holder.get("token"):
            fs.rm(self.path)

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="defi-writer-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = self.read()
            if not current or current.get("token") != self.token:
                self.lost = True  # taken over (we looked stale): stop refreshing someone else's lock
                return
            self._write_own()

    def _write_own(self) -> None:
        data = json.dumps(self._record()).encode()
        if self.corpus.is_local:
            tmp = f"{self.path}.tmp-{self.token}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.corpus.fs.pipe_file(self.path, data)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = self.read()
        if current and current.get("token") == self.token:
            try:
                self.corpus.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
