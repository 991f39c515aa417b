"""Pre-generation request checks: n, image size, labels, truncation, format."""

from __future__ import annotations

import math

from ganops.serving.safety import RequestPolicy, check_request


def test_a_reasonable_request_has_no_problems() -> None:
    assert check_request(16, None, None, image_size=32) == []
    assert check_request(1, 3, 0.7, image_size=28, num_classes=10, output_format="png") == []
    assert check_request(64, None, 1.0) == []  # 2-D models have no image size


def test_n_limits() -> None:
    assert check_request(0) == ["n must be at least 1 (got 0)"]
    assert check_request(65) == ["n must be at most 64 (got 65)"]
    assert check_request(True) == ["n must be an integer, not bool"]
    assert check_request(500, policy=RequestPolicy(max_n=1000)) == []


def test_image_size_and_pixel_budget() -> None:
    assert check_request(1, image_size=512) == ["images of 512 px exceed the limit of 256 px per side"]
    policy = RequestPolicy(max_pixels_per_request=10 * 64 * 64)
    (problem,) = check_request(11, image_size=64, policy=policy)
    assert "pixel budget" in problem and "at most 10" in problem
    assert check_request(10, image_size=64, policy=policy) == []


def test_labels() -> None:
    assert check_request(1, 3) == ["this model is not conditional: omit label"]
    assert check_request(1, 10, num_classes=10) == ["label must be in [0, 9] (got 10)"]
    assert check_request(1, -1, num_classes=10) == ["label must be in [0, 9] (got -1)"]
    assert check_request(1, "3", num_classes=10) == ["label must be an integer class index, not str"]  # type: ignore[arg-type]
    restricted = RequestPolicy(allowed_labels=frozenset({0, 1, 2}))
    assert check_request(1, 2, num_classes=10, policy=restricted) == []
    assert check_request(1, 5, num_classes=10, policy=restricted) == ["label 5 is not allowed"]
    # No label on a restricted conditional model would sample forbidden classes.
    assert check_request(1, None, num_classes=10, policy=restricted) == [
        "this model restricts labels: give one of 0, 1, 2"
    ]
    assert check_request(1, None, num_classes=3, policy=restricted) == []


def test_truncation_and_format() -> None:
    assert check_request(1, truncation=0.0) == ["truncation must be in (0.0, 2.0] (got 0.0)"]
    assert check_request(1, truncation=2.5) == ["truncation must be in (0.0, 2.0] (got 2.5)"]
    assert check_request(1, truncation=math.nan) == ["truncation must be a finite number"]
    assert check_request(1, output_format="gif") == ["format must be one of jpeg, npy, png (got 'gif')"]


def test_every_problem_is_reported() -> None:
    problems = check_request(0, 99, -1.0, image_size=1024, num_classes=10, output_format="bmp")
    assert len(problems) == 5
