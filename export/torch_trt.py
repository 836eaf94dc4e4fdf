"""`edge-ad export --via torch-tensorrt`: for users on x86 NVIDIA GPUs who want to stay in
PyTorch. Each module of a run (encoder, head; for a bridge run prior, the K-step bridge fused
into one module, and head) is compiled AOT with Torch-TensorRT's dynamo frontend for a batch of
1 to `max_batch` and saved as an ExportedProgram (`<name>.ep`, load with
`torch.export.load(path).module()` after `import torch_tensorrt`). The same parity report as the
ONNX export (compiled against eager PyTorch on the run's held-out images) goes to
`torch_tensorrt.yaml` and is printed. The edge_ad runtime does not read these files: on a Jetson
use `edge-ad export` and `edge-ad build`.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch
import yaml

from edge_ad.bundle import write_yaml_atomic
from edge_ad.errors import EdgeAdError

from .bridge import FusedBridge
from .onnx_export import _Model, bridge_steps
from .train import load_run

PARITY_IMAGES = 8


def _torch_tensorrt():
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise EdgeAdError(
            "--via torch-tensorrt needs the torch-tensorrt package and an NVIDIA GPU (pip install torch-tensorrt "
            f"matching torch {torch.__version__}); on a Jetson use 'edge-ad export' and 'edge-ad build' ({exc})"
        ) from exc
    if not torch.cuda.is_available():
        raise EdgeAdError("--via torch-tensorrt needs a CUDA GPU, and torch sees none")
    return torch_tensorrt


def _modules(model: _Model, steps: int) -> dict[str, torch.nn.Module]:
    modules = {"encoder": model.encoder, "head": model.head}
    if model.type == "bridge":
        modules = {"encoder": model.encoder, "prior": model.prior, "fused": FusedBridge(model.denoiser, steps),
                   "head": model.head}
    return {name: module.eval().cuda() for name, module in modules.items()}


@torch.no_grad()
def _maps(modules: dict, model_type: str, inputs: torch.Tensor) -> torch.Tensor:
    """Raw grid maps (B, branches, h, w), the pipeline of Detector.grid_maps."""
    features = modules["encoder"](inputs)
    if model_type != "bridge":
        return modules["head"](features)
    prior_map, condition = modules["prior"](features)
    return torch.cat([prior_map, modules["head"](features, modules["fused"](features, condition))], dim=1)


@torch.no_grad()
def export_torch_tensorrt(run: Path, out: Path, precision: str = "fp16", steps: int | None = None,
                          max_batch: int = 8) -> Path:
    """Compile and save the run's modules; returns `out`."""
    if precision not in ("fp32", "fp16"):
        raise EdgeAdError(f"--via torch-tensorrt builds fp32 or fp16, not {precision}")
    torch_tensorrt = _torch_tensorrt()
    record, checkpoint, val_inputs = load_run(run)
    model = _Model(record, checkpoint)
    steps = bridge_steps(model.type, steps)
    eager = _modules(model, steps)
    image = torch.from_numpy(val_inputs[:1]).cuda()
    examples = {"encoder": (image,)}
    features = eager["encoder"](image)
    if model.type == "bridge":
        _, condition = eager["prior"](features)
        examples.update(prior=(features,), fused=(features, condition), head=(features, features))
    else:
        examples["head"] = (features,)
    out.mkdir(parents=True, exist_ok=True)
    precisions = {torch.float16, torch.float32} if precision == "fp16" else {torch.float32}
    compiled, files = {}, {}
    for name, module in eager.items():
        inputs = [torch_tensorrt.Input(min_shape=(1, *t.shape[1:]), opt_shape=(1, *t.shape[1:]),
                                       max_shape=(max_batch, *t.shape[1:]), dtype=t.dtype)
                  for t in examples[name]]
        # The distance modules stay FP32 as in the ONNX path: GMM logits overflow FP16.
        reduced = precisions if name in ("encoder", "fused") else {torch.float32}
        compiled[name] = torch_tensorrt.compile(module, ir="dynamo", arg_inputs=inputs, enabled_precisions=reduced)
        files[name] = f"{name}.ep"
        torch_tensorrt.save(compiled[name], str(out / files[name]), arg_inputs=list(examples[name]))
    batch = torch.from_numpy(val_inputs[:PARITY_IMAGES]).cuda()
    reference, result = _maps(eager, model.type, batch), _maps(compiled, model.type, batch)
    diff = (reference - result).abs()
    parity = {
        "images": int(len(batch)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(diff.max() / reference.abs().max()),
    }
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run.resolve()),
        "model": model.type,
        "bridge_steps": steps if model.type == "bridge" else None,
        "precision": precision,
        "max_batch": max_batch,
        "gpu": torch.cuda.get_device_name(0),
        "versions": {"torch": torch.__version__, "torch_tensorrt": torch_tensorrt.__version__},
        "files": files,
        "parity_torch_tensorrt_vs_eager": parity,
    }
    write_yaml_atomic(out / "torch_tensorrt.yaml", report)
    print(yaml.safe_dump({"parity_torch_tensorrt_vs_eager": parity}, sort_keys=False).strip())
    return out
