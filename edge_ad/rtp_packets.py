"""What an `rtp://` source receives, told from its first packets: whether any come at all, and
whether their payload is H.264, H.265 or MJPEG video, or MPEG-TS.

An RTP stream on a bare UDP port describes nothing (no SDP, unlike RTSP), so a sender of H.265
read as H.264 (the default), or a stream sent to another port, gave the same "no frame for N s"
at every reconnection, for ever. The first bytes of each payload tell the two codecs apart: H.264
payloads begin with a one-byte NAL unit header (RFC 6184), H.265 ones with a two-byte one whose
second byte is 1 to 7 for the base layer (RFC 7798). Read as H.265's, an H.264 fragment's header
(28 with its NRI) or single NAL unit (an odd byte) is a type no H.265 stream sends.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

HEADS = 16  # packets looked at: a second of a small stream at 15 frames a second
AGREE = 0.9  # the share of them that must say the same codec
DYNAMIC_TYPES = 96  # RTP payload types from here on are the sender's to give; H.264 and H.265 take one
STATIC_TYPES = {26: "JPEG", 32: "MPEG video", 33: "MPEG-TS"}  # the video ones of RFC 3551
STATIC_CODECS = {26: "mjpeg", 33: "mpegts"}  # those read, by their --input-codec name

# NAL unit types an H.265 stream sends as the first of its payload (RFC 7798: slices 0-9 and
# 16-21, parameter sets, delimiters and SEI 32-40, aggregation packets 48, fragments 49) and an
# H.264 one (RFC 6184: slices 1 and 5, SEI, parameter sets, delimiters and fillers 6-12, STAP-A
# 24, FU-A 28; not the data partitions 2-4 of the Extended profile, which nothing encodes, and
# which H.265's fragments and most of its slices would be, read as H.264).
H265_TYPES = frozenset([*range(10), *range(16, 22), *range(32, 41), 48, 49])
H264_TYPES = frozenset([1, *range(5, 13), 24, 28])


def _h265(head: bytes) -> bool:
    return len(head) == 2 and not head[0] & 0x81 and (head[0] >> 1) in H265_TYPES and 1 <= head[1] <= 7


def _h264(head: bytes) -> bool:
    return not head[0] & 0x80 and (head[0] & 0x1F) in H264_TYPES


def video_codec(heads: Sequence[bytes], payload_type: int | None) -> str | None:
    """"mpegts" for MPEG-TS over RTP and "mjpeg" for JPEG, which their static payload types say
    (VLC's RTP output, ffmpeg's rtp_mpegts; rtpjpegpay, cameras' MJPEG); "h265" or "h264" when
    AGREE of the payloads beginning with `heads` (their first two bytes) are of that codec; None
    before HEADS of them, or when they are none of these (VP8, MPEG-4; an MPEG-TS payload begins
    with 0x47 as H.264's parameter sets do, so only its type tells it)."""
    if payload_type in STATIC_CODECS:
        return STATIC_CODECS[payload_type]
    if len(heads) < HEADS or payload_type is None or payload_type < DYNAMIC_TYPES:
        return None
    for codec, looks_so in (("h265", _h265), ("h264", _h264)):
        if sum(map(looks_so, heads)) >= AGREE * len(heads):
            return codec
    return None


@functools.cache
def _gst_rtp():
    import gi

    gi.require_version("GstRtp", "1.0")
    from gi.repository import GstRtp

    return GstRtp


class RtpPackets:
    """The first HEADS packets that leave `udpsrc` (then it stops looking, so a running stream
    costs nothing): how many came, the first two bytes of each RTP payload, the payload type."""

    def __init__(self, Gst, udpsrc):
        self._Gst = Gst
        self.packets = 0
        self.heads: list[bytes] = []
        self.payload_type: int | None = None
        udpsrc.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._look)

    def _look(self, pad, info):
        self.packets += 1
        ok, packet = _gst_rtp().RTPBuffer.map(info.get_buffer(), self._Gst.MapFlags.READ)
        if ok:  # else not RTP (MPEG-TS sent straight over UDP)
            self.payload_type = packet.get_payload_type()
            payload = packet.get_payload().get_data()
            packet.unmap()
            if payload:
                self.heads.append(bytes(payload[:2]))
        return self._Gst.PadProbeReturn.REMOVE if self.packets >= HEADS else self._Gst.PadProbeReturn.OK

    def codec(self) -> str | None:
        return video_codec(self.heads, self.payload_type)

    def payload_name(self) -> str:
        """"payload type 33, MPEG-TS"; "payload type 96"."""
        name = STATIC_TYPES.get(self.payload_type)
        return f"payload type {self.payload_type}" + (f", {name}" if name else "")
