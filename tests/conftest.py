import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests that take a ``device`` run on the CPU everywhere and on CUDA where a GPU is present
# (``pytest -k cuda`` runs only those); CI has no GPU, so it reports them as skipped.
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (on a GPU: pytest -k cuda)")
DEVICES = ("cpu", pytest.param("cuda", marks=CUDA))


def rng_state(device: str) -> torch.Tensor:
    """The state of the generator that dropout on ``device`` draws from."""
    return torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()


class Net(torch.nn.Module):
    """A small MLP with every kind of group: embedding, norm, biases, weights, a head."""

    def __init__(self, dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.fc = torch.nn.Linear(8, 16)
        self.norm = torch.nn.BatchNorm1d(16) if batchnorm else torch.nn.LayerNorm(16)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, tokens):
        return self.head(self.drop(torch.tanh(self.norm(self.fc(self.embed(tokens).mean(1))))))


def make_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 16, (n, 4), generator=g)
    target = torch.randn(n, 1, generator=g)
    return tokens, target


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def mask_of(model, active):
    """A Mask training the named category groups of ``model`` (its sizes over all parameters)."""
    from gen_optim import Mask, group_parameters

    sizes = {g["name"]: sum(p.numel() for p in g["params"]) for g in group_parameters(model, trainable_only=False)}
    return Mask(tuple(active), sum(sizes[a] for a in active) / sum(sizes.values()), None, "greedy", {}, sizes)
