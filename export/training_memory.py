"""Whether a training's features fit in this computer's memory, said before the long work: one
that does not is ended by Linux's out-of-memory killer without a word of edge-ad's ("Killed")."""

from __future__ import annotations

from pathlib import Path

GIB = 2**30
# The peak of `train` holds about this many bytes per byte of one picture's raw features (float32,
# channels x an eighth of the input a side), and BASE_BYTES whatever the count: measured with
# /usr/bin/time on ELPV cells, Lite0, the prototype model: 600 and 1,131 cells at 256 px, 2.65 and
# 4.28 GB (estimated 2.65, 4.24); 1,131 at 128 px, 1.53 GB (1.70). The learned bridge holds about
# 1 GB more at 600 pictures (its own base), less than the features' share from about 2,000 on.
PEAK_PER_FEATURE_BYTE = 4.8
BASE_BYTES = int(0.8 * GIB)
MEMINFO = Path("/proc/meminfo")


def peak_bytes(pictures: int, height: int, width: int, channels: int) -> int:
    """About the most memory `train` holds for `pictures` pictures at an input of `height` x
    `width` pixels with a backbone of `channels` feature channels."""
    feature_bytes = channels * -(-height // 8) * -(-width // 8) * 4
    return BASE_BYTES + int(pictures * feature_bytes * PEAK_PER_FEATURE_BYTE)


def available_bytes() -> int | None:
    """The memory a new program can take without swapping (Linux's MemAvailable, which counts the
    file cache it can drop); None where the system does not say (not Linux, or before 3.14)."""
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024  # kB
    return None


def memory_note(pictures: int, height: int, width: int, channels: int) -> str | None:
    """What to say where training `pictures` pictures needs more memory than this computer has
    available (peak_bytes, available_bytes): how much, how much there is, and what takes less."""
    needed, available = peak_bytes(pictures, height, width, channels), available_bytes()
    if available is None or needed <= available:
        return None
    fits = max(0, int((available - BASE_BYTES) / (peak_bytes(1, height, width, channels) - BASE_BYTES)))
    return (f"training on {pictures:,} pictures at {width}x{height} px takes about {needed / GIB:.1f} GiB of memory, "
            f"and this computer has {available / GIB:.1f} GiB available: the system may end it without a word "
            f"(\"Killed\"). About {fits:,} pictures fit; train on fewer (a quoted wildcard of some of them), or with a "
            "smaller --input-size, or on a computer with more memory")
