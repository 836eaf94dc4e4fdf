"""A new model put on the line without stopping `edge-ad run`.

A bundle replaced on disk (a symbolic link pointed at a new export, an archive copied over the
old one) is read in at the next SIGHUP, as calibrations are: the run loads it in a thread while
it goes on scoring with the bundle it has, and takes it in between two frames. A bundle that
cannot be loaded (half copied, broken, for another GPU) is named in the log, and the sources
keep the one they have. Engines built for a bundle in use (`edge-ad build`) are taken the same
way.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from .bundle import bundle_yaml, file_sha256
from .errors import EdgeAdError
from .streams import Stream, bundle_of
from .variants import AnyDetector, detectors_by_variant, load_detector, parse_variants

log = logging.getLogger("edge_ad.bundles")

Specs = tuple[str, ...]  # 'BUNDLE', or 'NAME=BUNDLE' per product variant


@dataclass(frozen=True)
class BundlePaths:
    """Where each stream's bundles are (its own `bundle:`, else `default`, --bundle) and how they
    are loaded (`options` for Detector.load: backend, steps, spin, dla_core)."""

    default: Specs = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def of(self, stream: Stream) -> Specs:
        return bundle_of(stream, self.default)

    def load(self, specs: Specs) -> AnyDetector:
        return load_detector(specs, **self.options)


def changed_on_disk(specs: Specs, detector: AnyDetector) -> list[str]:
    """The bundles of `specs` whose bundle.yaml on disk is no longer the one `detector` was loaded
    from (its graphs' hashes are in it, so a new export always changes it), or for which engines
    were built since (the first engines of a bundle ONNX Runtime has been running, say)."""
    changed = []
    for path, one in zip(parse_variants(specs).values(), detectors_by_variant(detector).values()):
        now = bundle_yaml(path)
        if now.parent != one.bundle.root or file_sha256(now) != one.bundle.sha256 or one.engines_changed():
            changed.append(str(path))
    return changed


def _backends(detector: AnyDetector) -> str:
    """What runs the graphs (without engines built for a bundle, ONNX Runtime: say so on a Jetson)."""
    return ", ".join(sorted({d.backend for d in detectors_by_variant(detector).values()}))


class BundleSwap:
    """Bundles changed on disk, loaded again in a thread: `ask` (the scoring loop, at SIGHUP)
    starts it with the detectors in use, `take` (the loop, every turn) hands over what it loaded."""

    def __init__(self, paths: BundlePaths):
        self.paths = paths
        self._loaded: queue.SimpleQueue[dict[Specs, AnyDetector]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def ask(self, in_use: Mapping[Specs, AnyDetector]) -> None:
        if self._worker is not None and self._worker.is_alive():
            log.warning("bundles: still loading those asked for before; not looking again now")
            return
        self._worker = threading.Thread(target=self._load, args=(dict(in_use),), daemon=True, name="bundle load")
        self._worker.start()

    def _load(self, in_use: dict[Specs, AnyDetector]) -> None:
        loaded = {}
        for specs, detector in in_use.items():
            try:
                changed = changed_on_disk(specs, detector)
                if changed:
                    log.info("bundles: %s changed on disk; loading while the run goes on", ", ".join(changed))
                    loaded[specs] = self.paths.load(specs)
                    log.info("bundles: %s loaded, run by %s", " ".join(specs), _backends(loaded[specs]))
            except (EdgeAdError, OSError) as exc:  # half copied, broken, built for another GPU
                log.error("bundles: %s not loaded, its sources keep the bundle they have: %s", " ".join(specs), exc)
            except Exception:  # a fault of edge-ad's own: said, and the run goes on with the bundles in use
                log.exception("bundles: %s not loaded, its sources keep the bundle they have", " ".join(specs))
        if loaded:
            self._loaded.put(loaded)

    def take(self) -> dict[Specs, AnyDetector]:
        """Bundles loaded since the last call, by specs; usually none (the loop asks every turn:
        a look, not a raised and caught queue.Empty)."""
        return {} if self._loaded.empty() else self._loaded.get_nowait()
