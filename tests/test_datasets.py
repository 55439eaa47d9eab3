"""torch Datasets over the world: item contents agree with the generators, the cache is used,
`collate` trims padding, bad arguments are refused."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmcourse.world import datasets, language, programs
from mmcourse.world.affect import sample_affect
from mmcourse.world.programs import ANSWERS, execute
from mmcourse.world.render import render
from mmcourse.world.scene import ALL_SHAPES, COLOR_RGB, SIZE_RADIUS


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_CACHE_DIR", str(tmp_path / "cache"))


def batch_of(dataset, size=8):
    return next(iter(DataLoader(dataset, batch_size=size, collate_fn=datasets.collate)))


def test_caption_items_match_the_world():
    data = datasets.CaptionDataset(20, seed=3, captions_per_image=2, noise_rate=0.0)
    assert len(data) == 40
    item = data[5]  # image 2, caption 1
    scene = data.scenes[2]
    picture = render(scene, 64)
    assert item["index"] == 2 and item["num_objects"] == len(scene)
    assert torch.equal(item["image"], datasets.images_to_tensor(picture.image))
    assert torch.equal(item["mask"], torch.from_numpy(picture.instance_mask.astype(np.int64)))
    assert torch.allclose(item["boxes"][: len(scene)], torch.from_numpy(picture.boxes))
    assert (item["attributes"][len(scene):] == -1).all()
    tokenizer = language.default_tokenizer()
    assert tokenizer.decode(item["tokens"]) == " ".join(language.split_words(data.texts[2][1]))
    assert data.texts[2][1] == language.describe(scene, 3, 2)[1]


def test_caption_alignment_points_at_the_named_objects():
    data = datasets.CaptionDataset(60, seed=1, captions_per_image=2)
    tokenizer = language.default_tokenizer()
    checked = 0
    for item in data:
        scene = data.scenes[item["index"]]
        for position, k in item["alignment"].nonzero().tolist():
            word, named = tokenizer.itos[int(item["tokens"][position])], scene.objects[k]
            for values, truth in ((COLOR_RGB, named.color), (SIZE_RADIUS, named.size), (ALL_SHAPES, named.shape)):
                if word in values or word.removesuffix("s") in values:
                    assert word.removesuffix("s") == truth, f"{word!r} aligned to a {named.phrase()}"
                    checked += 1
    assert checked > 100


def test_noisy_captions_are_flagged():
    data = datasets.CaptionDataset(200, seed=0, noise_rate=0.5)
    share = np.mean([data[i]["is_noisy"] for i in range(len(data))])
    assert 0.35 < share < 0.65


def test_question_items_answer_their_programs():
    data = datasets.QuestionDataset(30, seed=2, questions_per_scene=4)
    assert len(data) == 120
    for j in range(0, 120, 7):
        item = data[j]
        scene = data.scenes[item["scene_index"]]
        assert execute(data.program(j), scene) == ANSWERS[item["answer"]]
        assert programs.parse(data.texts[j]) == data.program(j)
    assert np.array_equal(data.arrays["scene_index"], np.repeat(np.arange(30), 4))


def test_question_items_hold_the_objects_of_their_scene():
    data = datasets.QuestionDataset(20, seed=4, questions_per_scene=2)
    for j in range(0, len(data), 3):
        item = data[j]
        scene = data.scenes[item["scene_index"]]
        picture = render(scene, data.image_size)
        k = len(scene)
        assert item["index"] == j
        assert item["objects"].tolist() == [True] * k + [False] * (len(item["objects"]) - k)
        assert np.allclose(item["boxes"][:k].numpy(), picture.boxes) and not item["boxes"][k:].any()
        assert np.array_equal(item["mask"].numpy(), picture.instance_mask)


def test_questions_of_scenes_that_cannot_be_asked_are_skipped_not_misindexed():
    data = datasets.QuestionDataset(40, seed=0, questions_per_scene=3, families=["compare_attribute"])
    for j in range(len(data)):
        assert execute(data.program(j), data.scenes[data[j]["scene_index"]]) == ANSWERS[data[j]["answer"]]


def test_clip_items_keep_narrations_and_intervals():
    data = datasets.ClipDataset(6, seed=0, frames=6, lag=1.5, fillers=1, image_size=32)
    item = data[0]
    clip = data.clips[0]
    count = len(clip.narrations)
    assert item["frames"].shape == (6, 3, 32, 32)
    assert item["narration_mask"].sum() == count and not item["narration_mask"][count:].any()
    assert torch.allclose(item["timestamps"][:count], torch.tensor(clip.timestamps, dtype=torch.float32))
    for k, interval in enumerate(clip.true_intervals):
        assert torch.isnan(item["true_intervals"][k]).all() if interval is None else \
            item["true_intervals"][k].tolist() == list(interval)


def test_affect_items_match_sample_affect():
    data = datasets.AffectDataset(50, seed=4)
    reference = sample_affect(50, 4)
    item = data[7]
    assert torch.equal(item["video"], torch.from_numpy(reference.video[7]))
    assert item["label"] == reference.labels[7] and item["interaction"] == reference.interaction[7]
    assert language.default_tokenizer().decode(item["text"]) == " ".join(language.split_words(reference.texts[7]))


def test_sort_of_clevr_items():
    data = datasets.SortOfClevrDataset(3, seed=0)
    batch = batch_of(data, 20)
    assert batch["image"].shape == (20, 3, 75, 75) and batch["question_vector"].shape == (20, 18)
    assert batch["relational"][:10].sum() == 0 and batch["relational"][10:].all()


def test_collate_trims_padding_to_the_longest_sequence():
    data = datasets.CaptionDataset(16, seed=0)
    batch = batch_of(data, 16)
    pad = language.default_tokenizer().pad_id
    assert batch["tokens"].shape[1] == batch["alignment"].shape[1] < 48
    assert (batch["tokens"][:, -1] != pad).any()  # the last kept column is used by someone
    lengths = (batch["tokens"] != pad).sum(1)
    assert lengths.max() == batch["tokens"].shape[1]


def test_second_construction_reads_the_cache(tmp_path):
    first = datasets.CaptionDataset(10, seed=0)
    files = list((tmp_path / "cache").glob("captions-*.npz"))
    assert len(files) == 1
    again = datasets.CaptionDataset(10, seed=0)
    assert all(np.array_equal(first.arrays[k], again.arrays[k]) for k in first.arrays)
    uncached = datasets.CaptionDataset(10, seed=0, cache=False)
    assert all(np.array_equal(first.arrays[k], uncached.arrays[k]) for k in first.arrays)


def test_same_seed_same_bytes_different_seed_different_images():
    a, b, c = (datasets.CaptionDataset(5, seed=s, cache=False) for s in (0, 0, 1))
    assert a.arrays["images"].tobytes() == b.arrays["images"].tobytes() != c.arrays["images"].tobytes()


@pytest.mark.parametrize("make, error", [
    (lambda: datasets.CaptionDataset(-1, 0), ValueError),
    (lambda: datasets.CaptionDataset(5, 0, preset="clevr3d"), ValueError),
    (lambda: datasets.CaptionDataset(5, 0, noise_rate=1.5), ValueError),
    (lambda: datasets.CaptionDataset(5, 0, captions_per_image=0), ValueError),
    (lambda: datasets.CaptionDataset(5, 0, max_length=4), ValueError),
    (lambda: datasets.QuestionDataset(5, -2), ValueError),
    (lambda: datasets.QuestionDataset(5, 0, families=["riddles"]), ValueError),
    (lambda: datasets.ClipDataset(5, 0, frames=1), ValueError),
    (lambda: datasets.AffectDataset(5, 0, shares=(0.5, 0.5, 0.5)), ValueError),
])
def test_bad_arguments_are_refused(make, error):
    with pytest.raises(error):
        make()


def test_indexing_is_checked():
    data = datasets.AffectDataset(4, seed=0)
    assert data[-1]["label"] == data[3]["label"]
    with pytest.raises(IndexError, match="out of range"):
        data[4]
    with pytest.raises(TypeError, match="index"):
        data[1.0]


def test_cache_key_includes_the_vocabulary(monkeypatch, tmp_path):
    datasets.CaptionDataset(4, seed=0)
    monkeypatch.setattr(language.Tokenizer, "fingerprint", property(lambda self: "another-vocabulary"))
    datasets.CaptionDataset(4, seed=0)
    assert len(list((tmp_path / "cache").glob("captions-*.npz"))) == 2
