"""Tests of the bimodal autoencoder and modality dropout (mmcourse.models.bimodal_autoencoder)."""
from __future__ import annotations

import pytest
import torch

from mmcourse.models.bimodal_autoencoder import (BimodalAutoencoder, modality_dropout, reconstruction_loss,
                                                 train_bimodal_autoencoder)


def paired_modalities(n: int, seed: int) -> list[torch.Tensor]:
    """Two linear views (8-d and 6-d) of one 3-d latent, each computable from the other; the two
    maps are fixed, the latents drawn from `seed`."""
    latent = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    first_map = torch.randn(3, 8, generator=torch.Generator().manual_seed(100))
    second_map = torch.randn(3, 6, generator=torch.Generator().manual_seed(101))
    return [latent @ first_map / 3 ** 0.5, latent @ second_map / 3 ** 0.5]  # unit variance per feature


def test_shapes_of_the_code_and_the_reconstructions():
    model = BimodalAutoencoder((8, 6), hidden=16, code=4)
    inputs = paired_modalities(5, 0)
    assert model.encode(inputs).shape == (5, 4)
    assert [x.shape for x in model(inputs)] == [(5, 8), (5, 6)]


def test_modality_dropout_zeroes_one_whole_modality_per_dropped_example():
    inputs = [torch.ones(2000, 3), torch.ones(2000, 2)]
    assert all(torch.equal(x, y) for x, y in zip(modality_dropout(inputs, 0.0), inputs))
    dropped = modality_dropout(inputs, 1.0, torch.Generator().manual_seed(0))
    first_gone, second_gone = (x.sum(1) == 0 for x in dropped)
    assert torch.all(first_gone ^ second_gone)  # exactly one of the two, every example
    assert torch.all((dropped[0] == 0) | (dropped[0] == 1)) and 0.45 < first_gone.float().mean() < 0.55
    half = modality_dropout(inputs, 0.5, torch.Generator().manual_seed(0))
    assert 0.45 < ((half[0].sum(1) == 0) | (half[1].sum(1) == 0)).float().mean() < 0.55


def test_the_loss_is_the_reconstruction_error_of_both_complete_modalities():
    model = BimodalAutoencoder((8, 6), hidden=16, code=4)
    inputs = paired_modalities(7, 1)
    rebuilt = model(inputs)
    expected = sum(((x_hat - x) ** 2).mean() for x_hat, x in zip(rebuilt, inputs))
    torch.testing.assert_close(reconstruction_loss(model, inputs), expected)


def test_training_with_modality_dropout_rebuilds_a_missing_modality():
    train, test = paired_modalities(400, 2), paired_modalities(200, 3)
    second_only_error = {}
    for drop_probability in (0.0, 0.5):
        torch.manual_seed(0)
        model = BimodalAutoencoder((8, 6), hidden=32, code=8)
        losses = train_bimodal_autoencoder(model, train, drop_probability, steps=300)
        assert losses[-1] < losses[0] / 3
        with torch.no_grad():
            rebuilt_first = model([torch.zeros_like(test[0]), test[1]])[0]
        second_only_error[drop_probability] = float(((rebuilt_first - test[0]) ** 2).mean())
    assert second_only_error[0.5] < 0.1 < second_only_error[0.0], second_only_error  # the variance is about 1


@pytest.mark.parametrize("call, error, words", [
    (lambda: BimodalAutoencoder((8, 6, 2), 4, 4), ValueError, "two feature sizes"),
    (lambda: BimodalAutoencoder((8, 6), 0, 4), ValueError, "hidden"),
    (lambda: BimodalAutoencoder((8, 6), 4, 4)([torch.zeros(2, 8), torch.zeros(2, 5)]), ValueError, "inputs"),
    (lambda: modality_dropout([torch.zeros(2, 8)], 0.5), TypeError, "two"),
    (lambda: modality_dropout([torch.zeros(2, 8), torch.zeros(2, 6)], 1.5), ValueError, "drop_probability"),
    (lambda: train_bimodal_autoencoder(BimodalAutoencoder((8, 6), 4, 4), paired_modalities(4, 0), 0.5, 0),
     ValueError, "steps"),
])
def test_bad_arguments_are_refused_by_name(call, error, words):
    with pytest.raises(error, match=words):
        call()
