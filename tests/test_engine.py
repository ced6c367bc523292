"""The OpenVINO inference engine: same predictions as torch, clear errors, and a torch fallback."""

from pathlib import Path

import numpy as np
import pytest
import torch

from plantlib.data.dataset import eval_transform
from plantlib.errors import ConfigError
from plantlib.experiments import train
from plantlib.inference import engine as engine_module
from plantlib.inference.engine import OpenVinoClassifier, compile_for_inference
from plantlib.inference.predictor import evaluate_split, load_model, predict_files
from plantlib.models.backbones import build_model, normalization_for
from plantlib.runtime import torch_threads
from tests.conftest import pattern_image, tiny_config, write_dataset


def _crops(count: int, size: int) -> torch.Tensor:
    """uint8 N x 3 x size x size crops of varied synthetic pictures, as the inference loader yields them."""
    crop = eval_transform(size, normalize=False)
    pictures = [torch.from_numpy(np.asarray(pattern_image(seed, (150, 110))).copy()) for seed in range(count)]
    return torch.stack([crop(p.permute(2, 0, 1).contiguous()) for p in pictures])


def test_compiled_lite0_gives_the_torch_logits_on_uint8_crops() -> None:
    model = build_model("efficientnet_lite0", 2, pretrained=True).eval()
    norm = normalization_for("efficientnet_lite0")
    crops = _crops(5, 224)
    compiled = OpenVinoClassifier(model, 224, norm)
    scaled = (crops.float() / 255 - torch.tensor(norm.mean)[:, None, None]) / torch.tensor(norm.std)[:, None, None]
    with torch.inference_mode():
        expected = model(scaled)
    logits = compiled(crops)
    assert logits.shape == (5, 2) and logits.dtype == torch.float32
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(compiled(crops[:1]), expected[:1], atol=1e-4, rtol=1e-4)  # any batch size
    with pytest.raises(TypeError, match="uint8"):
        compiled(scaled)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    data = write_dataset(root / "data", {"ant": 16, "bee": 16})
    config = tiny_config(data, root / "runs", backbone="resnet18", pretrained=False, epochs=1, image_size=48)
    return train(config, show_progress=False).run_dir


def test_checkpoint_predictions_agree_between_engines(run_dir: Path) -> None:
    by_torch = load_model(run_dir, device="cpu", engine="torch")
    by_openvino = load_model(run_dir, device="cpu", engine="openvino")
    assert (by_torch.engine, by_openvino.engine) == ("torch", "openvino")
    assert load_model(run_dir, device="cpu").engine == "openvino"  # auto picks it on the CPU

    metrics_torch, frame_torch = evaluate_split(by_torch, "test", save=False)
    metrics_openvino, frame_openvino = evaluate_split(by_openvino, "test", save=False)
    assert frame_openvino["path"].tolist() == frame_torch["path"].tolist()
    assert frame_openvino["p_bee"].to_numpy() == pytest.approx(frame_torch["p_bee"].to_numpy(), abs=1e-5)
    assert metrics_openvino["log_loss"] == pytest.approx(metrics_torch["log_loss"], abs=1e-5)

    images = frame_torch["path"].tolist()[:3]
    data_dir = Path(by_torch.config.data_dir)
    single = predict_files(by_openvino, [data_dir / images[0]])
    assert single["p_bee"].iloc[0] == pytest.approx(frame_torch["p_bee"].iloc[0], abs=1e-5)
    files = [data_dir / name for name in images]
    in_pairs = by_openvino.probabilities(files, batch_size=2)  # batches of 2 + 1, still in file order
    assert in_pairs == pytest.approx(by_openvino.probabilities(files), abs=1e-6)
    assert in_pairs[:, 1] == pytest.approx(frame_torch["p_bee"].to_numpy()[:3], abs=1e-5)
    with pytest.raises(ConfigError, match="batch_size=0"):
        by_openvino.probabilities(files, batch_size=0)
    serial = list(by_openvino.batches(files, batch_size=2))
    threaded = list(by_openvino.batches(files, batch_size=2, workers=2))  # decoded and cropped by 2 threads
    assert [b.shape[0] for b in threaded] == [2, 1] and all(b.dtype == torch.uint8 for b in threaded)
    assert all(torch.equal(a, b) for a, b in zip(serial, threaded, strict=True))


def test_auto_keeps_torch_where_openvino_cannot_serve(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model(run_dir, device="cpu", engine="torch")
    cpu = torch.device("cpu")
    forward, name = compile_for_inference(loaded.model, 48, loaded.normalization, cpu, torch.bfloat16, "auto")
    assert name == "torch" and forward is loaded.model  # autocast is a torch feature
    with pytest.raises(ConfigError, match="fp32 on the CPU"):
        compile_for_inference(loaded.model, 48, loaded.normalization, torch.device("cuda"), None, "openvino")
    with pytest.raises(ConfigError, match="one of"):
        compile_for_inference(loaded.model, 48, loaded.normalization, cpu, None, "tensorrt")

    monkeypatch.setattr(engine_module, "openvino_available", lambda: False)
    assert load_model(run_dir, device="cpu").engine == "torch"
    with pytest.raises(ConfigError, match="pip install openvino onnx"):
        load_model(run_dir, device="cpu", engine="openvino")

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(engine_module, "openvino_available", lambda: True)
    monkeypatch.setattr(engine_module, "OpenVinoClassifier", broken_export)
    with pytest.warns(UserWarning, match="unsupported operator"):
        assert load_model(run_dir, device="cpu").engine == "torch"


def test_torch_threads_restores_the_setting() -> None:
    original = torch.get_num_threads()
    before = 3 if original != 3 else 2  # a setting the context manager can be seen to change and put back
    torch.set_num_threads(before)
    try:
        with pytest.raises(RuntimeError), torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("interrupted")
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(original)


def test_cli_predict_takes_an_engine(run_dir: Path) -> None:
    from tests.conftest import run_cli

    image = next(Path(load_model(run_dir, engine="torch").config.data_dir).rglob("*.jpg"))
    outputs = {}
    for name in ("torch", "openvino"):
        done = run_cli("predict", str(run_dir), str(image), "--engine", name, "--device", "cpu")
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = float(done.stdout.splitlines()[1].split(",")[-1])
    assert outputs["openvino"] == pytest.approx(outputs["torch"], abs=1e-5)
    refused = run_cli("predict", str(run_dir), str(image), "--engine", "onnx")
    assert refused.returncode != 0 and "invalid choice" in refused.stderr
