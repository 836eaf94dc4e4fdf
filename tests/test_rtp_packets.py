"""The codec of an RTP stream, told from its packets' first bytes (edge_ad.rtp_packets)."""

from __future__ import annotations

import pytest

from edge_ad.rtp_packets import HEADS, video_codec
from edge_ad.sources import load_gst


def _packets(encode: str, count: int = 200) -> tuple[list[bytes], int]:
    """The first two bytes of the payloads of the first `count` RTP packets that `encode` (an
    encoder and its payloader) makes of noise, and their payload type."""
    import gi

    Gst = load_gst()  # before GStreamer's libraries come in any other way (see there)
    gi.require_version("GstRtp", "1.0")
    from gi.repository import GstRtp

    for element in encode.replace("!", " ").split():
        if "=" not in element and Gst.ElementFactory.find(element) is None:
            pytest.skip(f"{element} is not installed")
    pipeline = Gst.parse_launch(f"videotestsrc num-buffers=30 pattern=snow ! video/x-raw,format=I420,width=320,"
                                f"height=240 ! {encode} ! appsink name=sink sync=false")
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    heads, payload_type = [], None
    try:
        while len(heads) < count and (sample := sink.try_pull_sample(10 * Gst.SECOND)) is not None:
            ok, packet = GstRtp.RTPBuffer.map(sample.get_buffer(), Gst.MapFlags.READ)
            assert ok
            heads.append(bytes(packet.get_payload().get_data()[:2]))
            payload_type = packet.get_payload_type()
            packet.unmap()
    finally:
        pipeline.set_state(Gst.State.NULL)
    assert len(heads) >= HEADS
    return heads, payload_type


@pytest.mark.parametrize("encode, codec", [
    # Small packets: most are fragments (FU-A, FU), whose first byte is what sets the codecs apart.
    ("x264enc tune=zerolatency bitrate=4000 ! rtph264pay mtu=200 config-interval=-1", "h264"),
    ("x264enc tune=zerolatency bitrate=300 ! rtph264pay pt=97", "h264"),
    ("x265enc tune=zerolatency speed-preset=ultrafast bitrate=4000 ! rtph265pay mtu=200", "h265"),
    ("x265enc tune=zerolatency speed-preset=ultrafast bitrate=300 ! rtph265pay config-interval=-1", "h265"),
    ("x264enc tune=zerolatency ! mpegtsmux ! rtpmp2tpay", "mpegts"),  # 0x47, as an H.264 SPS: told by type 33
    ("jpegenc ! rtpjpegpay", "mjpeg"),  # type 26
    ("jpegenc ! rtpjpegpay pt=96", None),
    ("vp8enc deadline=1 ! rtpvp8pay", None),
])
def test_the_codec_of_real_rtp_packets(encode, codec):
    heads, payload_type = _packets(encode)
    assert video_codec(heads, payload_type) == codec
    few = video_codec(heads[: HEADS - 1], payload_type)  # too few to say, but a static type says it at once
    assert few == (codec if codec in ("mpegts", "mjpeg") else None)


def test_a_mix_of_codecs_is_neither():
    h264, _ = _packets("x264enc tune=zerolatency ! rtph264pay mtu=200")
    h265, _ = _packets("x265enc tune=zerolatency speed-preset=ultrafast ! rtph265pay mtu=200")
    assert video_codec(h264[:HEADS // 2] + h265[:HEADS // 2], 96) is None
