import os

# Two pytest workers share two cores: OpenMP threads that spin while they wait for work
# starve the other worker (a tiny model's training ran 9x slower with both spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402  (OpenMP reads the variable when torch loads)
import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: one torch thread avoids oversubscription when a test runs env workers too.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# The modules that take longest, longest first (the four that train models for minutes,
# then those over 20 s). Under `pytest -n 2 --dist loadfile` each worker starts with two of
# the first four and the short modules fill in last, so the workers finish together
# instead of one waiting on a late long module.
LONG_FIRST = ("test_dreamer4_learning.py", "test_whale_learning.py", "test_curiosity.py", "test_fidelity.py",
              "test_experiments.py", "test_training.py", "test_distributed.py", "test_envs.py", "test_ensemble.py",
              "test_offline_learning.py", "test_collect.py", "test_step_api.py", "test_play.py", "test_pipeline.py")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))
