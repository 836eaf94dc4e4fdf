"""edge-ad: visual anomaly detection next to factory cameras (runtime; never imports torch)."""

__version__ = "0.1.0"

from .bundle import Bundle, load_bundle  # noqa: E402
from .detector import Detector, MapScorer, Result  # noqa: E402
from .errors import EdgeAdError  # noqa: E402
from .masks import InspectionMask  # noqa: E402
from .variants import VariantDetector, load_detector  # noqa: E402

__all__ = [
    "Bundle", "Detector", "EdgeAdError", "InspectionMask", "MapScorer", "Result", "VariantDetector", "__version__",
    "load_bundle", "load_detector",
]
