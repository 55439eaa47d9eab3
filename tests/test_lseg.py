"""LSeg-style segmentation: shapes, the frozen text encoder, per-pixel targets from CaptionDataset
batches, the loss, training on colour names, unseen colour-shape names through a structured text
space, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mmcourse.metrics import iou_per_class, mean_iou
from mmcourse.models.encoders import ConvImageEncoder, TextTransformer
from mmcourse.models.lseg import IGNORE_INDEX, LSeg, lseg_loss, segmentation_targets
from mmcourse.train import fit
from mmcourse.world import datasets
from mmcourse.world.language import default_tokenizer
from mmcourse.world.scene import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

TOKENIZER = default_tokenizer()
COLORS, SHAPES = PRESETS["default"].colors, PRESETS["default"].shapes
PAIRS = [(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES))]  # codes of "red circle", ...
HELD_OUT = [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1), (5, 2)]  # each colour once, each shape twice
SEEN = [pair for pair in PAIRS if pair not in HELD_OUT]
DIM = 32


class WordSum(nn.Module):
    """A fixed text encoder whose features are sums of word vectors: "red circle" = red + circle."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table, freeze=False, padding_idx=TOKENIZER.pad_id)

    def forward(self, ids):
        return self.table(ids).sum(1)  # (C, D)


def word_ids(names):
    return torch.from_numpy(TOKENIZER.encode_batch(names, max(len(n.split()) for n in names)))  # (C, L), no wrap


def pair_ids(pairs):
    return word_ids([f"{COLORS[c]} {SHAPES[s]}" for c, s in pairs])


def caption_data(n, seed):
    return datasets.CaptionDataset(n, seed=seed, image_size=32, cache=False)


def whole(data):
    return next(iter(DataLoader(data, batch_size=len(data), collate_fn=datasets.collate)))


def train(model, data, loss_fn, epochs):
    """`fit` with batches of 16 and a learning rate decaying linearly to 0."""
    loader = DataLoader(data, batch_size=16, shuffle=True, collate_fn=datasets.collate,
                        generator=torch.Generator().manual_seed(0))
    steps = epochs * len(loader)
    fit(model, loader, loss_fn, epochs=epochs, lr=3e-3, device="cpu", progress=False, scheduler_every="batch",
        scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps))


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("output_stride", [1, 2])
def test_shapes_and_unit_embeddings(output_stride):
    torch.manual_seed(0)
    model = LSeg(ConvImageEncoder(32, stages=2), TextTransformer(len(TOKENIZER), DIM, 4, depth=1), DIM,
                 output_stride=output_stride)
    images, ids = torch.rand(2, 3, 32, 32), word_ids(list(COLORS))
    side = 32 // output_stride
    pixels = model.pixel_embeddings(images)
    assert pixels.shape == (2, DIM, side, side)
    assert torch.allclose(pixels.norm(dim=1), torch.ones(2, side, side), atol=1e-5)
    labels = model.label_embeddings(ids)
    assert labels.shape == (1 + len(COLORS), DIM) and torch.allclose(labels.norm(dim=1), torch.ones(7), atol=1e-5)
    logits = model(images, ids)
    assert logits.shape == (2, 1 + len(COLORS), side, side)
    assert logits.abs().max() <= model.scale + 1e-4  # scaled cosines
    assert model.predict(images, ids).shape == (2, 32, 32)


# ------------------------------------------------------------------------------ targets and loss


def test_segmentation_targets_for_single_and_composite_labels():
    mask = torch.tensor([[[0, 1, 2], [3, 3, 0]]])  # (B=1, H=2, W=3): three objects and background
    attributes = torch.tensor([[[0, 1, 0, 0], [2, 1, 1, 0], [1, 4, 0, 1], [-1, -1, -1, -1]]])  # shape, color, ...
    batch = {"mask": mask, "attributes": attributes}
    assert segmentation_targets(batch, "color", range(6)).tolist() == [[[0, 2, 2], [5, 5, 0]]]
    assert segmentation_targets(batch, "shape", [2, 0]).tolist() == [[[0, 2, 1], [-100, -100, 0]]]
    composite = segmentation_targets(batch, ("color", "shape"), [(4, 1), (1, 0)], ignore_index=-1)
    assert composite.tolist() == [[[0, 2, -1], [1, 1, 0]]]


def test_segmentation_targets_on_a_caption_batch_follow_the_instance_mask():
    batch = whole(caption_data(6, seed=2))
    labels = segmentation_targets(batch, "color", range(len(COLORS)))
    assert labels.shape == batch["mask"].shape
    assert torch.equal(labels == 0, batch["mask"] == 0)
    image, row, col = (batch["mask"] == 1).nonzero()[0].tolist()  # a pixel of object 0 of some image
    assert labels[image, row, col] == 1 + batch["attributes"][image, 0, 1]


def test_lseg_loss_is_per_pixel_cross_entropy_with_ignored_pixels():
    torch.manual_seed(0)
    model = LSeg(ConvImageEncoder(16, stages=2), WordSum(torch.randn(len(TOKENIZER), DIM)), DIM, output_stride=2)
    images, ids = torch.rand(2, 3, 32, 32), word_ids(list(COLORS[:3]))
    labels = torch.randint(0, 4, (2, 32, 32))
    labels[0, :5] = IGNORE_INDEX
    logits = F.interpolate(model(images, ids), size=(32, 32), mode="bilinear", align_corners=False)  # (2, 4, 32, 32)
    log_probs = logits.log_softmax(1).gather(1, labels.clamp_min(0)[:, None])[:, 0]  # (2, 32, 32)
    expected = -log_probs[labels != IGNORE_INDEX].mean()
    assert lseg_loss(model, {"image": images}, ids, labels).item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------ the frozen text encoder


@pytest.fixture(scope="module")
def colour_model():
    """An LSeg trained on colour names with a frozen (random) text transformer, and the encoder's
    weights before training."""
    torch.manual_seed(0)
    text = TextTransformer(len(TOKENIZER), DIM, max_length=4, depth=1)
    before = {name: value.clone() for name, value in text.state_dict().items()}
    model = LSeg(ConvImageEncoder(32, stages=2), text, DIM)
    ids = word_ids(list(COLORS))
    classes = range(len(COLORS))

    def loss_fn(model, batch):
        return lseg_loss(model, batch, ids, segmentation_targets(batch, "color", classes))

    train(model, caption_data(300, seed=0), loss_fn, epochs=4)  # 76 steps
    return model, before


def test_text_encoder_is_frozen_and_unchanged_by_training(colour_model):
    model, before = colour_model
    text = model.text_encoder
    assert all(not p.requires_grad and p.grad is None for p in text.parameters())
    assert all(torch.equal(value, before[name]) for name, value in text.state_dict().items())
    model.train()
    assert model.image_encoder.training and not text.training
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable and not trainable & {id(p) for p in text.parameters()}


def test_bound_method_text_encoders_are_frozen_too():
    class ToyClip(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.EmbeddingBag(len(TOKENIZER), DIM)

        def encode_text(self, ids):
            return self.embed(ids)

    clip = ToyClip()
    model = LSeg(ConvImageEncoder(16, stages=2), clip.encode_text, DIM)
    assert not any(p.requires_grad for p in clip.parameters()) and not clip.training
    model(torch.rand(1, 3, 32, 32), word_ids(["red"])).sum().backward()
    assert clip.embed.weight.grad is None and model.background.grad is not None


def test_training_on_colour_names_reaches_a_high_miou(colour_model):
    model, _ = colour_model
    batch = whole(caption_data(100, seed=1))
    predicted = model.predict(batch["image"], word_ids(list(COLORS)))
    target = segmentation_targets(batch, "color", range(len(COLORS)))
    miou = mean_iou(predicted, target, 1 + len(COLORS))
    assert miou > 0.6, f"colour mIoU {miou:.2f}; all-background scores about 0.13"


# ------------------------------------------------------------------------------ unseen label names


def test_unseen_colour_shape_names_through_a_structured_text_space():
    """Trained on 12 colour-shape names, with pixels of the 6 held-out pairs ignored; tested with
    the 6 held-out names only. Their text features are sums of word vectors seen in training
    (red + circle), so they land where the image side already points; random features in their
    place (an unstructured text space) score near chance on the same pixels."""
    torch.manual_seed(0)
    table = torch.randn(len(TOKENIZER), DIM, generator=torch.Generator().manual_seed(0))
    model = LSeg(ConvImageEncoder(32, stages=2), WordSum(table), DIM)
    seen_ids = pair_ids(SEEN)

    def loss_fn(model, batch):
        return lseg_loss(model, batch, seen_ids, segmentation_targets(batch, ("color", "shape"), SEEN))

    train(model, caption_data(300, seed=0), loss_fn, epochs=21)  # 399 steps

    batch = whole(caption_data(100, seed=1))
    target = segmentation_targets(batch, ("color", "shape"), HELD_OUT)  # seen-pair objects ignored
    structured = model.predict(batch["image"], pair_ids(HELD_OUT))
    with torch.no_grad():
        random_names = F.normalize(torch.randn(len(HELD_OUT), DIM, generator=torch.Generator().manual_seed(1)), dim=1)
        labels = torch.cat([F.normalize(model.background[None], dim=1), random_names])  # (1 + 6, D)
        unstructured = torch.einsum("bdhw,cd->bchw", model.pixel_embeddings(batch["image"]), labels).argmax(1)
    held_out_iou = {name: np.nanmean(iou_per_class(predicted, target, 1 + len(HELD_OUT), IGNORE_INDEX)[1:])
                    for name, predicted in (("structured", structured), ("unstructured", unstructured))}
    assert held_out_iou["structured"] > 0.35, held_out_iou
    assert held_out_iou["structured"] > held_out_iou["unstructured"] + 0.2, held_out_iou


# ------------------------------------------------------------------------------ bad input


def bad_calls():
    model = LSeg(ConvImageEncoder(16, stages=2), WordSum(torch.randn(len(TOKENIZER), DIM)), DIM)
    images, ids = torch.rand(2, 3, 32, 32), word_ids(["red", "blue"])
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    mask = torch.zeros(1, 2, 2, dtype=torch.long)
    attributes = torch.zeros(1, 3, 4, dtype=torch.long)
    batch = {"mask": mask, "attributes": attributes}
    return [
        (lambda: LSeg(nn.Linear(2, 2), WordSum(torch.randn(9, 4)), 4), TypeError, "image_encoder"),
        (lambda: LSeg(ConvImageEncoder(8), "red", 4), TypeError, "text_encoder"),
        (lambda: LSeg(ConvImageEncoder(8), WordSum(torch.randn(9, 4)), 0), ValueError, "dim"),
        (lambda: LSeg(ConvImageEncoder(8), WordSum(torch.randn(9, 4)), 4, output_stride=4), ValueError,
         "output_stride"),
        (lambda: LSeg(ConvImageEncoder(8), WordSum(torch.randn(9, 4)), 4, scale=0), ValueError, "scale"),
        (lambda: LSeg(ConvImageEncoder(8), WordSum(torch.randn(len(TOKENIZER), 5)), 4)(images, ids), ValueError,
         "text_encoder returned"),
        (lambda: model(images, ids.float()), TypeError, "label_ids"),
        (lambda: model(images, ids[:0]), ValueError, "label_ids"),
        (lambda: lseg_loss(model, {"image": images}, ids, labels[:1]), ValueError, "pixel_labels"),
        (lambda: lseg_loss(model, {"image": images}, ids, labels + 3), ValueError, "pixel_labels"),
        (lambda: lseg_loss(model, {"image": images}, ids, labels.float()), TypeError, "pixel_labels"),
        (lambda: segmentation_targets(batch, "colour", [0]), ValueError, "attribute"),
        (lambda: segmentation_targets(batch, ("color", "color"), [(0, 0)]), ValueError, "attribute"),
        (lambda: segmentation_targets(batch, "color", []), ValueError, "classes"),
        (lambda: segmentation_targets(batch, "color", [0, 0]), ValueError, "classes"),
        (lambda: segmentation_targets(batch, ("color", "shape"), [0, 1]), ValueError, "classes"),
        (lambda: segmentation_targets(batch, "color", [-1]), ValueError, "classes"),
        (lambda: segmentation_targets({"mask": mask}, "color", [0]), ValueError, "attributes"),
        (lambda: segmentation_targets({"mask": mask + 4, "attributes": attributes}, "color", [0]), ValueError,
         "mask"),
        (lambda: segmentation_targets({"mask": mask, "attributes": attributes[..., :3]}, "color", [0]), ValueError,
         "attributes"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_is_refused_with_a_named_argument(case):
    call, error, word = bad_calls()[case]
    with pytest.raises(error, match=word):
        call()
