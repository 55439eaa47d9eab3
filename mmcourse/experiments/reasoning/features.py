"""The visual features every VQA model of notebook 04 reads, computed once per image.

VQA papers do not train their CNN: SAN and co-attention read the conv5 grid of a VGG or ResNet
trained on ImageNet, bottom-up attention, BAN and MFH the box features of a Faster R-CNN trained on
Visual Genome's objects and attributes. The course does the same in miniature:

1. `pretrain_backbone`: a `RegionEncoder` (small CNN + RoI-Align over the world's boxes) learns to
   tell each object's shape, colour, size and style on the training scenes, the course's "Visual
   Genome pretraining" (the function of notebook 03, `pretrain_region_encoder`);
2. `extract_features`: its CNN feature map of every image (the grid, for SAN, co-attention and
   CNN+LSTM) and its feature of every box (the regions, for bottom-up attention, BAN, MFH and the
   module networks), computed once under `torch.no_grad`;
3. `FeatureQuestions`: the questions of a `QuestionDataset` with those features, so a training
   step costs the question models only, not a CNN: this is what makes the whole model zoo fit a
   laptop's minutes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ...models.encoders import RegionEncoder
from ...models.nmn import box_geometry
from ...world.datasets import CaptionDataset, QuestionDataset, images_to_tensor
from ...world.scene import check_count
from ..alignment.regions import pretrain_region_encoder
from .data import ReasoningRecipe

FEATURE_BATCH = 256  # images per forward pass when extracting features


def pretrain_backbone(recipe: ReasoningRecipe, questions: QuestionDataset, seed: int,
                      progress: bool = False) -> tuple[RegionEncoder, dict[str, float]]:
    """A `RegionEncoder` of `recipe.feature_width` trained to classify the attributes of the objects
    of `questions`' scenes (the same scenes: same count, seed and preset), frozen, and its last
    training accuracy per attribute."""
    scenes = CaptionDataset(len(questions.scenes), questions.seed, preset=questions.scenes[0].preset,
                            image_size=questions.image_size)
    torch.manual_seed(seed)
    encoder = RegionEncoder(recipe.feature_width, stages=recipe.feature_stages)
    accuracy = pretrain_region_encoder(encoder, scenes, epochs=recipe.backbone_epochs, batch_size=64, lr=3e-3,
                                       seed=seed, progress=progress)
    encoder.eval().requires_grad_(False)
    return encoder, accuracy


@dataclass(frozen=True)
class VisualFeatures:
    """The features of every scene of a question set: grid (S, C, h, w) and regions (S, K, C)."""

    grid: torch.Tensor
    regions: torch.Tensor


@torch.no_grad()
def extract_features(encoder: RegionEncoder, questions: QuestionDataset) -> VisualFeatures:
    """`encoder`'s feature map of every image of `questions` and its feature of every box."""
    encoder.eval()
    device = next(encoder.parameters()).device
    images, boxes = questions.arrays["images"], torch.from_numpy(questions.arrays["boxes"])
    grids, regions = [], []
    for start in range(0, len(images), FEATURE_BATCH):
        batch = images_to_tensor(images[start:start + FEATURE_BATCH]).to(device)  # (b, 3, H, W)
        grids.append(encoder.backbone.feature_map(batch).cpu())  # (b, C, h, w)
        regions.append(encoder(batch, boxes[start:start + FEATURE_BATCH].to(device)).cpu())  # (b, K, C)
    return VisualFeatures(torch.cat(grids), torch.cat(regions))


class FeatureQuestions(Dataset):
    """The questions of `questions` with the precomputed features of their scenes, indexed by whole
    batches: `dataset[indices]` gathers a batch dict from tensors at once, with no per-item Python.

    A batch holds "grid" (B, C, h, w), "regions" (B, K, C), "objects" (B, K), "boxes" (B, K, 4) and
    their "geometry" (B, K, 4) (centre and size as fractions of the side, as `nmn.box_geometry`),
    "question" (B, L) trimmed to its longest question, "answer", "family", "scene_index" and "index"
    (B,): its keys are the argument names of the models' `forward`. Use `feature_loader`.
    """

    def __init__(self, questions: QuestionDataset, features: VisualFeatures):
        if len(features.grid) != len(questions.scenes):
            raise ValueError(f"features hold {len(features.grid)} scenes but questions has "
                             f"{len(questions.scenes)}; extract them from the same QuestionDataset")
        a = questions.arrays
        self.questions, self.features = questions, features
        self.question_ids = torch.from_numpy(a["questions"])  # (N, L)
        self.answers, self.families = torch.from_numpy(a["answers"]), torch.from_numpy(a["families"])  # (N,)
        self.scene_index = torch.from_numpy(a["scene_index"])  # (N,)
        self.boxes = torch.from_numpy(a["boxes"])  # (S, K, 4)
        self.geometry = box_geometry(self.boxes, questions.image_size)  # (S, K, 4) centre, size in [0, 1]
        self.objects = torch.arange(self.boxes.shape[1]) < torch.from_numpy(a["num_objects"])[:, None]  # (S, K)

    def __len__(self) -> int:
        return len(self.answers)

    def __getitem__(self, indices) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)  # (B,)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}), got {index.min().item()}..{index.max().item()}")
        scene = self.scene_index[index]  # (B,)
        question = self.question_ids[index]  # (B, L)
        length = int((question != 0).any(0).nonzero().max()) + 1 if len(index) else 1
        return {"grid": self.features.grid[scene], "regions": self.features.regions[scene],
                "objects": self.objects[scene], "boxes": self.boxes[scene], "geometry": self.geometry[scene], "question": question[:, :length],
                "answer": self.answers[index], "family": self.families[index], "scene_index": scene, "index": index}


def feature_loader(dataset: FeatureQuestions, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """Whole batches of `dataset`, in order or shuffled reproducibly from `seed`."""
    order = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle else \
        SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(order, check_count("batch_size", batch_size, 1), drop_last=False),
                      batch_size=None)
