"""`--follow`: the pictures a triggered camera or the line's vision PC puts into a folder, scored
as they arrive. Before, a folder was read as it was at the start, and the run ended."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ad import followed_pictures
from edge_ad.detector import Detector
from edge_ad.errors import EdgeAdError, SourceError
from edge_ad.images import read_image
from edge_ad.pipelines import SourceOptions
from edge_ad.runner import RunConfig, run
from edge_ad.sources import open_source
from edge_ad.streams import Stream, streams_from_yaml

from conftest import edge_ad, wait_for

FOLLOW = SourceOptions(follow=True)


def picture(shade: int, height: int = 24, width: int = 32) -> np.ndarray:
    image = np.full((height, width, 3), shade, np.uint8)
    image[:, :, 2] = 255 - shade  # not grey: the channel order is checked too
    return image


def encoded(image: np.ndarray, suffix: str = ".png") -> bytes:
    return cv2.imencode(suffix, image)[1].tobytes()


class Reader:
    """Reads a source's frames in a thread of its own, as the run's capture thread does, for at
    most 30 s."""

    def __init__(self, source):
        self.source, self.frames, self.stop = source, [], threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(30, self.stop.set)
        self.timer.daemon = True
        self.timer.start()

    def _read(self) -> None:
        for frame in self.source.frames(self.stop):
            self.frames.append(frame)

    def wait_for(self, count: int, within_s: float = 10.0) -> list:
        given_up = time.monotonic() + within_s
        while len(self.frames) < count and time.monotonic() < given_up:
            time.sleep(0.05)
        return self.frames

    def all(self, count: int) -> list:
        """The frames once `count` came and three listings more went by (a picture read twice, or
        one not to be read, would be among them); the reader stopped."""
        frames = self.wait_for(count)
        time.sleep(3 * followed_pictures.POLL_S)
        self.close()
        return frames

    def close(self) -> None:
        self.stop.set()
        self.timer.cancel()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_new_pictures_are_read_once_in_the_order_they_arrived_and_earlier_ones_left_alone(tmp_path):
    (tmp_path / "earlier.png").write_bytes(encoded(picture(10)))
    source = open_source(str(tmp_path), FOLLOW)
    assert source.description == f"new pictures in {tmp_path} as they arrive (the 1 there now left alone)"
    for name, shade, written in (("b.png", 60, 100), ("a.jpg", 90, 200)):  # b arrived first: its time says so
        (tmp_path / name).write_bytes(encoded(picture(shade), Path(name).suffix))
        os.utime(tmp_path / name, ns=(written * 10**9, written * 10**9))
    (tmp_path / ".c.png").write_bytes(encoded(picture(30)))  # a hidden one (an uploader's temporary name)
    (tmp_path / "notes.txt").write_text("not a picture")
    reader = Reader(source)
    reader.wait_for(2)  # b and a, before later.png is written
    (tmp_path / "later.png").write_bytes(encoded(picture(120)))
    frames = reader.all(3)
    assert [f.name for f in frames] == ["b.png", "a.jpg", "later.png"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert np.array_equal(frames[0].image, picture(60)) and np.array_equal(frames[2].image, picture(120))
    assert source.skipped == []


def test_record_saves_every_picture_that_arrives_under_its_own_name(tmp_path):
    """`record --follow`: the line's vision PC puts its pictures into the folder, each a part, at
    times of its own; spaced by --interval on the clock, only the first of three that came
    together was saved (and named by the time it was read)."""
    from edge_ad.record import record

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    source, stop, saved = open_source(str(incoming), FOLLOW), threading.Event(), []
    thread = threading.Thread(target=lambda: saved.extend(record(source, tmp_path / "good", 3, stop=stop)))
    thread.start()
    for name, shade in (("x.png", 60), ("y.jpg", 90), ("z.png", 120)):
        (incoming / name).write_bytes(encoded(picture(shade), Path(name).suffix))
    thread.join(30)
    stop.set()
    assert sorted(p.name for p in saved) == ["x.png", "y.png", "z.png"]
    assert np.array_equal(cv2.imread(str(tmp_path / "good" / "z.png")), picture(120))
    # into the folder followed, each picture saved was read as a new part: x-2.png, x-2-2.png, ...
    stop = threading.Event()
    timer = threading.Timer(5, stop.set)  # a recording not refused ends then, having saved nothing
    timer.start()
    with pytest.raises(EdgeAdError, match=re.escape(f"--out {incoming}: the folder --follow reads new pictures from")):
        record(open_source(str(incoming), FOLLOW), incoming, 6, stop=stop)
    timer.cancel()


def test_a_picture_still_being_written_is_read_whole_once_it_is(tmp_path):
    source = open_source(str(tmp_path), FOLLOW)
    reader = Reader(source)
    data = encoded(picture(70, 200, 300))
    with open(tmp_path / "part.png", "wb") as handle:  # as an FTP upload writes it, in pieces
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(4 * followed_pictures.POLL_S)
        assert reader.frames == []
        handle.write(data[len(data) // 2 :])
    frames = reader.all(1)
    assert len(frames) == 1 and np.array_equal(frames[0].image, picture(70, 200, 300))
    assert source.skipped == []


def test_a_picture_written_slowly_is_not_read_again_at_each_listing(tmp_path, monkeypatch):
    """Over a share each read fetches the whole file: a 36 MB picture uploaded in ten seconds
    was read at every listing, 50 times."""
    reads = []
    monkeypatch.setattr(followed_pictures, "read_image", lambda path: reads.append(path) or read_image(path))
    source = open_source(str(tmp_path), FOLLOW)
    reader = Reader(source)
    data = encoded(picture(70, 200, 300))
    with open(tmp_path / "part.png", "wb") as handle:
        for piece in range(40):  # four pieces a listing, for about ten listings
            handle.write(data[piece * len(data) // 40 : (piece + 1) * len(data) // 40])
            handle.flush()
            time.sleep(followed_pictures.POLL_S / 4)
    frames = reader.all(1)
    # When first seen and once whole (and, on a busy machine, where a listing found it unchanged).
    assert [f.name for f in frames] == ["part.png"] and len(reads) <= 4


def test_a_picture_its_writer_finished_between_listing_and_reading_is_read_once(tmp_path, monkeypatch):
    """Listed while its writer had only opened it (0 bytes), whole by the time it is read: one
    picture, not one read and then taken as written over in place (CI, under load, read it twice)."""
    data = encoded(picture(50))

    def finished_then_read(path: str) -> np.ndarray:
        if os.path.getsize(path) == 0:
            Path(path).write_bytes(data)  # the writer's one write, between the listing and the read
        return read_image(path)

    monkeypatch.setattr(followed_pictures, "read_image", finished_then_read)
    source = open_source(str(tmp_path), FOLLOW)
    reader = Reader(source)
    (tmp_path / "part.png").write_bytes(b"")  # opened, nothing written yet
    frames = reader.all(1)
    assert [f.name for f in frames] == ["part.png"] and np.array_equal(frames[0].image, picture(50))


def _overwrite(path: Path, image: np.ndarray, second: int) -> None:
    """As a camera that uploads every part under one name does: the same file written again (its
    time set apart, as a part's later upload has it, whatever the file system's clock step)."""
    path.write_bytes(encoded(image, path.suffix))
    os.utime(path, ns=(second * 10**9, second * 10**9))


def test_a_picture_written_over_in_place_is_each_time_a_new_one(tmp_path):
    _overwrite(tmp_path / "image.png", picture(10), 100)  # the last part's, there at the start
    (tmp_path / "other.png").write_bytes(encoded(picture(20)))
    source = open_source(str(tmp_path), FOLLOW)
    reader = Reader(source)
    _overwrite(tmp_path / "image.png", picture(60), 200)
    reader.wait_for(1)
    _overwrite(tmp_path / "image.png", picture(90), 300)
    frames = reader.all(2)  # and no more: other.png, unchanged, is not read; nor image.png twice
    assert [(f.name, int(f.image[0, 0, 0])) for f in frames] == [("image.png", 60), ("image.png", 90)]


def test_a_folder_of_many_pictures_is_followed_by_its_new_names_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(followed_pictures, "OVERWRITES_UP_TO", 2)
    for name in ("a.png", "b.png", "c.png"):
        _overwrite(tmp_path / name, picture(10), 100)
    source = open_source(str(tmp_path), FOLLOW)
    assert source.description.endswith("(the 3 there now left alone; over 2: new names only, not a picture "
                                       "written over in place)")
    reader = Reader(source)
    _overwrite(tmp_path / "a.png", picture(60), 200)  # not looked at in a folder this large
    time.sleep(3 * followed_pictures.POLL_S)
    (tmp_path / "d.png").write_bytes(encoded(picture(90)))
    reader.wait_for(1)
    (tmp_path / "b.png").unlink()
    (tmp_path / "c.png").unlink()  # old ones moved away: written-over pictures are looked at again, from now
    assert wait_for(lambda: "pictures written over in place are read again" in caplog.text)  # a.png: no new part
    _overwrite(tmp_path / "a.png", picture(120), 300)
    assert [(f.name, int(f.image[0, 0, 0])) for f in reader.all(2)] == [("d.png", 90), ("a.png", 120)]


def test_a_tree_slow_to_list_is_listed_less_often_and_the_log_says_so(tmp_path, monkeypatch, caplog):
    """A wildcard over a folder a day lists a year's pictures each time (half a core of a 2-core
    EPYC, listed every 0.2 s): listing takes a quarter of the time at most, and new pictures are
    still read."""
    assert followed_pictures.listing_interval(0.01) == followed_pictures.POLL_S  # a small folder
    assert followed_pictures.listing_interval(0.2) == pytest.approx(0.6)
    (tmp_path / "day1").mkdir()
    source = open_source(str(tmp_path / "**" / "*.png"), FOLLOW)
    listing = source._listing

    def slow_listing():
        time.sleep(0.1)  # as a year of pictures takes
        return listing()

    monkeypatch.setattr(source, "_listing", slow_listing)
    waits = []

    class Stop(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            return super().wait(timeout)

    stop, frames = Stop(), []
    reader = threading.Thread(target=lambda: frames.extend(source.frames(stop)), daemon=True)
    reader.start()
    (tmp_path / "day1" / "part.png").write_bytes(encoded(picture(40)))
    assert wait_for(lambda: frames)
    stop.set()
    reader.join(5)
    assert [f.name for f in frames] == [os.path.join("day1", "part.png")]
    assert waits and all(wait >= 0.3 for wait in waits)  # three times the listing's 0.1 s at least
    assert caplog.text.count("to spend at most a quarter of a core on it") == 1
    assert "not every 0.2 s" in caplog.text and f"have old pictures moved out of {tmp_path}" in caplog.text


def test_a_picture_that_does_not_read_is_said_once_passed_over_and_read_if_written_again(tmp_path, monkeypatch,
                                                                                          caplog):
    monkeypatch.setattr(followed_pictures, "SETTLE_S", 0.5)
    source = open_source(str(tmp_path), FOLLOW)
    reader = Reader(source)
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    (tmp_path / "good.png").write_bytes(encoded(picture(40)))
    assert [f.name for f in reader.wait_for(1)] == ["good.png"]
    given_up = time.monotonic() + 10
    while not source.skipped and time.monotonic() < given_up:
        time.sleep(0.05)
    assert source.skipped == [f"{tmp_path / 'bad.jpg'}: not a decodable image"]
    assert caplog.text.count("bad.jpg: not a decodable image (unchanged for") == 1
    (tmp_path / "bad.jpg").write_bytes(encoded(picture(50), ".jpg"))
    frames = reader.all(2)
    assert [f.name for f in frames] == ["good.png", "bad.jpg"] and len(source.skipped) == 1


def test_a_folder_gone_is_waited_for_and_its_earlier_pictures_stay_read(tmp_path):
    """A network share that goes away and comes back holding what it held: only what is new is read."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "old.png").write_bytes(encoded(picture(10)))
    source = open_source(str(folder), FOLLOW)
    reader = Reader(source)
    (folder / "first.png").write_bytes(encoded(picture(20)))
    assert len(reader.wait_for(1)) == 1
    folder.rename(tmp_path / "away")
    given_up = time.monotonic() + 10
    while source.reconnects == 0 and time.monotonic() < given_up:
        time.sleep(0.05)
    assert source.reconnects >= 1
    (tmp_path / "away").rename(folder)
    (folder / "second.png").write_bytes(encoded(picture(30)))
    frames = reader.all(2)
    assert [f.name for f in frames] == ["first.png", "second.png"]


def test_an_unmounted_share_s_empty_mount_point_is_not_read_as_the_share(tmp_path, monkeypatch):
    """Were its emptiness read, every picture of the share would be scored again when it comes
    back, and its results sent to the PLC as the part's now at the camera."""
    mounted = {"now": True}
    monkeypatch.setattr(followed_pictures.os.path, "ismount", lambda path: mounted["now"])
    (tmp_path / "old.png").write_bytes(encoded(picture(10)))
    source = open_source(str(tmp_path), FOLLOW)
    reader = Reader(source)
    mounted["now"] = False  # the folder as seen now is the mount point's own
    given_up = time.monotonic() + 10
    while source.reconnects == 0 and time.monotonic() < given_up:
        time.sleep(0.05)
    (tmp_path / "new.png").write_bytes(encoded(picture(20)))
    time.sleep(3 * followed_pictures.POLL_S)
    assert source.reconnects >= 1 and reader.frames == []
    mounted["now"] = True
    frames = reader.all(1)
    assert [f.name for f in frames] == ["new.png"]


def test_a_share_mounted_after_the_start_has_its_pictures_left_alone(tmp_path, monkeypatch):
    """A service started at boot before the share was mounted follows its empty mount point; the
    share's pictures are not new parts when it comes."""
    share = {"mount": False, "mounted": False}

    def ismount(path) -> bool:
        if share["mount"] and not share["mounted"]:  # what the share holds comes with it, all at once
            for number in range(3):
                (tmp_path / f"old{number}.png").write_bytes(encoded(picture(10)))
            share["mounted"] = True
        return share["mounted"]

    monkeypatch.setattr(followed_pictures.os.path, "ismount", ismount)
    source = open_source(str(tmp_path), FOLLOW)
    assert source.description.endswith("(none there now)")
    reader = Reader(source)
    time.sleep(2 * followed_pictures.POLL_S)
    share["mount"] = True
    time.sleep(3 * followed_pictures.POLL_S)
    assert share["mounted"]
    (tmp_path / "new.png").write_bytes(encoded(picture(20)))
    frames = reader.all(1)
    assert [f.name for f in frames] == ["new.png"]


def test_a_wildcard_follows_only_the_pictures_it_matches(tmp_path):
    source = open_source(str(tmp_path / "cam1_*.png"), FOLLOW)
    assert source.watches(tmp_path) and not source.watches(tmp_path / "overlays")
    reader = Reader(source)
    (tmp_path / "cam2_0001.png").write_bytes(encoded(picture(10)))
    (tmp_path / "cam1_0001.png").write_bytes(encoded(picture(20)))
    frames = reader.all(1)
    assert [f.name for f in frames] == ["cam1_0001.png"]
    # one folder a day, each starting its numbers again: a frame is named by its path under the
    # wildcard's folder (events, the hook's EDGE_AD_NAME), not by a name both days have
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
    reader = Reader(open_source(str(tmp_path / "day*" / "part_*.png"), FOLLOW))
    for day in ("day1", "day2"):
        (tmp_path / day / "part_0001.png").write_bytes(encoded(picture(20)))
    assert sorted(f.name for f in reader.all(2)) == ["day1/part_0001.png", "day2/part_0001.png"]


def test_a_folder_says_its_subfolders_are_not_followed_and_a_double_star_follows_them(tmp_path):
    """A vision PC that saves into a folder a day: following the folder reads none of them, which
    it now says, with the wildcard that reads them; `**` is any number of folders there, as when a
    wildcard is played (it was one folder, so 'DIR/**/*' missed DIR's own pictures and deeper ones)."""
    (tmp_path / "2026-12-04").mkdir()
    (tmp_path / ".thumbnails").mkdir()
    source = open_source(str(tmp_path), FOLLOW)
    assert source.description.endswith(f"(none there now; not those put into its subfolders (2026-12-04): "
                                       f"'{tmp_path / '**' / '*'}' follows them too)")
    deep = open_source(str(tmp_path / "**" / "*"), FOLLOW)
    for folder in (tmp_path, tmp_path / "out", tmp_path / "2026-12-05" / "cam1"):
        assert deep.watches(folder)  # an output written there would be read as new pictures
    assert not deep.watches(tmp_path.parent) and open_source(str(tmp_path / "*" / "*.png"), FOLLOW).watches(
        tmp_path / "out") and not open_source(str(tmp_path / "*" / "*.png"), FOLLOW).watches(tmp_path)
    reader = Reader(deep)
    (tmp_path / "2026-12-05" / "cam1").mkdir(parents=True)
    for name in ("top.png", "2026-12-04/a.png", "2026-12-05/cam1/b.png", ".thumbnails/c.png"):
        (tmp_path / name).write_bytes(encoded(picture(20)))
    assert sorted(f.name for f in reader.all(3)) == ["2026-12-04/a.png", "2026-12-05/cam1/b.png", "top.png"]


def test_what_cannot_be_followed_is_said(tmp_path):
    (tmp_path / "one.png").write_bytes(encoded(picture(10)))
    for uri, options, said in (
        ("rtsp://10.0.0.5/live", FOLLOW, r"rtsp://10.0.0.5/live: --follow reads the new pictures of an image folder"),
        (str(tmp_path / "one.png"), FOLLOW, r"one.png: --follow reads the new pictures of an image folder"),
        (str(tmp_path / "missing"), FOLLOW, r"missing: no such folder to follow"),
        (str(tmp_path / "missing" / "*.png"), FOLLOW, r"cannot follow .*missing \(No such file or directory\)"),
        (str(tmp_path), SourceOptions(follow=True, loop=2), r"each new picture once; it cannot be played again"),
    ):
        with pytest.raises(SourceError, match=said):
            open_source(uri, options)
    with pytest.raises(SourceError, match=r"--pipeline: --follow reads the new pictures"):
        open_source("", FOLLOW, pipeline="videotestsrc ! appsink name=sink")


def test_a_sources_file_follows_a_folder(tmp_path):
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  - input: incoming/\n    follow: true\n  - input: other/\n")
    first, second = streams_from_yaml(sources, SourceOptions())
    assert first.options.follow and not second.options.follow
    sources.write_text("sources:\n  - input: incoming/\n    follow: 'yes'\n")
    with pytest.raises(EdgeAdError, match=r"source 1: 'follow' must be true or false, not 'yes'"):
        streams_from_yaml(sources, SourceOptions())


def test_a_run_scores_each_new_picture_and_writes_no_overlay_where_it_would_be_read(tiny_bundle, tmp_path):
    detector = Detector.load(tiny_bundle)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "before.png").write_bytes(encoded(picture(10)))

    def arrive() -> None:
        time.sleep(2)
        for number in range(2):
            (incoming / f"part{number}.png").write_bytes(encoded(picture(40 + number, 64, 64)))

    def bounded_run(output: str, max_frames: int, **saved: Path):
        """A followed folder never ends: a run that waits 30 s for a picture is stopped."""
        stop = threading.Event()
        timer = threading.Timer(30, stop.set)
        timer.start()
        try:
            return run(detector, [Stream(str(incoming), name="incoming", output=output, options=FOLLOW)],
                       RunConfig(max_frames=max_frames, **saved), stop)
        finally:
            timer.cancel()

    uploader = threading.Thread(target=arrive)
    uploader.start()
    summary = bounded_run(f"{tmp_path / 'overlays'}/", 2)
    uploader.join()
    assert summary.frames == 2 and summary.sink_errors == {}
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["part0.png", "part1.png"]
    for output in (f"{incoming}/", str(incoming / "overlay_%i.jpg")):
        with pytest.raises(EdgeAdError, match="the folder --follow reads new pictures from"):
            bounded_run(output, 1)
    # an alarm's snapshot (its frame and overlay) saved there was read as two new parts, and two more alarms;
    # samples go to SAMPLES/<source>
    for option, folder in (("snapshots", incoming), ("samples", tmp_path)):
        with pytest.raises(EdgeAdError, match=re.escape(f"--{option} {folder}: source incoming follows the folder")):
            bounded_run(f"{tmp_path / 'overlays'}/", 1, **{option: folder})
    assert sorted(p.name for p in incoming.iterdir()) == ["before.png", "part0.png", "part1.png"]


def test_print_pipeline_says_the_folder_is_followed(tmp_path):
    result = edge_ad("run", "--input", tmp_path, "--follow", "--print-pipeline", check=True)
    assert result.stdout.strip() == \
        f"{tmp_path}: image folder, its new pictures as they arrive (--follow), read with OpenCV"
    result = edge_ad("run", "--input", "rtsp://10.0.0.5/live", "--follow", "--print-pipeline")
    assert result.returncode == 2 and "--follow reads the new pictures of an image folder" in result.stderr
