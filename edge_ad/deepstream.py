"""DeepStream: scoring the raw maps that Gst-nvinfer attaches to each frame.

`edge-ad deepstream --bundle B` writes the bundle as one network with an nvinfer config
(`export/deepstream.py`). nvinfer runs it and attaches its output, the raw maps on the feature
grid, to every frame as tensor meta. In a pad probe after nvinfer (examples/deepstream_probe.py):

    scorer = MapScorer(load_bundle("bundle"))   # quantiles, site calibration, threshold
    grids = frame_grid_maps(frame_meta)         # (branches, h, w), or None
    result = scorer.score_grids(grids[None], [(frame_meta.source_frame_height, frame_meta.source_frame_width)])[0]

gives the Detector's Result: score, map, is_anomaly. pyds (DeepStream's Python bindings) is
imported only here, when a frame is read.
"""

from __future__ import annotations

import configparser
import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeAdError

DEEPSTREAM_DIR = "deepstream"  # in a bundle folder: what `edge-ad deepstream` writes
MODEL_FILE = "edge_ad.onnx"
CONFIG_FILE = "config_infer_edge_ad.txt"
OUTPUT = "grid_maps"  # the output tensor of that network
LAYER_DTYPES = {0: np.float32, 1: np.float16}  # NvDsInferDataType FLOAT, HALF


def engine_name(precision: str) -> str:
    """The name nvinfer gives an engine it builds from MODEL_FILE (batch 1, GPU 0)."""
    return f"{MODEL_FILE}_b1_gpu0_{precision}.engine"


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
