"""Metrics against hand-computed matrices (PROTOCOL.md §1)."""

import math

import numpy as np
import pytest

from cl_bench.analysis.metrics import holdout_transfer, mean_std, stream_metrics
from cl_bench.errors import UserError

# rows: after task 0 (zero-shot), 1, 2, 3; columns: datasets 1..3 in task order
ACC = np.array(
    [
        [50.0, 40.0, 30.0],  # zero-shot: never enters a metric
        [80.0, 42.0, 28.0],
        [70.0, 90.0, 26.0],
        [60.0, 85.0, 95.0],
    ]
)


def test_transfer_average_last_by_hand():
    m = stream_metrics(ACC)
    assert math.isnan(m.transfer[0])  # dataset 1 has no Transfer
    assert m.transfer[1] == pytest.approx(42.0)  # acc[1,2]
    assert m.transfer[2] == pytest.approx((28.0 + 26.0) / 2)  # acc[1,3], acc[2,3]
    assert m.transfer_mean == pytest.approx((42.0 + 27.0) / 2)
    assert m.average.tolist() == pytest.approx([70.0, (42 + 90 + 85) / 3, (28 + 26 + 95) / 3])
    assert m.last.tolist() == [60.0, 85.0, 95.0]
    assert m.last_mean == pytest.approx(80.0)
    # gain = mean_j acc[j,j] - acc[0,j]; forgetting = mean_{j<T} acc[j,j] - acc[T,j]
    assert m.gain == pytest.approx(((80 - 50) + (90 - 40) + (95 - 30)) / 3)
    assert m.forgetting == pytest.approx(((80 - 60) + (90 - 85)) / 2)


def test_zero_shot_row_is_ignored():
    other = ACC.copy()
    other[0] = [0.0, 0.0, 0.0]
    a, b = stream_metrics(ACC), stream_metrics(other)
    assert np.allclose(np.nan_to_num(a.transfer), np.nan_to_num(b.transfer))
    assert np.allclose(a.average, b.average) and np.allclose(a.last, b.last)


def test_single_task():
    m = stream_metrics(np.array([[30.0], [70.0]]))
    assert math.isnan(m.transfer_mean)
    assert m.average_mean == 70.0 and m.last_mean == 70.0
    assert m.gain == 40.0 and math.isnan(m.forgetting)


def test_zero_shot_identity():
    zs = np.array([61.0, 44.0, 90.0])
    m = stream_metrics(np.tile(zs, (4, 1)))
    assert np.allclose(m.transfer[1:], zs[1:])
    assert np.allclose(m.average, zs) and np.allclose(m.last, zs)
    assert m.gain == 0.0 and m.forgetting == 0.0


def test_missing_row_is_an_error():
    broken = ACC.copy()
    broken[2, 1] = np.nan
    with pytest.raises(UserError, match="missing accuracies after task"):
        stream_metrics(broken)
    with pytest.raises(UserError):
        stream_metrics(ACC[:, :2])  # not (T+1) x T


def test_holdout_transfer_averages_tasks_only():
    h = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    assert holdout_transfer(h).tolist() == [40.0, 50.0]


def test_mean_std_sample_std():
    mean, std, n = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and n == 3
    assert std == pytest.approx(
        np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert math.isnan(mean_std([5.0])[1])
