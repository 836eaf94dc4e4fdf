"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis: Aravis's own simulated GigE Vision
camera (arv-fake-gv-camera-0.8) on 127.0.0.1 streams real GVSP packets to aravissrc."""

import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import frames_within

from edge_ad.detector import Detector
from edge_ad.doctor import Report, _check_source
from edge_ad.errors import SourceError
from edge_ad.pipelines import SourceOptions, source_pipeline
from edge_ad.runner import RunConfig, run
from edge_ad.sources import GstSource, has_settling_camera, load_gst, open_source
from edge_ad.streams import Stream

FAKE_CAMERA = shutil.which("arv-fake-gv-camera-0.8")
ARV_TOOL = shutil.which("arv-tool-0.8")


def _aravis_plugin() -> bool:
    try:
        return load_gst().ElementFactory.find("aravissrc") is not None
    except Exception:
        return False


needs_camera = pytest.mark.skipif(FAKE_CAMERA is None or not _aravis_plugin(),
                                  reason="Aravis (libaravis-0.8-0, aravis-tools) is not installed")


def _start_camera() -> subprocess.Popen:
    camera = subprocess.Popen([FAKE_CAMERA, "-i", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # it answers discovery and control once its sockets are bound
    return camera


@pytest.fixture
def camera():
    process = _start_camera()
    yield process
    process.kill()
    process.wait()


def test_genicam_pipelines():
    plain = source_pipeline("genicam://Basler-acA1920-40gc-23456789", SourceOptions(width=1920, height=1200),
                            jetson=True)
    assert plain.live and plain.description == (
        'aravissrc camera-name="Basler-acA1920-40gc-23456789" ! video/x-raw,width=1920,height=1200 ! '
        "videoconvert ! video/x-raw,format=BGR ! appsink name=sink")
    bayer = source_pipeline("genicam://", SourceOptions(codec="bayer", flip="rotate-180"), jetson=False)
    assert bayer.description == ("aravissrc ! video/x-bayer ! bayer2rgb ! videoconvert ! video/x-raw,format=BGR ! "
                                 "videoflip video-direction=180 ! appsink name=sink")
    with pytest.raises(SourceError, match="codec 'h264' is not supported for this source"):
        source_pipeline("genicam://cam", SourceOptions(codec="h264"))
    fixed = source_pipeline("genicam://cam?exposure=5000&gain=0&feature=BalanceWhiteAuto=Off&feature=GammaEnable=0")
    assert fixed.description.startswith('aravissrc camera-name="cam" exposure=5000.0 gain=0.0 '
                                        'features="BalanceWhiteAuto=Off GammaEnable=0" ! ')
    # A camera left to expose or balance white by itself settles after its start (sources.settling).
    assert not fixed.settles and not plain.settles  # aravissrc's own exposure-auto and gain-auto are off
    for automatic in ("ExposureAuto=Continuous", "GainAuto=Once", "BalanceWhiteAuto=continuous"):
        assert source_pipeline(f"genicam://cam?feature={automatic}").settles
    for uri, error in (("genicam://cam?exposure=0", "exposure must be a number above 0, got '0'"),
                       ("genicam://cam?gain=high", "gain must be a number 0 or more, got 'high'"),
                       ("genicam://cam?exposure=nan", "exposure must be a number above 0, got 'nan'"),
                       ("genicam://cam?feature=Off", "feature 'Off' is not NAME=VALUE"),
                       ("genicam://cam?fps=5", r"unknown settings \['fps'\]")):
        with pytest.raises(SourceError, match=error):
            source_pipeline(uri)


@pytest.mark.skipif(not _aravis_plugin(), reason="Aravis's GStreamer plugin (libaravis-0.8-0) is not installed")
def test_ones_own_aravissrc_pipeline_settles_where_the_camera_exposes_by_itself():
    """calibrate and record pass over the first frames of one's own --pipeline too where its
    aravissrc leaves the camera to expose, gain or balance white by itself (sources.settling)."""
    Gst = load_gst()
    for description, settles in [("aravissrc exposure=5000", False), ("aravissrc exposure-auto=on", True),
                                 ("aravissrc gain-auto=once", True),
                                 ('aravissrc features="BalanceWhiteAuto=Continuous"', True),
                                 ('aravissrc features="ExposureAuto=Off GammaEnable=0"', False)]:
        assert has_settling_camera(Gst.parse_launch(f"{description} ! videoconvert ! appsink name=sink")) == settles


def test_a_pixel_format_set_as_a_feature_is_asked_for_in_the_caps(caplog):
    """aravissrc picks the frames' format from its caps, then sets the features: PixelFormat=RGB8
    after GRAY8 was picked came as grey noise. Its caps make both agree; formats that cannot be
    read so are refused (Mono10/12/14) or said (one edge-ad does not know, or for the other codec)."""
    caps = {uri: source_pipeline(uri, SourceOptions(codec=codec, width=640)).description.split(" ! ")[1]
            for uri, codec in [("genicam://cam?feature=PixelFormat=Mono8", None),
                               ("genicam://cam?feature=PixelFormat=RGB8Packed", "raw"),
                               ("genicam://cam?feature=PixelFormat=Mono12&feature=PixelFormat=Mono16", None),
                               ("genicam://cam?feature=PixelFormat=BayerGB8", "bayer")]}
    assert list(caps.values()) == ["video/x-raw,format=GRAY8,width=640", "video/x-raw,format=RGB,width=640",
                                   "video/x-raw,format=GRAY16_LE,width=640", "video/x-bayer,format=gbrg,width=640"]
    for feature, white in [("Mono12", 15), ("Mono10", 3), ("Mono14p", 63)]:
        with pytest.raises(SourceError, match=f"PixelFormat={feature} cannot be read: .* white at {white} of 255"):
            source_pipeline(f"genicam://cam?exposure=5000&feature=PixelFormat={feature}")
    for uri, codec, said in [("genicam://cam?feature=PixelFormat=BayerRG8", None, "is the sensor's Bayer mosaic"),
                             ("genicam://cam?feature=PixelFormat=RGB8", "bayer", "is not a Bayer mosaic"),
                             ("genicam://cam?feature=PixelFormat=Coord3D_C16", None, "is none of those edge-ad reads")]:
        spec = source_pipeline(uri, SourceOptions(codec=codec))
        assert said in spec.note and "format=" not in spec.description.split(" ! ")[1]  # the caps as before
    assert source_pipeline("genicam://cam").note is None
    with caplog.at_level("WARNING", logger="edge_ad.sources"), pytest.raises(SourceError, match="cam"):
        GstSource("genicam://cam?feature=PixelFormat=BayerRG8")  # no such camera here: said before it is looked for
    assert "PixelFormat=BayerRG8 is the sensor's Bayer mosaic" in caplog.text
    report = Report()
    _check_source(report, Stream("genicam://cam?feature=PixelFormat=BayerRG8", "side"), jetson=False, root=Path("/"))
    assert report.problems[0].startswith("source side: genicam://cam?feature=PixelFormat=BayerRG8: PixelFormat=")
    _check_source(report, Stream("genicam://cam?feature=PixelFormat=Mono12"), jetson=False, root=Path("/"))
    assert report.problems[1].startswith("source genicam://cam?feature=PixelFormat=Mono12: PixelFormat=Mono12 cannot")


@needs_camera
def test_a_camera_set_to_colour_by_a_feature_gives_colour_frames(camera):
    """The simulated camera's Mono8 and Mono16 frames are grey diagonal stripes, its RGB8 ones
    coloured stripes. Before, RGB8 and Mono16 came as grey noise."""
    def first(uri: str) -> np.ndarray:
        (frame,) = frames_within(open_source(uri, SourceOptions(timeout_s=5)), 1, 10)
        return frame.image.astype(int)

    grey, deep, colour = (first("genicam://127.0.0.1" + query)
                          for query in ("", "?feature=PixelFormat=Mono16", "?feature=PixelFormat=RGB8"))
    for image in (grey, deep, colour):
        assert np.abs(np.diff(image, axis=1)).mean() < 10  # smooth stripes, not noise
    for image in (grey, deep):
        assert np.abs(image[..., 0] - image[..., 2]).max() <= 1  # grey (videoconvert dithers 16 bits to 8)
    assert np.abs(colour[..., 0] - colour[..., 2]).mean() > 50


@needs_camera
def test_a_gige_camera_is_scored_at_the_size_and_rate_asked(camera, tiny_bundle, tmp_path):
    source = open_source("genicam://127.0.0.1", SourceOptions(width=160, height=120, framerate=20))
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 5:
            break
    source.close()
    assert all(f.image.shape == (120, 160, 3) for f in frames) and source.fps == 20
    assert [f.index for f in frames] == sorted({f.index for f in frames})  # numbered in order, none twice

    events = tmp_path / "events.jsonl"
    summary = run(Detector.load(tiny_bundle), [Stream("genicam://127.0.0.1", "line1")],
                  RunConfig(events=events, max_frames=10))
    (stats,) = summary.sources
    assert stats.frames == 10 and stats.error is None
    assert len(events.read_text().splitlines()) == 10


@needs_camera
@pytest.mark.skipif(ARV_TOOL is None, reason="arv-tool-0.8 (aravis-tools-cli) is not installed")
def test_exposure_gain_and_features_reach_the_camera(camera):
    """What an automatic exposure would change from part to part is fixed on the camera itself:
    read back from it with Aravis's own tool while edge-ad streams."""
    source = open_source("genicam://127.0.0.1?exposure=5000&gain=2&feature=TestRegister=42")
    next(iter(source.frames()))
    read = subprocess.run([ARV_TOOL, "-a", "127.0.0.1", "control", "ExposureTimeAbs", "GainRaw", "TestRegister"],
                          capture_output=True, text=True, timeout=10).stdout
    source.close()
    assert "ExposureTimeAbs = 5000" in read and "GainRaw = 2" in read and "TestRegister = 42" in read


@needs_camera
def test_a_camera_that_goes_away_is_reconnected():
    camera = _start_camera()
    source = open_source("genicam://127.0.0.1", SourceOptions(width=128, height=96, framerate=20, timeout_s=1.0))
    start, arrivals, stop = time.monotonic(), [], threading.Event()

    def unplug_and_plug_back():
        nonlocal camera
        time.sleep(1.5)
        camera.kill()
        camera.wait()
        time.sleep(2.0)
        camera = _start_camera()

    helper = threading.Thread(target=unplug_and_plug_back)
    helper.start()
    deadline = threading.Timer(30.0, stop.set)  # a camera that never comes back ends the test, failed
    deadline.start()
    try:
        for _ in source.frames(stop):
            arrivals.append(time.monotonic() - start)
            if arrivals[-1] > 3.5 and len([t for t in arrivals if t > 3.5]) >= 10:
                break  # ten frames after the camera came back
    finally:
        deadline.cancel()
        source.close()
        helper.join()
        camera.kill()
        camera.wait()
    assert source.reconnects >= 1
    assert max(b - a for a, b in zip(arrivals, arrivals[1:])) > 1.0  # the gap while it was away
    assert len([t for t in arrivals if t > 3.5]) >= 10


@needs_camera
def test_an_unknown_camera_is_named():
    with pytest.raises(SourceError, match=r'genicam://line-camera-7: .*Could not find camera "line-camera-7"'):
        open_source("genicam://line-camera-7")
