"""`directory`: process each image file dropped into a folder exactly once.

A file is read only when it is complete: its writer closed it (inotify
IN_CLOSE_WRITE), it was renamed into the folder (IN_MOVED_TO), or it has not
changed for `settle` (the rule when polling, and for files found at start).
After its result is published the file is moved to `done_dir` or deleted; a
file whose request failed goes to `<path>/failed` either way, so nothing is
lost silently.

Restarts: files still in the folder are simply processed again after a
restart, unless a result was already published for them — those are listed in
the journal `<path>/.edgetpud-journal` (written and synced before the file is
moved), and are only moved/deleted at start, not processed again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fnmatch
import json
import logging
import os
import select
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgetpud.messages import Request, Result
from edgetpud.plugins import ModelInfo, Resize, Source
from edgetpud.schema import option
from edgetpud_plugins.common import resize_option

log = logging.getLogger(__name__)

JOURNAL = ".edgetpud-journal"
FAILED = "failed"
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
MAX_WAIT = 0.25  # longest sleep between checks for stop


@dataclass(frozen=True)
class DirectoryConfig:
    path: Path = option("The folder to watch for new image files.", kind="dir")
    patterns: tuple[str, ...] = option(
        "File name patterns to process (shell globs, case-insensitive).",
        ("*.jpg", "*.jpeg", "*.png", "*.bmp"),
    )
    after: Literal["move", "delete"] = option(
        'What to do with a file once its result is published: "move" it to done_dir, or '
        '"delete" it.',
        "move",
    )
    done_dir: Path | None = option(
        'Where processed files are moved when after = "move"; unset means <path>/done.',
        None,
        kind="path",
    )
    settle: float = option(
        "A file not closed-after-writing is read once it has not changed for this long.",
        1.0,
        kind="duration",
        minimum=0.0,
        maximum=3600,
    )
    poll_interval: float = option(
        "How often the folder is scanned when inotify is unavailable (and as a safety net).",
        2.0,
        kind="duration",
        minimum=0.05,
        maximum=3600,
    )
    inotify: bool = option("Use inotify where available; false always polls.", True)
    resize: Resize = resize_option()


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int
    first: float  # monotonic time this (size, mtime) was first seen


class Directory(Source):
    """Image files from a folder; meta carries the file name."""

    name = "directory"
    Config = DirectoryConfig

    def __init__(self, model: str, config: Any, info: ModelInfo, emit: Any) -> None:
        super().__init__(model, config, info, emit)
        cfg: DirectoryConfig = config
        self.folder = cfg.path
        self.done_dir = cfg.done_dir or cfg.path / "done"
        self.failed_dir = cfg.path / FAILED
        self.journal = cfg.path / JOURNAL
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) when read
        self._closed: set[str] = set()  # names inotify saw closed or moved in
        self._seen: dict[str, _Seen] = {}
        self._patterns = tuple(p.lower() for p in cfg.patterns)

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> None:
        cfg: DirectoryConfig = self.config
        self._recover()
        watch = _Inotify.open(self.folder) if cfg.inotify else None
        if watch is None:
            log.info(
                "%s: polling %s every %.1f s", self.thread_name, self.folder, cfg.poll_interval
            )
        try:
            next_scan = 0.0
            while not self.stopping():
                now = time.monotonic()
                if watch is None or now >= next_scan or self._seen:
                    self._scan()
                    next_scan = now + cfg.poll_interval
                timeout = min(cfg.poll_interval, MAX_WAIT)
                if self._seen:
                    timeout = min(timeout, max(cfg.settle / 4, 0.01))
                if watch is not None:
                    names, overflow = watch.read(timeout)
                    self._closed.update(names)
                    if names or overflow:
                        next_scan = 0.0
                elif self.wait(timeout):
                    break
        finally:
            if watch is not None:
                watch.close()

    def completed(self, result: Result) -> None:
        """Journal the file as done, then move or delete it."""
        name = result.request.meta.get("file")
        if not isinstance(name, str) or result.request.source != self._source_tag:
            return
        with self._lock:
            stamp = self._inflight.get(name)
        if stamp is None:
            return
        try:
            self._journal_add(name, stamp)
            self._finish(name, failed=not result.ok)
        except OSError as exc:
            log.error(
                "%s: cannot move or delete %s after processing: %s; fix the folder's permissions "
                "(the file will not be processed again)",
                self.thread_name,
                self.folder / name,
                exc.strerror,
            )
        finally:
            with self._lock:
                self._inflight.pop(name, None)

    @property
    def _source_tag(self) -> str:
        return f"directory:{self.folder}"

    # -- scanning --------------------------------------------------------------

    def _matches(self, name: str) -> bool:
        lower = name.lower()
        return not name.startswith(".") and any(
            fnmatch.fnmatchcase(lower, p) for p in self._patterns
        )

    def _scan(self) -> None:
        cfg: DirectoryConfig = self.config
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.warning("%s: cannot list %s: %s", self.thread_name, self.folder, exc.strerror)
            return
        now = time.monotonic()
        wall = time.time()
        ready: list[tuple[int, str, os.stat_result]] = []
        present = set()
        for entry in entries:
            name = entry.name
            if not self._matches(name):
                continue
            with self._lock:
                busy = name in self._inflight
            if busy:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            present.add(name)
            seen = self._seen.get(name)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                seen = _Seen(st.st_size, st.st_mtime_ns, now)
                self._seen[name] = seen
            quiet_since_write = wall - st.st_mtime >= cfg.settle
            quiet_while_watched = now - seen.first >= cfg.settle
            if name in self._closed or quiet_since_write or quiet_while_watched:
                ready.append((st.st_mtime_ns, name, st))
        for name in list(self._seen):
            if name not in present:
                self._seen.pop(name, None)
        self._closed &= present
        for _, name, st in sorted(ready):
            if self.stopping():
                return
            self._emit_file(name, st)

    def _emit_file(self, name: str, st: os.stat_result) -> None:
        path = self.folder / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: cannot read %s: %s", self.thread_name, path, exc.strerror)
            return
        self._seen.pop(name, None)
        self._closed.discard(name)
        with self._lock:
            self._inflight[name] = (st.st_size, st.st_mtime_ns)
        request = Request(
            model=self.model,
            payload=data,
            kind="image",
            source=self._source_tag,
            meta={"file": name},
        )
        if not self.offer(request):
            with self._lock:
                self._inflight.pop(name, None)

    # -- finishing and the journal -------------------------------------------

    def _finish(self, name: str, failed: bool) -> None:
        cfg: DirectoryConfig = self.config
        path = self.folder / name
        if failed:
            _move(path, self.failed_dir)
        elif cfg.after == "delete":
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            _move(path, self.done_dir)

    def _journal_add(self, name: str, stamp: tuple[int, int]) -> None:
        line = json.dumps({"file": name, "size": stamp[0], "mtime_ns": stamp[1]}) + "\n"
        with self._lock, open(self.journal, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _recover(self) -> None:
        """Finish files a previous run published but did not move, then empty the journal."""
        try:
            lines = self.journal.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: cannot read %s: %s", self.thread_name, self.journal, exc.strerror)
            return
        finished = 0
        for line in lines:
            try:
                entry = json.loads(line)
                name, size, mtime_ns = entry["file"], entry["size"], entry["mtime_ns"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash: that file was not yet moved either
            try:
                st = (self.folder / name).stat()
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
                try:
                    self._finish(name, failed=False)
                    finished += 1
                except OSError as exc:
                    log.error("%s: cannot finish %s: %s", self.thread_name, name, exc.strerror)
                    return  # keep the journal so the next start tries again
        if finished:
            log.info(
                "%s: finished %d file(s) processed before a restart", self.thread_name, finished
            )
        tmp = self.journal.with_name(JOURNAL + ".tmp")
        tmp.write_text("", encoding="utf-8")
        os.replace(tmp, self.journal)


def _move(path: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    n = 1
    while target.exists():
        target = folder / f"{path.stem}.{n}{path.suffix}"
        n += 1
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, target)


class _Inotify:
    """Linux inotify through ctypes: names closed-after-write or moved into one folder."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    @classmethod
    def open(cls, folder: Path) -> _Inotify | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            wd = libc.inotify_add_watch(fd, os.fsencode(folder), IN_CLOSE_WRITE | IN_MOVED_TO)
            if wd < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, os.strerror(err))
        except (OSError, AttributeError) as exc:
            log.info("inotify unavailable for %s (%s); polling instead", folder, exc)
            return None
        return cls(fd)

    def read(self, timeout: float) -> tuple[set[str], bool]:
        """Names from events within `timeout` seconds, and whether the kernel queue overflowed."""
        names: set[str] = set()
        overflow = False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return names, overflow
        try:
            data = os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return names, overflow
            raise
        pos = 0
        while pos + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, pos)
            raw = data[pos + _EVENT.size : pos + _EVENT.size + length]
            pos += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                overflow = True
            name = os.fsdecode(raw.rstrip(b"\0"))
            if name:
                names.add(name)
        return names, overflow

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
