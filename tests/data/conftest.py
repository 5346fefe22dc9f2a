"""Shared fixtures: a small synthetic city, its dataset and an offline tokenizer trained once."""

from __future__ import annotations

import pytest

from stllm.data import STInstructionDataset, STScaler, synthetic_city, train_tokenizer
from stllm.data.loaders import data_root
from stllm.data.prompts import ChatFormatter


@pytest.fixture(scope="session")
def city():
    return synthetic_city(seed=3, n_regions=12, days=16)


@pytest.fixture(scope="session")
def scaler(city):
    return STScaler.fit(city, regions=city.region_ids[:8], time=slice(0, 480))


@pytest.fixture(scope="session")
def dataset(city, scaler):
    return STInstructionDataset(city, scaler)


@pytest.fixture(scope="session")
def tokenizer(dataset):
    fmt = ChatFormatter()
    texts = []
    for i in range(0, len(dataset), max(1, len(dataset) // 150)):
        p, a = fmt(dataset[i]["conversation"])
        texts.append(p + a)
    events = STInstructionDataset(synthetic_city(seed=3, n_regions=6, days=20, task="event"), input_len=7, output_len=3)
    texts += [events[i]["conversation"].user for i in range(0, len(events), 7)]
    return train_tokenizer(texts, vocab_size=1200)


@pytest.fixture(scope="session")
def shared_data():
    root = data_root()
    if not (root / "README.md").is_file():
        pytest.skip(f"real data not found at {root} (../shared/data); set STLLM_DATA_ROOT to run these tests")
    return root
