"""Inference runtimes for a trained classifier: plain torch, or the same network compiled by OpenVINO.

On a CPU, OpenVINO runs EfficientNet-Lite's depthwise convolutions about twice as fast as eager torch at
batch 1, with the same fp32 logits (differences around 1e-5). Training always stays in torch; the compiled
network is for predicting and evaluating a finished checkpoint.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from plantlib.config import ENGINES
from plantlib.data.dataset import Normalization
from plantlib.errors import ConfigError
from plantlib.io import atomic_path

Forward = Callable[[torch.Tensor], torch.Tensor]
ONNX_OPSET = 17


def export_onnx_graph(module: torch.nn.Module, example: torch.Tensor, path: Path, output: str) -> None:
    """Trace `module` into an ONNX file at `path`, written atomically (TorchScript exporter, batch size free)."""
    with atomic_path(Path(path)) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the export path, not the user's concern
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=[output],
            dynamic_axes={"images": {0: "batch"}, output: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


class OpenVinoClassifier:
    """A classifier compiled for the CPU by OpenVINO: uint8 NCHW crops in, float32 logits out.

    Scaling to [0, 1] and the backbone's mean/std normalisation run inside the compiled graph, so the data
    pipeline hands over the uint8 crop (`takes_uint8`) and skips two float passes per image. The network is
    exported through ONNX (TorchScript tracing, about a second) rather than OpenVINO's own `convert_model`,
    which reports usage over the network unless the user has opted out.
    """

    training = False  # like a module in eval mode, so `predict_logits` leaves it alone
    takes_uint8 = True

    def __init__(
        self, model: torch.nn.Module, image_size: int, normalization: Normalization, threads: int | None = None
    ) -> None:
        openvino = import_openvino()
        from openvino.preprocess import PrePostProcessor

        model = model.eval()
        example = torch.zeros(1, 3, image_size, image_size)
        with tempfile.TemporaryDirectory(prefix="plantlib-onnx-") as folder:
            onnx_path = Path(folder) / "classifier.onnx"
            export_onnx_graph(model, example, onnx_path, "logits")
            core = openvino.Core()
            network = core.read_model(str(onnx_path))
        steps = PrePostProcessor(network)
        steps.input().tensor().set_element_type(openvino.Type.u8).set_layout(openvino.Layout("NCHW"))
        steps.input().model().set_layout(openvino.Layout("NCHW"))
        steps.input().preprocess().convert_element_type(openvino.Type.f32).mean(
            [255.0 * m for m in normalization.mean]
        ).scale([255.0 * s for s in normalization.std])
        settings = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        }
        self.compiled = core.compile_model(steps.build(), "CPU", settings)
        self.request = self.compiled.create_infer_request()
        self.image_size = image_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(
                f"OpenVinoClassifier takes uint8 images (0-255, N x 3 x H x W), got {images.dtype}; "
                "feed it from LoadedModel.batches, which yields them"
            )
        array = images.detach().cpu().contiguous().numpy()
        logits = self.request.infer({0: array})[0]
        return torch.from_numpy(logits.copy())

    def __repr__(self) -> str:
        return f"OpenVinoClassifier(image_size={self.image_size}, device=CPU, fp32, uint8 input)"


def import_openvino() -> ModuleType:
    """`import openvino` with its usage telemetry off: nothing sent, nothing written in the home folder.

    Importing OpenVINO starts `openvino_telemetry`, which writes a client id under ~/intel and reports usage to
    Google Analytics unless a consent file says otherwise. OpenVINO ships a no-op stand-in that it uses when that
    package cannot be imported, so the import is made to fail first (a None entry in sys.modules).
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def openvino_available() -> bool:
    """Whether OpenVINO and the ONNX exporter it is fed through are installed."""
    try:
        import onnx  # noqa: F401

        import_openvino()
    except ImportError:
        return False
    return True


def compile_for_inference(
    model: torch.nn.Module,
    image_size: int,
    normalization: Normalization,
    device: torch.device,
    autocast: torch.dtype | None,
    engine: str = "auto",
) -> tuple[Forward, str]:
    """The fastest forward pass for `model` on `device` allowed by `engine`, and the engine's name.

    `auto` compiles with OpenVINO for fp32 CPU inference when it is installed and keeps torch otherwise
    (GPUs, autocast, or a failed export, which is reported as a warning).
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "torch":
        return model, "torch"
    suitable = device.type == "cpu" and autocast is None
    if engine == "openvino":
        if not suitable:
            raise ConfigError("engine='openvino' runs fp32 on the CPU only; use device='cpu' or engine='torch'")
        if not openvino_available():
            raise ConfigError("engine='openvino' needs the openvino and onnx packages: pip install openvino onnx")
        return OpenVinoClassifier(model, image_size, normalization), "openvino"
    if not suitable or not openvino_available():
        return model, "torch"
    try:
        return OpenVinoClassifier(model, image_size, normalization), "openvino"
    except Exception as error:  # any export failure leaves the (slower) torch path working
        warnings.warn(f"OpenVINO could not compile the model, predicting with torch instead: {error}", stacklevel=2)
        return model, "torch"
