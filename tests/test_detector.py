import inspect
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

from edge_ad import Detector
from edge_ad.detector import frame_map
from edge_ad.doctor import doctor
from edge_ad.errors import BundleError, DataError, EdgeAdError, ImageError
from edge_ad.images import read_image, to_rgb
from export.backbone import encoder_from_checkpoint
from export.evaluate import evaluate
from export.onnx_export import export_bundle
from export.prototype import PrototypeHead
from export.train import (TrainConfig, brightness_note, colour_note, copies_note, load_run, mixed_shapes_note, picture,
                          plain_note, shape_note, small_note, train)

from conftest import UNWRITABLE, edge_ad


@pytest.fixture(scope="module")
def detector(tiny_bundle):
    return Detector.load(tiny_bundle)


def test_any_frame_size_and_colour_order(detector, mvtec_category):
    bgr = cv2.imread(str(sorted((mvtec_category / "test" / "good").iterdir())[0]))
    for frame in (bgr, cv2.resize(bgr, (640, 480)), bgr[..., 0]):
        result = detector(frame, color="GRAY" if frame.ndim == 2 else "BGR")
        assert "map" not in vars(result)  # made when drawn, not for every frame (a 12 MP frame's takes 10 ms)
        assert result.map.shape == frame.shape[:2] and result.map.dtype == np.float32
        assert np.array_equal(result.map, frame_map(result.normalised, frame.shape))
        assert result.raw_map.shape == (1, 128, 128)
        assert 0.0 <= result.map.min() and result.map.max() <= 1.0
        assert result.is_anomaly == (result.score >= detector.threshold)
    same = detector(bgr[..., ::-1].copy(), color="RGB")
    assert same.score == pytest.approx(detector(bgr).score, rel=1e-6)


def test_a_bundle_trained_on_grey_pictures_sees_a_colour_camera_in_grey(detector, mvtec_category):
    """ELPV's cells are grey. A colour camera in front of a bundle trained on them, blue and red
    10 % off each way, made 93 % of normal test cells anomalous (README); its frames are scored in grey
    now, as the grey picture of the same view is."""
    assert detector.bundle.trained_on_grey and load_run(detector.bundle.root.parent / "run")[0]["grey_pictures"]
    bgr = cv2.imread(str(sorted((mvtec_category / "test" / "good").iterdir())[0]))
    cast = np.clip(bgr * np.array([0.9, 1.0, 1.1]), 0, 255).astype(np.uint8)  # bluish-red in OpenCV's order
    grey = cv2.cvtColor(cv2.cvtColor(cast, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    seen, of_grey = (detector.grid_maps(detector.preprocess(frame)[None]) for frame in (cast, grey))
    in_colour = detector.grid_maps(to_rgb(cast, "BGR", size=detector.bundle.input_size)[None])
    assert np.abs(seen - of_grey).max() < 0.1 * np.abs(in_colour - of_grey).max()
    assert detector(cast).score == pytest.approx(detector(grey).score, rel=0.02)


def test_onnx_runtime_matches_torch(detector, tiny_bundle, mvtec_category):
    run = tiny_bundle.parent / "run"
    record, checkpoint, inputs = load_run(run)
    encoder = encoder_from_checkpoint(128, checkpoint)
    head = PrototypeHead(checkpoint["prototypes"])
    frames = np.stack([detector.preprocess(cv2.imread(str(p))) for p in sorted(mvtec_category.rglob("test/*/*.png"))])
    with torch.no_grad():
        reference = head(encoder(torch.from_numpy(frames))).numpy()
    onnx_maps = detector.grid_maps(frames)
    assert np.abs(reference - onnx_maps).max() <= 1e-4 * np.abs(reference).max()


def test_a_lite1_run_is_exported_and_scored_on_lite1_features(mvtec_category, tmp_path):
    config = TrainConfig(data=str(mvtec_category), backbone="efficientnet-lite1", input_size=128, prototypes=64)
    run = train(config, tmp_path / "run")
    record, checkpoint, _ = load_run(run)
    assert checkpoint["backbone"] == record["config"]["backbone"] == "efficientnet-lite1"
    detector = Detector.load(export_bundle(run, tmp_path / "bundle"))
    assert detector.bundle.spec["model"]["backbone"] == "efficientnet-lite1"

    paths = sorted(mvtec_category.rglob("test/*/*.png"))
    frames = np.stack([detector.preprocess(cv2.imread(str(p))) for p in paths])
    head = PrototypeHead(checkpoint["prototypes"])
    with torch.no_grad():
        lite1 = head(encoder_from_checkpoint(128, checkpoint)(torch.from_numpy(frames))).numpy()
        lite0 = head(encoder_from_checkpoint(128, {**checkpoint, "backbone": "efficientnet-lite0"})(
            torch.from_numpy(frames))).numpy()
    onnx_maps = detector.grid_maps(frames)
    assert np.abs(lite1 - onnx_maps).max() <= 1e-4 * np.abs(lite1).max()
    assert np.abs(lite0 - onnx_maps).max() > 0.1 * np.abs(lite1).max()  # the graph is not Lite0's
    scores = {p.parent.name: [] for p in paths}
    for path in paths:
        scores[path.parent.name].append(detector(cv2.imread(str(path))).score)
    assert min(scores["spot"]) > max(scores["good"])


def test_a_rectangular_input_keeps_the_frames_aspect(mvtec_category, tmp_path):
    """`train --input-size 192x96` (width x height): a wide camera frame is not squeezed into a
    square; the grid, the graphs and the maps are 96 x 192."""
    from edge_ad.cli import build_parser

    size = build_parser().parse_args(["train", "--data", "d", "--out", "r", "--input-size", "192x96"]).input_size
    assert size == [96, 192]
    assert build_parser().parse_args(["train", "--data", "d", "--out", "r", "--input-size", "128x128"]).input_size == 128
    run = train(TrainConfig(data=str(mvtec_category), input_size=size, prototypes=64), tmp_path / "run")
    record, checkpoint, inputs = load_run(run)
    assert record["config"]["input_size"] == [96, 192] and inputs.shape[1:] == (96, 192, 3)
    detector = Detector.load(export_bundle(run, tmp_path / "bundle"))
    assert detector.bundle.input_size == (96, 192)

    paths = sorted(mvtec_category.rglob("test/*/*.png"))
    frames = np.stack([detector.preprocess(cv2.imread(str(p))) for p in paths])
    with torch.no_grad():
        reference = PrototypeHead(checkpoint["prototypes"])(encoder_from_checkpoint(size, checkpoint)(
            torch.from_numpy(frames))).numpy()
    onnx_maps = detector.grid_maps(frames)
    assert onnx_maps.shape[-2:] == (12, 24)
    assert np.abs(reference - onnx_maps).max() <= 1e-4 * np.abs(reference).max()
    wide = cv2.resize(cv2.imread(str(paths[0])), (640, 320))
    assert detector(wide).map.shape == (320, 640)
    scores = {p.parent.name: [] for p in paths}
    for path in paths:
        scores[path.parent.name].append(detector(cv2.imread(str(path))).score)
    assert min(scores["spot"]) > max(scores["good"])
    # the maps lie over the spots' masks, not transposed or stretched across them
    report = evaluate(str(tmp_path / "bundle"), str(mvtec_category))
    assert report["pixel_auroc"] > 0.9
    lines = doctor(str(tmp_path / "bundle"), root=tmp_path).lines  # width x height, as --input-size takes it
    assert any(line.startswith("bundle       prototype, fp32, 192x96, ") for line in lines)


def test_train_says_when_a_square_input_squeezes_the_images(normal_folder, tmp_path):
    rows = tmp_path / "rows"  # three cells side by side, as a picture of a module row shows them
    rows.mkdir()
    cells = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))]
    for i in range(0, len(cells), 3):
        cv2.imwrite(str(rows / f"{i:03d}.png"), np.hstack(cells[i : i + 3]))
    flags = ["--input-size", 128, "--prototypes", 8]
    wide = edge_ad("train", "--data", rows, "--out", tmp_path / "wide", *flags)
    assert wide.returncode == 0, wide.stderr
    assert ("note: the training images are 3 times as wide as high (median); the square 128 px input squeezes "
            "them") in wide.stdout and "--input-size 224x64 keeps their shape" in wide.stdout
    square = edge_ad("train", "--data", normal_folder, "--out", tmp_path / "square", *flags)
    assert square.returncode == 0 and "note:" not in square.stdout
    tall = [picture(np.zeros((900, 300, 3), np.uint8), 256)] * 2
    assert "3 times as high as wide" in shape_note(tall, 256) and "--input-size 160x448" in shape_note(tall, 256)
    assert shape_note(tall, [448, 160]) is None  # already a rectangle: the user chose it


def test_train_says_when_its_input_enlarges_thumbnails():
    """ELPV cells shrunk to 32x32 trained a bundle that flagged all 20 normal 300x300 cells (64x64:
    3 of them, 128x128: none)."""
    def pictures(height: int, width: int) -> list:
        return [picture(np.zeros((height, width, 3), np.uint8), 256)] * 2

    said = small_note(pictures(32, 32), 256)
    assert said.startswith("the training images are 32x32 (median); the 256x256 input enlarges them 8 times")
    assert small_note(pictures(64, 64), 256) is None and small_note(pictures(300, 300), 256) is None
    assert "768x256 input enlarges them 6 times" in small_note(pictures(40, 120), [256, 768])  # height, width


def test_train_leaves_out_the_alarm_overlays_of_a_snapshots_folder(normal_folder, tmp_path):
    """The false alarms of a run (`--snapshots`) are good parts for the next training set; a
    folder of them copied whole, or a wildcard over it, also holds each frame's overlay, whose heat
    map and score would be learnt as normal. The frames are trained on, the overlays left out."""
    from edge_ad.sinks import Snapshots

    snapshots = Snapshots(tmp_path / "snapshots", interval_s=0)
    cells = [cv2.imread(str(p)) for p in sorted(normal_folder.glob("*.png"))[:6]]
    for i, cell in enumerate(cells):
        heat = cell.copy()
        heat[..., 2] = 255  # as an overlay's red heat map
        snapshots.save("line1", i, 1764900000.0 + i, cell, lambda: heat)
    assert len(list(snapshots.folder.glob("*.jpg"))) == 12
    flags = ["--input-size", 64, "--prototypes", 8]
    done = edge_ad("train", "--data", snapshots.folder, "--out", tmp_path / "run", *flags)
    assert done.returncode == 0, done.stderr
    assert "left out: 6 of edge-ad's own alarm overlays (*_overlay.jpg, as line1_" in done.stdout
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert record["train_images"] + record["validation_images"] == 6
    only = edge_ad("train", "--data", str(snapshots.folder / "*_overlay.jpg"), "--out", tmp_path / "none", *flags)
    assert only.returncode == 2 and "training needs at least 2 readable normal images, found 0" in only.stderr


def test_train_takes_the_pictures_of_several_data(normal_folder, tmp_path):
    """The first pictures recorded and those `run --samples` kept later lie in folders of their own;
    `--data` repeated trains on them together (one `--data` took the last one alone), each picture
    once, and INT8 calibrates on the same pictures."""
    import shutil

    pictures = sorted(normal_folder.glob("*.png"))
    first, kept = tmp_path / "good", tmp_path / "samples" / "line1"
    for folder, part in ((first, pictures[:5]), (kept, pictures[5:])):
        folder.mkdir(parents=True)
        for path in part:
            shutil.copy(path, folder)
    (first / "day2").mkdir()  # a folder's subfolders are not read: said, where it was left without a word
    shutil.copy(pictures[0], first / "day2" / "later.png")
    data = [str(first), str(kept / "*.png"), str(first / "*.png")]  # the last takes pictures the first took
    done = edge_ad("train", *(f"--data={one}" for one in data), "--out", tmp_path / "run", "--input-size", 64,
                   "--prototypes", 8)
    assert done.returncode == 0, done.stderr
    assert (f"note: {first}: the pictures of its subfolders day2 (1) are not read, only its own; for all of them, "
            f"give a quoted wildcard, '{first / '**' / '*'}'") in done.stdout
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert record["config"]["data"] == data
    assert record["train_images"] + record["validation_images"] == 12  # each picture once
    exported = edge_ad("export", "--run", tmp_path / "run", "--out", tmp_path / "bundle", "--precision", "int8",
                       "--calib-images", 12)
    assert exported.returncode == 0, exported.stderr
    spec = yaml.safe_load((tmp_path / "bundle" / "bundle.yaml").read_text())
    assert spec["quantization"]["calibration_source"] == data and spec["quantization"]["calibration_images"] == 12


def test_train_and_eval_say_when_16_bit_pictures_of_a_12_bit_camera_read_too_dark(normal_folder, tiny_bundle,
                                                                                   tmp_path):
    """Such pictures read at most 16 of 255: a model trained on them finds the camera's 8-bit frames
    anomalous, and a test set of them says little of a model trained on 8-bit frames (19 of 20
    normal ELPV cells flagged: README). train and eval say so."""
    import json
    import shutil

    twelve_bit = tmp_path / "mono12"  # as a camera tool saves Mono12: 0-4095 in 16-bit files
    twelve_bit.mkdir()
    for path in sorted(normal_folder.glob("*.png")):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.uint32)
        cv2.imwrite(str(twelve_bit / path.name), (grey * 4095 // 255).astype(np.uint16))
    brightest = max(int(read_image(p).max()) for p in twelve_bit.glob("*.png"))
    assert brightest <= 16  # read at the full 16-bit range, value / 257
    dark = edge_ad("train", "--data", twelve_bit, "--out", tmp_path / "dark", "--input-size", 128, "--prototypes", 8)
    assert dark.returncode == 0, dark.stderr
    said = (f"the brightest pixel of all 12 training images is {brightest} of 255. 16-bit files of a 10-, "
            "12- or 14-bit camera read this dark")
    assert f"note: {said}" in dark.stdout
    # the run and its bundle keep what training said, and `doctor` shows it wherever the bundle goes
    export_bundle(tmp_path / "dark", tmp_path / "bundle")
    assert any(line.startswith(f"training     bundle: {said}") for line in doctor(str(tmp_path / "bundle")).lines)
    test_set = shutil.copytree(twelve_bit, tmp_path / "set" / "good")
    evaluated = edge_ad("eval", "--bundle", tiny_bundle, "--data", test_set.parent, check=True)
    assert json.loads(evaluated.stdout)["test_images_dark"] == {"images": 12, "brightest": brightest}
    assert (f"note: the brightest pixel of all 12 test images is {brightest} of 255. 16-bit files of a 10-, 12- or "
            "14-bit camera read this dark") in evaluated.stderr
    eight_bit = shutil.copytree(normal_folder, tmp_path / "set8" / "good").parent
    assert "test_images_dark" not in json.loads(edge_ad("eval", "--bundle", tiny_bundle, "--data", eight_bit,
                                                         check=True).stdout)
    # the README's remedy, shifting the values up to 16 bits, gives back the 8-bit pictures exactly
    for path in twelve_bit.glob("*.png"):
        cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED) << 4)
        assert np.array_equal(read_image(path), read_image(normal_folder / path.name))
    assert brightness_note([picture(read_image(p), 128) for p in twelve_bit.glob("*.png")]) is None


def test_train_says_when_many_pictures_are_near_copies(normal_folder):
    images = [read_image(p) for p in sorted(normal_folder.glob("*.png"))]
    rng = np.random.default_rng(0)
    twice = [picture(np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8), 64)
             for image in images for _ in range(2)]
    cells = [picture(image, 64) for image in images]
    assert copies_note(twice).startswith("24 of the 24 training pictures are near-copies of another")
    assert copies_note(cells + twice[:4]) == copies_note(twice[:4] + cells)  # in any order
    assert copies_note(cells + twice[:4]).startswith("6 of the 16 training pictures")  # 2 cells, 3 times each
    assert copies_note(cells + twice[:1]) is None  # 2 of 13, under a fifth
    assert copies_note(cells) is None


def test_train_says_pictures_of_one_colour_and_refuses_only_those(normal_folder, tmp_path):
    """Pictures of one colour (a covered lens, no light, a blank file) were learnt as normal without
    a word; with nothing else, the run trained and its export failed its check, blaming ONNX Runtime."""
    cells = [picture(read_image(p), 64) for p in sorted(normal_folder.glob("*.png"))[:3]]
    blank = [picture(np.full((48, 64, 3), value, np.uint8), 64) for value in ((0, 0, 0), (255, 0, 0))]  # red too
    assert not any(p.plain for p in cells) and all(p.plain for p in blank)
    assert plain_note(cells + blank, ["a.png", "b.png", "c.png", "black.png", "red.png"]) == (
        "2 of the 5 training pictures are of one colour (black.png, red.png): a covered lens, no light or a blank "
        "file, not a part. The model learns them as normal, so a covered or dark camera on the line would pass every "
        "part: leave them out")
    assert plain_note(cells, ["a.png", "b.png", "c.png"]) is None
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"dark_{i}.png"), np.zeros((48, 64, 3), np.uint8))
    done = edge_ad("train", "--data", tmp_path, "--out", tmp_path / "run", "--input-size", 64)
    assert done.returncode == 2 and "every training picture is of one colour (each pixel alike: a covered lens, no " \
        "light or blank files), with no part to learn" in done.stderr and not (tmp_path / "run").exists()


def test_train_says_when_some_pictures_are_grey_and_the_others_colour(normal_folder):
    """A folder of two cameras' pictures, or some saved in grey: the bundle records colour, and a
    grey camera's frames are then scored in colour by a model that learned grey ones as normal."""
    cells = [read_image(p) for p in sorted(normal_folder.glob("*.png"))]  # ELPV's: grey
    tinted = [np.clip(cell * (0.9, 1.0, 1.1), 0, 255).astype(np.uint8) for cell in cells]  # a colour camera's
    names = [f"{i}.png" for i in range(len(cells))]
    few_grey = colour_note([picture(image, 64) for image in tinted[:-2] + cells[-2:]], names)
    assert few_grey.startswith("2 of the 12 training pictures are grey and the others colour (10.png, 11.png): ")
    few_colour = colour_note([picture(image, 64) for image in tinted[:4] + cells[4:]], names)
    assert few_colour.startswith("4 of the 12 training pictures are colour and the others grey (0.png, 1.png, 2.png, "
                                 "...): ")
    assert colour_note([picture(image, 64) for image in cells], names) is None
    assert colour_note([picture(image, 64) for image in tinted], names) is None


def test_train_says_when_some_pictures_are_shaped_unlike_the_others(normal_folder):
    """A folder of two cameras' or framings' pictures: each shape is squeezed to the input its own
    way, and the median shape the bundle records hides the mix."""
    cells = [read_image(p) for p in sorted(normal_folder.glob("*.png"))]  # 300x300
    names = [f"{i}.png" for i in range(len(cells))]
    wider = [cv2.resize(cell, (400, 300)) for cell in cells]  # 4:3
    said = mixed_shapes_note([picture(image, 64) for image in cells[:9] + wider[9:]], names, 64)
    assert said.startswith("3 of the 12 training pictures are shaped unlike the others (400x300 where most are "
                           "300x300: 9.png, 10.png, 11.png): the 64x64 input squeezes each shape its own way")
    turned = mixed_shapes_note([picture(image, 64) for image in wider[:8] + [w.transpose(1, 0, 2) for w in wider[8:]]],
                               names, [64, 96])  # four taken turned a quarter
    assert turned.startswith("4 of the 12 training pictures are shaped unlike the others (300x400 where most are "
                             "400x300: 8.png, 9.png, 10.png, ...): the 96x64 input")
    half = mixed_shapes_note([picture(image, 64) for image in cells[:6] + wider[6:]], names, 64)
    assert half.startswith("6 of the 12 training pictures are shaped unlike the others")  # no median between them
    cropped = [cv2.resize(cell, (280 + 10 * i, 300)) for i, cell in enumerate(cells[:10])]  # 280 to 370 wide
    assert mixed_shapes_note([picture(image, 64) for image in cropped], names, 64) is None  # within 1.2 of 320 wide
    assert mixed_shapes_note([picture(image, 64) for image in cells], names, 64) is None


def test_a_run_folder_that_could_not_be_written_is_refused_before_any_image_is_read(tmp_path):
    """It was found when the run was written, after the features and prototypes (minutes of a
    large training set; the data here does not even exist); nothing is made, as for any failed run."""
    (tmp_path / "taken").write_text("")
    for out, said in ((UNWRITABLE / "run", f"{UNWRITABLE}/run: cannot create the run folder ("),
                      (tmp_path / "taken", f"{tmp_path}/taken: is a file, not a run folder")):
        with pytest.raises(EdgeAdError, match=re.escape(said)):
            train(TrainConfig(data=str(tmp_path / "nowhere")), out)


def test_an_unknown_backbone_is_refused_before_any_image_is_read(tmp_path):
    with pytest.raises(DataError, match="backbone 'resnet18' is not one of efficientnet-lite0, efficientnet-lite1"):
        train(TrainConfig(data=str(tmp_path / "nowhere"), backbone="resnet18"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_spots_score_above_normal_images(detector, mvtec_category):
    def scores(folder):
        return [detector(cv2.imread(str(p))).score for p in sorted((mvtec_category / "test" / folder).iterdir())]

    assert min(scores("spot")) > max(scores("good"))


def test_bad_frame_then_good_frame(detector):
    with pytest.raises(ImageError, match="dtype float64"):
        detector(np.zeros((64, 64, 3)))
    assert np.isfinite(detector(np.full((64, 64, 3), 128, np.uint8)).score)


def test_batch_equals_single(detector):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (100 + 10 * i, 120, 3), dtype=np.uint8) for i in range(3)]
    batched = [r.score for r in detector.batch(frames)]
    single = [detector(f).score for f in frames]
    assert batched == pytest.approx(single, rel=1e-5)
    assert detector.batch([]) == []  # no frame ready on any camera
    with pytest.raises(ImageError, match=r"frames\[1\]: dtype float32"):
        detector.batch([frames[0], frames[1].astype(np.float32)])


@pytest.mark.parametrize("bundle_name", ["tiny_bundle", "tiny_bridge_bundle"])
def test_pytorch_reference_backend_agrees_with_onnx_runtime(bundle_name, request, mvtec_category):
    bundle = request.getfixturevalue(bundle_name)
    onnx = Detector.load(bundle, backend="onnxruntime")
    reference = Detector.load(bundle, backend="pytorch")
    assert (onnx.backend, reference.backend) == ("onnxruntime", "pytorch")
    for path in sorted(mvtec_category.rglob("test/*/*.png")):
        frame = cv2.imread(str(path))
        a, b = onnx(frame), reference(frame)
        assert np.corrcoef(a.raw_map.ravel(), b.raw_map.ravel())[0, 1] >= 0.999
        assert a.score == pytest.approx(b.score, rel=1e-3, abs=1e-6)


def test_unknown_backend_and_missing_precision_are_refused(tiny_bundle):
    with pytest.raises(EdgeAdError, match="backend .cuda-magic. is not one of auto, onnxruntime, tensorrt, pytorch"):
        Detector.load(tiny_bundle, backend="cuda-magic")
    with pytest.raises(BundleError, match=r"holds fp32 graphs, not int8 \(export with --precision int8\)"):
        Detector.load(tiny_bundle, precision="int8")
    with pytest.raises(BundleError, match="precision 'int4' is not one of fp32, fp16, int8"):  # not "export with" it
        Detector.load(tiny_bundle, precision="int4")


def test_a_bundle_s_own_file_and_a_training_run_are_told_apart_from_a_bundle(tiny_bundle):
    """Both are what a person points --bundle at by mistake: the file inside the bundle, and the
    run folder train wrote (the fixture's bundle was exported from run/ beside it)."""
    with pytest.raises(BundleError, match=f"bundle.yaml: a bundle's own file; give its folder, {tiny_bundle},"):
        Detector.load(tiny_bundle / "bundle.yaml")
    run = tiny_bundle.parent / "run"
    with pytest.raises(BundleError, match=f"a training run, not a bundle: edge-ad export --run {run} --out BUNDLE"):
        Detector.load(run)


def test_onnx_sessions_spin_within_a_run_and_not_between_graphs(tiny_bridge_bundle):
    # Several sessions run one after another per frame; threads still spinning after one would
    # steal the cores of the next (measured: the prior graph 2.5x slower, the bridge bundle
    # 41.6 -> 25.8 fps), while spinning within a run saves waking them for every operator.
    detector = Detector.load(tiny_bridge_bundle, backend="onnxruntime")
    assert detector.spin
    for graph in detector._graphs.values():
        options = graph.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_onnx_sessions_can_sleep_between_operators(tiny_bridge_bundle):
    # spin=False (edge-ad run --no-spin): one camera at its frame rate got a lower p99 latency.
    detector = Detector.load(tiny_bridge_bundle, backend="onnxruntime", spin=False)
    assert not detector.spin
    for graph in detector._graphs.values():
        options = graph.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_graph_exports_with_a_torch_from_before_the_dynamo_keyword(monkeypatch, tmp_path):
    """torch before 2.5 (pyproject admits 2.2) has no `dynamo` keyword: export stopped there with
    "export() got an unexpected keyword argument 'dynamo'" (seen with torch 2.2.2)."""
    import onnxruntime

    from export.onnx_export import _export_graph

    export = torch.onnx.export
    tracing = {"dynamo": False} if "dynamo" in inspect.signature(export).parameters else {}  # this torch's

    def export_of_torch_2_2(module, args, f, *, opset_version, input_names, output_names, dynamic_axes):
        return export(module, args, f, **tracing, opset_version=opset_version, input_names=input_names,
                      output_names=output_names, dynamic_axes=dynamic_axes)

    monkeypatch.setattr(torch.onnx, "export", export_of_torch_2_2)
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    _export_graph(conv, (torch.zeros(1, 3, 8, 8),), tmp_path / "conv.onnx", {"image": True}, ["features"])
    session = onnxruntime.InferenceSession(str(tmp_path / "conv.onnx"), providers=["CPUExecutionProvider"])
    scored = session.run(None, {"image": np.ones((2, 3, 8, 8), np.float32)})[0]  # a batch of 2: the axis is dynamic
    with torch.no_grad():
        expected = conv(torch.ones(2, 3, 8, 8)).numpy()
    np.testing.assert_allclose(scored, expected, rtol=1e-5, atol=1e-5)
