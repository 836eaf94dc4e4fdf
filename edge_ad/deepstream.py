"""DeepStream: scoring the raw maps that Gst-nvinfer attaches to each frame.

`edge-ad deepstream --bundle B` writes the bundle as one network with an nvinfer config
(`export/deepstream.py`). nvinfer runs it and attaches its output, the raw maps on the feature
grid, to every frame as tensor meta. In a pad probe after nvinfer (examples/deepstream_probe.py):

    scorer = DeepStreamScorer("bundle")   # or ["mono=bundle-mono", "poly=bundle-poly"]
    result = scorer(frame_meta)           # the Detector's Result, or None for a frame not inferred

with the bundle's quantiles, its site calibration and its threshold (or each camera's own
calibration, `calibrations=`, by the frame's source_id). With one bundle per product
variant, the i-th bundle's network runs in the nvinfer element with unique-id i, and the result
is that of the variant to which the frame looks most normal, as with `edge-ad run`. pyds
(DeepStream's Python bindings) is imported only here, when a frame is read.
"""

from __future__ import annotations

import configparser
import ctypes
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import load_bundle, site_calibrated
from .detector import MapScorer, Result
from .errors import EdgeAdError
from .masks import InspectionMask
from .variants import check_comparable, parse_variants, pick_variant

DEEPSTREAM_DIR = "deepstream"  # in a bundle folder: what `edge-ad deepstream` writes
MODEL_FILE = "edge_ad.onnx"
CONFIG_FILE = "config_infer_edge_ad.txt"
OUTPUT = "grid_maps"  # the output tensor of that network
LAYER_DTYPES = {0: np.float32, 1: np.float16}  # NvDsInferDataType FLOAT, HALF


def engine_name(precision: str, batch_size: int = 1) -> str:
    """The name nvinfer gives an engine it builds from MODEL_FILE for up to `batch_size` frames on GPU 0."""
    return f"{MODEL_FILE}_b{batch_size}_gpu0_{precision}.engine"


def missing_engine(config: Path) -> str | None:
    """The engine file that an nvinfer config names and that is not beside it, or None."""
    parser = configparser.ConfigParser()
    try:
        parser.read(config)
        engine = parser.get("property", "model-engine-file", fallback=None)
    except configparser.Error as exc:
        raise EdgeAdError(f"{config}: not a readable nvinfer config ({str(exc).splitlines()[0]})") from exc
    return engine if engine and not (config.parent / engine).is_file() else None


def layer_array(layer: Any, address: int) -> np.ndarray:
    """An nvinfer output layer (NvDsInferLayerInfo: layerName, dataType, inferDims without the
    batch) whose data lie at `address`, copied into a float32 array of its dims."""
    dtype = LAYER_DTYPES.get(int(layer.dataType))
    if dtype is None:
        raise EdgeAdError(f"nvinfer output '{layer.layerName}': data type {int(layer.dataType)}, expected FLOAT or HALF")
    dims = tuple(int(layer.inferDims.d[i]) for i in range(layer.inferDims.numDims))
    size = int(np.prod(dims)) * np.dtype(dtype).itemsize
    data = (ctypes.c_char * size).from_address(address)
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(np.float32)  # a copy: nvinfer reuses its buffer


def frame_grid_maps(frame_meta: Any, unique_id: int = 1) -> np.ndarray | None:
    """The raw grid maps (branches, h, w) that the nvinfer element with gie-unique-id `unique_id`
    attached to one frame (pyds NvDsFrameMeta), or None when it attached none (a skipped frame)."""
    import pyds

    item = frame_meta.frame_user_meta_list
    while item is not None:
        user_meta = pyds.NvDsUserMeta.cast(item.data)
        if user_meta.base_meta.meta_type == pyds.NvDsMetaType.NVDSINFER_TENSOR_OUTPUT_META:
            tensor_meta = pyds.NvDsInferTensorMeta.cast(user_meta.user_meta_data)
            if tensor_meta.unique_id == unique_id:
                for i in range(tensor_meta.num_output_layers):
                    layer = pyds.get_nvds_LayerInfo(tensor_meta, i)
                    if layer.layerName == OUTPUT:
                        return layer_array(layer, pyds.get_ptr(layer.buffer))
        try:
            item = item.next
        except StopIteration:
            break
    return None


class DeepStreamScorer:
    """Results for frames whose edge-ad network nvinfer ran: one bundle, or one per product
    variant ('NAME=BUNDLE', as `edge-ad run` takes them), the i-th read from the nvinfer element
    with unique-id i. `steps`: the K the networks were written with (`deepstream --steps`).
    `calibrations`: per camera, in nvstreammux pad order (the frames' source_id), the folder of
    its own site calibration (`calibration:` in --sources, NAME/ per variant), or None for the
    bundle's; a folder without a calibration that fits is warned about and the bundle's used."""

    def __init__(
        self, bundles: str | Sequence[str], steps: int | None = None,
        calibrations: Sequence[str | Path | None] = (),
    ) -> None:
        self.scorers = {name: MapScorer(load_bundle(path, steps)) for name, path in parse_variants(bundles).items()}
        self.cameras: dict[int, dict[str, MapScorer]] = {}  # by source_id, where a camera has its own calibration
        for source_id, folder in enumerate(calibrations):
            if folder is not None:
                self.cameras[source_id] = self._calibrated(source_id, Path(folder))
        for scorers in (self.scorers, *self.cameras.values()):
            if len(scorers) > 1:
                check_comparable({name: scorer.bundle for name, scorer in scorers.items()})

    def _calibrated(self, source_id: int, folder: Path) -> dict[str, MapScorer]:
        scorers = {}
        for name, scorer in self.scorers.items():
            bundle, problem = site_calibrated(scorer.bundle, folder / name if len(self.scorers) > 1 else folder)
            if problem is not None:
                warnings.warn(f"camera {source_id}: {problem}; it is scored with the bundle's own numbers")
            scorers[name] = MapScorer(bundle)
        return scorers

    def score(
        self, grids: Sequence[np.ndarray], frame_shape: tuple[int, ...], mask: InspectionMask | None = None,
        source_id: int | None = None,
    ) -> Result:
        """One frame's raw grid maps, one (branches, h, w) array per bundle in order -> its Result
        (within `mask`, an inspection mask in the source frame's pixels, if given), by camera
        `source_id`'s own calibration where it has one."""
        scorers = self.cameras.get(source_id, self.scorers)
        results = {name: scorer.score_grids(grid[None], [frame_shape], masks=[mask])[0]
                   for (name, scorer), grid in zip(scorers.items(), grids, strict=True)}
        if len(results) == 1:
            return next(iter(results.values()))
        return pick_variant(results, {name: scorer.bundle for name, scorer in scorers.items()})

    def __call__(self, frame_meta: Any, mask: InspectionMask | None = None) -> Result | None:
        """The Result of one frame (pyds NvDsFrameMeta), within `mask` if given, or None when a
        network left it out."""
        grids = [frame_grid_maps(frame_meta, unique_id) for unique_id in range(1, len(self.scorers) + 1)]
        if any(grid is None for grid in grids):
            return None
        shape = (frame_meta.source_frame_height, frame_meta.source_frame_width)
        return self.score(grids, shape, mask, frame_meta.source_id)
