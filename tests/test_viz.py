"""Tests of mmcourse.viz under the headless Agg backend: figures are built, titled, never shown."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from mmcourse.viz import (contact_sheet, draw_box, draw_scene, overlay_heatmap, overlay_object_weights,  # noqa: E402
                          plot_history, scene_grid, show, upsample_nearest, word_weights)
from mmcourse.world.render import render  # noqa: E402
from mmcourse.world.scene import sample_scenes  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(5, seed=3)


def rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


# ---------------------------------------------------------------------------------------- draw_scene


def test_draw_scene_boxes_and_labels(scenes):
    scene = scenes[0]
    ax = draw_scene(scene)
    assert ax.get_title() == f"scene with {len(scene)} objects"
    boxes = render(scene).boxes
    assert len(rectangles(ax)) == len(scene)
    assert rectangles(ax)[0].get_xy() == pytest.approx(tuple(boxes[0, :2]))
    assert [t.get_text() for t in ax.texts] == [str(i) for i in range(len(scene))]


def test_draw_scene_options(scenes):
    ax = draw_scene(scenes[1], boxes=False, labels=False, caption="a caption " * 10)
    assert not rectangles(ax) and not ax.texts
    assert "\n" in ax.get_title()  # wrapped
    assert len(ax.images) == 1


def test_draw_scene_mask_overlay_marks_exactly_the_object_pixels(scenes):
    rendered = render(scenes[2], size=48)
    ax = draw_scene(rendered, masks=True)
    overlay = np.asarray(ax.images[1].get_array())  # (H, W, 4)
    assert overlay.shape == (48, 48, 4)
    np.testing.assert_array_equal(overlay[..., 3] > 0, rendered.instance_mask > 0)
    first, second = (overlay[rendered.instance_mask == k][0] for k in (1, 2))
    assert not np.allclose(first, second)  # objects get different colours


def test_draw_scene_on_given_axes_and_bad_input(scenes):
    fig, ax = plt.subplots()
    assert draw_scene(scenes[0], ax=ax, size=40) is ax
    assert ax.images[0].get_array().shape[:2] == (40, 40)
    with pytest.raises(ValueError, match="size=40"):
        draw_scene(render(scenes[0]), size=40)
    with pytest.raises(TypeError, match="scene_or_rendered"):
        draw_scene(np.zeros((8, 8, 3)))
    with pytest.raises(TypeError, match="ax"):
        draw_scene(scenes[0], ax="left")
    with pytest.raises(TypeError, match="caption"):
        draw_scene(scenes[0], caption=3)


# ------------------------------------------------------------------------------------ overlay_heatmap


def test_upsample_nearest_makes_blocks():
    heat = np.arange(16.0).reshape(4, 4)
    big = upsample_nearest(heat, 64, 64)
    assert big.shape == (64, 64)
    np.testing.assert_array_equal(big[:16, :16], 0.0)
    np.testing.assert_array_equal(big[48:, 16:32], 13.0)
    np.testing.assert_array_equal(upsample_nearest(heat, 4, 4), heat)


def test_overlay_heatmap_draws_upsampled_map(scenes):
    image = render(scenes[0]).image  # (64, 64, 3) uint8
    heat = np.random.default_rng(0).random((4, 4))
    ax = overlay_heatmap(image, heat, title="attention of 'red'")
    assert ax.get_title() == "attention of 'red'"
    shown = np.asarray(ax.images[1].get_array())
    np.testing.assert_array_equal(shown, upsample_nearest(heat, 64, 64))
    assert ax.images[1].get_alpha() == 0.5
    assert len(ax.figure.axes) == 2  # the colour bar


def test_overlay_heatmap_accepts_float_images_and_tensors():
    image = torch.rand(32, 48, 3)
    heat = torch.rand(32, 48, requires_grad=True)
    ax = overlay_heatmap(image, heat, colorbar=False)
    assert ax.get_title() == "32x48 heat map over the image"
    assert len(ax.figure.axes) == 1
    ax = overlay_heatmap(np.ones((8, 8, 3)), np.zeros((2, 2)))  # an all-zero map is fine
    assert ax.images[1].get_clim() == (0.0, 1.0)


@pytest.mark.parametrize("image, heat, match", [
    (np.zeros((8, 8), np.uint8), np.ones((2, 2)), r"image must have shape \(H, W, 3\), got \(8, 8\)"),
    (np.zeros((8, 8, 4), np.uint8), np.ones((2, 2)), r"image must have shape \(H, W, 3\)"),
    (np.full((8, 8, 3), 2.0), np.ones((2, 2)), r"image .* \[0, 1\]; got range \[2, 2\]"),
    (np.zeros((8, 8, 3), np.int64), np.ones((2, 2)), "image must be uint8 or float .* int64"),
    (np.zeros((8, 8, 3), np.uint8), np.ones((2, 2, 1)), r"heat must be a non-empty 2-D map .* \(2, 2, 1\)"),
    (np.zeros((8, 8, 3), np.uint8), np.ones(4), r"heat must be .* 2-D"),
    (np.zeros((8, 8, 3), np.uint8), -np.ones((2, 2)), "heat must be non-negative"),
    (np.zeros((8, 8, 3), np.uint8), np.full((2, 2), np.nan), "heat contains NaN"),
])
def test_overlay_heatmap_validation(image, heat, match):
    with pytest.raises(ValueError, match=match):
        overlay_heatmap(image, heat)


def test_overlay_heatmap_alpha_validation():
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(np.zeros((8, 8, 3), np.uint8), np.ones((2, 2)), alpha=1.5)


# ----------------------------------------------------------------------------------------- grids


def test_scene_grid(scenes):
    fig = scene_grid(scenes, captions=[f"caption {i}" for i in range(5)], ncols=3, boxes=True)
    assert fig._suptitle.get_text() == "5 scenes"
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 6 and len(visible) == 5
    assert [ax.get_title() for ax in visible] == [f"caption {i}" for i in range(5)]
    assert all(rectangles(ax) for ax in visible)
    default = scene_grid([render(s) for s in scenes[:2]])
    assert [ax.get_title() for ax in default.axes] == ["scene 0", "scene 1"]
    assert not any(rectangles(ax) for ax in default.axes)


def test_scene_grid_bad_input(scenes):
    with pytest.raises(ValueError, match=r"captions must hold one str per scene \(5\), got 2 captions"):
        scene_grid(scenes, captions=["a", "b"])
    with pytest.raises(ValueError, match="scenes is empty"):
        scene_grid([])
    with pytest.raises(TypeError, match="scenes"):
        scene_grid(scenes[0])
    with pytest.raises(ValueError, match="ncols"):
        scene_grid(scenes, ncols=0)


def test_contact_sheet_writes_a_small_png(tmp_path):
    path = tmp_path / "sheets" / "sheet.png"
    fig = contact_sheet(6, seed=1, path=path, questions_per_scene=2)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 1_000_000
    assert fig._suptitle.get_text() == "contact sheet: 6 scenes of preset 'default', seed 1"
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(texts) == 6 and all(text.count("\nA: ") == 2 for text in texts)
    again = tmp_path / "again.png"
    contact_sheet(6, seed=1, path=again, questions_per_scene=2)
    assert again.read_bytes() == data  # same seed, same bytes


def test_contact_sheet_is_deterministic_and_prefix_stable():
    def sheet_texts(n, seed):
        return [t.get_text() for ax in contact_sheet(n, seed, preset="sort_of_clevr").axes for t in ax.texts]

    first = sheet_texts(3, seed=5)
    assert sheet_texts(3, seed=5) == first
    assert sheet_texts(2, seed=5) == first[:2]
    assert sheet_texts(3, seed=6) != first


def test_contact_sheet_bad_input(tmp_path):
    with pytest.raises(ValueError, match="path=.*png"):
        contact_sheet(2, 0, path=tmp_path / "sheet.jpg")
    with pytest.raises(ValueError, match="n must be >= 1"):
        contact_sheet(0, 0)
    with pytest.raises(ValueError, match="preset"):
        contact_sheet(1, 0, preset="clevr3d")
    with pytest.raises(ValueError, match="questions_per_scene"):
        contact_sheet(1, 0, questions_per_scene=-1)


# --------------------------------------------------------------------------------------- history


HISTORY = [
    {"epoch": 1, "train_loss": 0.9, "val_accuracy": 0.5, "lr": 1e-3},
    {"epoch": 2, "train_loss": 0.6, "lr": 1e-3},
    {"epoch": 3, "train_loss": 0.4, "val_accuracy": 0.8, "lr": 5e-4},
]


def test_plot_history_default_keys():
    ax = plot_history(HISTORY)
    assert ax.get_title() == "training history" and ax.get_xlabel() == "epoch"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["train_loss", "val_accuracy", "lr"]
    np.testing.assert_array_equal(lines["val_accuracy"].get_xdata(), [1, 3])
    np.testing.assert_array_equal(lines["train_loss"].get_ydata(), [0.9, 0.6, 0.4])


def test_plot_history_keys_and_no_epoch_field():
    fig, ax = plt.subplots()
    assert plot_history([{"loss": 2.0}, {"loss": 1.0}], keys=["loss"], ax=ax) is ax
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1, 2])


@pytest.mark.parametrize("history, keys, error, match", [
    ([], None, ValueError, "history is empty"),
    ({"loss": [1, 2]}, None, TypeError, "history must be a list of dicts, got a dict"),
    (HISTORY, [], ValueError, "keys is empty"),
    ([{"loss": 1.0}, 2.0], None, TypeError, r"history\[1\] is a float"),
    (HISTORY, ["val_loss"], ValueError, "keys contains 'val_loss'"),
    (HISTORY, "train_loss", TypeError, "keys"),
    ([{"epoch": 1, "note": "ok"}], None, ValueError, "no numeric metric"),
    ([{"epoch": 1, "note": "ok"}], ["note"], TypeError, "'note'='ok' at epoch 1 is not a number"),
])
def test_plot_history_bad_input(history, keys, error, match):
    with pytest.raises(error, match=match):
        plot_history(history, keys=keys)


# ------------------------------------------------------------------------------------------ show


def test_show_prints_source_outside_ipython(capsys):
    show(upsample_nearest)
    out = capsys.readouterr().out
    assert out.startswith("def upsample_nearest(") and "np.arange(height)" in out


def test_show_displays_highlighted_code_inside_ipython(monkeypatch):
    import IPython
    import IPython.display

    displayed = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", displayed.append)
    show(upsample_nearest)
    assert len(displayed) == 1 and isinstance(displayed[0], IPython.display.Code)
    assert "def upsample_nearest(" in displayed[0].data


def test_show_refuses_objects_without_source():
    with pytest.raises(TypeError, match="obj has no Python source"):
        show(len)


def test_object_weights_fill_each_box_by_its_weight():
    image = np.zeros((16, 16, 3), np.uint8)
    boxes = np.array([[0, 0, 4, 4], [8, 8, 15, 15]], np.float32)
    ax = overlay_object_weights(image, boxes, np.array([0.1, 0.9]), title="which object")
    patches = ax.patches
    assert len(patches) == 2 and patches[1].get_alpha() > patches[0].get_alpha()
    assert [t.get_text() for t in ax.texts] == ["0.10", "0.90"] and ax.get_title() == "which object"
    with pytest.raises(ValueError, match=r"weights has shape \(3,\); expected \(2,\)"):
        overlay_object_weights(image, boxes, np.ones(3))
    with pytest.raises(ValueError, match="weights must be finite and non-negative"):
        overlay_object_weights(image, boxes, np.array([-1.0, 0.5]))


def test_word_weights_draw_one_bar_per_word():
    ax = word_weights(["what", "color", "?"], np.array([0.2, 0.7, 0.1]))
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.2, 0.7, 0.1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["what", "color", "?"]
    with pytest.raises(ValueError, match="one weight per word"):
        word_weights(["a"], np.ones(2))


def test_markdown_table_formats_floats_and_refuses_ragged_rows():
    from mmcourse.viz import markdown_table

    table = markdown_table(["model", "accuracy", "runs"], [["ProtoNet", 0.97654, 3], ["pixels", 0.9, 1]], digits=2)
    assert table.splitlines() == ["| model | accuracy | runs |", "| --- | --- | --- |",
                                  "| ProtoNet | 0.98 | 3 |", "| pixels | 0.90 | 1 |"]
    with pytest.raises(ValueError, match=r"rows\[1\] has 2 cells; expected 3"):
        markdown_table(["a", "b", "c"], [[1, 2, 3], [1, 2]])


def test_draw_box_is_a_black_line_over_a_white_one():
    fig, ax = plt.subplots()
    draw_box(ax, (2, 3, 10, 7), dashed=True)
    white, black = ax.patches
    assert white.get_edgecolor()[:3] == (1.0, 1.0, 1.0) and black.get_edgecolor()[:3] == (0.0, 0.0, 0.0)
    assert white.get_linewidth() > black.get_linewidth() and black.get_linestyle() == "--"
    assert (black.get_x(), black.get_y(), black.get_width(), black.get_height()) == (2, 3, 8, 4)
    draw_box(ax, (0, 0, 1, 1))
    assert ax.patches[-1].get_linestyle() == "-"
    with pytest.raises(ValueError, match="box must be"):
        draw_box(ax, (0, 0, 1))
    plt.close(fig)
