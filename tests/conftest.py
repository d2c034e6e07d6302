"""Test-session settings shared by every test file."""

import logging

import pytest
import torch

# The models are tiny and `pytest -n 2` runs one worker per core: extra intra-op threads only
# contend for the same two cores (test_matrix.py on 2 cores: 102 s with torch's default threads, 21 s with one).
torch.set_num_threads(1)


class _Deprecations(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.seen.append(message)


@pytest.fixture(autouse=True)
def no_transformers_deprecations():
    """transformers also announces renames in its log (once per process): a test that triggers one fails."""
    handler = _Deprecations()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.seen:
        pytest.fail(f"transformers logged a deprecation: {handler.seen[0]}")
