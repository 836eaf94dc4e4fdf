"""A live camera whose picture stops changing (`edge-ad run --frozen-window`).

A camera's sensor adds noise to every frame, so two frames of even a still scene (a stopped line)
differ somewhere: measured through x264 at 150 kbit/s, 2 of 223 frames of a still scene with 2 %
noise were the frame before to the last bit. A camera or stream that froze (an IP camera whose
sensor or image pipeline stopped while its encoder goes on, a capture card repeating its last
frame), or a lens covered or blinded to black or white, repeats its picture: the parts then go by
unseen, each judged as the frozen picture was, which no score, drift band or timeout shows. An
encoder does not repeat a frozen picture for ever, though: it refreshes it at each key frame (1
or 2 s apart on most cameras), and the frames after that differ a little until it has settled
(x264, a key frame every 2 s: 174 of 224 frames repeated the one before). So the watch counts
the time the picture stood still, to the last bit, in stretches of STILL_RUN_S or more (a camera
that sends each frame twice stands still for one frame at a time), and says it froze when that
is at least half of the last `window_s` seconds.
"""

from __future__ import annotations

import zlib
from collections import deque

import numpy as np

FROZEN_WINDOW_S = 30.0
STILL_RUN_S = 1.0  # a stretch of repeated frames counts from this long
STILL_SHARE = 0.5  # of the window: frozen at this much, moving again below it
STRIDE = 8  # every 8th pixel of every 8th row: 97,000 values of a 1080p frame


def signature(image: np.ndarray) -> int:
    """A checksum of a frame's pixels (a sample of them: a repeated frame repeats every one of
    them, a live camera's noise changes many)."""
    return zlib.crc32(np.ascontiguousarray(image[::STRIDE, ::STRIDE]))


class FreezeWatch:
    """One live source's frames: says when its picture has stood still for at least half of the
    last `window_s` seconds, and when it no longer has."""

    def __init__(self, window_s: float = FROZEN_WINDOW_S):
        self.window_s = window_s
        self.last: int | None = None
        self.first = self.previous = 0.0  # when the first frame and the one before came
        self.still_since = 0.0  # when the picture last changed
        self.runs: deque[tuple[float, float]] = deque()  # earlier still stretches of STILL_RUN_S or more
        self.frozen_at: float | None = None

    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None

    def still_share(self, now: float) -> float:
        """The share of the last `window_s` seconds the picture stood still (in stretches of
        STILL_RUN_S or more), up to `now`."""
        start = now - self.window_s
        while self.runs and self.runs[0][1] <= start:
            self.runs.popleft()
        stretches = [*self.runs]
        if now - self.still_since >= STILL_RUN_S:
            stretches.append((self.still_since, now))
        return sum(end - max(begin, start) for begin, end in stretches) / self.window_s

    def add(self, image: np.ndarray, moment: float) -> dict | None:
        """A frame and the time it came (s); an event when the state changes: "frozen" once the
        picture has stood still for STILL_SHARE of the last `window_s` seconds (with how long),
        "back" once it no longer has (with how long it was said frozen)."""
        current = signature(image)
        if self.last is None:
            self.first = self.still_since = moment
        elif current != self.last:
            if self.previous - self.still_since >= STILL_RUN_S:
                self.runs.append((self.still_since, self.previous))
            self.still_since = moment
        self.last, self.previous = current, moment
        if moment - self.first < self.window_s:  # a whole window is needed to judge
            return None
        share = self.still_share(moment)
        if not self.frozen and share >= STILL_SHARE:
            self.frozen_at = moment
            return {"event": "frozen", "state": "frozen", "still_s": round(share * self.window_s, 1),
                    "window_s": self.window_s}
        if self.frozen and share < STILL_SHARE:
            frozen_s, self.frozen_at = moment - self.frozen_at, None
            return {"event": "frozen", "state": "back", "frozen_s": round(frozen_s, 1)}
        return None
