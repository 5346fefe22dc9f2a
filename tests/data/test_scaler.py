import numpy as np
import pytest
import torch
from data_fixtures import make_city

from stllm.data import STScaler


def test_fit_uses_only_training_regions_and_times(city):
    train_ids, sl = city.region_ids[:5], slice(0, 300)
    s = STScaler.fit(city, regions=train_ids, time=sl)
    sub = city.values[sl][:, :5].astype(np.float64)
    np.testing.assert_allclose(s.mean, sub.mean((0, 1)), rtol=1e-9)
    np.testing.assert_allclose(s.std, sub.std((0, 1)), rtol=1e-9)
    from dataclasses import replace

    poisoned = city.values.copy()
    poisoned[:, 5:] *= 100  # evaluation regions
    poisoned[300:] += 1000  # evaluation times
    assert STScaler.fit(replace(city, values=poisoned), regions=train_ids, time=sl) == s


@pytest.mark.parametrize("log1p", [False, True])
def test_inverse_is_exact(city, log1p):
    s = STScaler.fit(city, log1p=log1p)
    x = city.values[:100]
    z = s.transform(x)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 1.0
    np.testing.assert_allclose(s.inverse(z), x, rtol=1e-5, atol=1e-4)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(s.inverse(s.transform(x64)), x64, rtol=1e-12, atol=1e-9)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(s.inverse(s.transform(t)).numpy(), x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s.transform(t).numpy(), z, rtol=1e-6, atol=1e-6)


def test_json_round_trip(tmp_path, city):
    s = STScaler.fit(city, log1p=True)
    assert STScaler.from_json(s.to_json()) == s
    s.save(tmp_path / "scaler.json")
    assert STScaler.load(tmp_path / "scaler.json") == s
    (tmp_path / "bad.json").write_text('{"mean": [1.0]}')
    with pytest.raises(ValueError, match=r"bad.json.*missing field\(s\) \['std'\]"):
        STScaler.load(tmp_path / "bad.json")


def test_mask_excluded_and_bad_inputs():
    v = np.ones((6, 3, 2), np.float32)
    v[0, 0, 0] = np.nan
    mask = np.isfinite(v)
    s = STScaler.fit(make_city(values=v, mask=mask))
    assert s.mean == (1.0, 1.0)  # the masked (zero-filled) value is ignored
    with pytest.raises(ValueError, match="3 channels"):
        s.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown region ids"):
        STScaler.fit(make_city(), regions=["9"])
    with pytest.raises(ValueError, match="positive"):
        STScaler((0.0,), (0.0,))
