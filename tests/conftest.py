"""Pytest fixtures shared by all tests; the helpers live in model_fixtures.py (importable by name)."""

import pytest
from model_fixtures import make_batch, tiny_model


@pytest.fixture
def model():
    return tiny_model("llama")


@pytest.fixture
def batch():
    return make_batch()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest and most repeatably on one thread (multi-threaded small convolutions
    stall when the machine is loaded); results are then independent of the host's core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
