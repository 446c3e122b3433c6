"""TensorFlow Lite interpreters on an Edge TPU or the CPU.

The only module that imports the TFLite runtime: `tflite_runtime` (Coral's build,
needs numpy<2) or `ai_edge_litert` (Google's LiteRT); both expose the same
`Interpreter` / `load_delegate` API. `open_session` resolves a device identity
("usb:2-3.1") to the path libedgetpu lists for it right before opening, and makes the
delegate for that path (`edgetpu_create_delegate`, edgetpud.edgetpu_c): an index
("usb:N") would be counted again inside `load_delegate`, in an order that firmware loads
and hotplug change. Every failure is sorted into an error the caller can act on:

- `RuntimeMissing`: the Edge TPU runtime library (libedgetpu) cannot be loaded;
- `DeviceUnavailable`: the device is not listed, or refused the context for no reason
  the node shows; it carries the identity and the port so the devices layer can learn
  bad ports;
- `edgetpud.devices.access.DeviceBusy` / `DeviceNotPermitted`: refused because another
  process holds the device, or this one may not open its node: never a bad port;
- `PrepareFailed`: the delegate was loaded but could not take the model;
- `ModelError`: the model file itself is unusable, or cannot run where asked.

A `Session` is one interpreter owned by one thread (a worker).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgetpud.errors import DeviceError, ModelError
from edgetpud.modelfile import ModelInfo, TensorSpec, inspect_model

log = logging.getLogger(__name__)

RUNTIMES = ("tflite_runtime", "ai_edge_litert")
_RUNTIME_MODULES = {
    "tflite_runtime": "tflite_runtime.interpreter",
    "ai_edge_litert": "ai_edge_litert.interpreter",
}
# The Debian package carries PyPI's tflite_runtime wheel unpacked here (docs/install.md,
# "Why the package carries the runtime"); only this module puts it on sys.path.
PRIVATE_RUNTIME_DIR = "/usr/lib/edgetpud/python"
_INSTALL_HINT = (
    f"the Debian package carries tflite_runtime in {PRIVATE_RUNTIME_DIR}: reinstall it "
    "(`apt install --reinstall ./edgetpud_<version>_<arch>.deb`, the file you installed it "
    "from); outside the package, `pip install tflite-runtime==2.14.0 'numpy<2'` (Python 3.8-3.11) "
    "or `pip install ai-edge-litert` (Python 3.10 and newer)"
)
_PIP = {
    "tflite_runtime": "pip install tflite-runtime",
    "ai_edge_litert": "pip install ai-edge-litert",
}
# DevicesConfig.performance / ModelConfig.performance → libedgetpu's Performance option.
PERFORMANCE = {"std": "High", "max": "Max", "low": "Low", "medium": "Medium", "high": "High"}
# Delegate device strings that need no identity lookup: "", "usb", "pci", ":N", "usb:N", "pci:N".
_GENERIC_KINDS = ("", "usb", "pci")


class RuntimeMissing(DeviceError):
    """The Edge TPU runtime library could not be loaded at all."""

    def __init__(self, library: str, detail: str, setting: str = "runtime.library") -> None:
        self.library = library
        self.detail = detail
        super().__init__(
            f"cannot load the Edge TPU runtime {library} ({detail}): install it with "
            "`apt install libedgetpu1-std` (or libedgetpu1-max; "
            "/usr/share/doc/edgetpud/docs/install.md says from where), "
            f"or set {setting} to its path"
        )

    def naming(self, setting: str) -> RuntimeMissing:
        """The same error telling the user to change `setting` (a command's option, say)."""
        return RuntimeMissing(self.library, self.detail, setting)


class DeviceUnavailable(DeviceError):
    """The Edge TPU is not listed by the runtime, or refused to open a context."""

    def __init__(self, identity: str, port: str, detail: str) -> None:
        self.identity = identity
        self.port = port
        self.detail = detail
        super().__init__(
            f"Edge TPU {identity} could not be opened ({detail}); check `edgetpud devices`: "
            "it may have been unplugged, be busy in another process, lack power, or sit "
            f"on a hub port ({port}) that cannot hold an Edge TPU context"
        )


class PrepareFailed(DeviceError):
    """The delegate loaded but could not prepare the model on the device."""

    def __init__(self, identity: str, model: Path, detail: str) -> None:
        self.identity = identity
        self.model = model
        super().__init__(
            f"Edge TPU {identity} could not prepare {model.name} ({detail}): check that "
            "the model was compiled by an edgetpu_compiler no newer than the installed "
            "libedgetpu, and that the device is healthy (`edgetpud devices`)"
        )


class InvokeError(ModelError):
    """One inference failed; the session stays usable and closable."""


@dataclass(frozen=True)
class _Runtime:
    name: str
    interpreter: Callable[..., Any]
    load_delegate: Callable[..., Any]


_loaded: dict[str, _Runtime] = {}


def _import_runtime(prefer: str) -> _Runtime:
    if prefer not in ("auto", *RUNTIMES):
        raise ModelError(f"unknown TFLite runtime {prefer!r}: use auto, {', '.join(RUNTIMES)}")
    candidates = RUNTIMES if prefer == "auto" else (prefer,)
    _add_private_runtime_dir()
    failures = []
    for name in candidates:
        if name in _loaded:
            return _loaded[name]
        try:
            module = importlib.import_module(_RUNTIME_MODULES[name])
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
            continue
        runtime = _Runtime(name, module.Interpreter, module.load_delegate)
        _loaded[name] = runtime
        log.debug("TFLite runtime: %s from %s", name, getattr(module, "__file__", "?"))
        return runtime
    if prefer == "auto":
        raise ModelError(
            f"neither tflite_runtime nor ai_edge_litert is importable ({'; '.join(failures)}); "
            f"{_INSTALL_HINT}"
        )
    raise ModelError(
        f'runtime.runtime = "{prefer}" but it is not importable ({failures[0]}): install it '
        f'with `{_PIP[prefer]}`, or set runtime.runtime = "auto" to use whichever is installed'
    )


def runtime_name(prefer: str = "auto") -> str:
    """The TFLite runtime that `open_session` uses: "tflite_runtime" or "ai_edge_litert"."""
    return _import_runtime(prefer).name


class Session:
    """One interpreter on one device (an Edge TPU identity or "cpu"), used from one thread."""

    def __init__(
        self,
        info: ModelInfo,
        device: str,
        interpreter: Any,
        delegate: Any,
        *,
        runtime: str,
        delegate_device: str = "",
    ) -> None:
        self.info = info
        self.device = device
        self.runtime = runtime
        # what the delegate was opened on: the device path libedgetpu lists
        # ("/sys/bus/usb/devices/2-3.1", "/dev/apex_0") or a generic string ("usb:1"); "" on CPU
        self.delegate_device = delegate_device
        self.last_invoke_ms = 0.0
        self.invocations = 0
        self._interpreter: Any = interpreter
        self._delegate: Any = delegate
        self._inputs = [d["index"] for d in interpreter.get_input_details()]
        self._outputs = [d["index"] for d in interpreter.get_output_details()]
        self._lock = threading.Lock()
        self._busy = False
        self._close_pending = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Session {self.info.path.name} on {self.device} ({self.runtime}, {state})>"

    @property
    def closed(self) -> bool:
        return self._interpreter is None

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self.info.inputs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self.info.outputs

    def invoke(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Run one inference; returns copies of the output tensors.

        Raises ModelError when the inputs do not fit the model, InvokeError when
        the runtime reports a failure (the session stays usable).
        """
        interpreter = self._interpreter
        if interpreter is None:
            raise ModelError(f"{self!r} is closed: open a new session to run the model")
        if len(inputs) != len(self._inputs):
            raise ModelError(
                f"{self.info.path.name} takes {len(self._inputs)} input(s), got {len(inputs)}"
            )
        for spec, index, array in zip(self.info.inputs, self._inputs, inputs):
            self._set_input(interpreter, index, array, spec)
        with self._lock:
            self._busy = True
        try:
            started = time.perf_counter()
            failure = ""
            try:
                interpreter.invoke()
            except RuntimeError as exc:
                failure = _first_line(exc)
            if failure:
                # Raised outside the except block, and without this frame holding the
                # interpreter: an InvokeError kept by a caller (a report) would otherwise keep
                # the interpreter and its delegate, and so libedgetpu's context on the device,
                # after close(); libedgetpu hands that open context out again to the next open
                # of the same device path (edgetpu_manager_direct.cc, TryMatchDriverWrapper).
                del interpreter
                raise self._invoke_failed(failure)
            self.last_invoke_ms = (time.perf_counter() - started) * 1000.0
            self.invocations += 1
            # get_tensor() already returns a copy in both runtimes (never a view of the arena).
            return [interpreter.get_tensor(index) for index in self._outputs]
        finally:
            with self._lock:
                self._busy = False
                release = self._close_pending
            if release:
                self._release()

    def _set_input(self, interpreter: Any, index: int, array: Any, spec: Any) -> None:
        try:
            interpreter.set_tensor(index, array)
        except ValueError as exc:
            raise ModelError(
                f"input {spec.name!r} of {self.info.path.name} wants {spec.dtype} "
                f"{list(spec.shape)}, got {array.dtype} {list(array.shape)}: {exc}"
            ) from None

    def _invoke_failed(self, failure: str) -> InvokeError:
        return InvokeError(
            f"inference of {self.info.path.name} on {self.device} failed: {failure}; "
            "the next request is tried as usual, and repeated failures mark the device suspect"
        )

    def invoker_into(
        self, inputs: Sequence[npt.NDArray[Any]], outputs: Sequence[npt.NDArray[Any]]
    ) -> Callable[[], None]:
        """A function that runs one inference on `inputs` and copies its outputs into
        `outputs` (arrays shaped and typed like the model's tensors: a device host's
        slot), for a caller that owns this session alone and closes it from the thread
        that calls it, never while it runs (a device host's lane). It skips what `invoke`
        does for other callers: the busy flag and its lock, a new list and arrays for
        the outputs, the timing (18.6 -> 12.5 us a call with a 0 ms invoke on this VM).
        Raises ModelError when an input does not fit or the session is closed,
        InvokeError when the runtime fails."""
        if len(inputs) != len(self._inputs) or len(outputs) != len(self._outputs):
            raise ModelError(
                f"{self.info.path.name} has {len(self._inputs)} input(s) and "
                f"{len(self._outputs)} output(s), got {len(inputs)} and {len(outputs)}"
            )
        feed = list(zip(self._inputs, inputs, self.info.inputs))
        take = list(zip(self._outputs, outputs))

        def invoke_into() -> None:
            interpreter = self._interpreter
            if interpreter is None:
                raise ModelError(f"{self!r} is closed: open a new session to run the model")
            for index, array, spec in feed:
                self._set_input(interpreter, index, array, spec)
            failure = ""
            try:
                interpreter.invoke()
            except RuntimeError as exc:
                failure = _first_line(exc)
            if failure:
                del interpreter  # as in invoke: the error must not keep it alive
                raise self._invoke_failed(failure)
            for index, out in take:
                value = interpreter.get_tensor(index)
                shaped = value if value.shape == out.shape else value.reshape(out.shape)
                np.copyto(out, shaped, casting="no")

        return invoke_into

    def close(self) -> None:
        """Release the interpreter, then the delegate. Idempotent.

        Called while another thread is inside `invoke` (a hung worker being
        abandoned), it defers the release until that invoke returns, so memory the
        runtime is still using is never freed under it.
        """
        with self._lock:
            if self._busy:
                self._close_pending = True
                log.warning("%r: closing while an inference runs; released when it returns", self)
                return
        self._release()

    def _release(self) -> None:
        with self._lock:
            interpreter, self._interpreter = self._interpreter, None
            delegate, self._delegate = self._delegate, None
            self._close_pending = False
        if interpreter is not None:
            log.debug("closing %s on %s", self.info.path.name, self.device)
        # Drop the interpreter first: it uses the delegate until it is destroyed.
        del interpreter
        del delegate

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(
    model: Path,
    device: str,
    *,
    library: str = "libedgetpu.so.1",
    performance: str = "std",
    cpu_threads: int = 2,
    prefer: str = "auto",
    info: ModelInfo | None = None,
) -> Session:
    """Load `model` on `device` ("cpu", an identity such as "usb:2-3.1", or "usb"/"pci").

    The interpreter's tensors are allocated here, so a model that only fails at
    allocation (a truncated file, an unresolved custom op) fails now, not at the
    first request.
    """
    model = Path(model)
    # Always parse the file before the runtime sees it: tflite_runtime 2.14 crashes the
    # process (SIGSEGV) on some truncated files instead of raising.
    if info is None or not _same_file(model, info):
        info = inspect_model(model)
    runtime = _import_runtime(prefer)
    if device == "cpu":
        return _open_cpu(model, info, runtime, cpu_threads)
    return _open_edgetpu(model, info, runtime, device, library=library, performance=performance)


def _open_cpu(model: Path, info: ModelInfo, runtime: _Runtime, cpu_threads: int) -> Session:
    if info.edgetpu:
        raise ModelError(
            f"{model.name} is compiled for the Edge TPU and cannot run on the CPU: set the "
            "model's cpu_model to its plain .tflite build (the file edgetpu_compiler was "
            "given), or run it on an Edge TPU"
        )
    try:
        interpreter = runtime.interpreter(model_path=str(model), num_threads=cpu_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise _model_failure(model, "the CPU", exc) from None
    log.info("opened %s on the CPU (%s, %d threads)", model.name, runtime.name, cpu_threads)
    return Session(info, "cpu", interpreter, None, runtime=runtime.name)


def _open_edgetpu(
    model: Path, info: ModelInfo, runtime: _Runtime, device: str, *, library: str, performance: str
) -> Session:
    kind, _, rest = device.partition(":")
    if not _generic(device) and (kind not in ("usb", "pci") or not rest):
        raise DeviceError(
            f"unknown device {device!r}: use cpu, usb, pci, or an identity from "
            "`edgetpud devices` such as usb:2-3.1 or pci:0000:03:00.0"
        )
    level = PERFORMANCE.get(performance.lower())
    if level is None:
        raise ModelError(f"unknown Edge TPU performance {performance!r}: use std or max")
    try:
        # Load it first ourselves: tflite_runtime's Delegate leaves a half-built object
        # (an "Exception ignored in __del__" on stderr) when the library is missing.
        ctypes.CDLL(library)
    except OSError as exc:
        raise RuntimeMissing(library, _first_line(exc)) from None
    if _generic(device):
        delegate, bound = _load_generic(runtime, device, library, level)
    else:
        delegate, bound = _create_by_path(device, library, level)
    if not info.edgetpu:
        log.warning(
            "%s is not compiled for the Edge TPU: it runs on the CPU even with %s open",
            model.name,
            device,
        )
    # Every failure below is raised outside its `except` block, after dropping the delegate:
    # an exception whose context holds the runtime's traceback would keep the interpreter and
    # the delegate (and so libedgetpu's context on the device) alive after we gave up on them.
    failure: DeviceError | ModelError | None = None
    interpreter: Any = None
    try:
        interpreter = runtime.interpreter(model_path=str(model), experimental_delegates=[delegate])
    except ValueError as exc:
        if _file_problem(exc):
            failure = _model_failure(model, device, exc)
        else:
            failure = PrepareFailed(device, model, _first_line(exc))
    except RuntimeError as exc:
        failure = PrepareFailed(device, model, _first_line(exc))
    if failure is None:
        try:
            interpreter.allocate_tensors()
        except RuntimeError as exc:
            if info.edgetpu and "custom op" in str(exc):
                failure = PrepareFailed(device, model, _first_line(exc))
            else:
                failure = _model_failure(model, device, exc)
    if failure is not None:
        del interpreter, delegate  # the interpreter first: it uses the delegate
        raise failure
    log.info(
        "opened %s on %s at %s (%s, %s)",
        model.name,
        device,
        bound,
        runtime.name,
        level,
    )
    return Session(info, device, interpreter, delegate, runtime=runtime.name, delegate_device=bound)


def _generic(device: str) -> bool:
    """A delegate device string that names no particular device: "usb", "pci:0", ":1", ""."""
    kind, _, rest = device.partition(":")
    return device in _GENERIC_KINDS or (kind in _GENERIC_KINDS and rest.isdigit())


def _load_generic(runtime: _Runtime, device: str, library: str, level: str) -> tuple[Any, str]:
    """The plugin path, `load_delegate(library, {"device": device})`, for a generic string.

    libedgetpu applies options only when an index is given (its plugin's GetEdgeTpuContext).
    """
    options = {"device": device}
    if device.rpartition(":")[2].isdigit():
        options["Performance"] = level
    detail = ""
    try:
        delegate = runtime.load_delegate(library, options)
    except OSError as exc:
        detail = "missing: " + _first_line(exc)
    except ValueError as exc:
        detail = _delegate_detail(exc)
    if detail.startswith("missing: "):
        raise RuntimeMissing(library, detail.removeprefix("missing: "))
    if detail:
        if _library_absent(detail):
            raise RuntimeMissing(library, detail)
        raise DeviceUnavailable(device, device.partition(":")[2] or device, f"{device}: {detail}")
    return delegate, device


def _create_by_path(device: str, library: str, level: str) -> tuple[Any, str]:
    """A delegate on the device an identity ("usb:2-3.1", "pci:0000:03:00.0") names, by path.

    The identity is resolved to the path libedgetpu lists right now, and the delegate is made
    for that path (edgetpu_create_delegate): a firmware load elsewhere that renumbers libedgetpu's
    enumeration between the look-up and the open cannot bind it to another device, which an
    index ("usb:N") could. A refusal is explained when the node says why (busy in another
    process, not permitted), and only otherwise blamed on the device and its port.
    """
    rest = device.partition(":")[2]
    # Imported here: it loads the runtime library through ctypes, which CPU-only use never needs.
    from edgetpud import edgetpu_c
    from edgetpud.devices import access

    try:
        ref = edgetpu_c.find_device(device, library)
        delegate = edgetpu_c.create_delegate(library, ref, {"Performance": level})
    except edgetpu_c.LibraryMissing as exc:
        raise RuntimeMissing(library, exc.detail) from None
    except OSError as exc:
        raise RuntimeMissing(library, _first_line(exc)) from None
    except DeviceError as exc:
        raise DeviceUnavailable(device, rest, _first_line(exc)) from None
    if delegate is None:
        explained = access.diagnose(device, ref.type, ref.name)
        if explained is not None:
            raise explained
        raise DeviceUnavailable(device, rest, f"libedgetpu refused {ref.path}")
    log.debug("%s is %s in %s's list", device, ref.path, library)
    return delegate, ref.path


def _same_file(model: Path, info: ModelInfo) -> bool:
    try:
        return info.path == model and model.stat().st_size == info.size
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _delegate_detail(exc: ValueError) -> str:
    """The plugin's own message from load_delegate's "Failed to load delegate from X\\n<msg>"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    rest = [line for line in lines if not line.startswith("Failed to load delegate from")]
    return "; ".join(rest) or (lines[0] if lines else "delegate refused")


def _library_absent(detail: str) -> bool:
    # Some runtimes wrap dlopen failures in ValueError instead of letting OSError through.
    return "cannot open shared object" in detail or "No such file" in detail


def _file_problem(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("Could not open", "model identifier", "not a valid", "Model"))


def _model_failure(model: Path, where: str, exc: BaseException) -> ModelError:
    detail = _first_line(exc)
    if "custom op" in detail:
        return ModelError(
            f"{model.name} cannot run on {where}: {detail} The model needs an operator this "
            "runtime does not have; run an Edge TPU build on an Edge TPU, or use a model "
            "built from standard TFLite operators"
        )
    return ModelError(
        f"{model.name} could not be loaded on {where} ({detail}): the file is probably "
        "truncated or corrupt; copy it again and compare its size or checksum"
    )


def _add_private_runtime_dir(folder: str = PRIVATE_RUNTIME_DIR) -> None:
    """Put the package's own runtime first on sys.path, if the package installed one.

    First, so that the runtime the package was tested with wins over one a user pip-installed
    system-wide (which may have pulled numpy 2 and crash on import).
    """
    if os.path.isdir(folder) and folder not in sys.path:
        sys.path.insert(0, folder)


def runtime_version(prefer: str = "auto") -> tuple[str, str]:
    """(name, version) of the TFLite runtime `open_session` would use, e.g. ("tflite_runtime",
    "2.14.0"); the version is "unknown" when the module does not say. Raises ModelError when
    no runtime is importable, with the fix in its message."""
    runtime = _import_runtime(prefer)
    package = importlib.import_module(runtime.name)
    version = getattr(package, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(runtime.name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return runtime.name, str(version)


def runtime_location(name: str) -> str:
    """The folder the named (already imported) runtime was loaded from."""
    module = sys.modules.get(name)
    where = getattr(module, "__file__", None)
    return os.path.dirname(where) if where else "not imported"
