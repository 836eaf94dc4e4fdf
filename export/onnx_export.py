"""Export a training run to a bundle: ONNX graphs (onnxsim applied), parity check, quantiles, threshold."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxsim import simplify

from calibration.threshold import threshold_at_false_alarm_rate
from edge_ad import __version__
from edge_ad.bundle import BUNDLE_FILE, SCHEMA_VERSION, file_sha256, write_yaml_atomic
from edge_ad.detector import Detector
from edge_ad.errors import EdgeAdError
from edge_ad.normalize import fit_quantiles

from .backbone import FeatureEncoder
from .gmm_bridge import SHRINK, GmmBridgeHead
from .prototype import PrototypeHead
from .train import load_run

OPSET = 17  # the newest opset TensorRT 8.6 (JetPack 6.0) parses; TensorRT 10.x reads it too
SMOOTHING_SIGMA = 4.0  # Gaussian sigma in input pixels, as PatchCore at 256 px
BUNDLE_FALSE_ALARM_RATE = 0.01  # initial image threshold; replaced on site by calibration


def _export_graph(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )
    model, ok = simplify(onnx.load(str(path)))
    if not ok:
        raise EdgeAdError(f"{path}: onnxsim could not validate the simplified graph")
    onnx.save(model, str(path))


def _graph_entry(root: Path, name: str) -> dict:
    return {"file": name, "sha256": file_sha256(root / name), "precision": "fp32"}


def export_bundle(run: Path, out: Path) -> Path:
    """Write the bundle for training run `run` into folder `out`; returns `out`."""
    record, checkpoint, val_inputs = load_run(run)
    size = int(record["config"]["input_size"])
    encoder = FeatureEncoder((size, size))
    encoder.set_statistics(checkpoint["feature_mean"], checkpoint["feature_std"])
    model = record["model"]
    if model == "gmm-bridge":
        head = GmmBridgeHead(checkpoint["prototypes"], float(checkpoint["tau"])).eval()
        model_extra = {"tau": float(checkpoint["tau"]), "shrink": SHRINK}
    else:
        head = PrototypeHead(checkpoint["prototypes"]).eval()
        model_extra = {}

    out.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(val_inputs[:1])
    with torch.no_grad():
        features = encoder(example)
    _export_graph(encoder, example, out / "encoder.onnx", "image", "features")
    _export_graph(head, features, out / "head.onnx", "features", "raw_map")

    spec = {
        "schema_version": SCHEMA_VERSION,
        "edge_ad_version": __version__,
        "model": {
            "type": model,
            "backbone": "efficientnet-lite0",
            "feature_stride": 8,
            "channels": encoder.channels,
            "prototypes": int(checkpoint["prototypes"].shape[0]),
            **model_extra,
        },
        "input": {"height": size, "width": size, "layout": "NHWC", "color": "RGB", "dtype": "uint8"},
        "graphs": {
            "opset": OPSET,
            "encoder": _graph_entry(out, "encoder.onnx"),
            "head": _graph_entry(out, "head.onnx"),
        },
        "postprocess": {"smoothing_sigma": SMOOTHING_SIGMA},
        # Provisional identity normalisation, replaced below once the graphs have scored the
        # validation images: the quantiles must come from the exported graphs themselves.
        "normalization": {"q_alpha": 0.9, "q_beta": 0.995, "value_alpha": 0.0, "value_beta": 1.0},
        "threshold": 0.0,
    }
    write_yaml_atomic(out / BUNDLE_FILE, spec)

    detector = Detector.load(out)
    raw = np.concatenate([detector.raw_maps(val_inputs[i : i + 8]) for i in range(0, len(val_inputs), 8)])
    quantiles = fit_quantiles(raw, 0.9, 0.995)
    scores = np.array([quantiles.apply(m).max() for m in raw])
    parity = _parity(encoder, head, detector, val_inputs[:8])

    spec["normalization"] = {
        "q_alpha": quantiles.alpha,
        "q_beta": quantiles.beta,
        "value_alpha": quantiles.value_alpha,
        "value_beta": quantiles.value_beta,
    }
    spec["threshold"] = threshold_at_false_alarm_rate(scores, BUNDLE_FALSE_ALARM_RATE)
    spec["provenance"] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.resolve()),
        "training": record,
        "validation_images": int(len(val_inputs)),
        "threshold_false_alarm_rate": BUNDLE_FALSE_ALARM_RATE,
        "parity_onnxruntime_vs_torch": parity,
    }
    write_yaml_atomic(out / BUNDLE_FILE, spec)
    return out


@torch.no_grad()
def _parity(encoder: FeatureEncoder, head: torch.nn.Module, detector: Detector, inputs: np.ndarray) -> dict:
    """Largest and mean absolute difference of the raw grid maps, ONNX Runtime against torch."""
    reference = head(encoder(torch.from_numpy(inputs))).numpy()
    onnx_maps = detector.grid_maps(inputs)
    diff = np.abs(reference - onnx_maps)
    return {"images": int(len(inputs)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
