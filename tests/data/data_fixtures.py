"""Helpers for the data tests (importable by name; fixtures stay in conftest.py)."""

import numpy as np


def make_city(**overrides):
    """A tiny valid CityData with overridable fields, for validation tests."""
    from stllm.data import CityData, Region

    t, n = 6, 3
    kw = dict(
        values=np.arange(t * n * 2, dtype=np.float32).reshape(t, n, 2),
        timestamps=np.datetime64("2024-01-01T00:00") + np.arange(t) * np.timedelta64(30, "m"),
        freq="30min",
        channels=("inflow", "outflow"),
        regions=tuple(Region(str(i), f"r{i}", 40.7 + i / 100, -74.0) for i in range(n)),
        source="tiny.npz",
    )
    kw.update(overrides)
    return CityData(**kw)
