"""Where a model's transformer runs: torch as loaded, or a graph exported once to ONNX Runtime or OpenVINO.

Only the transformer (the Hugging Face model inside sentence-transformers' ``Transformer`` module) changes runtime;
the modules after it (pooling, Dense, ...) are small and stay torch, so every backend gets the same padded token ids
from the batcher and feeds the same pooling. sentence-transformers' own ``backend=`` loading goes through optimum,
which does not resolve next to our pins (transformers 5, torch CPU), so the export is done here with the runtimes'
own tools: ``torch.onnx.export`` for ONNX Runtime, ``openvino.convert_model`` for OpenVINO.

An export is kept in ``EXPORT_DIR`` under a name made of the model's name, the backend and a digest of its weights,
so a restart or another worker sharing the folder reuses it; it is written to a temporary folder and renamed into
place, so a worker never reads a half-written export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from worker.models.precision import Precision, PrecisionUnavailable

log = logging.getLogger(__name__)

Backend = Literal["torch", "onnx", "openvino"]
#: an exported forward pass: the graph's inputs (``Graph.inputs``, in order) -> its one output
Forward = Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True, slots=True)
class Graph:
    """What an export computes: the transformer's last hidden state (an embedding model's, pooled in torch after
    it) or its classifier's logits (a reranker's), from these inputs, in this order."""

    output: Literal["last_hidden_state", "logits"] = "last_hidden_state"
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")


HIDDEN_STATE = Graph()

_MODULE_OF: dict[Backend, str] = {"onnx": "onnxruntime", "openvino": "openvino"}
#: how this module exports; a change here must not reuse older exports
_EXPORT_FORMAT = 2


def installed(backend: Backend) -> bool:
    return backend == "torch" or importlib.util.find_spec(_MODULE_OF[backend]) is not None


def choose_backend(setting: str, device: str, precision: Precision = "float32") -> Backend:
    """``auto``: torch on CUDA; on CPU OpenVINO when installed, else ONNX Runtime (float32 only), else torch."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if device != "cpu":
        return "torch"
    for backend in ("openvino", "onnx"):
        if installed(backend) and (backend == "openvino" or precision == "float32"):
            return backend
    return "torch"


def export_folder(
    root: Path, name: str, backend: Backend, quantize: str, transformer: torch.nn.Module, graph: Graph = HIDDEN_STATE
) -> Path:
    """Where the export of ``transformer`` for ``backend`` lives: a new folder for new weights or a new exporter."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{_EXPORT_FORMAT} {backend} {quantize} {_exporter_version(backend)}".encode())
    if graph != HIDDEN_STATE:  # the exports made before graphs had a kind keep their folders
        digest.update(f"{graph.output} {','.join(graph.inputs)}".encode())
    for key, tensor in sorted(transformer.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "--", name)
    return root / f"{safe_name}-{backend}{'-' + quantize if quantize != 'none' else ''}-{digest.hexdigest()}"


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledRuntime:
    forward: Forward
    #: the precision the runtime computes in, as the runtime itself reports it after compiling
    precision: Precision


def load_runtime(
    backend: Backend,
    transformer: torch.nn.Module,
    folder: Path,
    *,
    threads: int,
    precision: Precision = "float32",
    quantize: str = "none",
    graph: Graph = HIDDEN_STATE,
) -> CompiledRuntime:
    """The transformer's forward pass on ``backend`` at ``precision``, exporting it into ``folder`` first unless
    it is there; PrecisionUnavailable if the runtime cannot compute at ``precision``."""
    if backend == "onnx" and precision != "float32":
        raise PrecisionUnavailable(f"ONNX Runtime's CPU provider computes float32 only, not {precision}")
    if not (folder / _FILE_OF[backend]).exists():
        _export_into(folder, backend, transformer, quantize, graph)
        log.info("exported %s for %s into %s", type(transformer).__name__, backend, folder)
    else:
        log.info("reusing the %s export in %s", backend, folder)
    if backend == "onnx":
        return _onnx_runtime(folder / _FILE_OF["onnx"], threads, graph)
    return _openvino_runtime(folder / _FILE_OF["openvino"], threads, precision)


_FILE_OF: dict[Backend, str] = {"onnx": "model.onnx", "openvino": "model.xml"}


class _Positional(torch.nn.Module):
    """The transformer with positional inputs and one output, the shape both exporters handle best."""

    def __init__(self, transformer: torch.nn.Module, graph: Graph) -> None:
        super().__init__()
        self.transformer = transformer
        self.graph = graph

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.transformer(**dict(zip(self.graph.inputs, inputs, strict=True)), return_dict=True)
        result: torch.Tensor = output[self.graph.output]
        return result


def _export_into(folder: Path, backend: Backend, transformer: torch.nn.Module, quantize: str, graph: Graph) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with warnings.catch_warnings():
            # tracing talks: the legacy exporter's deprecation notice, TracerWarnings on shape arithmetic that the
            # dynamic axes and the probe check cover
            warnings.simplefilter("ignore")
            _export_staged(staging, backend, transformer, quantize, graph)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / _FILE_OF[backend]).exists():  # another worker won the race with a complete export
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_staged(staging: Path, backend: Backend, transformer: torch.nn.Module, quantize: str, graph: Graph) -> None:
    wrapped = _Positional(transformer, graph).eval()
    # a padded row: tracing records the branches this input takes, and a batch without padding may skip the mask
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3], dtype=torch.int64)
    examples = {"input_ids": torch.ones((2, 8), dtype=torch.int64), "attention_mask": mask}
    example = tuple(examples.get(name, torch.zeros((2, 8), dtype=torch.int64)) for name in graph.inputs)
    if backend == "onnx":
        _export_onnx(wrapped, example, staging, quantize, graph)
    else:
        import openvino

        with torch.no_grad():
            converted = openvino.convert_model(wrapped, example_input=example)
        converted.reshape({index: [-1, -1] for index in range(len(example))})  # any batch size, any length
        openvino.save_model(converted, staging / _FILE_OF["openvino"], compress_to_fp16=False)


def _export_onnx(
    wrapped: torch.nn.Module, example: tuple[torch.Tensor, ...], folder: Path, quantize: str, graph: Graph
) -> None:
    target = folder / _FILE_OF["onnx"]
    plain = folder / "model.float32.onnx" if quantize == "int8" else target
    dynamic = {0: "batch", 1: "tokens"}
    output_axes = dynamic if graph.output == "last_hidden_state" else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            example,
            str(plain),
            input_names=list(graph.inputs),
            output_names=[graph.output],
            dynamic_axes={**dict.fromkeys(graph.inputs, dynamic), graph.output: output_axes},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, and it handles Hugging Face models
        )
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # per channel: 0.984 cosine to torch on MiniLM where per tensor gives 0.94
        quantize_dynamic(plain, target, weight_type=QuantType.QInt8, per_channel=True)
        plain.unlink()


def _onnx_runtime(path: Path, threads: int, graph: Graph) -> CompiledRuntime:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # the CPU provider has no reduced-precision mode on x86: float32 in, float32 out is float32 throughout
    output_type = session.get_outputs()[0].type
    if session.get_providers() != ["CPUExecutionProvider"] or output_type != "tensor(float)":
        raise PrecisionUnavailable(f"ONNX Runtime runs {session.get_providers()} with {output_type} output")

    def forward(*inputs: np.ndarray) -> np.ndarray:
        outputs: list[np.ndarray] = session.run(None, dict(zip(graph.inputs, inputs, strict=True)))
        return outputs[0]

    return CompiledRuntime(forward, "float32")


#: OpenVINO's names of the precisions, and back
_OPENVINO_TYPES: dict[Precision, str] = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
_PRECISION_OF_OPENVINO = {name: precision for precision, name in _OPENVINO_TYPES.items()}


def _openvino_runtime(path: Path, threads: int, precision: Precision) -> CompiledRuntime:
    import openvino

    core = openvino.Core()
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",  # one batch at a time, as the batcher runs them
        # OpenVINO pins its threads to cores; two workers of one thread each were both pinned to core 0
        "ENABLE_CPU_PINNING": False,
        # without it the CPU plugin computes in bfloat16 on every CPU that has it (AMX, AVX-512 BF16)
        "INFERENCE_PRECISION_HINT": _OPENVINO_TYPES[precision],
    }
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    served = openvino_precision(compiled)
    if served != precision:
        raise PrecisionUnavailable(f"OpenVINO compiled the model for {served}, not {precision}")
    request = compiled.create_infer_request()

    def forward(*inputs: np.ndarray) -> np.ndarray:
        result = request.infer(dict(enumerate(inputs)))
        output: np.ndarray = result[compiled.output(0)]
        return output.copy()  # the request reuses its output buffer on the next call

    return CompiledRuntime(forward, precision)


def openvino_precision(compiled: Any) -> Precision | str:
    """The precision an OpenVINO compiled model computes in, read from its properties."""
    name = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    return _PRECISION_OF_OPENVINO.get(name, name)


def _exporter_version(backend: Backend) -> str:
    if backend == "openvino":
        return "openvino " + importlib.metadata.version("openvino")
    return f"torch {torch.__version__} onnxruntime {importlib.metadata.version('onnxruntime')}"
