"""edge-ad: visual anomaly detection next to factory cameras (runtime; never imports torch)."""

import os

__version__ = "0.1.0"

# Recent Linux wheels of ONNX Runtime (1.32 here) send usage telemetry to Microsoft (DNS lookups while
# frames are scored, a device ID kept under ~/.cache) unless this is set before onnxruntime is
# imported: a device on a plant network does not call out. Someone's own setting stands.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .bundle import Bundle, load_bundle  # noqa: E402
from .detector import Detector, MapScorer, Result  # noqa: E402
from .errors import EdgeAdError  # noqa: E402
from .masks import InspectionMask  # noqa: E402
from .variants import VariantDetector, load_detector  # noqa: E402

__all__ = [
    "Bundle", "Detector", "EdgeAdError", "InspectionMask", "MapScorer", "Result", "VariantDetector", "__version__",
    "load_bundle", "load_detector",
]
