"""A bimodal autoencoder trained with modality dropout (Ngiam et al. 2011, "Multimodal Deep Learning").

A *joint* representation: each modality goes through its own encoder, one shared layer reads both,
and one decoder per modality rebuilds every modality from the shared code,

    h_m = relu(W_m x_m + b_m),    c = relu(W_c [h_a; h_b] + b_c),    x_m' = D_m(c)   (m = a, b).

Trained on complete pairs only, nothing forces the code of a pair with one modality missing (given
as zeros) to be useful. Ngiam et al. add training examples whose input has one modality set to zero
while the target is still *both* modalities: the code must then be computable from either modality
alone, and the decoders rebuild the missing one from it. `modality_dropout` makes those examples:
with probability `drop_probability` an example loses one of its two modalities, chosen at random.
(Srivastava & Salakhutdinov 2012 reach the same end with a multimodal Deep Boltzmann Machine, by
sampling the missing modality from its conditional distribution.)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import check_dims, check_features, check_positive


class BimodalAutoencoder(nn.Module):
    """Two modalities (B, d_a) and (B, d_b) -> a shared (B, code) -> their two reconstructions."""

    def __init__(self, dims: Sequence[int], hidden: int, code: int):
        super().__init__()
        self.dims = check_dims(dims)
        if len(self.dims) != 2:
            raise ValueError(f"dims must hold two feature sizes, one per modality, got {self.dims}")
        hidden, code = check_positive("hidden", hidden), check_positive("code", code)
        self.encoders = nn.ModuleList(nn.Linear(d, hidden) for d in self.dims)
        self.shared = nn.Linear(2 * hidden, code)
        self.decoders = nn.ModuleList(nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, d))
                                      for d in self.dims)

    def encode(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The joint code c (B, code); a missing modality is passed as zeros."""
        inputs = check_features(inputs, self.dims, "inputs")
        hidden = [torch.relu(encoder(x)) for encoder, x in zip(self.encoders, inputs)]  # 2 x (B, hidden)
        return torch.relu(self.shared(torch.cat(hidden, dim=1)))  # (B, code)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Both modalities rebuilt from the joint code: [(B, d_a), (B, d_b)]."""
        code = self.encode(inputs)
        return [decoder(code) for decoder in self.decoders]


def modality_dropout(inputs: Sequence[torch.Tensor], drop_probability: float,
                     generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The inputs with, for each example, probability `drop_probability` that one of the two
    modalities (chosen uniformly) is set to zero. The targets stay the complete inputs."""
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
        raise TypeError(f"inputs must be a list of two (B, d_m) tensors, got {type(inputs).__name__}")
    if isinstance(drop_probability, bool) or not isinstance(drop_probability, (int, float)) \
            or not 0.0 <= drop_probability <= 1.0:
        raise ValueError(f"drop_probability must be a number in [0, 1], got {drop_probability!r}")
    batch = len(inputs[0])
    dropped = torch.rand(batch, generator=generator) < drop_probability  # (B,) this example loses one
    which = torch.randint(0, 2, (batch,), generator=generator)            # (B,) ... this one
    return [x * ~(dropped & (which == m)).to(x.device)[:, None] for m, x in enumerate(inputs)]


def reconstruction_loss(model: BimodalAutoencoder, inputs: Sequence[torch.Tensor],
                        drop_probability: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared error of rebuilding *both* complete modalities from (possibly dropped) inputs."""
    rebuilt = model(modality_dropout(inputs, drop_probability, generator))
    return sum(F.mse_loss(x_hat, x) for x_hat, x in zip(rebuilt, inputs))


def train_bimodal_autoencoder(model: BimodalAutoencoder, inputs: Sequence[torch.Tensor], drop_probability: float,
                              steps: int, lr: float = 1e-2, seed: int = 0) -> list[float]:
    """Full-batch Adam on `reconstruction_loss` for `steps` steps (dropout draws from `seed`); the losses."""
    check_positive("steps", steps)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = reconstruction_loss(model, inputs, drop_probability, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
