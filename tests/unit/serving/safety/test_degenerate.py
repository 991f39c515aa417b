"""DegenerateFilter: NaN/Inf, constant, blank and duplicate outputs are blocked; a normal diverse batch passes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ganops.serving.safety import DegenerateFilter, RequestContext, Sample, Verdict, make_samples

CTX = RequestContext("req")


def digits(n: int, size: int = 8) -> np.ndarray:
    """n distinct real digit images as NCHW floats in [-1, 1] (upscaled by repetition)."""
    images = load_digits().images[:n].astype(np.float32) / 16.0 * 2.0 - 1.0
    factor = size // 8
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)[:, None]


def outcomes(samples: list[Sample], flt: DegenerateFilter | None = None) -> list[str]:
    return [v.outcome for v in (flt or DegenerateFilter()).check(samples, CTX)]


def test_normal_diverse_batches_pass() -> None:
    for size in (8, 16, 32):
        samples = make_samples(digits(32, size))
        verdicts = DegenerateFilter().check(samples, CTX)
        assert [v.outcome for v in verdicts] == ["pass"] * 32, [v.reason for v in verdicts]
    rng = np.random.default_rng(0)
    noise = make_samples(rng.uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32))
    assert outcomes(noise) == ["pass"] * 16


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_blocked(bad: float) -> None:
    batch = digits(4)
    batch[2, 0, 3, 3] = bad
    samples = make_samples(batch)
    assert samples[2].pixels.dtype == np.uint8  # encoding hides it; the raw data does not
    verdicts = DegenerateFilter().check(samples, CTX)
    assert [v.outcome for v in verdicts] == ["pass", "pass", "block", "pass"]
    assert "non-finite" in verdicts[2].reason


def test_constant_and_blank_images_are_blocked() -> None:
    batch = digits(6, 16)
    batch[0] = 0.1  # constant mid-grey
    batch[1] = -1.0  # all black
    batch[2] = 1.0  # all white
    batch[3] = -1.0
    batch[3, 0, 5, 5] = 1.0  # black but one pixel: still blank (255 of 256 pixels black)
    batch[4] = np.random.default_rng(1).normal(0.2, 0.002, batch[4].shape)  # flat with tiny noise
    verdicts = DegenerateFilter().check(make_samples(batch), CTX)
    assert [v.outcome for v in verdicts] == ["block"] * 5 + ["pass"]
    assert "constant" in verdicts[0].reason and "constant" in verdicts[1].reason
    assert "black" in verdicts[3].reason
    assert "constant" in verdicts[4].reason


def test_alpha_channel_does_not_hide_a_blank_image() -> None:
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[..., 3] = np.random.default_rng(0).integers(0, 256, (16, 16))  # noisy alpha, black colour
    assert outcomes([Sample(0, pixels)]) == ["block"]


def test_near_duplicates_block_the_later_copy() -> None:
    batch = digits(5, 16)
    batch[3] = batch[1] + np.random.default_rng(0).normal(0, 0.01, batch[1].shape)  # near copy of sample 1
    batch[4] = batch[1]  # exact copy
    verdicts = DegenerateFilter().check(make_samples(batch), CTX)
    assert [v.outcome for v in verdicts] == ["pass", "pass", "pass", "block", "block"]
    assert verdicts[3].reason == "degenerate: near-duplicate of sample 1 in this response"
    assert verdicts[3].score is not None and verdicts[3].score < 0.05


def test_mode_collapse_keeps_only_the_first() -> None:
    batch = np.repeat(digits(1, 16), 6, axis=0)
    assert outcomes(make_samples(batch)) == ["pass"] + ["block"] * 5


def test_duplicate_check_can_be_disabled() -> None:
    batch = np.repeat(digits(1, 16), 3, axis=0)
    assert outcomes(make_samples(batch), DegenerateFilter(check_duplicates=False)) == ["pass"] * 3


def test_points_nan_blocked_duplicates_allowed() -> None:
    points = np.array([[0.5, 1.0], [np.nan, 0.0], [0.5, 1.0], [np.inf, 1.0]])
    assert outcomes(make_samples(points)) == ["pass", "block", "pass", "block"]


def test_pixels_without_raw_are_checked_too() -> None:
    flat = Sample(0, np.full((8, 8, 3), 77, dtype=np.uint8))
    varied = Sample(1, np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert outcomes([flat, varied]) == ["block", "pass"]


# ------------------------------------------------------------------------ pinned by the mutation audit
def grey(values: list[int], channels: int = 1, side: int = 16) -> Sample:
    """An image whose pixels take `values` in equal shares (all channels alike), as uint8 HWC."""
    flat = np.repeat(np.array(values, dtype=np.uint8), side * side // len(values))
    return Sample(0, np.repeat(flat.reshape(side, side, 1), channels, axis=2))


def test_thresholds_are_inclusive_where_documented() -> None:
    # std exactly std_eps is not "below" it: 100/102 in halves has variance 1, std 1/255 on the 0-1 scale
    assert outcomes([grey([100, 102])], DegenerateFilter(std_eps=1 / 255)) == ["pass"]
    assert outcomes([grey([100, 102])], DegenerateFilter(std_eps=1 / 255 + 1e-9)) == ["block"]
    # a truly constant image has std 0, below any positive std_eps
    verdict = DegenerateFilter(std_eps=0.003).check([grey([100])], CTX)[0]
    assert (verdict.outcome, verdict.score) == ("block", 0.0)
    # "at least blank_fraction" black or white, a pixel at black_level/white_level counts (RGB: channel mean)
    half = DegenerateFilter(blank_fraction=0.5)
    black = half.check([grey([8, 200], channels=3)], CTX)[0]
    assert (black.outcome, black.reason, black.score) == ("block", "degenerate: blank image (50.0% black)", 0.5)
    white = half.check([grey([247, 50], channels=3)], CTX)[0]
    assert (white.filter, white.outcome, white.reason) == ("degenerate", "block",
                                                           "degenerate: blank image (50.0% white)")
    assert outcomes([grey([9, 200], channels=3), grey([246, 50], channels=3)], half) == ["pass", "pass"]


def test_two_copies_are_enough_for_a_duplicate_and_the_distance_bound_is_exclusive() -> None:
    pair = make_samples(np.repeat(digits(1, 16), 2, axis=0))
    assert outcomes(pair) == ["pass", "block"]
    near = digits(2, 16)
    near[1] = near[0] + 0.05
    found = DegenerateFilter(duplicate_distance=10.0).check(make_samples(near), CTX)[1]
    assert found.outcome == "block" and found.score is not None and found.score > 0
    assert outcomes(make_samples(near), DegenerateFilter(duplicate_distance=found.score)) == ["pass", "pass"]


def test_several_requests_are_judged_each_on_its_own() -> None:
    first = make_samples(digits(2, 16))
    copies = make_samples(np.repeat(digits(1, 16), 2, axis=0))
    blank = make_samples(np.full((1, 1, 16, 16), -1.0, dtype=np.float32))
    groups = DegenerateFilter().check_groups([first, copies, blank, copies], [CTX] * 4)
    assert [[v.outcome for v in g] for g in groups] == [["pass", "pass"], ["pass", "block"], ["block"],
                                                        ["pass", "block"]]
    assert groups[1][1].reason == "degenerate: near-duplicate of sample 0 in this response"
    assert all(v.filter == "degenerate" for g in groups for v in g)


def test_integer_raw_data_has_no_non_finite_values() -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    raw = pixels.transpose(2, 0, 1).astype(np.int64)  # a generator that hands over integers
    assert DegenerateFilter().check([Sample(0, pixels, raw=raw)], CTX) == [Verdict("degenerate", "pass")]
