"""Ask your own question: one question about one scene, answered by every model of notebook 04.

`ask` reads the question with the world's parser (or says, in one sentence, which word it cannot
read), renders the scene, computes the pretrained backbone's features, and returns the program, the
module network's output node by node, stacked attention's hops and every model's answer, with the
world's own answer beside them. Widgets and the static figure of the notebook both draw its result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...models.encoders import RegionEncoder
from ...models.nmn import NeuralModuleNetwork, box_geometry, encode_programs
from ...world import programs
from ...world.datasets import images_to_tensor
from ...world.language import default_tokenizer
from ...world.render import Rendered, render
from ...world.scene import Scene
from .programs import QUESTION_LENGTH
from .vqa import model_inputs


@dataclass
class Asked:
    """What the models make of one question about one scene (`program` is None when the question
    cannot be parsed; `problem` then says why and nothing else is filled in)."""

    text: str
    picture: Rendered
    program: list[dict] | None = None
    problem: str | None = None
    truth: str | None = None  # the world's answer ("ambiguous: ..." when the program names no single object)
    answers: dict[str, str] = field(default_factory=dict)  # model name -> its answer
    module_outputs: list[np.ndarray] = field(default_factory=list)  # each node's attention over the objects
    hops: np.ndarray | None = None  # (hops, h, w) stacked attention's maps


def scene_batch(encoder: RegionEncoder, picture: Rendered, text: str, capacity: int) -> dict[str, torch.Tensor]:
    """A batch of one question about one rendered scene, with the keys the models' `forward` names."""
    device = next(encoder.parameters()).device
    image = images_to_tensor(picture.image)[None].to(device)  # (1, 3, H, W)
    boxes = torch.zeros(1, capacity, 4, device=device)
    boxes[0, :len(picture.boxes)] = torch.from_numpy(picture.boxes).to(device)
    objects = (torch.arange(capacity, device=device) < len(picture.boxes))[None]  # (1, K)
    ids = default_tokenizer().encode_batch([text], QUESTION_LENGTH, truncate=True)
    question = torch.from_numpy(ids[:, :max(1, int((ids != 0).sum()))]).to(device)
    with torch.no_grad():
        return {"grid": encoder.backbone.feature_map(image), "regions": encoder(image, boxes), "objects": objects,
                "boxes": boxes, "geometry": box_geometry(boxes, picture.image.shape[0]), "question": question}


@torch.no_grad()
def ask(text: str, scene: Scene, encoder: RegionEncoder, models: dict[str, nn.Module], network: NeuralModuleNetwork,
        image_size: int, hop_model: str | None = None) -> Asked:
    """Every model's answer to `text` about `scene` (`models` read the backbone's features; `network`
    runs the parsed program), the module network's node outputs and, when `hop_model` names a model
    of `models` that returns attention hops over the grid, its maps."""
    picture = render(scene, image_size)
    asked = Asked(text, picture)
    try:
        asked.program = programs.parse(text)
    except ValueError as error:
        asked.problem = str(error).replace("cannot parse text=", "I cannot read ")
        return asked
    asked.truth = _truth(asked.program, scene)
    batch = scene_batch(encoder, picture, text, scene.spec.max_objects)
    for name, model in models.items():
        model.eval()
        output = model(**model_inputs(model, batch))
        asked.answers[name] = programs.ANSWERS[int(output["logits"].argmax(-1))]
        if name == hop_model:
            asked.hops = output["attention"][0].reshape(-1, *output["grid"]).cpu().numpy()
    network.eval()
    output = network(batch["regions"], batch["geometry"], batch["objects"], encode_programs([asked.program]))
    asked.answers["NMN (the parser's program)"] = programs.ANSWERS[int(output["logits"].argmax(-1))]
    asked.module_outputs = list(output["attention"][0, :, :len(scene)].cpu().numpy())
    return asked


def _truth(program: list[dict], scene: Scene) -> str:
    try:
        return programs.execute(program, scene)
    except programs.AmbiguousReference:
        return "none: the question does not single out one object in this scene"
