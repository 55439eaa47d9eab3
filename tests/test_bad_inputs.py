"""Clear answers to bad input: the cases a probe of bad inputs found answered by bare library errors,
wrong numbers or no answer at all (issue 11, section 7). Each case names the argument at fault."""
import numpy as np
import pytest
import torch

from mmcourse import device, paths
from mmcourse.device import get_device, seed_everything
from mmcourse.metrics import accuracy
from mmcourse.models.clip import small_clip
from mmcourse.models.fusion import average_logits
from mmcourse.models.milnce import small_milnce
from mmcourse.world import scene as world_scene
from mmcourse.world.render import render
from mmcourse.world.scene import Scene, SceneObject, sample_scenes


# --- metrics --------------------------------------------------------------------------------------

def test_accuracy_refuses_nan_logits_instead_of_scoring_them():
    with pytest.raises(ValueError, match="logits_or_predictions must be finite"):
        accuracy(torch.tensor([[float("nan"), 0.0], [0.0, float("nan")]]), torch.tensor([0, 1]))


def test_accuracy_of_nothing_says_it_is_empty():
    with pytest.raises(ValueError, match="targets is empty"):
        accuracy([], [])


# --- token ids --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, argument", [(small_clip, "ids"), (small_milnce, "x")], ids=["clip", "milnce"])
@pytest.mark.parametrize("bad_id", [10**6, -3])
def test_encode_text_refuses_token_ids_outside_the_vocabulary(make, argument, bad_id):
    model = make()
    ids = model.tokenize(["a red circle", "a blue square"])
    assert model.encode_text(ids).shape[0] == 2
    ids[1, 1] = bad_id
    with pytest.raises(ValueError, match=rf"{argument} holds token id {bad_id}, outside the vocabulary \[0, "
                                         rf"{model.tokenizer.vocab_size}\)"):
        model.encode_text(ids)


# --- devices and seeds -----------------------------------------------------------------------------

@pytest.mark.parametrize("configured, words", [
    ("tpu", "not a device type the course knows"),
    ("cpu:7", "names device index 7, but this machine has 1 cpu device"),
    ("cuda:x", "not a valid device string"),
])
def test_mmcourse_device_gets_a_short_answer_naming_the_variable(monkeypatch, configured, words):
    monkeypatch.setenv("MMCOURSE_DEVICE", configured)
    with pytest.raises(ValueError, match=f"MMCOURSE_DEVICE='{configured}' .*{words}") as caught:
        get_device()
    assert "xla" not in str(caught.value)  # not torch's list of every device type it knows


def test_a_device_index_is_checked_and_cpu_0_is_accepted():
    assert get_device("cpu:0") == torch.device("cpu:0")
    with pytest.raises(ValueError, match="prefer='cpu:1' names device index 1"):
        get_device("cpu:1")
    with pytest.raises(TypeError, match="prefer must be a str or torch.device"):
        get_device(0.5)


def test_seed_everything_and_the_world_share_one_rule_for_seeds():
    assert world_scene.check_seed is device.check_seed
    largest = device.SEED_LIMIT - 1
    assert seed_everything(largest).initial_seed() == largest
    assert len(sample_scenes(1, largest)) == 1
    for refuse in (seed_everything, lambda seed: sample_scenes(1, seed)):
        with pytest.raises(ValueError, match=r"seed must be < 2\*\*63 .*, got 1180591620717411303424"):
            refuse(2**70)


# --- folders -----------------------------------------------------------------------------------------

def test_a_results_folder_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "results.json"
    blocker.write_text("{}")
    monkeypatch.setenv(paths.RESULTS_ENV, str(blocker))
    with pytest.raises(ValueError, match=f"{paths.RESULTS_ENV}=.* must name a folder"):
        paths.results_dir()
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path / "not" / "yet"))
    assert paths.results_dir() == tmp_path / "not" / "yet"  # a folder still to be made is fine


# --- the world ---------------------------------------------------------------------------------------

def test_sample_scenes_refuses_a_count_that_cannot_fit_in_memory():
    with pytest.raises(ValueError, match="n=1000000000000 scenes would not fit in memory"):
        sample_scenes(10**12, 0)


def test_scene_object_takes_numpy_numbers_as_plain_floats():
    obj = SceneObject("circle", "red", "small", "filled", np.float32(0.5), np.int64(1))
    assert (obj.x, obj.y) == (0.5, 1.0) and type(obj.x) is float and type(obj.y) is float
    plain = SceneObject("circle", "red", "small", "filled", 0.25, 0.75)
    assert type(plain.x) is float and repr(plain).endswith("x=0.25, y=0.75)")


def test_rendering_a_hand_built_scene_with_overlapping_objects_is_refused():
    red = SceneObject("circle", "red", "small", "filled", 0.5, 0.5)
    same_place = Scene(objects=(red, SceneObject("square", "blue", "small", "filled", 0.5, 0.5)))
    assert len(same_place) == 2  # a scene for captions and questions may hold it
    with pytest.raises(ValueError, match=r"scene.objects\[0\] at \(0.5, 0.5\) and scene.objects\[1\] at "
                                         r"\(0.5, 0.5\) overlap: .* at least 0.15 apart"):
        render(same_place)
    with pytest.raises(ValueError, match="overlap"):  # half-sides 0.075 + 0.12: 0.195 apart is the least
        render(Scene(objects=(red, SceneObject("square", "blue", "large", "filled", 0.69, 0.6))))
    touching = Scene(objects=(red, SceneObject("square", "blue", "large", "filled", 0.7, 0.6)))
    assert set(np.unique(render(touching, 64).instance_mask)) == {0, 1, 2}  # both objects keep their ink


def test_sampled_scenes_render_under_the_overlap_rule():
    for preset in ("default", "sort_of_clevr"):
        for scene in sample_scenes(100, 3, preset=preset):
            render(scene)


# --- fusion ---------------------------------------------------------------------------------------

def test_average_logits_refuses_weights_that_do_not_sum_to_one():
    logits = [torch.randn(2, 3), torch.randn(2, 3)]
    torch.testing.assert_close(average_logits(logits, torch.tensor([0.25, 0.75])),
                               0.25 * logits[0] + 0.75 * logits[1])
    average_logits(logits * 5, torch.softmax(torch.randn(10), 0))  # rounding in float32 is fine
    for bad in ([0.5, 0.6], [1.0, 1.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="weights must sum to one"):
            average_logits(logits, torch.tensor(bad))
