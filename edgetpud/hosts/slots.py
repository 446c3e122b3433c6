"""Tensor slots: the shared memory through which one lane's tensors cross to its host.

A slot holds one lane's input tensors and output tensors, laid out one after the other
(each at a 64-byte boundary) in a memfd the daemon creates and hands to the host over
the control socket (SCM_RIGHTS). Both processes map the same pages, so a tensor crosses
the process boundary as one copy into the mapping and no pickling. A memfd has no name:
nothing is left in /dev/shm whatever dies, and the memory goes back to the kernel when
the last of the two processes closes it.

One slot per lane is enough: a lane runs one invoke at a time and reads its outputs
before it writes the next inputs.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetpud.modelfile import TensorSpec

ALIGN = 64


@dataclass(frozen=True)
class Region:
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


@dataclass(frozen=True)
class Layout:
    """Where each input and output tensor of a model sits in a slot."""

    inputs: tuple[Region, ...]
    outputs: tuple[Region, ...]
    size: int

    @classmethod
    def for_specs(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Layout:
        offset = 0
        regions: list[list[Region]] = [[], []]
        for group, specs in zip(regions, (inputs, outputs)):
            for spec in specs:
                shape = tuple(max(d, 1) for d in spec.shape)
                region = Region(offset, shape, spec.dtype)
                group.append(region)
                offset += -(-max(region.nbytes, 1) // ALIGN) * ALIGN
        return cls(tuple(regions[0]), tuple(regions[1]), max(offset, ALIGN))

    def to_wire(self) -> dict[str, Any]:
        def regions(group: tuple[Region, ...]) -> list[list[Any]]:
            return [[r.offset, list(r.shape), r.dtype] for r in group]

        return {"inputs": regions(self.inputs), "outputs": regions(self.outputs), "size": self.size}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Layout:
        def regions(items: list[list[Any]]) -> tuple[Region, ...]:
            return tuple(Region(int(o), tuple(int(d) for d in s), str(t)) for o, s, t in items)

        return cls(regions(data["inputs"]), regions(data["outputs"]), int(data["size"]))


class Slot:
    """A mapped slot with numpy views of its tensors. `close()` unmaps and closes the fd."""

    def __init__(self, fd: int, layout: Layout) -> None:
        self.fd = fd
        self.layout = layout
        self._map: mmap.mmap | None = mmap.mmap(fd, layout.size)
        self.inputs = [self._view(r) for r in layout.inputs]
        self.outputs = [self._view(r) for r in layout.outputs]

    @classmethod
    def create(cls, layout: Layout, name: str = "edgetpud-slot") -> Slot:
        """A new slot in a fresh memfd (close-on-exec; passed to the host explicitly)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, layout.size)
            return cls(fd, layout)
        except BaseException:
            os.close(fd)
            raise

    def _view(self, region: Region) -> npt.NDArray[Any]:
        assert self._map is not None
        return np.ndarray(region.shape, np.dtype(region.dtype), self._map, region.offset)

    def close(self) -> None:
        """Drop the views, unmap and close the fd. Idempotent."""
        self.inputs = []
        self.outputs = []
        mapping, self._map = self._map, None
        if mapping is not None:
            # a caller still holding a view keeps the mapping: the GC unmaps it later
            with contextlib.suppress(BufferError):
                mapping.close()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
