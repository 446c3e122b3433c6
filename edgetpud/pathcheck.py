"""What a path the config names really is, when it is not a regular file.

A named pipe, a device node or a symbolic link loop given as a model, labels or config
path must not be reported as "does not exist" (the admin sees it with `ls` and stops
trusting the message), and must never be read: a FIFO blocks the reader until someone
writes, /dev/zero never ends. `not_a_file()` stats the path once and says what it is.
`read_bounded()` reads a regular file of at most `limit` bytes, refusing anything else.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path


def not_a_file(path: Path) -> str | None:
    """None when `path` is (or links to) a regular file, else what it is, as the words
    that follow the path in a sentence ("is a named pipe (FIFO), not a file")."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"is a symbolic link to {target}, which does not exist"
        return "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop (following it leads back to itself), not a file"
        if exc.errno == errno.ENOTDIR:
            return "does not exist (a part of the path is a file, not a folder)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "cannot be reached: permission denied on a folder above it"
        if exc.errno == errno.ENAMETOOLONG:
            return "is too long a path for this system"
        return f"cannot be examined: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    if stat.S_ISCHR(mode):
        return "is a character device node, not a file"
    if stat.S_ISBLK(mode):
        return "is a block device node, not a file"
    return "is not a regular file"


class NotARegularFile(OSError):
    """`read_bounded` refused the path; str() is the `not_a_file` sentence."""


class TooLarge(OSError):
    """`read_bounded` found the file over its limit; `size` is what it holds (at least)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of regular file `path`: NotARegularFile for anything else (never opened,
    so a FIFO cannot block), TooLarge past `limit` bytes (never read in full), else the
    usual OSError (FileNotFoundError, PermissionError ...)."""
    what = not_a_file(path)
    if what is not None and what != "does not exist":
        raise NotARegularFile(what)
    # O_NONBLOCK: a path swapped for a FIFO between the stat and the open cannot block us
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile("is not a regular file")
        if st.st_size > limit:
            raise TooLarge(st.st_size)
        # One byte past what it holds shows a file that grew since the stat. Never ask
        # read() for limit + 1 itself: past sys.maxsize (2**31 - 1 on armhf) it raises
        # OverflowError, and a model's limit is 2**31 - 1.
        data = f.read(min(st.st_size + 1, sys.maxsize))
        while 0 < len(data) <= limit and (
            more := f.read(min(1 << 20, limit + 1 - len(data), sys.maxsize))
        ):
            data += more
    if len(data) > limit:
        raise TooLarge(len(data))
    return data
