"""Tests of mmcourse.experiments.representation: the data and measurements of notebook 02."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcourse.experiments import representation as rep
from mmcourse.models.clip import clip_loss, small_clip
from mmcourse.world.language import Caption, default_tokenizer, describe_with_spans, split_words
from mmcourse.world.scene import PRESETS, Scene, SceneObject

HELD_OUT = rep.HELD_OUT_COMPOSITIONS


def obj(color="red", shape="circle", size="small", style="filled", x=0.2, y=0.2):
    return SceneObject(shape, color, size, style, x, y)


def names_held_out_pair(text: str) -> bool:
    """A phrase naming a held-out colour and shape: the colour, then at most one style word, then the shape."""
    words = split_words(text)
    styles = {"filled", "outline", "solid", "hollow"}
    for i, word in enumerate(words):
        for color, shape in HELD_OUT:
            if word != color:
                continue
            rest = words[i + 1:i + 3]
            following = rest[1:] if rest and rest[0] in styles else rest
            if following and following[0] in (shape, shape + "s"):
                return True
    return False


# ------------------------------------------------------------------------- compositions, captions


def test_compositions_are_colour_major_and_complete():
    pairs = rep.compositions()
    spec = PRESETS["default"]
    assert len(pairs) == len(spec.colors) * len(spec.shapes) == 18
    assert pairs[:3] == [("red", "circle"), ("red", "square"), ("red", "triangle")]
    assert set(HELD_OUT) <= set(pairs)
    assert rep.composition_name(("blue", "square")) == "blue square"


def test_held_out_pairs_need_both_words():
    colors, shapes = Counter(c for c, _ in HELD_OUT), Counter(s for _, s in HELD_OUT)
    assert all(count == 2 for count in colors.values()) and all(count == 2 for count in shapes.values())


def test_names_composition_reads_phrases_not_the_whole_sentence():
    together = Caption("a small red square", ((0, 4, 0),))
    plural = Caption("two red squares", ((0, 3, 0), (0, 3, 1)))
    apart = Caption("a red circle left of a square", ((0, 3, 0), (5, 7, 1)))
    assert rep.names_composition(together, [("red", "square")])
    assert rep.names_composition(plural, [("red", "square")])
    assert not rep.names_composition(apart, [("red", "square")])
    assert not rep.names_composition(together, [("blue", "square")])


def test_names_composition_refuses_bad_input():
    with pytest.raises(TypeError, match="caption must be a Caption"):
        rep.names_composition("a red square", HELD_OUT)
    with pytest.raises(ValueError, match=r"pairs\[0\]"):
        rep.names_composition(Caption("a red square"), [("red",)])
    with pytest.raises(TypeError, match="pairs must be a sequence"):
        rep.names_composition(Caption("a red square"), "red square")


def test_object_phrase_names_everything_but_a_held_out_pair():
    assert rep.object_phrase(obj("yellow", "square", "large", "outline")) == "a large yellow outline square"
    rng = np.random.default_rng(0)
    phrases = {rep.object_phrase(obj("red", "square"), HELD_OUT, rng) for _ in range(20)}
    assert phrases == {"a small filled square", "a small red filled object"}
    with pytest.raises(ValueError, match="rng is None"):
        rep.object_phrase(obj("red", "square"), HELD_OUT)


def test_full_caption_lists_every_object_and_is_seeded():
    scene = Scene(objects=(obj("yellow", "circle", x=0.2), obj("cyan", "triangle", "large", "outline", x=0.7),
                           obj("red", "square", x=0.45, y=0.8)))
    caption = rep.full_caption(scene, np.random.default_rng(3), HELD_OUT)
    assert caption.startswith(rep.LIST_OPENING + " ")
    assert "a small yellow filled circle" in caption and "a large cyan outline triangle" in caption
    assert not names_held_out_pair(caption)
    assert caption == rep.full_caption(scene, np.random.default_rng(3), HELD_OUT)
    orders = {rep.full_caption(scene, np.random.default_rng(seed)) for seed in range(12)}
    assert len(orders) > 1  # the order is shuffled
    single = Scene(objects=(obj("purple", "circle"),))
    assert rep.full_caption(single, np.random.default_rng(0)) == "the picture shows a small purple filled circle"
    with pytest.raises(ValueError, match="at least one object"):
        rep.full_caption(Scene(objects=()), np.random.default_rng(0))


def test_scene_captions_never_name_a_held_out_pair():
    scenes = rep.sample_mixed_scenes(60, seed=5)
    captions = [rep.scene_captions(scene, 5, i, 3, HELD_OUT) for i, scene in enumerate(scenes)]
    assert all(len(texts) == 3 for texts in captions)
    assert all(texts[0].startswith(rep.LIST_OPENING) for texts in captions)
    assert not any(names_held_out_pair(text) for texts in captions for text in texts)
    # without a held-out set, the world's captions come through unfiltered
    scene = scenes[0]
    assert rep.scene_captions(scene, 5, 0, 3)[1:] == [c.text for c in describe_with_spans(scene, 5, 6)][:2]
    assert captions[7] == rep.scene_captions(scenes[7], 5, 7, 3, HELD_OUT)
    tokenizer = default_tokenizer()
    assert all(tokenizer.unk_id not in tokenizer.encode(text) for texts in captions for text in texts)
    with pytest.raises(ValueError, match="n must be >= 1"):
        rep.scene_captions(scene, 5, 0, 0)


# ------------------------------------------------------------------------- scenes


def test_sample_mixed_scenes_is_prefix_stable_and_uses_the_counts():
    scenes = rep.sample_mixed_scenes(40, seed=2, counts=(1, 3))
    assert {len(scene) for scene in scenes} == {1, 3}
    assert rep.sample_mixed_scenes(10, seed=2, counts=(1, 3)) == scenes[:10]
    assert rep.sample_mixed_scenes(10, seed=3, counts=(1, 3)) != scenes[:10]
    with pytest.raises(ValueError, match="counts must be a non-empty"):
        rep.sample_mixed_scenes(3, seed=0, counts=())
    with pytest.raises(ValueError, match="every count in counts must be >= 1"):
        rep.sample_mixed_scenes(3, seed=0, counts=(0, 2))


def test_single_object_scenes_cycle_through_the_pairs():
    pairs = [("red", "square"), ("cyan", "circle")]
    scenes = rep.single_object_scenes(5, seed=1, pairs=pairs)
    assert [(s.objects[0].color, s.objects[0].shape) for s in scenes] == [pairs[i % 2] for i in range(5)]
    assert all(len(scene) == 1 for scene in scenes)
    with pytest.raises(ValueError, match="pairs is empty"):
        rep.single_object_scenes(2, seed=1, pairs=[])
    with pytest.raises(ValueError, match="orange"):
        rep.single_object_scenes(2, seed=1, pairs=[("orange", "circle")])


def test_identifiable_scenes_hold_different_objects():
    scenes = rep.sample_identifiable_scenes(300, seed=4, num_objects=2)
    keys = {tuple(sorted(o.phrase() for o in scene.objects)) for scene in scenes}
    assert len(scenes) == len(keys) == 300
    assert all(len(scene) == 2 for scene in scenes)
    assert rep.sample_identifiable_scenes(50, seed=4, num_objects=2) == scenes[:50]
    with pytest.raises(ValueError, match="could not be found"):
        rep.sample_identifiable_scenes(80, seed=0, num_objects=1)  # the world has 72 one-object kinds


def test_phrase_queries_name_exactly_one_object():
    scene = Scene(objects=(obj("red", "square", x=0.2), obj("blue", "circle", x=0.7)))
    twice = Scene(objects=(obj("red", "square", x=0.2), obj("red", "square", "large", x=0.7)))
    queries = rep.phrase_queries([scene, twice], HELD_OUT)
    assert queries == [(0, 0, "the red square")]
    assert rep.phrase_queries([scene], [("yellow", "circle")]) == []


def test_phrase_tokens_mark_the_content_words_of_each_phrase():
    ids, words = rep.phrase_tokens(["the red square", "a large blue outline circle", "glowing thing"], length=8)
    tokenizer = default_tokenizer()
    assert ids.shape == words.shape == (3, 8) and ids.dtype == torch.int64 and words.dtype == torch.bool
    assert tokenizer.decode(ids[0]) == "the red square"
    assert [tokenizer.itos[i] for i in ids[0][words[0]].tolist()] == ["red", "square"]
    assert [tokenizer.itos[i] for i in ids[1][words[1]].tolist()] == ["large", "blue", "outline", "circle"]
    assert [tokenizer.itos[i] for i in ids[2][words[2]].tolist()] == ["<unk>", "thing"]  # unknown words still count
    assert words.sum(1).tolist() == [2, 4, 2]
    for bad, word in ((["the"], "besides articles"), ("the red square", "list of str"), ([], "list of str")):
        with pytest.raises(ValueError, match=word):
            rep.phrase_tokens(bad)
    with pytest.raises(ValueError, match="length"):
        rep.phrase_tokens(["the red square"], length=4)


def test_render_images_gives_float_tensors():
    images = rep.render_images(rep.single_object_scenes(3, 0, [("red", "circle")]), 32)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    with pytest.raises(ValueError, match="scenes is empty"):
        rep.render_images([], 32)


def test_pair_dataset_items_follow_their_scene():
    scenes = rep.sample_mixed_scenes(4, seed=0)
    captions = [rep.scene_captions(scene, 0, i, 2, HELD_OUT) for i, scene in enumerate(scenes)]
    data = rep.PairDataset(scenes, captions, image_size=32)
    assert len(data) == 8
    item = data[5]
    assert item["index"] == 2 and item["image"].shape == (3, 32, 32)
    assert default_tokenizer().decode(item["tokens"]) == " ".join(split_words(captions[2][1]))
    assert torch.equal(data[4]["image"], data[5]["image"])
    with pytest.raises(IndexError):
        data[8]
    with pytest.raises(ValueError, match="one list of captions per scene"):
        rep.PairDataset(scenes, captions[:3], image_size=32)
    with pytest.raises(ValueError, match="same non-zero number"):
        rep.PairDataset(scenes[:2], [captions[0], captions[1][:1]], image_size=32)


# ------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return small_clip(image_size=32, width=16, embed_dim=8, vision="cnn", depth=1, heads=2)


def test_encoders_return_unit_rows_on_the_cpu(tiny_clip):
    images = rep.render_images(rep.single_object_scenes(5, 0, [("red", "circle")]), 32)
    image_features = rep.encode_images(tiny_clip, images, batch_size=2)
    text_features = rep.encode_texts(tiny_clip, ["a red circle", "a square", "two objects"], batch_size=2)
    assert image_features.shape == (5, 8) and text_features.shape == (3, 8)
    assert torch.allclose(image_features.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(text_features.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not tiny_clip.training
    assert torch.allclose(rep.encode_images(tiny_clip, images, batch_size=5), image_features, atol=1e-6)
    with pytest.raises(ValueError, match=r"images must be a \(N, 3, H, W\)"):
        rep.encode_images(tiny_clip, images[0])
    with pytest.raises(ValueError, match="texts must be a non-empty list"):
        rep.encode_texts(tiny_clip, "a red circle")


class FakeWordVectors:
    """Word -> vector lookup like `WordVectors.vector`."""

    table = {"red": [1.0, 0.0, 5.0], "blue": [0.0, 1.0, 5.0], "circle": [0.0, 0.0, 5.0], "square": [1.0, 1.0, 5.0]}

    def vector(self, word):
        return np.array(self.table[word], dtype=np.float32)


def test_phrase_vectors_sum_words_and_remove_the_mean():
    raw = rep.phrase_vectors(FakeWordVectors(), ["red circle", "blue circle"], center=False)
    assert torch.allclose(raw[0], torch.tensor([1.0, 0.0, 10.0]) / math.sqrt(101), atol=1e-6)
    centred = rep.phrase_vectors(FakeWordVectors(), ["red circle", "blue circle"])
    assert float(raw[0] @ raw[1]) > 0.98  # the shared direction makes them look alike
    assert torch.allclose(centred[0], -centred[1], atol=1e-6)  # without it they are opposites
    with pytest.raises(ValueError, match="at least two phrases"):
        rep.phrase_vectors(FakeWordVectors(), ["red circle"])
    with pytest.raises(ValueError, match="non-empty list"):
        rep.phrase_vectors(FakeWordVectors(), "red circle")


def test_error_distances_compare_mistakes_with_random_wrong_labels():
    labels = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]]), dim=1)
    distance = 1 - labels @ labels.T
    result = rep.error_distances(labels, torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2]))
    assert result["num_errors"] == 1
    assert result["errors"] == pytest.approx(float(distance[0, 1]))
    expected_random = np.mean([(distance[0, 1] + distance[0, 2]) / 2, (distance[1, 0] + distance[1, 2]) / 2,
                               (distance[2, 0] + distance[2, 1]) / 2])
    assert result["random_wrong"] == pytest.approx(float(expected_random))
    assert math.isnan(rep.error_distances(labels, torch.tensor([0]), torch.tensor([0]))["errors"])
    with pytest.raises(ValueError, match="expected the same non-empty"):
        rep.error_distances(labels, torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"expected \[0, 3\)"):
        rep.error_distances(labels, torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="C >= 2"):
        rep.error_distances(labels[:1], torch.tensor([0]), torch.tensor([0]))


def test_arithmetic_accuracy_on_a_perfectly_regular_space():
    colors, shapes = ["red", "blue", "green"], ["circle", "square"]
    basis = torch.eye(5)
    embed = lambda c, s: basis[colors.index(c)] + basis[3 + shapes.index(s)]  # noqa: E731
    pairs = [(c, s) for c in colors for s in shapes]
    gallery = torch.stack([embed(c, s) for c, s in pairs])
    queries = [("red", "circle"), ("blue", "square")]
    query_features = torch.stack([embed(c, s) for c, s in queries])
    color_text = {c: basis[i] for i, c in enumerate(colors)}
    assert rep.arithmetic_accuracy(query_features, queries, gallery, pairs, color_text) == 1.0
    unmoved = {c: torch.zeros(5) for c in colors}  # no edit: the query finds itself, never another colour
    assert rep.arithmetic_accuracy(query_features, queries, gallery, pairs, unmoved) == 0.0
    with pytest.raises(ValueError, match="one pair per row"):
        rep.arithmetic_accuracy(query_features, queries[:1], gallery, pairs, color_text)
    with pytest.raises(ValueError, match="at least two"):
        rep.arithmetic_accuracy(query_features, queries, gallery, pairs, {"red": basis[0]})
    with pytest.raises(ValueError, match="lacks"):
        rep.arithmetic_accuracy(query_features, queries, gallery, pairs, {"green": basis[2], "blue": basis[1]})


def test_modality_gap_is_the_centroid_distance():
    images = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    texts = torch.tensor([[-1.0, 1.0]])
    assert rep.modality_gap(images, texts) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="D=2 but text_features D=3"):
        rep.modality_gap(images, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="text_features must be a non-empty"):
        rep.modality_gap(images, torch.zeros(0, 2))


def test_pca_2d_keeps_the_main_separation():
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(20, 6, generator=generator) * 0.1
    right = left + torch.tensor([5.0, 0, 0, 0, 0, 0])
    a, b = rep.pca_2d(left, right)
    assert a.shape == (20, 2) and b.shape == (20, 2)
    assert abs(float(a[:, 0].mean() - b[:, 0].mean())) > 4.5  # the first axis is the separation
    with pytest.raises(ValueError, match="at least one"):
        rep.pca_2d()


def unit_rows(batch, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, dim, generator=generator), dim=1)


def test_grouped_clip_loss_is_the_mean_of_the_groups_losses():
    image, text = unit_rows(12, seed=1), unit_rows(12, seed=2)
    scale = torch.tensor(10.0, requires_grad=True)
    expected = torch.stack([clip_loss(image[i:i + 4], text[i:i + 4], scale) for i in (0, 4, 8)]).mean()
    grouped = rep.grouped_clip_loss(image, text, scale, 4)
    torch.testing.assert_close(grouped, expected)
    grouped.backward()
    assert scale.grad is not None and scale.grad != 0


def test_grouped_clip_loss_at_its_ends():
    image, text = unit_rows(6, seed=3), unit_rows(6, seed=4)
    torch.testing.assert_close(rep.grouped_clip_loss(image, text, 5.0, 6), clip_loss(image, text, 5.0))
    assert float(rep.grouped_clip_loss(image, text, 5.0, 1)) == 0.0  # one candidate: nothing to tell apart


def test_fewer_negatives_make_an_easier_loss_for_a_blind_model():
    """Identical features everywhere: each group's loss is log(group size)."""
    same = F.normalize(torch.ones(16, 4), dim=1)
    for group in (2, 4, 16):
        assert float(rep.grouped_clip_loss(same, same, 1.0, group)) == pytest.approx(np.log(group), abs=1e-5)


def test_grouped_clip_loss_refuses_bad_groups():
    image, text = unit_rows(6), unit_rows(6, seed=5)
    with pytest.raises(ValueError, match="group_size=4 does not divide the batch of 6"):
        rep.grouped_clip_loss(image, text, 1.0, 4)
    with pytest.raises(ValueError, match="group_size"):
        rep.grouped_clip_loss(image, text, 1.0, 0)
    with pytest.raises(ValueError, match="group_size"):
        rep.grouped_clip_training_loss(0)
    with pytest.raises(ValueError, match="expected the same"):  # extra texts are not silently dropped
        rep.grouped_clip_loss(image, unit_rows(8, seed=6), 1.0, 2)


def test_grouped_clip_training_loss_drives_fit(tiny_clip):
    batch = {"image": torch.rand(4, 3, 32, 32), "tokens": tiny_clip.tokenize(["a red circle"] * 4)}
    loss, logged = rep.grouped_clip_training_loss(2)(tiny_clip, batch)
    assert loss.dim() == 0 and loss.requires_grad and set(logged) == {"logit_scale"}


# --- no negatives, and a shifted background ---------------------------------------------------

def test_positives_only_loss_is_one_minus_the_paired_cosine():
    image, text = unit_rows(5), unit_rows(5, seed=3)
    expected = torch.stack([1 - image[i] @ text[i] for i in range(5)]).mean()
    torch.testing.assert_close(rep.positives_only_loss(image, text), expected)


def test_positives_only_loss_is_minimised_by_a_collapse_that_clip_loss_punishes():
    one_point = F.normalize(torch.ones(6, 4), dim=-1)  # every image and every caption the same point
    assert float(rep.positives_only_loss(one_point, one_point)) == pytest.approx(0.0, abs=1e-6)
    assert float(clip_loss(one_point, one_point, torch.tensor(10.0))) == pytest.approx(math.log(6), rel=1e-5)
    assert rep.embedding_spread(one_point) == pytest.approx(1.0, abs=1e-6)


def test_positives_only_loss_refuses_unpaired_features():
    with pytest.raises(ValueError, match="expected the same"):
        rep.positives_only_loss(unit_rows(4), unit_rows(5))


def test_positives_only_training_loss_drives_fit(tiny_clip):
    batch = {"image": torch.rand(4, 3, 32, 32), "tokens": tiny_clip.tokenize(["a red circle"] * 4)}
    loss, logged = rep.positives_only_training_loss(tiny_clip, batch)
    assert loss.dim() == 0 and loss.requires_grad and set(logged) == {"logit_scale"}


def test_embedding_spread_is_the_mean_cosine_between_different_rows():
    features = torch.randn(7, 5)
    unit = F.normalize(features, dim=-1)
    cosines = unit @ unit.T
    expected = (cosines.sum() - cosines.diagonal().sum()) / (7 * 6)
    assert rep.embedding_spread(features) == pytest.approx(float(expected), abs=1e-6)
    assert rep.embedding_spread(torch.eye(4)) == pytest.approx(0.0, abs=1e-7)  # orthogonal rows
    with pytest.raises(ValueError, match="N >= 2"):
        rep.embedding_spread(torch.ones(1, 3))


def test_recolor_background_changes_the_background_and_nothing_else():
    scenes = rep.single_object_scenes(3, 0, [("red", "circle")])
    images = rep.render_images(scenes, 32)  # (3, 3, 32, 32)
    shifted = rep.recolor_background(images, (60, 60, 60))
    changed = (shifted != images).any(1)  # (3, 32, 32)
    background = (images - torch.tensor([240.0, 240.0, 240.0])[:, None, None] / 255).abs().amax(1) < 1e-6
    assert torch.equal(changed, background) and background.float().mean() > 0.5
    torch.testing.assert_close(shifted[:, :, ~background[0]][0], images[:, :, ~background[0]][0])
    torch.testing.assert_close(shifted.movedim(1, -1)[background], torch.full((int(background.sum()), 3), 60 / 255))
    with pytest.raises(ValueError, match="rgb"):
        rep.recolor_background(images, (300, 0, 0))
    with pytest.raises(ValueError, match="images"):
        rep.recolor_background(images[0], (0, 0, 0))
