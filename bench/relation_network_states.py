"""How many steps does a Relation Network need on Sort-of-CLEVR when the objects are given?

Notebook 04's pixel RN (section 6) stays near what the question alone gives in a laptop's budget.
This bench takes the CNN out of the question: every scene's six objects reach the models as their
true state, a row [colour one-hot (6), shape one-hot (square, circle), x, y] per object in the
scene's own (random) order, the "state description" setting that Santoro et al. (2017) use for
CLEVR. Two models of about as many parameters read the same rows and the 18-d question:

- the RN, `RelationModule`: f(mean over all 36 ordered pairs of g(o_i, o_j, q));
- an MLP on the six rows concatenated with q (`relation_network.mlp`), the CNN+MLP's head.

Both train with AdamW on the same batches of scenes (20 questions each) and are measured on
held-out scenes per question subtype every `--every` steps. What it shows (2 CPU threads, seed 0):
the RN finds an object by its colour (non-relational questions, about 0.99) and counts (1.00)
within 3,000 steps, which the MLP on the unordered rows does not (about 0.6 and 0.84); on "the shape
of the object closest to / furthest from ..." both stay at or below what a guess without any distance gets,
the commoner shape among the five other objects (about 0.67 and 0.71; the answers alone: 0.5),
after 5,000 steps, even with perfect objects. The paper trains for about 60,000 steps of 64 questions.

    python bench/relation_network_states.py [--images 4000] [--steps 5000] [--every 1000] [--hidden 64]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from mmcourse.experiments.reasoning.relations import question_subtypes
from mmcourse.models.relation_network import RelationModule, matching_mlp_width, mlp, parameter_count
from mmcourse.world.scene import sample_scenes, scene_rng
from mmcourse.world.sort_of_clevr import ANSWERS, COLORS, PRESET, VECTOR_DIM, questions

SHAPES = ("square", "circle")
STATE_DIM = len(COLORS) + len(SHAPES) + 2  # colour one-hot, shape one-hot, x, y
OBJECTS = len(COLORS)


def state_questions(n: int, seed: int) -> dict[str, torch.Tensor]:
    """`n` Sort-of-CLEVR scenes (those of `SortOfClevrDataset(n, seed)`) as "states" (n, 6, 10),
    with their "vectors" (n, 20, 18) and "answers" (n, 20)."""
    scenes = sample_scenes(n, seed, preset=PRESET)
    states = np.zeros((n, OBJECTS, STATE_DIM), np.float32)
    vectors, answers = [], []
    for i, scene in enumerate(scenes):
        for k, thing in enumerate(scene.objects):
            states[i, k, COLORS.index(thing.color)] = 1
            states[i, k, len(COLORS) + SHAPES.index(thing.shape)] = 1
            states[i, k, -2:] = 2 * thing.x - 1, 2 * thing.y - 1  # in [-1, 1], as the pixel RN's cells
        asked = questions(scene, scene_rng(seed, i, "questions"))
        vectors.append([q.vector for q in asked])
        answers.append([q.answer_index for q in asked])
    return {"states": torch.from_numpy(states), "vectors": torch.tensor(np.array(vectors)),
            "answers": torch.tensor(answers)}


class StateMlp(torch.nn.Module):
    """The six rows concatenated with the question -> an MLP of `layers` hidden layers."""

    def __init__(self, hidden: int, layers: int = 3):
        super().__init__()
        self.net = mlp([OBJECTS * STATE_DIM + VECTOR_DIM] + [hidden] * layers + [len(ANSWERS)])

    def forward(self, states: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([states.flatten(1), question], 1))  # (B, answers)


def comparable_mlp(rn: RelationModule, layers: int = 3) -> StateMlp:
    """The `StateMlp` whose parameter count is closest to the RN's."""
    return StateMlp(matching_mlp_width(OBJECTS * STATE_DIM + VECTOR_DIM, len(ANSWERS), layers, parameter_count(rn)),
                    layers)


def ask(model: torch.nn.Module, states: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(B, 6, 10) scenes with (B, Q, 18) questions each -> (B, Q, answers) logits."""
    batch, count = vectors.shape[:2]
    logits = model(states.repeat_interleave(count, 0), vectors.flatten(0, 1))  # (B * Q, answers)
    return logits.view(batch, count, -1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, test: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy on each question subtype of `test`."""
    model.eval()
    right = ask(model, test["states"], test["vectors"]).argmax(-1) == test["answers"]  # (N, 20)
    model.train()
    return {name: float(right[mask].float().mean()) for name, mask in question_subtypes(test["vectors"]).items()}


def prior(data: dict[str, torch.Tensor], test: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy on each subtype of `test` of the answer most common for that subtype in `data`:
    what the question alone gives."""
    train_masks, test_masks = question_subtypes(data["vectors"]), question_subtypes(test["vectors"])
    return {name: float((test["answers"][test_masks[name]] == data["answers"][mask].mode().values).float().mean())
            for name, mask in train_masks.items()}


def commoner_shape_of_the_others(test: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy on the closest/furthest questions of `test` of a guess that needs no distance: the
    commoner shape among the five objects other than the named one."""
    subject = test["vectors"][..., :OBJECTS] @ test["states"][..., :OBJECTS].transpose(1, 2)  # (N, 20, 6) one-hot
    shapes = test["states"][..., OBJECTS:OBJECTS + len(SHAPES)]  # (N, 6, 2)
    counts = (1 - subject) @ shapes  # (N, 20, 2): squares and circles among the other five
    guess = counts.argmax(-1) + ANSWERS.index(SHAPES[0])  # (N, 20) answer indices
    masks = question_subtypes(test["vectors"])
    return {name: float((guess == test["answers"])[masks[name]].float().mean())
            for name in ("closest_shape", "furthest_shape")}


def train(model: torch.nn.Module, data: dict, test: dict, steps: int, every: int, batch_size: int, lr: float,
          seed: int, name: str) -> None:
    """AdamW on batches of `batch_size` scenes; prints the held-out accuracies every `every` steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    started, step = time.perf_counter(), 0
    while step < steps:
        for rows in torch.randperm(len(data["states"]), generator=generator).split(batch_size):
            logits = ask(model, data["states"][rows], data["vectors"][rows])
            loss = F.cross_entropy(logits.flatten(0, 1), data["answers"][rows].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % every == 0 or step == steps:
                scores = "  ".join(f"{k} {v:.3f}" for k, v in accuracy(model, test).items())
                print(f"{name:4s} step {step:6d} ({time.perf_counter() - started:5.0f} s)  {scores}", flush=True)
            if step == steps:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000, help="training scenes, 20 questions each")
    parser.add_argument("--test", type=int, default=500, help="held-out scenes")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8, help="scenes per step")
    parser.add_argument("--hidden", type=int, default=64, help="width of g and f")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data, test = state_questions(args.images, args.seed), state_questions(args.test, args.seed + 1000)
    torch.manual_seed(args.seed)
    rn = RelationModule(STATE_DIM, hidden=args.hidden, pool="mean")
    baseline = comparable_mlp(rn)
    print(f"parameters: RN {parameter_count(rn):,}, MLP {parameter_count(baseline):,}")
    print("question prior:", "  ".join(f"{k} {v:.3f}" for k, v in prior(data, test).items()))
    print("commoner shape among the other five:",
          "  ".join(f"{k} {v:.3f}" for k, v in commoner_shape_of_the_others(test).items()))
    for name, model in (("RN", rn), ("MLP", baseline)):
        train(model, data, test, args.steps, args.every, args.batch_size, args.lr, args.seed, name)


if __name__ == "__main__":
    main()
