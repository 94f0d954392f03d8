import numpy as np
import pytest
import torch

# Two cores: one torch thread avoids oversubscription when a test runs env workers too.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
