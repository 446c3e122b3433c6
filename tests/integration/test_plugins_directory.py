"""The directory source: every file processed exactly once, across restarts."""

from __future__ import annotations

import collections
import io
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from edgetpud import plugins
from edgetpud.messages import Request, Result
from tests.support.plugins import plugin_config
from tests.support.polling import wait_for

DEADLINE = 120.0


@dataclass(frozen=True)
class Spec:
    name: str = "input"
    shape: tuple[int, ...] = (1, 8, 8, 3)
    dtype: str = "uint8"
    scale: float = 0.0
    zero_point: int = 0


@dataclass(frozen=True)
class Info:
    inputs: tuple[Spec, ...] = (Spec(),)
    outputs: tuple[Spec, ...] = ()


def png(n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (n % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def drop(folder: Path, count: int, start: int = 0) -> set[str]:
    names = set()
    for i in range(start, start + count):
        name = f"img{i:04d}.png"
        (folder / name).write_bytes(png(i))
        names.add(name)
    return names


class Consumer:
    """A stand-in worker: takes requests off a small queue and completes them."""

    def __init__(self, size: int = 8, limit: int | None = None) -> None:
        self.queue: queue.Queue[Request] = queue.Queue(size)
        self.processed: collections.Counter[str] = collections.Counter()
        self.limit = limit
        self.source: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-consumer", daemon=True)

    def emit(self, request: Request) -> bool:
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.limit is not None and sum(self.processed.values()) >= self.limit:
                self._stop.wait(0.01)
                continue
            try:
                request = self.queue.get(timeout=0.05)
            except queue.Empty:
                continue
            assert Image.open(io.BytesIO(request.payload)).size == (4, 4)
            self.processed[request.meta["file"]] += 1
            self.source.completed(Result(request, "cpu", output=[]))

    def start(self, source: Any) -> None:
        self.source = source
        self._thread.start()
        source.start()

    def stop(self) -> None:
        self.source.stop()
        self._stop.set()
        self._thread.join(10)


def make_source(consumer: Consumer, folder: Path, **options: Any) -> Any:
    cls = plugins.registry().get("source", "directory")
    config = plugin_config("source", "directory", path=str(folder), settle="50ms", **options)
    return cls("m", config, Info(), consumer.emit)  # type: ignore[call-arg]


def files_in(folder: Path) -> int:
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def test_files_dropped_while_stopped_are_each_processed_once_across_a_restart(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = drop(folder, 200)
    done = folder / "done"

    first = Consumer(limit=80)
    first.start(make_source(first, folder))
    wait_for(lambda: sum(first.processed.values()) >= 80, DEADLINE, "the first 80 files")
    first.stop()  # requests still queued are lost, like a daemon that stops

    second = Consumer()
    second.start(make_source(second, folder))
    try:
        wait_for(lambda: files_in(done) == 200, DEADLINE, "all 200 files in done/")
    finally:
        second.stop()

    total = first.processed + second.processed
    assert set(total) == names
    assert max(total.values()) == 1, [n for n, c in total.items() if c > 1]
    assert {p.name for p in done.iterdir()} == names
    assert not [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]


def test_new_files_are_picked_up_and_deleted_by_config(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    consumer = Consumer()
    consumer.start(make_source(consumer, folder, after="delete"))
    try:
        names = drop(folder, 20)
        (folder / "notes.txt").write_text("not an image")
        wait_for(lambda: set(consumer.processed) == names, DEADLINE, "20 new files")
        wait_for(lambda: not list(folder.glob("*.png")), DEADLINE, "files deleted")
    finally:
        consumer.stop()
    assert max(consumer.processed.values()) == 1
    assert (folder / "notes.txt").exists()
    assert not (folder / "done").exists()


def test_a_file_being_written_is_not_read_half_written(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    consumer = Consumer()
    consumer.start(make_source(consumer, folder, inotify=False, poll_interval="50ms"))
    data = png(7)
    try:
        with open(folder / "slow.png", "wb") as f:
            for i in range(0, len(data), 8):  # keeps changing for longer than settle
                f.write(data[i : i + 8])
                f.flush()
                os.utime(f.fileno())
                time.sleep(0.02)
        wait_for(lambda: consumer.processed["slow.png"] == 1, DEADLINE, "the finished file")
    finally:
        consumer.stop()  # Consumer asserts every payload decodes as a whole image


def test_a_result_published_before_a_crash_is_not_processed_again(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    drop(folder, 3)
    st = (folder / "img0001.png").stat()
    (folder / ".edgetpud-journal").write_text(
        f'{{"file": "img0001.png", "size": {st.st_size}, "mtime_ns": {st.st_mtime_ns}}}\n'
        '{"file": "img00'  # a torn last line from the crash
    )
    consumer = Consumer()
    consumer.start(make_source(consumer, folder))
    try:
        wait_for(lambda: files_in(folder / "done") == 3, DEADLINE, "3 files in done/")
    finally:
        consumer.stop()
    assert set(consumer.processed) == {"img0000.png", "img0002.png"}


def test_failed_requests_go_to_the_failed_folder(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    drop(folder, 1)
    got: queue.Queue[Request] = queue.Queue()

    def emit(request: Request) -> bool:
        got.put(request)
        return True

    cls = plugins.registry().get("source", "directory")
    config = plugin_config("source", "directory", path=str(folder))
    source: Any = cls("m", config, Info(), emit)  # type: ignore[call-arg]
    source.start()
    try:
        request = got.get(timeout=DEADLINE)
        source.completed(Result(request, "cpu", error="the request is not a readable image"))
    finally:
        source.stop()
    assert (folder / "failed" / "img0000.png").exists()
