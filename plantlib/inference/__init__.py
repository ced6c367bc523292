"""A trained model put to use: loading a checkpoint and predicting (`predictor`), torch or OpenVINO engines
(`engine`), several checkpoints as one predictor (`ensemble`), heat maps (`explain`), ONNX export and the model
card (`export`)."""

from plantlib.inference.predictor import evaluate_folder, evaluate_split, load_model

__all__ = ["evaluate_folder", "evaluate_split", "load_model"]
