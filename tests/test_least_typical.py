"""export/least_typical.py: the training pictures least like the others, listed and drawn by `train`."""

import shutil

import cv2
import numpy as np
import yaml

from conftest import TINY_INPUT, TINY_PROTOTYPES, _bgr, add_spot
from export.least_typical import PICTURE, least_typical, shown_names


def test_one_picture_in_five_is_listed_at_most_eight():
    scores = np.arange(200, dtype=float)
    assert least_typical(scores[:20]) == [19, 18, 17, 16]
    assert least_typical(scores) == list(range(199, 191, -1))


def test_train_lists_and_draws_a_defective_part_among_the_good_ones(elpv_samples, tmp_path, capsys):
    """Scored by the model of all the pictures, leaving out only its own prototypes, the spotted
    cell was 9th of 25 (the whitening is fitted to it too): by that of the other half, 1st."""
    from export.train import TrainConfig, train

    data = tmp_path / "good"
    data.mkdir()
    for sample in elpv_samples[0][:24]:
        cv2.imwrite(str(data / f"{sample.name.split(':')[1]}.png"), _bgr(sample))
    spotted, _ = add_spot(_bgr(elpv_samples[0][24]), np.random.default_rng(0))
    cv2.imwrite(str(data / "slipped_in.png"), spotted)  # a rejected part, put with the good ones by mistake
    run = train(TrainConfig(data=str(data), input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES), tmp_path / "run")
    listed = yaml.safe_load((run / "config.yaml").read_text())["least_typical"]
    assert len(listed) == 5 and listed[0]["picture"] == str(data / "slipped_in.png")  # 25 pictures: 5 listed
    said = capsys.readouterr().out
    said_first = "note: the 5 training pictures least like the others, each scored as a new part by a model of the " \
                 "other half of them: good/slipped_in.png, "  # with its folder, as the picture names it
    assert said_first in said and f"; {run / PICTURE} shows where each differs" in said
    drawn = cv2.imread(str(run / PICTURE))
    assert drawn is not None and drawn.shape[0] > 200
    few = tmp_path / "few"
    few.mkdir()
    for picture in sorted(data.glob("*.png"))[:19]:
        shutil.copy(picture, few)
    fewer = train(TrainConfig(data=str(few), input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES),
                  tmp_path / "fewer")  # fewer than 20: none is listed
    assert yaml.safe_load((fewer / "config.yaml").read_text())["least_typical"] == []
    assert not (fewer / PICTURE).exists()


def test_pictures_are_named_within_the_folder_they_all_lie_in():
    """Two folders named alike trained on together (line1/good, line2/good) were both named
    good/005.png in the note and the picture; one folder's pictures keep its name."""
    assert shown_names(["site/line1/good/005.png", "site/line2/good/005.png"]) == ["line1/good/005.png",
                                                                                 "line2/good/005.png"]
    assert shown_names(["cell/good/005.png", "cell/good/006.png"]) == ["good/005.png", "good/006.png"]
    assert shown_names(["elpv:0409", "site/a/1.png", "site/b/1.png"]) == ["elpv:0409", "a/1.png", "b/1.png"]


def test_pictures_that_are_not_files_are_recorded_by_their_names(tmp_path, capsys):
    """ELPV's cells are named elpv:0409: recorded as paths, they were put under the folder train ran in."""
    from export.train import _least_typical

    maps = np.zeros((20, 4, 4), np.float32)
    maps[7, 1, 2] = 3.0
    listed = _least_typical(maps, np.zeros((20, 64, 64, 3), np.uint8), [f"elpv:{i:04d}" for i in range(20)], tmp_path)
    assert [entry["picture"] for entry in listed][:1] == ["elpv:0007"] and len(listed) == 4
    assert listed[0]["distance"] == 3.0 and (tmp_path / PICTURE).exists()
    assert "least like the others, each scored as a new part by a model of the other half of them: elpv:0007, " in \
        capsys.readouterr().out
