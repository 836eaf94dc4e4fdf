"""Frame sources: GStreamer pipelines (through PyGObject) into an appsink, and image folders.

`test://[pattern]` is videotestsrc, a file path is decoded with decodebin, a folder
of images is read with OpenCV. Frames come out as uint8 BGR, as OpenCV uses them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ImageError, SourceError
from .images import is_image_file, read_image

TEST_SIZE = (640, 480)
TEST_FPS = 30
PULL_TIMEOUT_S = 10.0


@dataclass
class Frame:
    index: int
    timestamp: float  # seconds: stream time for GStreamer sources, wall time for folders
    image: np.ndarray  # uint8 BGR (H, W, 3)
    name: str = ""


def _gst():
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        from gi.repository import Gst, GstApp  # noqa: F401  (GstApp adds AppSink.try_pull_sample)
    except (ImportError, ValueError) as exc:
        raise SourceError(
            "GStreamer Python bindings are missing: install the system GStreamer packages and "
            "pip install 'edge-ad[gst]' (PyGObject)"
        ) from exc
    if not Gst.is_initialized():
        Gst.init(None)
    return Gst


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pipeline_for(uri: str) -> str:
    """The GStreamer pipeline description for a source URI, ending in an appsink named 'sink'."""
    sink = "videoconvert ! video/x-raw,format=BGR ! appsink name=sink"
    if uri.startswith("test://"):
        pattern = uri[len("test://") :] or "smpte"
        width, height = TEST_SIZE
        return (
            f"videotestsrc pattern={pattern} ! "
            f"video/x-raw,width={width},height={height},framerate={TEST_FPS}/1 ! {sink}"
        )
    path = Path(uri)
    if not path.is_file():
        raise SourceError(f"{uri}: no such file, folder or supported source URI")
    return f"filesrc location={_quote(str(path))} ! decodebin ! {sink}"


class GstSource:
    """Pulls every decoded frame from a GStreamer pipeline; offline sources are not throttled."""

    def __init__(self, uri: str):
        Gst = self._Gst = _gst()
        self.uri = uri
        self.description = pipeline_for(uri)
        try:
            self.pipeline = Gst.parse_launch(self.description)
        except Exception as exc:  # GLib.Error carries GStreamer's own message
            raise SourceError(f"{uri}: cannot build pipeline '{self.description}': {exc}") from exc
        self.appsink = self.pipeline.get_by_name("sink")
        if self.appsink is None:
            raise SourceError(f"{uri}: pipeline has no appsink named 'sink'")
        # Files and test patterns: every frame, as fast as inference takes them.
        self.appsink.set_property("sync", False)
        self.appsink.set_property("max-buffers", 2)
        self.appsink.set_property("drop", False)
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.close()
            raise SourceError(f"{uri}: {self._bus_error() or 'pipeline failed to start'}")

    def _bus_error(self) -> str | None:
        message = self.pipeline.get_bus().pop_filtered(self._Gst.MessageType.ERROR)
        if message is None:
            return None
        error, debug = message.parse_error()
        return f"{error.message} ({message.src.get_name()})"

    def _to_array(self, sample) -> np.ndarray:
        structure = sample.get_caps().get_structure(0)
        width, height = structure.get_value("width"), structure.get_value("height")
        buffer = sample.get_buffer()
        ok, info = buffer.map(self._Gst.MapFlags.READ)
        if not ok:
            raise SourceError(f"{self.uri}: cannot map a video buffer")
        try:
            stride = info.size // height  # rows are padded to 4 bytes for odd widths
            rows = np.frombuffer(info.data, np.uint8, count=stride * height).reshape(height, stride)
            return rows[:, : width * 3].reshape(height, width, 3).copy()
        finally:
            buffer.unmap(info)

    def __iter__(self) -> Iterator[Frame]:
        Gst = self._Gst
        index = 0
        try:
            while True:
                sample = self.appsink.try_pull_sample(int(PULL_TIMEOUT_S * Gst.SECOND))
                if sample is None:
                    error = self._bus_error()
                    if error:
                        raise SourceError(f"{self.uri}: {error}")
                    if self.appsink.is_eos():
                        return
                    raise SourceError(f"{self.uri}: no frame for {PULL_TIMEOUT_S:.0f} s")
                pts = sample.get_buffer().pts
                timestamp = pts / Gst.SECOND if pts != Gst.CLOCK_TIME_NONE else time.time()
                yield Frame(index, timestamp, self._to_array(sample), self.uri)
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        self.pipeline.set_state(self._Gst.State.NULL)


class FolderSource:
    """Image files of a folder in name order; unreadable files are reported and skipped."""

    def __init__(self, folder: Path):
        self.uri = str(folder)
        self.files = sorted(p for p in folder.iterdir() if is_image_file(p))
        if not self.files:
            raise SourceError(f"{folder}: no image files in folder")
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for path in self.files:
            try:
                rgb = read_image(path)
            except ImageError as exc:
                self.skipped.append(str(exc))
                continue
            yield Frame(index, time.time(), np.ascontiguousarray(rgb[..., ::-1]), path.name)
            index += 1

    def close(self) -> None:
        """Nothing to release; present so every source can be closed the same way."""


def open_source(uri: str) -> GstSource | FolderSource:
    """A frame source for `test://[pattern]`, a video file or an image folder."""
    if not uri:
        raise SourceError("empty --input")
    if Path(uri).is_dir():
        return FolderSource(Path(uri))
    if "://" in uri and not uri.startswith("test://"):
        raise SourceError(f"{uri}: this source type is not supported yet (use test://, a video file or a folder)")
    return GstSource(uri)
