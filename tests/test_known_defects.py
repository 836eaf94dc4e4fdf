"""Known defects at training time: the few-shot protocol's picks and the DPDL-style push-away."""

import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from edge_ad.datasets import elpv_few_shot, load_defects
from edge_ad.errors import DataError
from export.known_defects import TOP_FRACTION, anomalous_patches, push_away


def test_few_shot_protocol_picks_are_fixed_anomalies():
    ten = elpv_few_shot(10)
    assert len({s.name for s in ten}) == 10 and all(s.label == 1 for s in ten)
    assert [s.name for s in ten] == [s.name for s in elpv_few_shot(10)]
    with pytest.raises(DataError, match="elpv:x: expected elpv:<count>"):
        load_defects("elpv:x")
    with pytest.raises(DataError, match="not a folder"):
        load_defects("/nowhere")


def test_few_shot_benchmark_refuses_a_bad_count_before_training(tmp_path):
    from export.fewshot import few_shot

    with pytest.raises(DataError, match="elpv:0: the few-shot protocol draws 1 to"):
        few_shot([10, 0], "prototype", tmp_path)
    assert not (tmp_path / "baseline").exists()


def test_push_away_takes_out_only_the_prototype_the_defects_land_on():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(20_000, 8, generator=g)
    prototypes = torch.cat([normal[:63], torch.full((1, 8), 6.0)])  # the last one: a contaminated training patch
    defect = torch.full((200, 8), 6.0) + 0.1 * torch.randn(200, 8, generator=g)
    kept, removed = push_away(prototypes, normal, defect, seed=0)
    assert removed == 1 and not (kept == 6.0).all(dim=1).any()
    # A defect patch or two on a well-used normal prototype is no evidence: nothing goes.
    kept, removed = push_away(prototypes[:63], normal, normal[:2] + 0.01, seed=0)
    assert removed == 0 and kept.shape[0] == 63


def test_anomalous_patches_are_the_farthest_tenth_of_each_image():
    prototypes = torch.zeros(1, 4)
    features = torch.zeros(2, 4, 10, 10)
    features[0, :, 0, :] = 5.0  # image 0: its first row is far from the prototype
    features[1, :, :, 0] = 7.0  # image 1: its first column
    picked = anomalous_patches(features, prototypes)
    assert picked.shape == (2 * round(TOP_FRACTION * 100), 4)
    assert set(picked[:, 0].tolist()) == {5.0, 7.0}


def test_train_with_defects_records_what_it_took_out(mvtec_category, tmp_path):
    rejects = shutil.copytree(mvtec_category / "test" / "spot", tmp_path / "rejects")
    (rejects / "crack").mkdir()  # a subfolder's pictures are not read: said, with the wildcard that reads them
    shutil.copy(rejects / "000.png", rejects / "crack")
    shutil.copy(mvtec_category / "ground_truth" / "spot" / "000_mask.png", rejects)  # its mask: no picture of a part
    (rejects / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")  # a phone's: not read, and said
    out = subprocess.run(
        [sys.executable, "-m", "edge_ad", "train", "--data", str(mvtec_category), "--out", str(tmp_path / "run"),
         "--input-size", "128", "--prototypes", "64", "--defects", str(rejects)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (f"note: {rejects}: the pictures of its subfolders crack (1) are not read, only its own; for all of "
            f"them, give a quoted wildcard, '{rejects / '**' / '*'}'") in out.stdout
    assert f"note: {rejects}: 1 mask(s) of its pictures (000_mask.png) left out" in out.stdout
    assert f"note: {rejects}: 1 picture in formats not read (.HEIC, as IMG_0001.HEIC) left out" in out.stdout
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    removed = record["prototypes_removed_by_defects"]
    assert record["prototypes"] == 64 - removed
    assert f"known defects: 4 images; {removed} of 64 prototypes taken out" in out.stdout


def test_a_picture_both_in_data_and_in_defects_is_refused_before_training(mvtec_category, tmp_path):
    """`train --data 'site/**/*' --defects site/crack` took the rejected parts as good ones too, as
    did a rejected part copied into good/; and a --defects folder that is not there stopped
    training only once the prototypes were made."""
    from export.train import TrainConfig, train

    site = shutil.copytree(mvtec_category / "test", tmp_path / "site")
    config = TrainConfig(data=str(site / "**" / "*"), defects=str(site / "spot"), input_size=128, prototypes=64)
    with pytest.raises(DataError, match=rf"4 known defect\(s\) of --defects are pictures of --data too "
                                        rf"\({site / 'spot' / '000.png'}, .*, \.\.\.\): a part is good or rejected"):
        train(config, tmp_path / "run")
    shutil.copy(site / "spot" / "002.png", site / "good" / "part_17.png")
    with pytest.raises(DataError, match=re.escape(f"1 known defect(s) of --defects are pictures of --data too "
                                                  f"({site / 'spot' / '002.png'} = {site / 'good' / 'part_17.png'})")):
        train(TrainConfig(data=str(site / "good"), defects=str(site / "spot"), input_size=128, prototypes=64),
              tmp_path / "run")
    with pytest.raises(DataError, match="/nowhere: not a folder of defect images"):
        train(TrainConfig(data=str(site / "good"), defects="/nowhere"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
