"""A live camera whose picture stops changing (`edge-ad run --frozen-after`).

A camera's sensor adds noise to every frame, so two frames of even a still scene (a stopped line)
differ somewhere. The same picture to the last bit, frame after frame, is a camera or stream
that froze (an IP camera's encoder or a capture card repeating its last frame while the stream
goes on), or a lens covered or blinded to black or white. The parts then go by unseen, each one
judged as the frozen picture was: a good part's picture passes them all, which no score, drift
band or timeout shows. H.264 and H.265 cameras send a still scene as blocks copied from the frame
before, which decode to identical frames until the next key frame, at most a few seconds later
(some "smart" codecs wait up to 10 or 20 s): the default wait is longer than that.
"""

from __future__ import annotations

import zlib

import numpy as np

FROZEN_AFTER_S = 30.0
STRIDE = 8  # every 8th pixel of every 8th row: 97,000 values of a 1080p frame


def signature(image: np.ndarray) -> int:
    """A checksum of a frame's pixels (a sample of them: a frozen frame repeats every one of them, a
    live camera's noise changes most of them)."""
    return zlib.crc32(np.ascontiguousarray(image[::STRIDE, ::STRIDE]))


class FreezeWatch:
    """One live source's frames: says when the picture has been the same for `after_s` seconds,
    and when it changes again."""

    def __init__(self, after_s: float = FROZEN_AFTER_S):
        self.after_s = after_s
        self.last: int | None = None
        self.since = 0.0  # when the picture last changed
        self.frozen = False

    def add(self, image: np.ndarray, moment: float) -> dict | None:
        """A frame and the time it came (s); an event when the state changes: "frozen" once the
        picture has not changed for `after_s` seconds, "back" at the first frame that differs,
        each with the seconds the picture stayed the same so far."""
        current = signature(image)
        if current != self.last:
            still_s, self.last, self.since = moment - self.since, current, moment
            if self.frozen:
                self.frozen = False
                return {"event": "frozen", "state": "back", "seconds": round(still_s, 1)}
            return None
        if not self.frozen and moment - self.since >= self.after_s:
            self.frozen = True
            return {"event": "frozen", "state": "frozen", "seconds": round(moment - self.since, 1)}
        return None
