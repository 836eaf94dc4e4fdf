"""Output files are written whole or not at all, and a failed write names the file."""

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from edge_ad.errors import EdgeAdError
from edge_ad.files import save_figure, write_atomic, write_picture
from edge_ad.sinks import Samples, Snapshots

from conftest import full_disk

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_a_write_cut_short_keeps_the_old_file_and_names_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_atomic(path, b"old")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device") as raised:
        write_atomic(path, b"new and longer")
    assert raised.value.filename == str(path) and raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [path]  # no temporary file left
    monkeypatch.undo()
    write_atomic(tmp_path / "new" / "folder" / "report.json", b"new")  # its folder is made
    assert (tmp_path / "new" / "folder" / "report.json").read_bytes() == b"new"
    assert (path.stat().st_mode & 0o777) == 0o644


def test_pictures_take_their_kind_from_the_name(tmp_path):
    image = np.zeros((16, 24, 3), np.uint8)
    image[4:8, 4:8] = (255, 0, 0)
    write_picture(tmp_path / "a.png", image)
    assert np.array_equal(cv2.imread(str(tmp_path / "a.png")), image)
    with pytest.raises(EdgeAdError, match=r"a\.xyz: cannot write a picture of that kind"):
        write_picture(tmp_path / "a.xyz", image)
    assert not (tmp_path / "a.xyz").exists()
    with pytest.raises(EdgeAdError, match=f"{tmp_path}: a folder; give the picture's file name"):
        write_picture(tmp_path, image)  # edge-ad defects --out FOLDER


def test_figures_take_their_kind_from_the_name(tmp_path):
    figure = plt.figure(figsize=(2, 1))
    save_figure(figure, tmp_path / "f.png", dpi=50)
    assert cv2.imread(str(tmp_path / "f.png")).shape == (50, 100, 3)
    save_figure(figure, tmp_path / "f.svg", dpi=50)
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(EdgeAdError, match=r"f\.xyz: cannot write a picture of that kind"):
        save_figure(figure, tmp_path / "f.xyz", dpi=50)
    plt.close(figure)


def _killed_while_writing(path: Path) -> Path:
    """The hidden temporary file a process killed while write_picture wrote `path` leaves (a
    power cut, the watchdog, the OOM killer): written by a process that is killed in its fsync."""
    script = ("import os, time, numpy as np; from pathlib import Path; from edge_ad.files import write_picture; "
              "os.fsync = lambda fd: time.sleep(60); "
              f"write_picture(Path({str(path)!r}), np.zeros((64, 64, 3), np.uint8))")
    writer = subprocess.Popen([sys.executable, "-c", script])
    try:
        given_up = time.monotonic() + 30
        while not (found := list(path.parent.glob(f".{path.name}.*"))) and time.monotonic() < given_up:
            time.sleep(0.05)
    finally:
        writer.kill()
        writer.wait()
    (leftover,) = found
    return leftover


def test_pictures_a_killed_run_left_unfinished_are_removed_when_the_next_starts(tmp_path):
    """They were hidden, counted by no quota, and never removed: a service restarted by its
    watchdog while it wrote snapshots kept every one."""
    snapshots, samples = tmp_path / "snapshots", tmp_path / "samples"
    old = [_killed_while_writing(snapshots / "cam1_frame.jpg"), _killed_while_writing(samples / "cam1" / "a.png")]
    an_hour_ago = time.time() - 3600
    for path in old:
        os.utime(path, (an_hour_ago, an_hour_ago))
    young = _killed_while_writing(snapshots / "cam1_overlay.jpg")  # as another run's write in progress would be
    mine = snapshots / ".notes.jpg.txt"
    mine.write_text("not a picture of ours")
    os.utime(mine, (an_hour_ago, an_hour_ago))
    Snapshots(snapshots)
    Samples(samples).close()
    assert [path.exists() for path in old] == [False, False] and young.exists() and mine.exists()


def test_a_full_disk_is_no_folder_that_cannot_be_written(tmp_path, monkeypatch):
    """The start's check writes a nameless file: where the disk is full at the start, the run goes
    on (its writes fail and are said, and the quotas make room), not refused as another user's
    folder is."""
    from edge_ad import files

    monkeypatch.setattr(files.tempfile, "TemporaryFile", full_disk)
    assert files.made_folder(tmp_path / "snaps", "snapshot") == tmp_path / "snaps"
    files.writable_later(tmp_path / "run", "run")

    def refused(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "TemporaryFile", refused)
    with pytest.raises(EdgeAdError, match="snaps: cannot write in the snapshot folder \\(Permission denied to "):
        files.made_folder(tmp_path / "snaps", "snapshot")
