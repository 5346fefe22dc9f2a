"""Pytest fixtures shared by all tests; the helpers live in model_fixtures.py (importable by name)."""

import pytest
from model_fixtures import make_batch, tiny_model


@pytest.fixture
def model():
    return tiny_model("llama")


@pytest.fixture
def batch():
    return make_batch()
