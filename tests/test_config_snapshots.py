"""Every experiment resolves to the config snapshotted in tests/resolved_configs/.

A config rewrite that changes what an experiment runs fails here; after an intended change,
``python -m tests.config_snapshots --update NAME`` regenerates the snapshot."""

import pytest

from tests.config_snapshots import experiments, resolve, snapshot


@pytest.mark.slow
@pytest.mark.parametrize("name", experiments())
def test_resolved_config_matches_snapshot(name):
    expected = snapshot(name)
    assert expected is not None, (f"no snapshot for {name}: run "
                                  f"`python -m tests.config_snapshots --update {name}`")
    assert resolve(name) == expected
