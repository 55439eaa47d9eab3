"""Every model, loss and experiment helper follows its inputs' device.

No GPU is needed: `fake_device` (tests/fake_device.py) is a stand-in accelerator whose tensors carry
real values on the CPU and refuse, as CUDA does, to meet CPU tensors (`torch.eye(C)[targets]`
included), CPU generators and `.numpy()`. Each case runs twice from the same seed, with its
arguments on the CPU and on the fake device; the second run must give the same values (the same
CPU kernels run, though autograd may sum in another order), on the fake device, with the
parameters' gradients there too.

Left out, because the fake device cannot stand in for a GPU there:
- `ProgramGenerator.sample` with a generator and `experiments.reasoning.programs.reinforce`: they
  draw with a `torch.Generator` on the question's device, and torch makes none for "meta". Their
  CUDA test is in test_program_generator.py.
- `mmcourse.train.fit`: it accepts only the devices of `mmcourse.device`. The contract it relies on
  is checked here instead: a loss_fn's logged tensors are on the model's device.

The tests marked gpu run a few key models and losses on CUDA against the CPU (skipped without CUDA).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from fake_device import FAKE, FakeDeviceTensor, fake_device
from mmcourse.experiments import few_shot as shots
from mmcourse.experiments import representation as rep
from mmcourse.experiments.alignment.affect import (accuracy_by_interaction, make_affect_model, word_attention,
                                                   word_to_frame_grounding)
from mmcourse.experiments.alignment.milnce import retrieval_at_1
from mmcourse.experiments.alignment.regions import evaluate_word_alignment, identifying_word_mask
from mmcourse.experiments.alignment.scoreboard import expression_attention
from mmcourse.experiments.alignment.single_stream import itm_accuracy, mlm_accuracy
from mmcourse.experiments.reasoning.features import FeatureQuestions, extract_features
from mmcourse.experiments.reasoning.modules import predict_nmn
from mmcourse.experiments.reasoning.programs import greedy_layouts
from mmcourse.experiments.reasoning.vqa import predict as predict_vqa
from mmcourse.models import (albef, bilinear, blip, clip, colearning, coattention, cross_attention, devise,
                             encoders, fusion, grounding, layers, lseg, milnce, nmn, program_generator, protonet,
                             region_word, relation_network, vilbert, vilt, visualbert, vqa)
from mmcourse.models.bimodal_autoencoder import BimodalAutoencoder, reconstruction_loss
from mmcourse import train
from mmcourse.train import fit
from mmcourse.world.datasets import AffectDataset, CaptionDataset, ClipDataset, QuestionDataset, collate
from mmcourse.world.language import default_tokenizer
from mmcourse.world.programs import ANSWERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

TOKENIZER = default_tokenizer()
CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# The stand-in device refuses what CUDA refuses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mistake", [
    lambda targets: torch.eye(3)[targets],  # a CPU tensor indexed on the device
    lambda targets: targets + torch.ones(2, dtype=torch.long),  # a CPU tensor built without device=
    lambda targets: torch.rand(2, generator=torch.Generator(), device=targets.device),  # a CPU generator
    lambda targets: targets.numpy(),  # NumPy without .cpu()
    lambda targets: torch.stack([targets.sum(), torch.tensor(1)]),  # a CPU number joined with device ones
], ids=["cpu tensor indexed", "cpu tensor met", "cpu generator", "numpy", "cpu scalar stacked"])
def test_the_fake_device_refuses_what_cuda_refuses(mistake):
    with fake_device(), pytest.raises((RuntimeError, TypeError), match="device"):
        mistake(torch.tensor([0, 2]).to(FAKE))


def test_the_fake_device_allows_what_cuda_allows():
    with fake_device():
        values = torch.arange(6.0).view(2, 3).to(FAKE)
        picked = values[torch.tensor([1])] * torch.tensor(2.0)  # CPU indices and a CPU scalar
        made = torch.zeros(2, device=values.device) + torch.as_tensor([1.0, 2.0], device=values.device)
        assert isinstance(picked, FakeDeviceTensor) and isinstance(made, FakeDeviceTensor)
        assert picked.cpu().tolist() == [[6.0, 8.0, 10.0]] and made.tolist() == [1.0, 2.0]


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """`call(*build())`: `build` makes the seeded arguments on the CPU (modules and tensors, nested in
    lists, tuples and dicts, next to anything else), which are then moved to the device under test.
    The call's tensors come back on that device, or on the CPU when `on_cpu` (a helper that returns
    its results there)."""

    build: Callable[[], tuple]
    call: Callable[..., Any]
    on_cpu: bool = False


def moved(value, device: torch.device):
    """`value` with every tensor and module in it moved to `device`."""
    return tree_map(lambda leaf: leaf.to(device) if isinstance(leaf, (torch.Tensor, nn.Module)) else leaf, value)


def outcome(case: Case, device: torch.device) -> tuple[Any, list[torch.Tensor]]:
    """(what the call returns, the gradients of the modules' parameters when its first output is a
    loss), with the arguments on `device`."""
    torch.manual_seed(0)
    arguments = moved(case.build(), device)
    torch.manual_seed(1)
    output = case.call(*arguments)
    loss = tree_leaves(output)[0]
    if isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad:
        loss.backward()
    modules = [leaf for leaf in tree_leaves(arguments) if isinstance(leaf, nn.Module)]
    return output, [p.grad for module in modules for p in module.parameters() if p.grad is not None]


def assert_same(got, expected, device: torch.device) -> None:
    """`got` holds the values of `expected`, its tensors on `device`."""
    got, expected = tree_leaves(got), tree_leaves(expected)
    assert len(got) == len(expected)
    for value, reference in zip(got, expected):
        if isinstance(reference, torch.Tensor):  # float32 up to rounding: sums may run in another order
            assert value.device == device, f"a result is on {value.device}, expected {device}"
            torch.testing.assert_close(value.detach().cpu(), reference.detach())
        elif np.asarray(reference).dtype.kind == "f":
            np.testing.assert_allclose(value, reference, rtol=1.3e-6, atol=1e-5)  # torch's float32 tolerances
        else:
            np.testing.assert_array_equal(value, reference)


def check_follows(case: Case) -> None:
    """The case gives the CPU's values on the fake device, its results and gradients there."""
    expected_output, expected_grads = outcome(case, CPU)
    with fake_device():
        output, grads = outcome(case, FAKE)
    assert_same(output, expected_output, CPU if case.on_cpu else FAKE)
    assert_same(grads, expected_grads, FAKE)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@functools.cache
def _caption_dataset() -> CaptionDataset:
    return CaptionDataset(6, seed=3, image_size=32)


def caption_batch(swaps: bool = False) -> dict:
    """Six `CaptionDataset` pairs; with `swaps`, a swapped caption for four of them (hard ITM negatives)."""
    dataset = _caption_dataset()
    batch = collate([dataset[i] for i in range(len(dataset))])
    if swaps:
        swapped = batch["tokens"].clone()
        swapped[:, 2] = TOKENIZER.stoi["purple"]
        batch.update(swapped_tokens=swapped, has_swap=torch.tensor([True, False, True, True, False, True]))
    return batch


def pair_batch(batch_size: int = 4, length: int = 7, image_size: int = 16) -> dict:
    """Random images and `<bos>`..`<eos>` captions, one of them a token shorter."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(7, TOKENIZER.vocab_size, (batch_size, length), generator=generator)
    ids[:, 0], ids[:, -1] = TOKENIZER.bos_id, TOKENIZER.eos_id
    ids[0, -2:] = torch.tensor([TOKENIZER.eos_id, TOKENIZER.pad_id])
    return {"image": torch.rand(batch_size, 3, image_size, image_size, generator=generator), "tokens": ids}


def questions(length: int = 8) -> torch.Tensor:
    return torch.from_numpy(TOKENIZER.encode_batch(["what color is the big circle", "how many"], length))


def vqa_inputs(features: int = 8) -> dict:
    """Two 4x4 grids, three regions per scene (the second scene's last is padding), two questions."""
    return {"grid": torch.rand(2, features, 4, 4), "regions": torch.randn(2, 3, features),
            "objects": torch.tensor([[True, True, True], [True, True, False]]), "question": questions()}


def vqa_case(model_class: type, uses_regions: bool, **options) -> Case:
    """A VQA model's cross-entropy on two questions about a grid, or about regions, and its outputs."""
    def build():
        model = model_class(TOKENIZER.vocab_size, len(ANSWERS), **options, width=16, pad_id=TOKENIZER.pad_id)
        return model, vqa_inputs(), torch.tensor([1, 4])

    def call(model, inputs, answers):
        keys = ("regions", "question", "objects") if uses_regions else ("grid", "question")
        output = model(*(inputs[key] for key in keys))
        return F.cross_entropy(output["logits"], answers), output

    return Case(build, call)


def tiny_albef() -> albef.ALBEF:
    return albef.ALBEF(image_size=16, patch_size=4, width=16, embed_dim=8, image_depth=1, text_depth=1,
                       fusion_depth=1, heads=2, max_length=12, queue_size=8)


def tiny_captioner() -> blip.Captioner:
    return blip.Captioner(image_size=16, patch_size=4, width=16, image_depth=1, decoder_depth=1, heads=2,
                          max_length=10)


def text_transformer(width: int = 16, causal: bool = True) -> encoders.TextTransformer:
    return encoders.TextTransformer(TOKENIZER.vocab_size, width, max_length=48, depth=1, heads=2, causal=causal)


def label_ids(names: list[str]) -> torch.Tensor:
    return torch.from_numpy(TOKENIZER.encode_batch(names, 2))


def albef_loss(itm: str) -> Callable:
    """A training call of `ALBEFLoss` with ITM negatives `itm`: it moves the momentum model and the queues."""
    def call(model, batch):
        return albef.ALBEFLoss(itm=itm, seed=0)(model.train(), batch)
    return call


def mult_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    text = torch.from_numpy(TOKENIZER.encode_batch(["good movie .", "not a good movie at all ."], 7))
    return torch.randn(2, 5, 6, generator=generator), torch.randn(2, 4, 3, generator=generator), text


def nmn_inputs() -> tuple:
    programs = nmn.encode_programs([["count", "filter_color[red]", "scene"],
                                    ["exist", "relate[left]", "unique", "filter_shape[circle]", "scene"]])
    boxes = torch.tensor([[[2.0, 2, 10, 10], [12, 4, 20, 14], [5, 18, 15, 28]]]).expand(2, -1, -1)
    objects = torch.tensor([[True, True, True], [True, True, False]])
    override = nmn.Override(torch.rand(2, 5, 3), torch.tensor([[False, True, False, False, False]] * 2))
    return torch.randn(2, 3, 8), nmn.box_geometry(boxes, 32), objects, programs, override


def layouts() -> tuple[torch.Tensor, torch.Tensor]:
    vocabulary = program_generator.LayoutVocabulary()
    return questions(), vocabulary.encode([["count", "filter_color[red]", "scene"], ["exist", "scene"]], 6)


def unit_rows(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def reasoning_answers(encoder, questions, model, network) -> tuple:
    """Notebook 04's pipeline: the backbone's features of the questions' scenes, a VQA model's answers
    and attention maps on them, and the NMN's predictions."""
    data = FeatureQuestions(questions, extract_features(encoder, questions))
    return data.features.grid, predict_vqa(model, data, keep=("attention",)), predict_nmn(network, data)


# --------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------


MODEL_CASES = {
    # notebook 01: fusion and co-learning
    "fusion classifier (sequence encoders, late fusion)": Case(
        lambda: (fusion.FusionClassifier({"face": encoders.ConvSequenceEncoder(3, 8),
                                          "words": encoders.ConvSequenceEncoder(None, 8, vocab_size=20)},
                                         fusion.LateFusion((8, 8), 8, 2, weighting="learned")),
                 {"face": torch.randn(2, 5, 3), "words": torch.tensor([[3, 4, 0], [5, 0, 0]])}),
        lambda model, inputs: model(inputs).sum()),
    **{kind.__name__: Case(lambda kind=kind, args=args: (kind(*args), [torch.randn(2, 3), torch.randn(2, 4)]),
                           lambda model, features: model(features).sum())
       for kind, args in ((fusion.EarlyFusion, ((3, 4), 8, 2)), (fusion.LateFusion, ((3, 4), 8, 2)),
                          (fusion.GatedFusion, ((3, 4), 6, 8, 2)), (fusion.TensorFusion, ((3, 4),)),
                          (fusion.LowRankFusion, ((3, 4), 2, 3)))},
    "bimodal autoencoder with modality dropout": Case(
        lambda: (BimodalAutoencoder((3, 4), 8, 4), [torch.randn(6, 3), torch.randn(6, 4)]),
        lambda model, inputs: reconstruction_loss(model, inputs, 0.5, torch.Generator().manual_seed(0))),
    "distillation loss": Case(lambda: (torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)),
                              lambda student, teacher: colearning.distillation_loss(student, teacher, 2.0)),
    "confident labels of tensor probabilities": Case(
        lambda: (torch.rand(8, 3).softmax(1), torch.rand(8) < 0.7),
        lambda probs, unlabelled: colearning.confident_labels(probs, unlabelled, 2), on_cpu=True),
    # notebook 02: representation
    "DeViSE": Case(
        lambda: (devise.DeViSE(encoders.ConvImageEncoder(16, stages=2), unit_rows(5, 8)), torch.rand(3, 3, 16, 16),
                 torch.tensor([0, 4, 2])),
        lambda model, images, targets: (devise.devise_loss(model, (images, targets)), model.predict(images))),
    "CLIP (ViT) training loss": Case(
        lambda: (clip.small_clip(image_size=16, width=16, embed_dim=8, patch_size=8, depth=1, heads=2, max_length=12),
                 pair_batch()),
        clip.clip_training_loss),
    "CLIP zero-shot classifier": Case(
        lambda: (clip.small_clip(image_size=16, width=16, embed_dim=8, vision="cnn", depth=1, heads=2,
                                 max_length=12),),
        lambda model: clip.zero_shot_classifier(model, ["red circle", "blue square"], ["a {}", "the {}"])),
    "phrase grounder": Case(
        lambda: (grounding.PhraseGrounder(encoders.ConvImageEncoder(16, stages=2), text_transformer(causal=False),
                                          dim=8), caption_batch()),
        lambda model, batch: (grounding.grounding_loss(model, batch),
                              grounding.box_scores(model, batch["image"], batch["boxes"], batch["tokens"]))),
    "LSeg": Case(
        lambda: (lseg.LSeg(encoders.ConvImageEncoder(16, stages=2), text_transformer(), 16, output_stride=2),
                 caption_batch(), label_ids(["red", "blue", "green"])),
        lambda model, batch, names: (lseg.lseg_loss(model, batch, names,
                                                    lseg.segmentation_targets(batch, "color", [0, 1, 2])),
                                     model.predict(batch["image"], names))),
    # notebook 03: alignment
    "MulT": Case(lambda: (cross_attention.MulT(6, 3, TOKENIZER.vocab_size, width=8, heads=2, self_depth=1),
                          *mult_inputs(), torch.ones(2, 4, dtype=torch.bool).tril()),
                 lambda model, video, audio, text, audio_padding: model(
                     video, audio, text, audio_padding_mask=~audio_padding).sum()),
    "resampled early fusion": Case(
        lambda: (cross_attention.ResampledEarlyFusion(6, 3, TOKENIZER.vocab_size, width=8, heads=2), *mult_inputs()),
        lambda model, video, audio, text: model(video, audio, text).sum()),
    "word attention of the affect task": Case(
        lambda: (torch.rand(2, 7, 5), mult_inputs()[2]),
        lambda attention, text: (word_attention(attention, text), word_attention(attention, text, "opinion"))),
    "VisualBERT MLM + ITM with swapped captions": Case(
        lambda: (visualbert.VisualBERTPretraining(width=16, depth=1, heads=2, stages=2), caption_batch(swaps=True)),
        lambda model, batch: visualbert.mlm_itm_loss(model, batch, torch.Generator().manual_seed(0))),
    "VisualBERT word-region attention": Case(
        lambda: (visualbert.VisualBERTPretraining(width=16, depth=1, heads=2, stages=2).eval(), caption_batch()),
        lambda model, batch: model.word_region_attention(batch["image"], batch["boxes"],
                                                         region_word.region_mask_of(batch), batch["tokens"])),
    "ViLT MLM + ITM": Case(
        lambda: (vilt.ViLTPretraining(image_size=32, patch_size=8, width=16, depth=1, heads=2), caption_batch()),
        lambda model, batch: visualbert.mlm_itm_loss(model, batch)),
    "ViLBERT MLM + ITM with swapped captions": Case(
        lambda: (vilbert.ViLBERT(width=16, depth=1, heads=2), caption_batch(swaps=True)),
        lambda model, batch: vilbert.vilbert_loss(model, batch, torch.Generator().manual_seed(0))),
    "region-word aligner": Case(
        lambda: (region_word.RegionWordAligner(width=16, dim=8), caption_batch()),
        lambda model, batch: (region_word.region_word_loss(model, batch, "contrastive"),
                              model.assign_words(batch["image"], batch["boxes"], region_word.region_mask_of(batch),
                                                 batch["tokens"]))),
    "ALBEF loss with hard negatives": Case(lambda: (tiny_albef(), pair_batch()), albef_loss("hard")),
    "ALBEF loss with random negatives": Case(lambda: (tiny_albef(), pair_batch()), albef_loss("random")),
    "ALBEF Grad-CAM": Case(
        lambda: (tiny_albef().eval(), pair_batch()),
        lambda model, batch: albef.expression_map(albef.gradcam(model, batch["image"], batch["tokens"]),
                                                  batch["tokens"])),
    "BLIP captioning loss": Case(lambda: (tiny_captioner(), pair_batch(3, 6)), blip.captioning_loss),
    "BLIP generation and filter": Case(
        lambda: (tiny_captioner(), tiny_albef(), torch.rand(3, 3, 16, 16)),
        lambda captioner, filter_model, images: blip.filter_captions(
            filter_model, images, blip.generate(captioner, images, 8, generator=torch.Generator().manual_seed(0)))),
    "MIL-NCE": Case(
        lambda: (milnce.small_milnce(width=16, embed_dim=8, stages=2),
                 {"frames": torch.rand(3, 3, 3, 16, 16), "narrations": torch.randint(7, 40, (3, 2, 4)),
                  "narration_mask": torch.tensor([[True, True], [True, False], [True, True]]),
                  "frame_mask": torch.tensor([[True, True, True], [True, True, False], [True, True, True]])}),
        milnce.milnce_training_loss),
    # notebook 04: reasoning
    **{model_class.__name__: vqa_case(model_class, False, feature_width=8)
       for model_class in (vqa.CnnLstm, vqa.StackedAttention, coattention.HierarchicalCoAttention)},
    "BlindLSTM": vqa_case(vqa.BlindLSTM, False),
    **{model_class.__name__: vqa_case(model_class, True, feature_width=8)
       for model_class in (vqa.BottomUpTopDown, bilinear.BilinearAttentionNetwork, bilinear.MFHCoAttention)},
    "relation network": Case(
        lambda: (relation_network.RelationNetwork(image_size=16, channels=8, conv_layers=2, hidden=16, g_layers=2,
                                                  f_layers=2), torch.rand(2, 3, 16, 16), torch.rand(2, 3, 18)),
        lambda model, images, vectors: model.ask(images, vectors).sum()),
    "CNN + MLP": Case(
        lambda: (relation_network.CnnMlp(image_size=16, channels=8, conv_layers=2, hidden=16, layers=2),
                 torch.rand(2, 3, 16, 16), torch.rand(2, 18)),
        lambda model, images, vector: model(images, vector)["logits"].sum()),
    "neural module network (programs left on the CPU)": Case(
        lambda: (nmn.NeuralModuleNetwork(feature_width=8, hidden=8, relation_hidden=8), *nmn_inputs()),
        lambda model, *inputs: (lambda out: (out["logits"].sum(), out))(model(*inputs))),
    "program generator: cloning, log-probabilities, REINFORCE": Case(
        lambda: (program_generator.ProgramGenerator(TOKENIZER.vocab_size, width=16), *layouts()),
        lambda model, words, targets: (
            model.clone_loss(words, targets) + program_generator.reinforce_loss(
                model.sample(words).log_probs, [1.0, 0.0], 0.5),
            model.log_prob(words, targets), model.sample(words, greedy=True))),
    # notebook 05: few-shot
    "ProtoNet": Case(
        lambda: (protonet.ProtoNet(protonet.ProtoEncoder(1, 8, 8, pooled=1)),
                 {"support": torch.rand(6, 1, 8, 8), "query": torch.rand(4, 1, 8, 8),
                  "query_labels": torch.tensor([0, 1, 2, 0]), "n_way": 3, "n_support": 2}),
        protonet.protonet_training_loss),
}

LOSS_CASES = {
    "CLIP loss": Case(lambda: (unit_rows(4, 8).requires_grad_(), unit_rows(4, 8), torch.tensor(10.0)), clip.clip_loss),
    "MIL-NCE loss with a candidate mask": Case(
        lambda: (torch.randn(3, 4, requires_grad=True), torch.randn(3, 2, 4), torch.tensor([[1, 1], [1, 0], [0, 1]])),
        lambda video, text, mask: milnce.milnce_loss(video, text, 0.5, mask.bool())),
    "ALBEF ITC loss with distillation": Case(
        lambda: (unit_rows(3, 8).requires_grad_(), unit_rows(3, 8), unit_rows(7, 8), unit_rows(7, 8)),
        lambda image, text, image_keys, text_keys: albef.itc_loss(image, text, image_keys, text_keys, 0.1, 0.4)),
    "ALBEF hard negatives": Case(lambda: (torch.randn(5, 5),),
                                 lambda similarity: albef.sample_hard_negatives(similarity, torch.Generator())),
    "nucleus sampling": Case(lambda: (torch.randn(3, 9),),
                             lambda logits: blip.nucleus_sample(logits, 0.8, torch.Generator().manual_seed(0))),
    "BERT masking and the MLM loss": Case(
        lambda: (torch.randn(2, 6, TOKENIZER.vocab_size, requires_grad=True), pair_batch(2, 6)["tokens"]),
        lambda logits, ids: layers.mlm_loss(logits, layers.mask_tokens(
            ids, TOKENIZER.mask_id, TOKENIZER.vocab_size, visualbert.special_ids(TOKENIZER), 0.5,
            torch.Generator().manual_seed(0))[1])),
    "hinge rank loss": Case(
        lambda: (torch.randn(4, 8, requires_grad=True), unit_rows(5, 8), torch.tensor([0, 4, 2, 2])),
        devise.hinge_rank_loss),
    "ranking loss": Case(lambda: (torch.randn(4, 4, requires_grad=True),), region_word.ranking_loss),
    "averaged logits": Case(lambda: ([torch.randn(2, 3), torch.randn(2, 3)], torch.tensor([0.25, 0.75])),
                            fusion.average_logits),
    "soft relate": Case(lambda: (torch.rand(2, 3), torch.rand(2, 3, 3), torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()),
                        nmn.relate),
    "expression map": Case(lambda: (torch.rand(2, 7, 4), pair_batch(2)["tokens"]), albef.expression_map),
}

EXPERIMENT_CASES = {
    "error distances": Case(lambda: (unit_rows(4, 8), torch.tensor([0, 1, 3, 3]), torch.tensor([0, 2, 3, 1])),
                            rep.error_distances),
    "few-shot scores of every method": Case(
        lambda: (unit_rows(6, 8), unit_rows(4, 8), unit_rows(3, 8)),
        lambda support, query, text: shots.few_shot_scores(support, query, text, 2, shots.CrossoverRecipe(), 10.0)),
    "grouped CLIP loss, collapse and modality gap": Case(
        lambda: (unit_rows(6, 8).requires_grad_(), unit_rows(6, 8)),
        lambda image, text: (rep.grouped_clip_loss(image, text, 10.0, 3), rep.positives_only_loss(image, text),
                             rep.embedding_spread(text), rep.modality_gap(image.detach(), text),
                             rep.pca_2d(image.detach(), text))),
    "recoloured background": Case(lambda: (caption_batch()["image"],),
                                  lambda images: rep.recolor_background(images, (10, 20, 30))),
    "identifying words and expression attention": Case(
        lambda: (caption_batch(), torch.rand(6, 1, 5)),
        lambda batch, weights: (identifying_word_mask(batch["tokens"], batch["alignment"], batch["attributes"]),
                                expression_attention(weights.expand(-1, batch["tokens"].shape[1], -1),
                                                     batch["tokens"] != TOKENIZER.pad_id))),
    # helpers that run a model on its device and give their results back on the CPU
    "embeddings of images and texts": Case(
        lambda: (clip.small_clip(image_size=16, width=16, embed_dim=8, vision="cnn", depth=1, heads=2,
                                 max_length=12),),
        lambda model: (rep.encode_images(model, torch.rand(3, 3, 16, 16)), rep.encode_texts(model, ["a red circle"])),
        on_cpu=True),
    "word alignment of a dataset": Case(
        lambda: (region_word.RegionWordAligner(width=16, dim=8), _caption_dataset()), evaluate_word_alignment,
        on_cpu=True),
    "prototype predictions of an episode": Case(
        lambda: (protonet.ProtoNet(protonet.ProtoEncoder(1, 8, 8, pooled=1)),),
        lambda model: shots.evaluate(shots.protonet_predictor(model), shots.Episodes(
            torch.rand(12, 1, 8, 8), torch.arange(12) % 3, [0, 1, 2], 3, 2, 2, num_episodes=2, seed=0)),
        on_cpu=True),
    "greedy layouts": Case(lambda: (program_generator.ProgramGenerator(TOKENIZER.vocab_size, width=16),),
                           lambda model: greedy_layouts(model, questions()), on_cpu=True),
    "matching and masked words of a dataset": Case(
        lambda: (visualbert.VisualBERTPretraining(width=16, depth=1, heads=2, stages=2), _caption_dataset()),
        lambda model, dataset: (itm_accuracy(model, dataset, "partner"), mlm_accuracy(model, dataset)), on_cpu=True),
    "affect accuracy and word-to-frame grounding": Case(
        lambda: (make_affect_model("mult", width=8), AffectDataset(16, seed=0)),
        lambda model, dataset: (accuracy_by_interaction(model, dataset), word_to_frame_grounding(model, dataset)),
        on_cpu=True),
    "segment retrieval": Case(lambda: (milnce.small_milnce(width=16, embed_dim=8, stages=2),
                                       ClipDataset(4, seed=0, frames=4, image_size=32)),
                              lambda model, clips: retrieval_at_1(model, clips, None), on_cpu=True),
    "question features and the answers of a VQA model and the NMN": Case(
        lambda: (encoders.RegionEncoder(8, stages=2), QuestionDataset(3, seed=0, image_size=32),
                 vqa.StackedAttention(TOKENIZER.vocab_size, len(ANSWERS), 8, width=16),
                 nmn.NeuralModuleNetwork(8, 8, 8)),
        reasoning_answers, on_cpu=True),
}
CASES = {**MODEL_CASES, **LOSS_CASES, **EXPERIMENT_CASES}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_follows_its_inputs_device(case):
    check_follows(case)


def test_fit_moves_a_number_logged_on_the_cpu_to_the_device(monkeypatch):
    """ALBEF once logged its alpha as a CPU tensor, which CUDA would not stack with the device's sums."""
    monkeypatch.setattr(train, "get_device", lambda device=None: FAKE)  # fit knows no "meta" device
    torch.manual_seed(0)
    with fake_device():
        model = nn.Linear(3, 1).to(FAKE)
        batches = [(torch.randn(4, 3).to(FAKE), torch.randn(4, 1).to(FAKE)) for _ in range(2)]

        def loss_fn(model, batch):
            return F.mse_loss(model(batch[0]), batch[1]), {"alpha": torch.tensor(0.4)}

        history = fit(model, batches, loss_fn, epochs=1, progress=False, device=FAKE)
    assert history[-1]["alpha"] == pytest.approx(0.4)


# --------------------------------------------------------------------------------------------
# On CUDA
# --------------------------------------------------------------------------------------------


GPU_CASES = ["CLIP (ViT) training loss", "ALBEF loss with random negatives",
             "VisualBERT MLM + ITM with swapped captions", "LSeg", "MulT", "StackedAttention",
             "neural module network (programs left on the CPU)", "ProtoNet", "error distances"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_CASES)
def test_runs_on_cuda_as_on_the_cpu(name, monkeypatch):
    """The same numbers on CUDA as on the CPU, up to the kernels' rounding (TF32 convolutions off),
    the tensors on CUDA. Integer results (argmaxes, draws) may differ at near-ties and are not compared."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    case = CASES[name]
    expected = outcome(case, CPU)
    got = outcome(case, torch.device("cuda"))
    for value, reference in zip(tree_leaves(got), tree_leaves(expected), strict=True):
        if isinstance(reference, torch.Tensor) and reference.is_floating_point():
            assert value.device.type == "cuda"
            torch.testing.assert_close(value.detach().cpu(), reference.detach(), rtol=1e-3, atol=1e-4)
        elif isinstance(reference, float):
            assert value == pytest.approx(reference, rel=1e-3, abs=1e-4, nan_ok=True)
