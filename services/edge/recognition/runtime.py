"""The one OpenVINO adapter. Pre/post-processing code depends only on `InferenceModel`.

model = OpenVinoModel.load(Path("services/edge/models/detector.xml"), RuntimeOptions(threads=1))
outputs = model.infer({"image": x})            # sync, dict of output name -> ndarray
runner = AsyncRunner(model, jobs=4, callback)  # AsyncInferQueue for several streams
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import openvino as ov

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """The IR file is missing or OpenVINO could not read or compile it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class InferenceInputError(ValueError):
    """The inputs given to a model do not match its input names."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class InferenceModel(Protocol):
    """What pre/post-processing code needs from a compiled model."""

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]: ...


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How to compile a model for the CPU.

    threads: INFERENCE_NUM_THREADS (0 = OpenVINO default, all cores).
    streams: NUM_STREAMS (1 for lowest latency; more for throughput with async requests).
    precision: INFERENCE_PRECISION_HINT ("f32" keeps FP32 maths; None = device default).
    """

    threads: int = 1
    streams: int = 1
    precision: str | None = "f32"
    device: str = "CPU"

    def config(self) -> dict[str, str]:
        cfg = {"NUM_STREAMS": str(self.streams), "PERFORMANCE_HINT": "LATENCY"}
        if self.threads > 0:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        if self.precision:
            cfg["INFERENCE_PRECISION_HINT"] = self.precision
        return cfg


def _first_name(port: Any) -> str:
    names = port.get_names()
    return str(port.get_any_name()) if names else f"port{port.get_index()}"


def _with_u8_image_input(model: Any) -> Any:
    """The model with OpenVINO's pre-processing in front of its one input: NHWC uint8 in,
    converted to float and scaled to [0, 1] in NCHW inside the graph. The CPU plugin folds the
    scaling into the first convolution, so an FP32 model's outputs differ from the float
    input's in the last bits (1e-7 relative); an INT8 one's quantised input absorbs that."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0)
    return ppp.build()


class OpenVinoModel:
    """An IR compiled for the CPU with one synchronous infer request."""

    def __init__(self, compiled: Any, path: Path) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.path = path
        self._inputs = tuple(_first_name(p) for p in compiled.inputs)
        self._outputs = tuple(_first_name(p) for p in compiled.outputs)

    @classmethod
    def load(
        cls,
        xml: Path,
        options: RuntimeOptions | None = None,
        core: Any = None,
        input_shape: tuple[int, ...] | None = None,
        u8_image: bool = False,
    ) -> OpenVinoModel:
        """Read `xml` (+ .bin next to it) and compile it with `options`; `input_shape` reshapes
        a single-input, fully convolutional model (e.g. the detector at a smaller size).
        `u8_image`: the model, whose input is an NCHW float image in [0, 1], takes the NHWC
        uint8 image instead and converts it inside the compiled graph (no float copy made in
        Python)."""
        opts = options or RuntimeOptions()
        if not xml.is_file() or not xml.with_suffix(".bin").is_file():
            raise ModelLoadError(xml, "IR .xml/.bin pair not found")
        ov_core = core if core is not None else ov.Core()
        try:
            model = ov_core.read_model(str(xml))
            if input_shape is not None:
                model.reshape(list(input_shape))
            if u8_image:
                model = _with_u8_image_input(model)
            compiled = ov_core.compile_model(model, opts.device, opts.config())
        except RuntimeError as exc:
            raise ModelLoadError(xml, f"OpenVINO failed: {exc}") from exc
        log.info(
            "model compiled",
            extra={"model": str(xml), "threads": opts.threads, "streams": opts.streams},
        )
        return cls(compiled, xml)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def compiled(self) -> Any:
        """The underlying CompiledModel (for AsyncRunner only)."""
        return self._compiled

    def check_inputs(self, inputs: Mapping[str, Array]) -> None:
        missing = [n for n in self._inputs if n not in inputs]
        if missing:
            raise InferenceInputError(missing[0], f"missing input of {self.path.name}")

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one synchronous inference; returns copies of the outputs by name."""
        self.check_inputs(inputs)
        results = self._request.infer(
            {n: inputs[n] for n in self._inputs}, share_inputs=True, share_outputs=True
        )
        return {
            name: np.array(results[port], copy=True)
            for name, port in zip(self._outputs, self._compiled.outputs, strict=True)
        }


class AsyncRunner(Generic[T]):
    """AsyncInferQueue wrapper: submit inputs with user data; `callback(outputs, userdata)` runs
    on an OpenVINO thread when each request completes.

    Keep the runner (and its model) alive as long as the stream runs and call `close()` before
    dropping it: OpenVINO aborts the process if the last reference to a compiled model is
    released on one of its own worker threads, which can happen when the model is dropped right
    after `wait_all()` while a callback is still returning."""

    def __init__(
        self, model: OpenVinoModel, jobs: int, callback: Callable[[dict[str, Array], T], None]
    ) -> None:
        self._model = model
        self._queue = ov.AsyncInferQueue(model.compiled, jobs)
        self._pending = 0
        self._idle = threading.Condition()
        outputs = list(zip(model.output_names, model.compiled.outputs, strict=True))

        def on_done(request: Any, userdata: T) -> None:
            try:
                result = {
                    name: np.array(request.get_tensor(port).data, copy=True)
                    for name, port in outputs
                }
                callback(result, userdata)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

        self._queue.set_callback(on_done)

    def submit(self, inputs: Mapping[str, Array], userdata: T) -> None:
        """Start one inference; blocks only while all `jobs` requests are busy."""
        self._model.check_inputs(inputs)
        with self._idle:
            self._pending += 1
        self._queue.start_async({n: inputs[n] for n in self._model.input_names}, userdata)

    def wait_all(self) -> None:
        """Wait until every submitted request has finished and its callback has returned."""
        self._queue.wait_all()
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def close(self) -> None:
        """Wait for everything in flight; the runner must not be used afterwards."""
        self.wait_all()
        time.sleep(0.01)  # let OpenVINO's worker threads drop their request references

    def __enter__(self) -> AsyncRunner[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
