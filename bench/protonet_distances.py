"""Squared or plain Euclidean distance in a ProtoNet: which one wins depends on the training budget.

Notebook 05's "what matters" table trains every variant on a cheap budget (at cpu scale 300
episodes of an encoder with 32 filters) with one seed; there plain Euclidean beats the paper's
squared distance. This bench asks whether that is the seed or the budget: it trains both distances
on the cheap budget for several seeds and on the full recipe (`PROTO_RECIPES["cpu"]`: 2,000
episodes, 64 filters) for one, and tests every model on the same 5-way 1-shot and 5-shot episodes
of the unseen digits (600 each, the notebook's test episodes).

Measured on two CPU threads: on the cheap budget plain Euclidean led at 1 shot for each of seeds
0-3 (by 1-5 points); on the full recipe the squared distance was ahead at 1 and 5 shots, by less
than a point. The squared distance of a 1,024-d embedding gives large logits early in training,
the square root a gentler slope; given enough episodes the paper's choice is as good or better.

    python bench/protonet_distances.py [--seeds 0 1 2 3] [--full-seeds 0] [--shots 1 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from mmcourse.experiments import few_shot as fs

DISTANCES = ("squared_euclidean", "euclidean")
TEST_SEED = 1  # the notebook's test episodes: SEED + 1 with SEED = 0


def test_accuracies(model, images, labels, recipe: fs.ProtoRecipe, shots: tuple[int, ...]) -> dict[int, float]:
    """5-way accuracy of `model` on the unseen digits at each number of `shots`."""
    return {k: fs.evaluate(fs.protonet_predictor(model),
                           fs.Episodes(images, labels, fs.test_classes(5), 5, k, recipe.test_query,
                                       recipe.test_episodes, TEST_SEED))["accuracy"] for k in shots}


def compare(budget: str, recipe: fs.ProtoRecipe, seeds: list[int], shots: tuple[int, ...], images, labels) -> None:
    """Trains both distances on `recipe` for every seed; prints one row per model and the mean
    squared-minus-plain difference per number of shots."""
    differences = {k: [] for k in shots}
    for seed in seeds:
        accuracy = {}
        for distance in DISTANCES:
            started = time.perf_counter()
            model = fs.train_protonet(images, labels, recipe, seed, distance=distance)
            accuracy[distance] = test_accuracies(model, images, labels, recipe, shots)
            scores = "  ".join(f"{k}-shot {v:.3f}" for k, v in accuracy[distance].items())
            print(f"{budget:6s} seed {seed}  {distance:17s}  {scores}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
        for k in shots:
            differences[k].append(accuracy["squared_euclidean"][k] - accuracy["euclidean"][k])
    print(f"{budget:6s} squared minus plain, mean over {len(seeds)} seed(s): "
          + "  ".join(f"{k}-shot {sum(d) / len(d):+.3f}" for k, d in differences.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3], help="seeds of the cheap budget")
    parser.add_argument("--full-seeds", type=int, nargs="*", default=[0], help="seeds of the full recipe")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = fs.digit_scans()
    recipe = fs.PROTO_RECIPES["cpu"]
    shots = tuple(args.shots)
    if args.seeds:
        compare("cheap", fs.ablation_recipe(recipe), args.seeds, shots, images, labels)
    if args.full_seeds:
        compare("full", recipe, args.full_seeds, shots, images, labels)


if __name__ == "__main__":
    main()
