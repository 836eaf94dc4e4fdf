import logging
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ad.datasets import ELPV_TRAIN_SIZE, calibration_frames, load_defects, load_samples, read_all
from edge_ad.errors import DataError, SourceError
from edge_ad.images import as_grey, is_grey
from edge_ad.sources import open_source


def test_elpv_split_follows_the_protocol(elpv_samples):
    train, test = elpv_samples
    assert len(train) == ELPV_TRAIN_SIZE == 1131
    assert sum(s.label == 0 for s in test) == 377
    assert sum(s.label == 1 for s in test) == 715
    assert not {s.name for s in train} & {s.name for s in test}
    assert {s.group for s in test} == {"mono", "poly"}
    image = train[0].image()
    assert image.shape == (300, 300, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all()  # grey became three channels


def test_elpv_module_type_is_one_variant_of_the_same_protocol(elpv_samples):
    train, test = elpv_samples
    for module_type in ("mono", "poly"):
        for split, full in (("train", train), ("test", test)):
            part = load_samples(f"elpv:{module_type}", split)
            assert [s.name for s in part] == [s.name for s in full if s.group == module_type]
            assert part and {s.group for s in part} == {module_type}
    mono_test = load_samples("elpv:mono", "test")
    assert {s.label for s in mono_test} == {0, 1}
    with pytest.raises(DataError, match=r"elpv:cigs: ELPV's module types are mono, poly"):
        load_samples("elpv:cigs", "train")


def test_mvtec_layout_is_detected(mvtec_category):
    train = load_samples(str(mvtec_category), "train")
    test = load_samples(str(mvtec_category), "test")
    assert len(train) == 12 and all(s.label == 0 for s in train)
    assert [s.label for s in test] == [0] * 4 + [1] * 4
    defect = test[-1]
    assert defect.group == "spot"
    mask = defect.mask(300, 300, defect.image().shape)
    assert mask.dtype == bool and 0 < mask.sum() < mask.size
    assert not test[0].mask(300, 300, test[0].image().shape).any()


@pytest.mark.parametrize("normal, defect, mask_name", [("good", "spot", "{}.png"),  # VisA as anomalib lays it out
                                                       ("ok", "ko", "{}.png"),  # BTAD's 01 and 02
                                                       ("ok", "ko", "{}.bmp"),  # BTAD's 03
                                                       ("Good", "Crack", "{}_mask.png"),  # folders made by hand
                                                       ("OK", "NG", "{}.png"),
                                                       ("Normal", "Anomaly", "{}.png")])  # VisA's own download
def test_visa_and_btad_layouts_are_read_as_mvtec_ones(mvtec_category, tmp_path, normal, defect, mask_name):
    """Normal pictures in train/ok and test/ok (BTAD), defects in test/ko, and masks named as their
    image (both): the same samples and masks as the MVTec category they were made from. Good or
    OK, as folders made by hand are named, are normal pictures too: test/Good was read as a defect,
    and train/Good as no category (its error offered a wildcard that took the defects too)."""
    import shutil

    expected = load_samples(str(mvtec_category), "test")
    root = tmp_path / "category"
    for split in ("train", "test"):
        shutil.copytree(mvtec_category / split / "good", root / split / normal)
    shutil.copytree(mvtec_category / "test" / "spot", root / "test" / defect)
    (root / "ground_truth" / defect).mkdir(parents=True)
    for mask in (mvtec_category / "ground_truth" / "spot").iterdir():
        name = mask_name.format(mask.stem.removesuffix("_mask"))
        cv2.imwrite(str(root / "ground_truth" / defect / name), cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE))
    assert len(load_samples(str(root), "train")) == 12
    test = sorted(load_samples(str(root), "test"), key=lambda s: s.label)  # BTAD's ko comes before ok
    assert [(s.label, s.group) for s in test] == [(0, "good")] * 4 + [(1, defect)] * 4
    assert [Path(s.name).parent.name for s in test] == [normal] * 4 + [defect] * 4
    for got, want in zip(test, expected):
        assert Path(got.name).name == Path(want.name).name
        shape = want.image().shape
        assert (got.mask_path is None) == (want.mask_path is None)
        assert np.array_equal(got.mask(64, 64, shape), want.mask(64, 64, shape))


def test_visa_as_downloaded_is_read_with_its_masks_and_pointed_to(mvtec_category, tmp_path):
    """VisA's own download keeps a category's pictures in Data/Images/{Normal,Anomaly} and their
    masks, named as they are, in Data/Masks/Anomaly: eval read no mask; `train` on the category
    (or the data set's root) offered a wildcard that took its anomalies and masks as good parts,
    and `eval` on it named no folder to give."""
    import shutil

    expected = load_samples(str(mvtec_category), "test")
    candle = tmp_path / "VisA" / "candle"
    images = candle / "Data" / "Images"
    shutil.copytree(mvtec_category / "test" / "good", images / "Normal")
    shutil.copytree(mvtec_category / "test" / "spot", images / "Anomaly")
    (candle / "Data" / "Masks" / "Anomaly").mkdir(parents=True)
    for mask in (mvtec_category / "ground_truth" / "spot").iterdir():
        shutil.copy(mask, candle / "Data" / "Masks" / "Anomaly" / mask.name.replace("_mask", ""))
    (candle / "image_anno.csv").write_text("image,label,mask\n")
    test = sorted(load_samples(str(images), "test"), key=lambda s: s.label)
    assert [(Path(s.name).name, s.label) for s in test] == [(Path(s.name).name, s.label) for s in expected]
    assert all(np.array_equal(got.mask(64, 64, (300, 300)), want.mask(64, 64, (300, 300)))
               for got, want in zip(test, expected)) and test[-1].mask_path is not None
    site = tmp_path / "site"  # masks/ beside the class folders, as ground_truth/: before, read as a defect's pictures
    shutil.copytree(images, site)
    shutil.copytree(candle / "Data" / "Masks", site / "masks")
    assert [(Path(s.name).name, s.label, s.mask_path and s.mask_path.name) for s in load_samples(str(site), "test")] \
        == [(Path(s.name).name, s.label, s.mask_path and s.mask_path.name) for s in load_samples(str(images), "test")]
    for root in (candle, candle.parent):
        with pytest.raises(DataError) as error:
            load_samples(str(root), "train")
        assert f"give the folder of the kind meant ({images / 'Normal'} holds good parts)" in str(error.value)
        assert "**" not in str(error.value)
        with pytest.raises(DataError) as error:
            load_samples(str(root), "test")
        assert str(error.value).endswith(f"; {images} holds the class folder Normal/ (good parts): give that folder")


def test_mvtec_ad_2_categories_are_read_with_their_public_test_split(mvtec_category, tmp_path):
    """MVTec AD 2: train/good, validation/good, test_public/{good,bad} with the masks in
    test_public/ground_truth/bad, and test_private/ without masks (scored by MVTec's server):
    eval said "MVTec layout without a test/ folder"."""
    import shutil

    root = tmp_path / "can"
    shutil.copytree(mvtec_category / "train" / "good", root / "train" / "good")
    shutil.copytree(mvtec_category / "train" / "good", root / "validation" / "good")
    shutil.copytree(mvtec_category / "test" / "good", root / "test_public" / "good")
    shutil.copytree(mvtec_category / "test" / "spot", root / "test_public" / "bad")
    shutil.copytree(mvtec_category / "ground_truth" / "spot", root / "test_public" / "ground_truth" / "bad")
    shutil.copytree(mvtec_category / "test" / "spot", root / "test_private")
    def read(data: Path) -> list[tuple]:
        samples = load_samples(str(data), "test")
        return sorted((s.label, Path(s.name).name, s.mask_path and s.mask_path.name) for s in samples)

    expected = read(mvtec_category)
    assert len(expected) == 8 and sum(mask is not None for *_, mask in expected) == 4
    assert read(root) == read(root / "test_public") == expected
    assert {Path(s.name).parent.name for s in load_samples(str(root), "test")} == {"good", "bad"}
    assert len(load_samples(str(root), "train")) == 12  # train/good; validation/ is not trained on


def test_mvtec_loco_masks_are_a_folder_per_image_read_together(mvtec_category, tmp_path):
    """MVTec LOCO AD keeps an image's masks in a folder of its name, one per defect
    (ground_truth/structural_anomalies/000/000.png, 001.png): eval read none and gave no pixel
    metric, without a word."""
    import shutil

    from edge_ad.errors import ImageError

    root = tmp_path / "juice_bottle"
    for split in ("train", "validation", "test"):
        shutil.copytree(mvtec_category / split.replace("validation", "train") / "good", root / split / "good")
    shutil.copytree(mvtec_category / "test" / "spot", root / "test" / "structural_anomalies")
    for mask in sorted((mvtec_category / "ground_truth" / "spot").iterdir()):
        folder = root / "ground_truth" / "structural_anomalies" / mask.stem.removesuffix("_mask")
        folder.mkdir(parents=True)
        whole = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
        top, bottom = whole.copy(), whole.copy()
        top[whole.shape[0] // 2 :], bottom[: whole.shape[0] // 2] = 0, 0  # one defect split in two masks
        cv2.imwrite(str(folder / "000.png"), top)
        cv2.imwrite(str(folder / "001.png"), bottom)
    expected, test = load_samples(str(mvtec_category), "test"), load_samples(str(root), "test")
    assert [(s.label, Path(s.name).name) for s in test] == [(s.label, Path(s.name).name) for s in expected]
    for got, want in zip(test[4:], expected[4:]):
        shape = want.image().shape
        assert got.mask_path.parent.name == "structural_anomalies"
        assert np.array_equal(got.mask(64, 64, shape), want.mask(64, 64, shape)) and want.mask(64, 64, shape).any()
    assert len(load_samples(str(root), "train")) == 12  # train/good; validation/ is not trained on
    first = test[4].mask_path
    cv2.imwrite(str(first / "001.png"), np.zeros((16, 16), np.uint8))
    with pytest.raises(ImageError, match=re.escape(f"{first}: masks of one image, of different sizes (000.png ")):
        test[4].mask(64, 64, test[4].image().shape)
    shutil.rmtree(first)
    first.mkdir()
    with pytest.raises(ImageError, match=re.escape(f"{first}: a folder of masks without any mask image (.png")):
        test[4].mask(64, 64, test[4].image().shape)


def test_a_data_sets_root_names_its_categories(mvtec_category, tmp_path):
    """`--data` at MVTec AD's (or BTAD's) root rather than a category: training said "no image files",
    and eval "a folder of normal images has no test split"."""
    import shutil

    for name in ("screw", "bottle"):
        shutil.copytree(mvtec_category, tmp_path / name)
    for split in ("train", "test"):
        with pytest.raises(DataError, match=re.escape(f"{tmp_path}: a folder of 2 MVTec-layout categories (bottle, "
                                                      f"screw); give one of them, as {tmp_path / 'bottle'}")):
            load_samples(str(tmp_path), split)


def test_a_folder_that_cannot_be_looked_into_is_no_category(normal_folder, tmp_path, monkeypatch):
    """Pictures at a disk's root beside lost+found, which only root may list: looking for categories
    there must not stop training (the tests run as root, so the refusal is made here)."""
    import shutil

    folder = shutil.copytree(normal_folder, tmp_path / "disk")
    (folder / "lost+found").mkdir()
    is_dir = Path.is_dir

    def refused(path: Path) -> bool:
        if "lost+found" in path.parts and path.name != "lost+found":
            raise PermissionError(13, "Permission denied", str(path))
        return is_dir(path)

    monkeypatch.setattr(Path, "is_dir", refused)
    assert len(load_samples(str(folder), "train")) == 12


def test_a_ground_truth_mask_is_read_as_its_dataset_drew_it(mvtec_category, tmp_path):
    """Masks saved as 0 and 1 (or class numbers) mark the same defect as MVTec's 0 and 255; a mask
    scaled with its image is scaled back; a mask of another aspect is refused by name."""
    import shutil

    from edge_ad.errors import ImageError

    category = shutil.copytree(mvtec_category, tmp_path / "cell")
    defect = load_samples(str(category), "test")[-1]
    shape = defect.image().shape
    drawn = defect.mask(128, 128, shape)
    assert 0 < drawn.sum() < drawn.size
    saved = cv2.imread(str(defect.mask_path), cv2.IMREAD_GRAYSCALE)
    for low in ((saved > 127).astype(np.uint8), (saved > 127).astype(np.uint8) * 3):
        cv2.imwrite(str(defect.mask_path), low)
        assert (defect.mask(128, 128, shape) == drawn).all()
    cv2.imwrite(str(defect.mask_path), cv2.resize(saved, (150, 150), interpolation=cv2.INTER_NEAREST))
    assert (defect.mask(128, 128, shape) == drawn).mean() > 0.99  # half the size, the same defect
    cv2.imwrite(str(defect.mask_path), saved[:, :200])
    with pytest.raises(ImageError, match=re.escape(f"{defect.mask_path}: a 200x300 mask for the 300x300 image "
                                                   f"{defect.name}; a mask has its image's size")):
        defect.mask(128, 128, shape)
    damaged = bytearray(cv2.imencode(".bmp", saved)[1].tobytes())
    damaged[22:26] = struct.pack("<i", 2**30)  # a height OpenCV asserts on (cv2.error) rather than reads as none
    defect.mask_path.write_bytes(damaged)
    with pytest.raises(ImageError, match=re.escape(f"{defect.mask_path}: not a readable mask image")):
        defect.mask(128, 128, shape)


def _pictures_and_masks(samples):
    """What eval reads of each test sample: its file's name, label, group and mask (at 64 x 64)."""
    return [(Path(s.name).name, s.label, s.group, s.mask(64, 64, s.image().shape).tobytes()) for s in samples]


def test_a_test_split_is_read_without_train_or_as_class_folders_of_its_own(mvtec_category, tmp_path):
    """Eval reads the test split alone: pictures of a line's good and rejected parts sorted on site
    into test/good and test/<defect> (no train/: eval never reads it), a category's test/ folder
    given itself (masks in the ground_truth/ beside it), or good/ beside a folder per defect.
    Each was refused as "a folder of normal images has no test split", though it holds no picture."""
    import shutil

    expected = _pictures_and_masks(load_samples(str(mvtec_category), "test"))
    without_train = tmp_path / "site"
    for folder in ("test", "ground_truth"):
        shutil.copytree(mvtec_category / folder, without_train / folder)
    assert _pictures_and_masks(load_samples(str(without_train), "test")) == expected
    assert _pictures_and_masks(load_samples(str(without_train / "test"), "test")) == expected
    flat = shutil.copytree(mvtec_category / "test", tmp_path / "sorted")
    assert [row[:3] for row in _pictures_and_masks(load_samples(str(flat), "test"))] == [row[:3] for row in expected]
    assert all(s.mask_path is None for s in load_samples(str(flat), "test"))  # no ground_truth/ of its own
    shutil.copytree(mvtec_category / "ground_truth", flat / "ground_truth")  # masks, not a kind of defect
    assert _pictures_and_masks(load_samples(str(flat), "test")) == expected
    named_test = shutil.copytree(flat, tmp_path / "line" / "test")  # its own ground_truth/, not one beside it
    assert _pictures_and_masks(load_samples(str(named_test), "test")) == expected
    with pytest.raises(DataError, match="no image files"):  # training reads no test pictures
        load_samples(str(without_train), "train")
    rejects = shutil.copytree(mvtec_category / "test" / "spot", tmp_path / "box" / "test" / "spot")  # one kind
    assert _pictures_and_masks(load_samples(str(rejects.parents[1]), "test")) == [
        row[:3] + (np.zeros(64 * 64, bool).tobytes(),) for row in expected if row[1] == 1]  # no masks of its own
    assert [s.label for s in load_samples(str(rejects.parent), "test")] == [1] * 4


def test_test_pictures_outside_the_class_folders_are_named_not_lost(mvtec_category, tmp_path, monkeypatch):
    """A picture beside the class folders has no kind, and one in a folder of masks below a class
    folder is no part's: eval says where they are and how many, where it left them out without a
    word; with no other picture, the error says so. Those in a class folder's subfolders (a box of
    rejects sorted by day) are of its kind: before, they were not read."""
    import shutil

    from edge_ad.datasets import NOT_READ, unread_test_pictures

    site = shutil.copytree(mvtec_category / "test", tmp_path / "site")
    shutil.copytree(mvtec_category / "ground_truth", site / "ground_truth")  # beside the class folders
    assert unread_test_pictures(str(site)) == {} == unread_test_pictures(str(mvtec_category))
    picture = next((site / "spot").glob("*.png"))
    shutil.copy(picture, site / "unsorted.png")
    (site / "spot" / "day2" / "cam1").mkdir(parents=True)
    (site / "spot" / "day2" / "Masks").mkdir()
    for name in ("000.png", "cam1/b.png", "notes.txt", "Masks/000.png"):
        shutil.copy(picture, site / "spot" / "day2" / name)
    (site / "good" / ".thumbnails").mkdir()  # hidden: not the line's pictures
    shutil.copy(picture, site / "good" / ".thumbnails" / "c.png")
    assert unread_test_pictures(str(site)) == {str(site): 1, str(site / "spot" / "day2" / "Masks"): 1}
    samples = load_samples(str(site), "test")
    assert [(Path(s.name).relative_to(site).as_posix(), s.label, s.group) for s in samples[-6:]] == [
        ("spot/000.png", 1, "spot"), ("spot/001.png", 1, "spot"), ("spot/002.png", 1, "spot"),
        ("spot/003.png", 1, "spot"), ("spot/day2/000.png", 1, "spot"), ("spot/day2/cam1/b.png", 1, "spot")]
    # ground_truth/spot/000_mask.png is spot/000.png's, not spot/day2/000.png's
    assert len(samples) == 10
    assert [s.mask_path and s.mask_path.name for s in samples[-3:]] == ["003_mask.png", None, None]
    box = tmp_path / "box" / "test"
    (box / "crack" / "masks").mkdir(parents=True)
    shutil.copy(picture, box / "crack" / "masks" / "a.png")
    shutil.copy(picture, box / "b.png")
    with pytest.raises(DataError) as error:
        load_samples(str(box.parent), "test")
    assert str(error.value) == (f"{box.parent}: no images found for the test split; the pictures of {box} (1), "
                                f"{box / 'crack' / 'masks'} (1) are not read, as they lie {NOT_READ}")
    (tmp_path / "elpv").symlink_to(box.parent)  # 'elpv' is the data set's protocol, not a folder of that name
    monkeypatch.chdir(tmp_path)
    assert unread_test_pictures("./elpv") != {} and unread_test_pictures("elpv") == {}


def test_subfolders_left_are_counted_up_to_a_bound_without_following_links(tmp_path, monkeypatch):
    """A run's folder on a share may have an archive of millions of pictures beneath it: saying
    they are not read must not walk them all at the start, nor loop on a link to a folder above."""
    from edge_ad import images

    monkeypatch.setattr(images, "COUNTED_UP_TO", 3)
    (tmp_path / "archive" / "2025").mkdir(parents=True)
    for i in range(5):
        (tmp_path / "archive" / "2025" / f"{i}.png").write_bytes(b"")  # named as pictures: not read to count them
    (tmp_path / "archive" / "up").symlink_to(tmp_path)
    (tmp_path / "today").mkdir()
    (tmp_path / "today" / "a.jpg").write_bytes(b"")
    (tmp_path / "today" / "notes.txt").write_text("not a picture")
    assert images.pictures_in_subfolders(tmp_path) == {tmp_path / "archive": 3, tmp_path / "today": 1}
    assert images.subfolders_left(tmp_path) == (
        f"{tmp_path}: the pictures of its subfolders archive (3 or more), today (1) are not read, only its own; for "
        f"all of them, give a quoted wildcard, '{tmp_path / '**' / '*'}'")
    monkeypatch.setattr(images, "LISTED", 1)  # a folder a part (Real-IAD's), hundreds: 800 made 9,000 characters
    assert "subfolders archive (3 or more) and 1 more are not read" in images.subfolders_left(tmp_path)
    assert "subfolders archive (3 or more) and 1 more hold some: give one" in images.no_images_in(tmp_path)


def test_normal_folder_has_train_but_no_test(normal_folder, tmp_path):
    assert len(load_samples(str(normal_folder), "train")) == 12
    with pytest.raises(DataError, match=f"{re.escape(str(normal_folder))}: a folder of normal images has no test "
                                        r"split; evaluation reads pictures sorted into test/good \(or ok, normal\)"):
        load_samples(str(normal_folder), "test")
    (tmp_path / "line1").mkdir()  # subfolders, none of normal pictures, none named test: no test split either
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))}: no test split; evaluation reads"):
        load_samples(str(tmp_path), "test")


def test_a_folder_sorted_by_kind_is_not_offered_whole(tmp_path):
    """`train --data site/test` (good/ beside crack/) was told to give all its subfolders as
    'site/test/**/*': that trains on the rejected parts as good ones (and `--defects` on good
    ones as defects). Sorted by kind, a folder's error names its good parts' folder instead."""
    for kind in ("good", "crack"):
        (tmp_path / "site" / "test" / kind).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "site" / "test" / kind / "0.png"), np.full((32, 32), 100, np.uint8))
    for folder in (tmp_path / "site" / "test", tmp_path / "site"):
        for read in (lambda: load_samples(str(folder), "train"), lambda: load_defects(str(folder)),
                     lambda: open_source(str(folder))):
            with pytest.raises((DataError, SourceError)) as error:
                read()
            assert (f"hold some, sorted by kind: give the folder of the kind meant ({tmp_path / 'site/test/good'} "
                    "holds good parts), not all of them together, which would mix good and rejected parts"
                    ) in str(error.value)
            assert "**" not in str(error.value)


def test_missing_and_empty_folders(tmp_path, caplog):
    with pytest.raises(DataError, match="no such dataset folder"):
        load_samples(str(tmp_path / "nope"), "train")
    (tmp_path / "line.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # a video of the line: record saves its frames
    with pytest.raises(DataError, match=re.escape(f"if it is a video of the line, edge-ad record --input "
                                                  f"{tmp_path / 'line.mp4'} --out DIR saves its frames")):
        load_samples(str(tmp_path / "line.mp4"), "train")
    (tmp_path / "line.mp4").unlink()
    with pytest.raises(DataError, match=r"no image files \(.png .jpg .jpeg .bmp .tif .tiff .webp .pgm .ppm\) in the "
                                        "folder$"):
        load_samples(str(tmp_path), "train")
    # pictures one level down, as `run --samples` keeps each source's: the message says where
    for source, count in (("cam1", 2), ("cam2", 1)):
        (tmp_path / source).mkdir()
        for i in range(count):
            cv2.imwrite(str(tmp_path / source / f"{i}.png"), np.full((32, 32), 100, np.uint8))
    (tmp_path / "notes").mkdir()
    where = (f"in the folder; its subfolders cam1 (2), cam2 (1) hold some: give one of them, or all of them as a "
             f"quoted wildcard, '{tmp_path / '**' / '*'}'")
    suffixes = ".png .jpg .jpeg .bmp .tif .tiff .webp .pgm .ppm"
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: no image files ({suffixes}) {where}")):
        load_samples(str(tmp_path), "train")
    with pytest.raises(SourceError, match=re.escape(where)):
        open_source(str(tmp_path))
    with pytest.raises(DataError, match=re.escape(where)):
        load_defects(str(tmp_path))
    everything = str(tmp_path / "**" / "*")  # what the message offers, taken by each reader
    assert [(Path(s.name).parent.name, s.label) for s in load_samples(everything, "train")] == [("cam1", 0)] * 2 + [
        ("cam2", 0)]
    assert [(Path(s.name).parent.name, s.label) for s in load_defects(everything)] == [("cam1", 1)] * 2 + [("cam2", 1)]
    assert [frame.name for frame in open_source(everything)] == ["cam1/0.png", "cam1/1.png", "cam2/0.png"]
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / '*.jpg'}: the wildcard matches nothing")):
        load_defects(str(tmp_path / "*.jpg"))
    cv2.imwrite(str(tmp_path / "top.png"), np.full((32, 32), 100, np.uint8))  # its own picture is read, and said
    with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
        assert [frame.name for frame in open_source(str(tmp_path))] == ["top.png"]
    assert caplog.messages == [f"{tmp_path}: the pictures of its subfolders cam1 (2), cam2 (1) are not read, only its "
                               f"own; for all of them, give a quoted wildcard, '{everything}'"]


def test_pictures_in_formats_not_read_are_said_not_passed_over(tmp_path):
    """An iPhone saves HEIC by default, a camera raw files: a folder of them was "no image files",
    and beside pictures that are read they were left out of training without a word."""
    from edge_ad.datasets import training_pictures_left

    for name in ("IMG_0001.HEIC", "IMG_0002.HEIC", "part.dng"):
        (tmp_path / name).write_bytes(b"\x00\x00\x00\x18ftypheic")
    (tmp_path / "labels.json").write_text("{}")  # a labelling tool's file is no picture
    held = "3 pictures in formats not read (.HEIC .dng, as IMG_0001.HEIC)"
    with pytest.raises(DataError, match=re.escape(f"; it holds {held}: save such pictures as PNG or JPEG")):
        load_samples(str(tmp_path), "train")
    with pytest.raises(SourceError, match=re.escape(held)):
        open_source(str(tmp_path))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((32, 32), 100, np.uint8))
    assert [Path(s.name).name for s in load_samples(str(tmp_path), "train")] == ["a.png"]
    assert training_pictures_left(str(tmp_path)) == [f"{tmp_path}: {held} left out; save such pictures as PNG or JPEG "
                                                     "to train on them"]
    (tmp_path / "IMG_0001.HEIC").unlink()
    (tmp_path / "IMG_0002.HEIC").unlink()
    assert training_pictures_left(str(tmp_path)) == [f"{tmp_path}: 1 picture in formats not read (.dng, as part.dng) "
                                                     "left out; save such pictures as PNG or JPEG to train on them"]


def test_masks_beside_training_and_defect_pictures_are_no_pictures_of_parts(tmp_path):
    """KolektorSDD2 keeps a 000_GT.png beside every picture (black for a good part): trained on,
    each was one more normal picture, of nothing; a picture whose mask marks a defect (246 of its
    2,331 training pictures) was trained on as a good part; and as known defects, the pictures
    whose mask marks none were taken for defective parts."""
    from edge_ad.datasets import known_defects_left, training_pictures_left

    category = tmp_path / "ksdd2"
    for folder in ("train/good", "test/good", "test/crack"):
        (category / folder).mkdir(parents=True)
        for stem in ("10000", "10001"):
            cv2.imwrite(str(category / folder / f"{stem}.png"), np.full((32, 32), 100, np.uint8))
            cv2.imwrite(str(category / folder / f"{stem}_GT.png"), np.zeros((32, 32), np.uint8))
    cv2.imwrite(str(category / "train" / "good" / "10002_GT.png"), np.zeros((32, 32), np.uint8))  # no image: a picture
    train = category / "train" / "good"
    names = ["10000.png", "10001.png", "10002_GT.png"]
    assert [Path(s.name).name for s in load_samples(str(category), "train")] == names
    assert training_pictures_left(str(category)) == [f"{train}: 2 mask(s) of its pictures (10000_GT.png) "
                                                     "left out; a mask is no picture of a part"]
    defect = np.zeros((32, 32), np.uint8)
    defect[10:14, 10:20] = 1  # saved as 0 and 1, as some tools save them
    cv2.imwrite(str(train / "10001_GT.png"), defect)
    for data in (category, train):
        assert [Path(s.name).name for s in load_samples(str(data), "train")] == ["10000.png", "10002_GT.png"]
    assert training_pictures_left(str(train))[1:] == [f"{train}: 1 picture(s) that their masks say are of defective "
                                                      "parts (10001.png) left out; training takes good parts only"]
    crack = category / "test" / "crack"
    cv2.imwrite(str(crack / "10001_GT.png"), defect)
    assert [Path(s.name).name for s in load_defects(str(crack))] == ["10001.png"]
    assert known_defects_left(str(crack))[1:] == [f"{crack}: 1 picture(s) that their masks say are of good parts "
                                                  "(10000.png) left out; known defects are pictures of defective parts"]
    test = load_samples(str(category), "test")
    assert [(Path(s.name).name, s.label, s.mask_path and s.mask_path.name) for s in test] == [
        ("10000.png", 1, "10000_GT.png"), ("10001.png", 1, "10001_GT.png"),
        ("10000.png", 0, None), ("10001.png", 0, None)]


def test_masks_beside_pictures_are_no_frames_and_no_pictures_a_wildcard_takes(tmp_path, caplog):
    """Rejected parts exported with their masks (000_mask.png) and given to `calibrate --defects`
    counted each mask as one more known defect (40 for 30 cracked cells, seen), and `run --input`
    scored each as a frame; a wildcard given to `train` trained on them, and on the pictures whose
    masks mark a defect, as good parts. Read as known defects, the pictures whose masks mark none
    are left out, and as good parts (`calibrate --input`, `record`) those whose masks mark one."""
    from edge_ad.datasets import pictures_left, training_pictures_left

    for folder in ("cam1", "cam2"):
        (tmp_path / folder).mkdir()
        for stem in ("000", "001"):
            cv2.imwrite(str(tmp_path / folder / f"{stem}.png"), np.full((32, 32), 100, np.uint8))
    defect = np.zeros((32, 32), np.uint8)
    defect[10:14, 10:20] = 255
    cv2.imwrite(str(tmp_path / "cam1" / "000_mask.png"), np.zeros((32, 32), np.uint8))
    cv2.imwrite(str(tmp_path / "cam2" / "001_GT.png"), defect)
    cv2.imwrite(str(tmp_path / "cam2" / "002_mask.png"), defect)  # no picture of its name beside it: a picture itself
    with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
        assert [frame.name for frame in open_source(str(tmp_path / "cam1"))] == ["000.png", "001.png"]
    masks_said = "mask(s) of its pictures (000_mask.png) left out; a mask is no picture of a part"
    assert caplog.messages == [f"{tmp_path / 'cam1'}: 1 {masks_said}"]
    everything = str(tmp_path / "**" / "*")
    parts = ["cam1/000.png", "cam1/001.png", "cam2/000.png", "cam2/001.png", "cam2/002_mask.png"]
    assert [frame.name for frame in open_source(everything)] == parts
    defective = ["cam1/001.png", "cam2/000.png", "cam2/001.png", "cam2/002_mask.png"]  # cam1/000's mask: nothing
    assert [Path(s.name).relative_to(tmp_path).as_posix() for s in load_defects(everything)] == defective
    for read_as_defects, kept in ((True, defective), (False, [p for p in parts if p != "cam2/001.png"])):
        caplog.clear()
        source = open_source(everything)
        source.keep_only(read_as_defects, "why")
        assert [frame.name for frame in source] == kept
        left = "cam1/000.png" if read_as_defects else "cam2/001.png"
        assert caplog.messages[-1] == (f"{everything}: 1 picture(s) that their masks say are of "
                                       f"{'good' if read_as_defects else 'defective'} parts ({Path(left).name}) left "
                                       "out; why")
    assert [Path(s.name).relative_to(tmp_path).as_posix() for s in load_samples(everything, "train")] == [
        "cam1/000.png", "cam1/001.png", "cam2/000.png", "cam2/002_mask.png"]
    assert pictures_left(everything) == [f"{everything}: 2 {masks_said}"]
    assert training_pictures_left(everything) == [
        f"{everything}: 2 {masks_said}",
        f"{everything}: 1 picture(s) that their masks say are of defective parts (001.png) left out; training takes "
        "good parts only"]
    only_good = tmp_path / "cam1" / "0*.png"
    cv2.imwrite(str(tmp_path / "cam1" / "001_mask.png"), np.zeros((32, 32), np.uint8))
    source = open_source(str(only_good))
    with pytest.raises(SourceError, match=re.escape(f"{only_good}: no picture left to read (above)")):
        source.keep_only(True, "known defects are pictures of defective parts")


def test_masks_named_as_their_picture_in_another_format_are_masks(tmp_path, caplog):
    """The Magnetic Tile Defect data set keeps each picture's mask beside it, named as it, as a PNG
    (MT_Free/Imgs/exp1_num_4727.jpg and .png, black for a good part): `train` on MT_Free/Imgs
    trained on the masks as pictures of good parts (half its pictures black), `run` scored each as
    a frame. The mask is the one of two grey levels, but for a soft edge; a part's picture saved
    twice, as a JPEG and a PNG, is two pictures."""
    from edge_ad.datasets import eval_folder_notes

    rng = np.random.default_rng(0)
    free, crack = tmp_path / "MT_Free" / "Imgs", tmp_path / "MT_Crack" / "Imgs"
    defect = np.zeros((160, 192), np.uint8)
    defect[40:60, 20:70] = 128  # painted with a soft brush: an edge of 136 pixels between the two levels
    defect[41:59, 21:69] = 255
    for folder, mask in ((free, np.zeros_like(defect)), (crack, defect)):
        folder.mkdir(parents=True)
        for number in (1, 2):
            cv2.imwrite(str(folder / f"exp1_num_{number}.jpg"), rng.integers(0, 256, defect.shape, np.uint8))
            cv2.imwrite(str(folder / f"exp1_num_{number}.png"), mask)
    part = rng.integers(0, 256, (*defect.shape, 3), np.uint8)
    cv2.imwrite(str(free / "saved_twice.jpg"), part)
    cv2.imwrite(str(free / "saved_twice.png"), part)
    assert [Path(s.name).name for s in load_samples(str(free), "train")] == [
        "exp1_num_1.jpg", "exp1_num_2.jpg", "saved_twice.jpg", "saved_twice.png"]
    assert [Path(s.name).relative_to(tmp_path).as_posix() for s in load_defects(str(tmp_path / "*" / "*" / "exp1_*"))
            ] == ["MT_Crack/Imgs/exp1_num_1.jpg", "MT_Crack/Imgs/exp1_num_2.jpg"]
    with caplog.at_level(logging.WARNING, logger="edge_ad.sources"):
        assert [frame.name for frame in open_source(str(crack))] == ["exp1_num_1.jpg", "exp1_num_2.jpg"]
    assert caplog.messages == [f"{crack}: 2 mask(s) of its pictures (exp1_num_1.png) left out; a mask is "
                               "no picture of a part"]
    tiles = str(tmp_path / "MT_*" / "Imgs" / "*")  # a test split, labelled by the masks: before, refused
    test = load_samples(tiles, "test")
    assert [(Path(s.name).relative_to(tmp_path).as_posix(), s.label, s.mask_path and s.mask_path.name)
            for s in test] == [("MT_Crack/Imgs/exp1_num_1.jpg", 1, "exp1_num_1.png"),
                               ("MT_Crack/Imgs/exp1_num_2.jpg", 1, "exp1_num_2.png"),
                               ("MT_Free/Imgs/exp1_num_1.jpg", 0, None), ("MT_Free/Imgs/exp1_num_2.jpg", 0, None)]
    assert eval_folder_notes(tiles, test) == {
        "test_images_labelled_by_their_masks": {"wildcard": tiles, "normal": 2, "anomalous": 2},
        "pictures_without_mask": {"count": 2, "first": str(free / "saved_twice.jpg")}}


def test_class_folders_of_subfolders_are_read_as_their_kind(tmp_path):
    """Real-IAD keeps a folder per part below OK/ and NG/<defect>/, each picture's mask beside it
    named as it (audiojack/NG/AK/S0002/audiojack_0002_NG_AK_C1.jpg and .png); a line's archive, a
    folder a day below OK/ and NG/. `eval --data audiojack` found no test image in either."""
    from edge_ad.datasets import eval_folder_notes, unread_test_pictures

    rng = np.random.default_rng(0)
    root = tmp_path / "audiojack"
    defect = np.zeros((48, 64), np.uint8)
    defect[10:20, 30:40] = 255
    for folder, stem in (("OK/S0001", "0001_OK_C1"), ("OK/S0001", "0001_OK_C2"), ("NG/AK/S0002", "0002_NG_AK_C1"),
                         ("NG/BX/S0003", "0003_NG_BX_C1")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / folder / f"audiojack_{stem}.jpg"), rng.integers(0, 256, (*defect.shape, 3), np.uint8))
        if "NG" in stem:
            cv2.imwrite(str(root / folder / f"audiojack_{stem}.png"), defect)
    samples = load_samples(str(root), "test")
    assert [(Path(s.name).relative_to(root).as_posix(), s.label, s.group, s.mask_path and s.mask_path.name)
            for s in samples] == [
        ("NG/AK/S0002/audiojack_0002_NG_AK_C1.jpg", 1, "NG", "audiojack_0002_NG_AK_C1.png"),
        ("NG/BX/S0003/audiojack_0003_NG_BX_C1.jpg", 1, "NG", "audiojack_0003_NG_BX_C1.png"),
        ("OK/S0001/audiojack_0001_OK_C1.jpg", 0, "good", None), ("OK/S0001/audiojack_0001_OK_C2.jpg", 0, "good", None)]
    assert samples[0].mask(48, 64, (48, 64, 3)).sum() == 100
    assert unread_test_pictures(str(root)) == {}
    assert eval_folder_notes(str(root), samples) == {"masks_beside_their_images": [
        str(root / "NG/AK/S0002/audiojack_0002_NG_AK_C1.png"), str(root / "NG/BX/S0003/audiojack_0003_NG_BX_C1.png")]}


def test_a_wildcard_trains_on_the_good_parts_of_a_folder_that_holds_both(tmp_path):
    # A vision system's archive: good and rejected parts side by side, told apart by name.
    for name in ("OK_0001.png", "OK_0002.jpg", "NG_0003.png", "OK_0004.txt"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("a part's measurements")
        else:
            cv2.imwrite(str(tmp_path / name), np.full((32, 32, 3), 100, np.uint8))
    samples = load_samples(str(tmp_path / "OK_*"), "train")
    assert [Path(s.name).name for s in samples] == ["OK_0001.png", "OK_0002.jpg"]
    assert {s.label for s in samples} == {0}
    (tmp_path / "day2").mkdir()
    cv2.imwrite(str(tmp_path / "day2" / "OK_0005.png"), np.full((32, 32, 3), 100, np.uint8))
    assert len(load_samples(str(tmp_path / "**" / "OK_*.png"), "train")) == 2  # ** reaches into subfolders
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'OK_*.txt'}: the wildcard matches 1 file but no "
                                                  "picture")):
        load_samples(str(tmp_path / "OK_*.txt"), "train")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'GOOD_*'}: the wildcard matches nothing (quote it")):
        load_samples(str(tmp_path / "GOOD_*"), "train")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'OK_*'}: none of the 2 pictures the wildcard matches "
                                                  "has a mask, beside it or in a label folder, to say which part")):
        load_samples(str(tmp_path / "OK_*"), "test")


def test_bad_files_are_listed_and_skipped_only_when_asked(tmp_path):
    cv2.imwrite(str(tmp_path / "good.png"), np.full((32, 32), 100, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    samples = load_samples(str(tmp_path), "train")
    with pytest.raises(DataError, match=r"1 unreadable image.*--skip-bad.*broken\.png"):
        read_all(samples, skip_bad=False)
    kept, images, bad = read_all(samples, skip_bad=True)
    assert [s.name.endswith("good.png") for s in kept] == [True]
    assert len(images) == 1 and "broken.png" in bad[0]


def test_the_metadata_files_a_mac_leaves_beside_each_picture_are_not_pictures(tmp_path):
    """A folder copied from a Mac onto a USB stick or a share holds `._NAME.png` beside each
    picture (AppleDouble metadata): training stopped on them as unreadable images, and a run
    warned of each. Hidden files are not read, by training, evaluation or `run --input`."""
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((32, 32), 100, np.uint8))
        (tmp_path / f"._{name}.png").write_bytes(bytes.fromhex("0005160700020000") + b"Mac OS X" + bytes(100))
    samples = load_samples(str(tmp_path), "train")
    assert [Path(s.name).name for s in samples] == ["a.png", "b.png"]
    assert len(read_all(samples, skip_bad=False)[1]) == 2
    assert [Path(f.name).name for f in open_source(str(tmp_path)).frames()] == ["a.png", "b.png"]
    (tmp_path / "a.png").unlink()
    (tmp_path / "b.png").unlink()
    with pytest.raises(DataError, match="no image files"):
        load_samples(str(tmp_path), "train")


def test_large_pictures_are_kept_at_the_model_input_as_they_are_read(tmp_path):
    """What `keep` makes of each picture is all that is held (training and INT8 calibration keep the
    model input), not the full-size pictures of a camera."""
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((600, 800, 3), 40 * i, np.uint8))
    samples = load_samples(str(tmp_path), "train")
    kept, shapes, bad = read_all(samples, False, keep=lambda image: image.shape)
    assert len(kept) == 3 and shapes == [(600, 800, 3)] * 3 and not bad
    frames = calibration_frames(str(tmp_path), 2, (64, 96))
    assert [frame.shape for frame in frames] == [(64, 96, 3)] * 2 and frames[1][0, 0, 0] == 80  # the first and last


def test_int8_calibration_frames_of_a_grey_bundle_are_grey(tmp_path):
    """A colour camera's frames calibrate a bundle trained on grey pictures as the runtime shows
    them to it: in grey."""
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (60, 80, 3), np.uint8))
    colour, grey = (calibration_frames(str(tmp_path), 3, (32, 32), grey) for grey in (False, True))
    assert not any(is_grey(frame) for frame in colour)
    assert all(is_grey(frame) and np.array_equal(frame, as_grey(rgb)) for frame, rgb in zip(grey, colour))


def test_pictures_are_known_by_their_pixels_and_only_from_the_file_the_bundle_names(tmp_path):
    """A pictures file (the training pictures, a calibration's frames) lists each picture's pixel
    digest: the same pixels give the same digest whatever the file's name (a copy), other pixels or
    the same ones in another shape another. It is read only where its SHA-256 is the one recorded:
    an export of an older run into a bundle folder leaves that run's file, which lists other
    pictures, and a calibration of a camera's frames leaves the previous one's."""
    import hashlib

    from edge_ad import picture_lists
    from edge_ad.errors import BundleError
    from edge_ad.images import pixel_digest, read_image

    cell = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "part.png"), cell[..., ::-1])
    copy = read_image(tmp_path / "part.png")  # as train, eval and calibrate read pictures
    assert pixel_digest(copy) == pixel_digest(cell)
    other = cell.copy()
    other[0, 0, 0] ^= 1
    assert len({pixel_digest(cell), pixel_digest(other), pixel_digest(cell.reshape(60, 40, 3))}) == 3
    path = tmp_path / picture_lists.TRAINING
    sha256 = picture_lists.write(path, [(picture_lists.NORMAL, pixel_digest(cell), "/site/good/a, b.png"),
                                        (picture_lists.DEFECT, pixel_digest(other), "/site/crack/c.png")])
    assert picture_lists.read(path, sha256, "train again") == {pixel_digest(cell): "normal",
                                                                pixel_digest(other): "defect"}
    assert picture_lists.read(path, None, "train again") == {}  # a bundle trained before the file was written
    picture_lists.write(path, [(picture_lists.NORMAL, pixel_digest(other), "x")])
    assert picture_lists.read(path, sha256, "train again") == {}  # another run's file
    path.unlink()
    assert picture_lists.read(path, sha256, "train again") == {}
    other_tool = b"name,sha\npart.png,0\xff\n"  # with its own hash recorded: named, not a KeyError
    path.write_bytes(other_tool)
    with pytest.raises(BundleError, match="training_pictures.csv: not a list of pictures .*; delete it or train again"):
        picture_lists.read(path, hashlib.sha256(other_tool).hexdigest(), "train again")
