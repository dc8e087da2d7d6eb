"""Sample quality beside its real-data floor and its seed-to-seed spread (``sdmc.metrics.quality``)."""

from __future__ import annotations

import pytest
import torch

from sdmc.data import digits_arrays
from sdmc.metrics.digits import digits_scores
from sdmc.metrics.fid import MetricError
from sdmc.metrics.quality import DIGITS_HELD_OUT, Quality, digits_floor, digits_quality, floor_note


def test_floor_is_the_held_out_digits_at_the_same_n():
    test, _ = digits_arrays(16, train=False)
    assert len(test) == DIGITS_HELD_OUT == 360
    full = digits_floor(360, 16)
    assert full["digits_fid"] == pytest.approx(digits_scores(test)["digits_fid"], rel=1e-9)
    f64 = digits_floor(64, 16)  # a fixed subset: the same every time
    assert f64 == digits_floor.__wrapped__(64, 16)
    assert f64["digits_fid"] > full["digits_fid"]  # FID is biased upwards at small n: the floor moves with n
    assert f64["digits_is"] > 8  # real digits: confidently classified, all classes
    assert digits_floor(361, 16) is None and "held-out digits are 360" in floor_note(361)
    assert floor_note(360) == ""
    with pytest.raises(MetricError, match="n >= 2"):
        digits_floor(1)


def test_quality_reports_mean_spread_and_floor():
    q = Quality(
        256,
        [0, 1, 2],
        [
            {"digits_fid": 10.0, "digits_is": 9.0},
            {"digits_fid": 12.0, "digits_is": 9.2},
            {"digits_fid": 14.0, "digits_is": 9.4},
        ],
        floor={"digits_fid": 5.0, "digits_is": 9.9},
    )
    assert q.mean == pytest.approx({"digits_fid": 12.0, "digits_is": 9.2})
    assert q.std["digits_fid"] == pytest.approx(2.0)  # sample std (ddof 1)
    line = q.line()
    assert line.startswith("digits-FID 12.0 ± 2.0 (floor 5.0)  digits-IS 9.20 ± 0.20 (floor 9.90)")
    assert "mean ± std over 3 seeds 0,1,2" in line and "floor = 256 held-out real digits" in line
    assert q.within_spread("digits_fid", 17.9) and not q.within_spread("digits_fid", 18.1)  # 3 std
    d = q.to_dict()
    assert d["std"]["digits_fid"] == pytest.approx(2.0) and d["floor"]["digits_fid"] == 5.0
    one = Quality(500, [7], [{"digits_fid": 3.0}], None, floor_note(500))
    assert one.std == {"digits_fid": None} and "1 seed (7): no spread" in one.line()
    assert "no real-data floor at n=500" in one.line() and one.within_spread("digits_fid", 3.0)
    assert "no seed spread" in Quality(10, [None], [{"digits_fid": 3.0}]).line()
    with pytest.raises(MetricError):
        Quality(10, [0, 1], [{"digits_fid": 1.0}])


def test_digits_quality_samples_every_seed_and_attaches_the_floor():
    test, _ = digits_arrays(16, train=False)

    def real(seed: int) -> torch.Tensor:  # a perfect generator: held-out digits, a different draw per seed
        return test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:100]]

    keep: dict = {}
    q = digits_quality(real, 100, seeds=(0, 1, 2), keep=keep)
    assert q.seeds == [0, 1, 2] and sorted(keep) == [0, 1, 2] and q.floor is not None
    assert len({round(p["digits_fid"], 6) for p in q.per_seed}) == 3 and q.std["digits_fid"] > 0
    # a perfect generator scores like the floor: within the seed spread of it
    assert q.within_spread("digits_fid", q.floor["digits_fid"], k=4)
    noise = digits_quality(
        lambda s: torch.rand(100, 1, 16, 16, generator=torch.Generator().manual_seed(s)) * 2 - 1, 100
    )
    assert noise.mean["digits_fid"] > 10 * q.floor["digits_fid"]
    with pytest.raises(MetricError, match="gave 99 images"):
        digits_quality(lambda s: test[:99], 100)
