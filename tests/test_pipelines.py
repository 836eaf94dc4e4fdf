"""Pipeline descriptions per URI and per platform (Jetson NVMM elements or generic ones)."""

import re

import pytest

from edge_ad.errors import SourceError
from edge_ad.pipelines import SourceOptions, local_path, login_escaped, output_pipeline, rtsp_launch, source_pipeline
from edge_ad.sources import with_hint

from conftest import edge_ad


def test_test_pattern_is_live_with_size_and_rate_from_the_uri():
    spec = source_pipeline("test://ball?width=320&height=240&fps=15", jetson=False)
    assert spec.live
    assert spec.description.startswith("videotestsrc is-live=true pattern=ball ! ")
    assert "width=320,height=240,framerate=15/1" in spec.description
    assert spec.description.endswith("video/x-raw,format=BGR ! appsink name=sink")


@pytest.mark.parametrize(
    "uri, options, generic, jetson",
    [
        ("rtsp://cam/stream", SourceOptions(latency_ms=100), "rtph264depay ! h264parse ! avdec_h264 ! videoconvert",
         "rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx"),
        ("rtsp://cam/stream", SourceOptions(codec="h265"), "rtph265depay ! h265parse ! avdec_h265",
         "h265parse ! nvv4l2decoder"),
        ("rtsp://cam/stream", SourceOptions(codec="mjpeg"), "rtpjpegdepay ! jpegparse ! jpegdec ! videoconvert",
         "rtpjpegdepay ! jpegparse ! nvv4l2decoder mjpeg=1 ! nvvidconv"),
        ("rtp://@:5000", SourceOptions(), "udpsrc port=5000 buffer-size=8388608 caps=",
         "rtpjitterbuffer latency=200 ! rtph264depay"),
        ("rtp://@:5000", SourceOptions(codec="mjpeg"), "encoding-name=JPEG\" ! rtpjitterbuffer latency=200 ! "
         "rtpjpegdepay ! jpegparse ! jpegdec", "rtpjpegdepay ! jpegparse ! nvv4l2decoder mjpeg=1 ! nvvidconv"),
        ("/dev/video1", SourceOptions(codec="mjpeg", width=1280, height=720, framerate=30),
         'v4l2src device="/dev/video1" ! image/jpeg,width=1280,height=720,framerate=30/1 ! jpegparse ! jpegdec',
         "jpegparse ! nvv4l2decoder mjpeg=1 ! nvvidconv"),
        ("v4l2:///dev/video0", SourceOptions(), 'v4l2src device="/dev/video0" ! video/x-raw ! videoconvert',
         'v4l2src device="/dev/video0" ! video/x-raw ! videoconvert'),
    ],
)
def test_live_sources_use_nvmm_elements_only_on_a_jetson(uri, options, generic, jetson):
    on_pc, on_jetson = source_pipeline(uri, options, jetson=False), source_pipeline(uri, options, jetson=True)
    assert on_pc.live and on_jetson.live
    assert generic in on_pc.description and "nv" not in on_pc.description.replace("videoconvert", "")
    assert jetson in on_jetson.description
    assert on_pc.description.endswith("appsink name=sink") and on_jetson.description.endswith("appsink name=sink")


def test_a_login_typed_as_is_is_escaped_and_nothing_else():
    assert login_escaped("rtsp://admin:p@ss#1@10.0.0.5:554/Streaming/101?t=1") == \
        "rtsp://admin:p%40ss%231@10.0.0.5:554/Streaming/101?t=1"
    assert login_escaped("http://admin:a b?c@cam/mjpg") == "http://admin:a%20b%3Fc@cam/mjpg"
    # A / in a password was taken for the path's start: no login, and rtspsrc's "Could not open resource".
    assert login_escaped("rtsp://admin:pa/ss@10.0.0.5/Streaming/101") == "rtsp://admin:pa%2Fss@10.0.0.5/Streaming/101"
    assert login_escaped("rtsp://admin:p#1/x@cam:554/s") == "rtsp://admin:p%231%2Fx@cam:554/s"
    for left in ("rtsp://admin:p%40ss@cam/x", "rtsp://10.0.0.5:554/x@y#z", "rtsp://admin@cam/x", "file:///a/b:c@d#e",
                 "/data/a:b@c#d.mp4", "test://ball?width=64", "genicam://Basler-a1@b", "http://cam:8080/x?to=a@b.c/",
                 "http://cam/x?mail=a@b.c"):
        assert login_escaped(left) == left


def test_rtsp_latency_and_csi_camera():
    rtsp = source_pipeline("rtsp://cam/s", SourceOptions(latency_ms=100), jetson=False).description
    assert "latency=100 drop-on-latency=true udp-buffer-size=8388608 !" in rtsp  # rtspsrc picks the transport
    tcp = source_pipeline("rtsp://cam/s", SourceOptions(transport="tcp"), jetson=False).description
    assert "drop-on-latency=true protocols=tcp !" in tcp
    # MJPEG over TCP unless UDP is asked for: one packet lost over UDP loses a whole picture
    assert " protocols=tcp !" in source_pipeline("rtsp://cam/s", SourceOptions(codec="mjpeg")).description
    udp = source_pipeline("rtsp://cam/s", SourceOptions(codec="mjpeg", transport="udp")).description
    assert " protocols=udp " in udp and "tcp" not in udp
    # RTSPS over TCP too: the video inside the TLS connection (rtspsrc took UDP, which anyone could read)
    assert " protocols=tcp !" in source_pipeline("rtsps://cam/s", jetson=False).description
    csi = source_pipeline("csi://1", jetson=True).description
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720")


def test_a_latency_that_would_stop_the_frames_is_refused_naming_the_source():
    """rtpjitterbuffer holds an RTP stream's first packets for its latency: at 10000 ms with the
    5 s timeout no frame came in 25 s, only reconnections (4500 ms gave frames). rtspsrc did not
    hold them (frames at once at 10000 ms), so RTSP keeps any latency GStreamer can take, said
    over UDP, where a lost packet held the frames after it for the latency (2 % lost: 63 frames
    in 30 s, a reconnection every 7 s; over TCP none is lost); a larger one reached both wrapped
    round (99999999999 ms as about 14 days)."""
    for latency, timeout in [(10000, 5.0), (5000, 5.0), (1000, 0.5)]:
        with pytest.raises(SourceError, match=f"rtp://@:5600: latency {latency} ms is not below the timeout"):
            source_pipeline("rtp://@:5600", SourceOptions(latency_ms=latency, timeout_s=timeout), jetson=False)
    for latency, timeout in [(4999, 5.0), (10000, 0.0)]:  # 0: never reconnects; the first frame waits 10 s
        rtp = source_pipeline("rtp://@:5600", SourceOptions(latency_ms=latency, timeout_s=timeout), jetson=False)
        assert f"rtpjitterbuffer latency={latency} !" in rtp.description
    rtsp = source_pipeline("rtsp://cam/s", SourceOptions(latency_ms=10000, timeout_s=5.0), jetson=False)
    assert "latency=10000 drop-on-latency=true" in rtsp.description
    assert rtsp.note.startswith("rtsp://cam/s: latency 10000 ms is not below the timeout of 5 s: at a packet lost")
    for options in (SourceOptions(latency_ms=10000, timeout_s=5.0, transport="tcp"),  # nothing lost over TCP
                    SourceOptions(latency_ms=4999, timeout_s=5.0), SourceOptions(latency_ms=10000, timeout_s=0.0)):
        assert source_pipeline("rtsp://cam/s", options, jetson=False).note is None
    assert source_pipeline("rtsps://cam/s", SourceOptions(latency_ms=10000, timeout_s=5.0), jetson=False).note is None
    for uri in ("rtsp://cam/s", "rtp://@:5600"):
        too_long = SourceOptions(latency_ms=99999999999, timeout_s=0.0)
        with pytest.raises(SourceError, match=f"{uri}: latency 99999999999 ms is more than GStreamer takes"):
            source_pipeline(uri, too_long, jetson=False)
        assert "latency=4294967295 " in source_pipeline(uri, SourceOptions(latency_ms=2**32 - 1, timeout_s=0.0),
                                                         jetson=False).description


def test_a_turned_camera_is_flipped_by_nvvidconv_on_a_jetson_and_videoflip_elsewhere(tmp_path):
    turned = SourceOptions(flip="clockwise")
    csi = source_pipeline("csi://0", turned, jetson=True).description
    assert "nvvidconv flip-method=clockwise ! video/x-raw,format=BGRx" in csi and "videoflip" not in csi
    rtsp = source_pipeline("rtsp://cam/s", SourceOptions(flip="horizontal"), jetson=False).description
    assert rtsp.endswith("video/x-raw,format=BGR ! videoflip video-direction=horiz ! appsink name=sink")
    assert "flip" not in source_pipeline("rtsp://cam/s", jetson=True).description  # none: nothing added
    # Raw V4L2 frames stay in system memory on a Jetson too: flipped there by videoflip.
    assert "videoflip video-direction=90r" in source_pipeline("/dev/video0", turned, jetson=True).description
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    with pytest.raises(SourceError, match=f"{video}: flip 'upside-down' is not one of none, counterclockwise"):
        source_pipeline(str(video), SourceOptions(flip="upside-down"), jetson=False)


def test_a_failing_csi_camera_says_what_frees_it():
    csi = source_pipeline("csi://0", jetson=True).description
    error = "Failed to create CaptureSession"
    assert with_hint(csi, error) == f"{error} (if the camera keeps failing: sudo systemctl restart nvargus-daemon)"
    rtsp = source_pipeline("rtsp://cam/s", jetson=True).description
    assert with_hint(rtsp, "Could not read from resource. (rtspsrc0)") == "Could not read from resource. (rtspsrc0)"
    assert with_hint(rtsp, "Not found (rtspsrc2)").startswith("Not found (rtspsrc2): the camera answers, but has no "
                                                               "stream at this path")


def test_an_http_camera_is_read_as_mjpeg():
    uri = "http://admin:secret@10.0.0.5/axis-cgi/mjpg/video.cgi"
    spec = source_pipeline(uri, jetson=False)
    assert spec.live and spec.description.startswith(f'souphttpsrc location="{uri}" is-live=true')
    assert "multipartdemux ! image/jpeg ! jpegparse ! jpegdec ! videoconvert" in spec.description
    assert "nvv4l2decoder mjpeg=1 ! nvvidconv" in source_pipeline(uri, jetson=True).description
    with pytest.raises(SourceError, match="codec 'h264' is not supported for this source"):
        source_pipeline(uri, SourceOptions(codec="h264"), jetson=False)
    unanswered = "Internal data stream error. (souphttpsrc2)"
    assert with_hint(spec.description, unanswered) == f"{unanswered}: no answer (is the camera on, and its address " \
                                                      "and port right?)"


def test_a_file_is_not_live(tmp_path):
    video = tmp_path / "line 3.mp4"
    video.write_bytes(b"x")
    spec = source_pipeline(str(video), jetson=False)
    assert not spec.live and f'filesrc location="{video}" ! decodebin' in spec.description


def test_file_uris_are_read_as_file_managers_write_them(tmp_path):
    """Percent-encoded, with or without the host: the same file; a folder too."""
    video = tmp_path / "line 3" / "50% speed.mp4"
    video.parent.mkdir()
    video.write_bytes(b"x")
    uri = video.as_uri()  # file:///.../line%203/50%25%20speed.mp4, as GStreamer and file managers write it
    assert "%20" in uri
    for given in (uri, uri.replace("file://", "file://localhost"), f"file://{video}"):
        assert f'filesrc location="{video}"' in source_pipeline(given, jetson=False).description
    assert local_path(video.parent.as_uri()) == video.parent
    with pytest.raises(SourceError, match="file on host 'nas': give a path on this machine"):
        source_pipeline("file://nas/videos/line3.mp4", jetson=False)
    with pytest.raises(SourceError, match="file://: names no file or folder"):  # not the current folder
        local_path("file://")
    # A raw '#' or '?' ends the URI's path: "line#2.mp4" was looked for as "line", said as no such file.
    hashed = tmp_path / "line#2.mp4"
    hashed.write_bytes(b"x")
    with pytest.raises(SourceError, match=re.escape(f"file://{hashed}: a '#' ends the path of a file:// URI; write it "
                                                    f"%23 (file://{tmp_path}/line%232.mp4), or give the path itself")):
        source_pipeline(f"file://{hashed}", jetson=False)
    assert f'filesrc location="{hashed}"' in source_pipeline(hashed.as_uri(), jetson=False).description  # %23
    with pytest.raises(SourceError, match=r"a '\?' ends the path of a file:// URI; write it %3F \(file:///a%3F.mp4\)"):
        local_path("file:///a?.mp4")
    # Not found: the path the %-escapes stand for, which the URI does not show.
    with pytest.raises(SourceError, match=re.escape(f"{tmp_path.as_uri()}/a%20b%20.mp4: no such file or folder: "
                                                    f"{tmp_path}/a b .mp4")):
        source_pipeline(f"{tmp_path.as_uri()}/a%20b%20.mp4", jetson=False)


@pytest.mark.parametrize(
    "uri, options, message",
    [
        ("csi://0", SourceOptions(), "need a Jetson"),
        ("rtp://@", SourceOptions(), "needs a port"),
        ("rtsp://cam/s", SourceOptions(codec="raw"), "codec 'raw' is not supported"),
        ("rtsp://cam/s", SourceOptions(transport="quic"), "RTSP transport 'quic' is not tcp or udp"),
        ("ftp://cam/stream", SourceOptions(), "unknown source type"),
        ("udp://@:99999", SourceOptions(), "the port is not a number from 0 to 65535"),  # a traceback before
        ("rtp://@:five", SourceOptions(), "the port is not a number from 0 to 65535"),
        ("/nowhere/missing.mp4", SourceOptions(), "no such file"),
        ("1", SourceOptions(), r"no such file.*; a camera by its number is /dev/video1 \(USB, V4L2\) or csi://1"),
        ("test://ball?fps=fast", SourceOptions(), "must be integers"),
        # tried for the whole run before, or a traceback (rtp, udp), from urllib's ValueError
        ("rtsp://[fe80::10/stream1", SourceOptions(), r"not a URI that reads \(an IPv6 address without its '\]'\)"),
        ("rtp://[fe80::10:5004", SourceOptions(), r"not a URI that reads \(an IPv6 address without its '\]'\)"),
        ("rtsp://cam:99999/stream1", SourceOptions(), "the port is not a number from 0 to 65535"),
        ("http://cam:99999/video.mjpg", SourceOptions(), "the port is not a number from 0 to 65535"),
        # passed over, or GStreamer's "could not link"; 0 fps, one frame then a reconnection
        ("test://ball?w=320", SourceOptions(), "test:// takes width, height and fps, not w"),
        ("test://smpte?width=4&height=4", SourceOptions(), "width and height must be 8 to 65536 pixels"),
        ("test://", SourceOptions(width=99999), "width and height must be 8 to 65536 pixels"),
        ("test://?fps=0", SourceOptions(), "fps must be 1 to 1000, not 0"),
        # the process aborted, its memory corrupted by videotestsrc
        ("test://ball?width=10&height=64", SourceOptions(), "the ball pattern needs frames 16 pixels wide or more"),
    ],
)
def test_bad_source_uris_are_named(uri, options, message):
    with pytest.raises(SourceError, match=message) as error:
        source_pipeline(uri, options, jetson=False)
    assert uri.split("?")[0] in str(error.value)


def test_a_uri_urllib_cannot_read_is_named_without_its_password():
    """urllib's ValueError quotes the login of a host it cannot normalise: a traceback before, with
    the camera's password in it."""
    with pytest.raises(SourceError) as error:
        source_pipeline("rtsp://admin:pass\uff03word@cam/s", SourceOptions(), jetson=False)
    assert str(error.value) == ("rtsp://admin:***@cam/s: not a URI that reads (a character in its host or login that "
                                "Unicode normalisation reads as another, as a full-width \uff03)")


def test_a_jetson_without_a_hardware_encoder_encodes_with_x264(monkeypatch):
    monkeypatch.setattr("edge_ad.pipelines.hardware_encoder", lambda: False)  # an Orin Nano
    for out in (output_pipeline("out.mp4", 640, 480, 25, jetson=True), rtsp_launch(640, 480, 25, jetson=True)):
        assert "x264enc tune=zerolatency speed-preset=ultrafast" in out and "nvv4l2h264enc" not in out


def test_output_bitrate_in_each_encoders_unit(monkeypatch):
    monkeypatch.setattr("edge_ad.pipelines.hardware_encoder", lambda: True)
    assert "nvv4l2h264enc insert-sps-pps=true iframeinterval=25 bitrate=1500000 !" in output_pipeline(
        "out.mp4", 640, 480, 25, jetson=True, bitrate_kbps=1500)  # bits per second
    assert "key-int-max=25 bitrate=1500 !" in rtsp_launch(640, 480, 25, jetson=False, bitrate_kbps=1500)  # kbit/s
    assert "bitrate" not in output_pipeline("rtp://10.0.0.2:5004", 640, 480, 25, jetson=False)


def test_outputs_per_platform():
    mp4 = output_pipeline("out.mp4", 640, 480, 25, jetson=False)
    assert mp4.startswith("appsrc name=src is-live=true format=time caps=video/x-raw,format=BGR,width=640,height=480,framerate=25/1")
    assert "x264enc" in mp4
    assert mp4.endswith('mp4mux fragment-duration=1000 ! filesink buffer-mode=unbuffered location="out.mp4"')
    assert "nvv4l2h264enc" in output_pipeline("out.mkv", 640, 480, 25, jetson=True)
    assert "matroskamux" in output_pipeline("out.mkv", 640, 480, 25, jetson=False)
    rtp = output_pipeline("rtp://10.0.0.2:5004", 640, 480, 25, jetson=False)
    assert "rtph264pay config-interval=1 pt=96 ! udpsink host=10.0.0.2 port=5004" in rtp
    assert "autovideosink" in output_pipeline("display://0", 640, 480, 25, jetson=False)
    assert "rtph264pay name=pay0" in rtsp_launch(640, 480, 25, jetson=False)
    for bad, message in (("out.avi", ".mp4 or .mkv"), ("rtp://:5004", "host and a port"), ("ftp://x/y", "unknown output")):
        with pytest.raises(SourceError, match=message):
            output_pipeline(bad, 640, 480, 25, jetson=False)


def test_a_usb_camera_is_taken_by_its_stable_name(tmp_path):
    """udev names each USB camera for good (/dev/v4l/by-id/...), as one's own udev rules do
    (/dev/camera-top): a reboot or a replug can number two cameras the other way round. Such
    names were "no such file, folder or supported source URI"."""
    for name in ("/dev/v4l/by-id/usb-046d_C920_A1B2C3-video-index0", "/dev/v4l/by-path/platform-3610000.usb-video"):
        assert source_pipeline(name, jetson=False).description.startswith(f'v4l2src device="{name}" ! video/x-raw')
    (tmp_path / "camera-top").symlink_to("/dev/null")  # a character device, as a udev rule's link leads to
    assert source_pipeline(str(tmp_path / "camera-top"), jetson=False).description.startswith("v4l2src device=")
    with pytest.raises(SourceError, match="no such file, folder or supported source URI"):
        source_pipeline(str(tmp_path / "camera-gone"), jetson=False)
    v4l2 = source_pipeline("/dev/video0", jetson=False).description
    busy = with_hint(v4l2, "Device '/dev/video0' is busy (v4l2src0)")
    assert busy.endswith("another program has the camera open (another edge-ad run or its service, a viewer): "
                         "fuser -v /dev/video0 names it")
    assert with_hint(v4l2, "Could not open device '/dev/video0' for reading and writing. (v4l2src0)").endswith(
        "is this user in the video group? sudo usermod -aG video $USER, then log in again")



def test_print_pipeline_says_what_run_would_warn_of_the_source():
    """`run --print-pipeline` printed an RTSP source's pipeline over UDP with a latency past the
    timeout without the warning `run` logs as it opens the source."""
    printed = edge_ad("run", "--input", "rtsp://admin:secret@cam/s", "--rtsp-transport", "udp", "--latency", 6000,
                      "--print-pipeline", check=True)
    assert printed.stdout.startswith('rtsp://admin:***@cam/s: rtspsrc location="rtsp://admin:***@cam/s" latency=6000')
    assert "rtsp://admin:***@cam/s: latency 6000 ms is not below the timeout of 5 s" in printed.stderr
    assert "secret" not in printed.stdout + printed.stderr
    quiet = edge_ad("run", "--input", "rtsp://cam/s", "--rtsp-transport", "tcp", "--latency", 6000, "--print-pipeline",
                    check=True)
    assert "latency" not in quiet.stderr  # nothing lost over TCP: nothing to say
