"""Fixtures for the multi-host tests: hosts are network namespaces made by tests.helpers.netns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.netns import NetnsUnavailable, Network


@pytest.fixture
def network() -> Iterator[Network]:
    """An open test network with no hosts yet, removed after the test (also when it fails); skipped with the
    exact reason where namespaces cannot be made."""
    try:
        net = Network(prefix="fvt").open()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield net
    finally:
        net.cleanup()
