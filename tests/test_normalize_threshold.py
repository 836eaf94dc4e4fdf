import numpy as np
import pytest

from calibration.threshold import expected_rate_above, threshold_at_false_alarm_rate
from edge_ad.normalize import Quantiles, fit_quantiles


def test_quantiles_of_pooled_maps_hand_computed():
    # 2 maps holding 0..1999 between them: quantile 0.9 = 1799.1, 0.995 = 1989.005 (linear).
    maps = np.arange(2000, dtype=np.float32).reshape(2, 20, 50)
    q = fit_quantiles(maps, 0.9, 0.995)
    assert q.value_alpha == pytest.approx(1799.1)
    assert q.value_beta == pytest.approx(1989.005)
    out = q.apply(np.array([1799.1, 1989.005, 1799.1 + 2 * (1989.005 - 1799.1)]))
    assert out == pytest.approx([0.0, 0.1, 0.2], abs=1e-6)


def test_apply_is_linear_and_unclipped():
    q = Quantiles(0.9, 0.995, 2.0, 4.0)
    assert q.apply(np.array([0.0, 2.0, 3.0, 40.0])) == pytest.approx([-0.1, 0.0, 0.05, 1.9])


def test_flat_or_bad_maps_are_refused():
    with pytest.raises(ValueError, match="flat"):
        fit_quantiles(np.ones((3, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        fit_quantiles(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="alpha < beta"):
        fit_quantiles(np.arange(10.0), 0.9, 0.5)


def test_threshold_at_false_alarm_rate():
    scores = np.arange(1000, dtype=float)
    threshold = threshold_at_false_alarm_rate(scores, 0.01)
    assert np.mean(scores > threshold) == pytest.approx(0.01, abs=0.001)
    # Too few frames to resolve 1 in 1000: nothing seen so far may alarm.
    assert threshold_at_false_alarm_rate(scores[:50], 0.001) == 49.0
    with pytest.raises(ValueError):
        threshold_at_false_alarm_rate([], 0.01)


@pytest.mark.parametrize("frames", [6, 30, 113, 400])
def test_the_rate_a_threshold_stands_for_is_what_new_normal_frames_exceed(frames):
    """Skewed scores (as maxima of maps are): the share of new normal frames at or above a
    threshold set on `frames` of them, over many draws, is expected_rate_above's."""
    rng = np.random.default_rng(frames)
    shares = []
    for _ in range(3000):
        threshold = threshold_at_false_alarm_rate(rng.gamma(2.0, 1.0, frames), 0.01)
        shares.append(np.mean(rng.gamma(2.0, 1.0, 200) >= threshold))
    expected = expected_rate_above(frames, 0.01)
    if frames < 100:  # too few for 1 %: their maximum
        assert expected == 1 / (frames + 1)
    else:  # the interpolated 99th percentile: a little more than 1 %
        assert 0.01 < expected < 0.02
    assert np.mean(shares) == pytest.approx(expected, rel=0.1)
