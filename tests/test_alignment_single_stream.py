"""mmcourse.experiments.alignment.single_stream: swapped captions, held-out ITM and MLM accuracy, inference
timings, and a short pretraining run of each single-stream model."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from mmcourse.experiments.alignment.single_stream import (build_single_stream, held_out_set, itm_accuracy,
                                                       measure_single_stream, mlm_accuracy, parameter_count,
                                                       pipeline_timings, pretraining_loader, single_stream_recipe,
                                                       swapped_captions, train_single_stream, training_set)
from mmcourse.models.vilt import ViLTPretraining
from mmcourse.models.visualbert import VisualBERTPretraining
from mmcourse.world.datasets import CaptionDataset
from mmcourse.world.language import ATTRIBUTE_WORDS, caption_is_true, default_tokenizer


@pytest.fixture(scope="module")
def dataset():
    return CaptionDataset(24, seed=4, image_size=32, captions_per_image=2)


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "visualbert":
        return VisualBERTPretraining(width=16, depth=1, heads=2)
    return ViLTPretraining(image_size=32, patch_size=8, width=16, depth=1, heads=2)


# -------------------------------------------------------------------------------------------- data


def test_swapped_captions_differ_from_the_true_ones_in_one_attribute_word(dataset):
    swapped, is_swap = swapped_captions(dataset)
    true = torch.stack([dataset[j]["tokens"] for j in range(len(dataset))])
    assert swapped.shape == true.shape == (48, dataset.max_length) and is_swap.shape == (48,)
    assert is_swap.float().mean() > 0.8
    tokenizer = default_tokenizer()
    attribute_ids = {tokenizer.stoi[word] for word in ATTRIBUTE_WORDS}
    articles = {tokenizer.stoi["a"], tokenizer.stoi["an"]}
    for j in range(len(dataset)):
        if not is_swap[j]:
            continue
        scene, text = dataset.scenes[j // 2], tokenizer.decode(swapped[j].tolist())
        assert caption_is_true(scene, dataset.texts[j // 2][j % 2]) and not caption_is_true(scene, text)
        changed = (true[j] != swapped[j]).nonzero().flatten().tolist()
        words = [int(swapped[j, i]) for i in changed]
        assert 1 <= len(changed) <= 2 and sum(w in attribute_ids for w in words) == 1
        assert all(w in attribute_ids or w in articles for w in words)
        assert (swapped[j] != 0).sum() == (true[j] != 0).sum()  # same length, same wrap


def test_swapped_captions_refuses_noisy_or_other_datasets():
    with pytest.raises(ValueError, match="noise_rate=0.5"):
        swapped_captions(CaptionDataset(4, seed=0, image_size=32, noise_rate=0.5))
    with pytest.raises(TypeError, match="dataset must be a CaptionDataset"):
        swapped_captions([1, 2, 3])


def test_pretraining_loader_is_seeded_and_drops_the_last_small_batch(dataset):
    first = [batch["index"].tolist() for batch in pretraining_loader(dataset, 10, seed=1)]
    again = [batch["index"].tolist() for batch in pretraining_loader(dataset, 10, seed=1)]
    other = [batch["index"].tolist() for batch in pretraining_loader(dataset, 10, seed=2)]
    assert first == again != other and [len(b) for b in first] == [10] * 4
    ordered = list(pretraining_loader(dataset, 10, seed=1, shuffle=False))
    assert [len(b["index"]) for b in ordered] == [10, 10, 10, 10, 8]
    with pytest.raises(ValueError, match="batch_size"):
        pretraining_loader(dataset, 1, seed=0)
    with pytest.raises(TypeError, match="dataset must be a torch Dataset"):
        pretraining_loader([1, 2, 3], 2, seed=0)


# -------------------------------------------------------------------------------------------- measurements


class _Oracle(nn.Module):
    """Turns `encode`'s first feature into ITM logits (0, feature)."""

    def forward(self, first):
        return torch.stack([torch.zeros_like(first[:, 0]), first[:, 0]], 1)


class _Always(nn.Module):
    """ITM logits (0, 1) whatever the input: "matches"."""

    def forward(self, first):
        return torch.tensor([[0.0, 1.0]]).expand(len(first), 2)


def _oracle_itm(model, dataset):
    """Make `model` answer "matches" exactly when the text is one of the image's own captions."""
    own = [{tuple(row[row != 0].tolist()) for row in torch.from_numpy(captions)}
           for captions in dataset.arrays["tokens"]]  # per image: the token tuples of its captions

    def encode(image_side, ids):
        index, = image_side
        known = torch.tensor([1.0 if tuple(row[row != 0].tolist()) in own[i] else -1.0
                              for i, row in zip(index.tolist(), ids)])
        return known[:, None, None].expand(-1, ids.shape[1], 4)

    model.image_side = lambda batch: (batch["index"],)
    model.encode = encode
    model.itm_head = _Oracle()
    return model


@pytest.mark.parametrize("kind", ["visualbert", "vilt"])
@pytest.mark.parametrize("negatives", ["swap", "partner"])
def test_itm_accuracy_of_an_oracle_is_one_and_of_a_constant_is_one_half(dataset, kind, negatives):
    oracle = _oracle_itm(_tiny(kind), dataset)
    result = itm_accuracy(oracle, dataset, negatives, batch_size=16)
    assert result["accuracy"] == 1.0 and result["ranking"] == 1.0
    # swap: the items with a swap; partner: the partners false of the image (most, not all)
    assert result["pairs"] == (int(swapped_captions(dataset)[1].sum()) if negatives == "swap" else result["pairs"])
    assert 0.6 * len(dataset) < result["pairs"] <= len(dataset)
    oracle.itm_head = _Always()  # always "matches"
    constant = itm_accuracy(oracle, dataset, negatives, batch_size=16)
    assert constant["accuracy"] == 0.5 and constant["ranking"] == 0.0


def test_itm_accuracy_runs_on_a_real_model_and_refuses_bad_arguments(dataset):
    model = _tiny("visualbert").train()
    result = itm_accuracy(model, dataset, "swap", batch_size=16)
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["ranking"] <= 1 and model.training  # mode restored
    with pytest.raises(ValueError, match="negatives='random' is unknown"):
        itm_accuracy(model, dataset, "random")
    with pytest.raises(TypeError, match="model must be a VisualBERTPretraining or ViLTPretraining"):
        itm_accuracy(nn.Linear(2, 2), dataset)


def test_mlm_accuracy_of_an_oracle_and_the_majority_baseline(dataset):
    model = _tiny("vilt")
    vocab = default_tokenizer().vocab_size
    seen = {}

    def encode(image_side, ids):
        seen["masked"] = ids
        return torch.zeros(len(ids), ids.shape[1] + 17, 16)

    class AlwaysWord(nn.Module):
        def __init__(self, word):
            super().__init__()
            self.word = word

        def forward(self, hidden):
            return nn.functional.one_hot(torch.full(hidden.shape[:2], self.word), vocab).float()

    model.encode = encode
    the = default_tokenizer().stoi["a"]
    model.mlm_head = AlwaysWord(the)
    result = mlm_accuracy(model, dataset, seed=0)
    assert result["accuracy"] == pytest.approx(result["majority_baseline"])  # "a" is the most frequent word
    assert result["attribute_accuracy"] == 0.0 and 0.1 < result["majority_baseline"] < 0.5
    assert (seen["masked"] == default_tokenizer().mask_id).any()
    assert mlm_accuracy(model, dataset, seed=0) == result  # seeded masking


def test_parameter_count_counts_tied_weights_once():
    model = _tiny("visualbert")
    tied = model.bert.token.weight.numel()
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))  # the tied one twice
    assert parameter_count(model) == every - tied
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        parameter_count("model")


def test_pipeline_timings_measure_both_pipelines():
    t = pipeline_timings(image_size=32, width=16, depth=1, heads=2, patch_size=8, batch_size=4, repeats=2)
    for model in ("visualbert", "vilt"):
        assert all(t[f"{model}_{part}_ms"] > 0 for part in ("visual", "transformer", "total"))
    assert t["vilt_tokens"] - t["visualbert_tokens"] == 1 + 16 - 6  # [CLS] + 16 patches vs 6 regions
    assert t["total_ratio"] == pytest.approx(t["visualbert_total_ms"] / t["vilt_total_ms"])
    assert t["visual_ratio"] == pytest.approx(t["visualbert_visual_ms"] / t["vilt_visual_ms"])
    with pytest.raises(ValueError, match="repeats"):
        pipeline_timings(repeats=0)


# -------------------------------------------------------------------------------------------- learning


def _tiny_recipe():
    return replace(single_stream_recipe("ci"), n_scenes=24, captions_per_image=2, width=16, depth=1, heads=2,
                   epochs=8, batch_size=12, lr=5e-3, warmup_steps=2, n_test=16)


def test_recipes_and_their_data():
    ci, cpu = single_stream_recipe("ci"), single_stream_recipe("cpu")
    assert (ci.image_size, cpu.image_size) == (32, 64)  # the notebook's IMAGE_SIZE at each scale
    recipe = _tiny_recipe()
    train, test = training_set(recipe, seed=3), held_out_set(recipe, seed=3)
    assert len(train) == 48 and len(test) == 16 and train.image_size == test.image_size == 32
    assert not set(map(str, train.scenes)) & set(map(str, test.scenes))  # held-out scenes are other scenes
    assert isinstance(build_single_stream("visualbert", recipe), VisualBERTPretraining)
    vilt = build_single_stream("vilt", recipe)
    assert isinstance(vilt, ViLTPretraining) and vilt.vilt.width == 16 and vilt.vilt.num_patches == 16
    with pytest.raises(ValueError, match="scale='laptop' is unknown"):
        single_stream_recipe("laptop")
    with pytest.raises(ValueError, match="kind='vilbert' is unknown"):
        build_single_stream("vilbert", recipe)


@pytest.mark.parametrize("kind", ["visualbert", "vilt"])
def test_a_short_pretraining_run_learns_the_words(one_torch_thread, dataset, kind):
    model, history, seconds = train_single_stream(kind, _tiny_recipe(), seed=0, dataset=dataset, device="cpu")
    assert len(history) == 8 and seconds > 0
    assert history[0]["mlm_loss"] > 4.5  # about ln(201) = 5.3 at the start
    assert history.last["mlm_loss"] < history[0]["mlm_loss"] - 1.0
    measured = measure_single_stream(model, held_out_set(_tiny_recipe(), seed=0))
    assert set(measured) == {"itm_accuracy_partner", "itm_ranking_partner", "itm_accuracy_swap", "itm_ranking_swap",
                             "mlm_accuracy", "mlm_attribute_accuracy", "mlm_majority_baseline"}
    assert all(0 <= value <= 1 for value in measured.values())
