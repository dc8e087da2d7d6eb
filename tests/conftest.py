import os

import pytest
import torch
from hypothesis import Phase, settings

from sdmc.config import ModelConfig

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# CI (CI=true) replays the same hypothesis examples every run, so a red build is reproducible; local runs
# keep exploring new examples (and print the seed of any failure).
settings.register_profile("ci", derandomize=True, print_blob=True)
# tests/mutate.py's runs: the same examples as CI, no example database (one mutant's failure must not be
# replayed against the next) and no shrinking (a mutant is killed by the first failure; shrinking it took most
# of a killed mutant's time)
settings.register_profile(
    "mutate", parent=settings.get_profile("ci"), database=None, phases=[Phase.explicit, Phase.generate]
)
if os.environ.get("CI"):
    settings.load_profile(os.environ.get("SDMC_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread():
    """One torch thread for the test (restored after): tiny models gain nothing from threads, and on a busy
    2-core machine OpenMP waits dominate (two threads measured ~30x slower). Use it per module with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


REF_KEYS = os.path.join(os.path.dirname(__file__), "data", "ref_state_dict_keys.txt")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The crafted files the fuzz and kill tests mutate and run (tests/crafted.py), written once per session."""
    from crafted import session_corpus

    return session_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def tiny_cfg():
    """A small spiking UNet configuration that runs in milliseconds."""
    return ModelConfig(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
