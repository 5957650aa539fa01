from __future__ import annotations

import pytest

from tests.train.tiny import tiny_config as make_tiny_config


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture
def tiny_config(compilation_cache):
    return make_tiny_config(compilation_cache)
