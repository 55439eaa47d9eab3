"""mmcourse.pretrained: tiny random open_clip and transformers CLIPs saved to a temporary folder and
loaded back through the libraries' own APIs; the adapters must give the libraries' own features."""
import importlib
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mmcourse.models.clip import zero_shot_classifier
from mmcourse.pretrained import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PretrainedCLIP, WeightsNotFound, load_clip,
                                 try_load_clip)

TINY_NAME = "mmcourse-test-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TEXTS = ["a red circle", "two blue squares above a green triangle", "hi"]
CUSTOM_MEAN, CUSTOM_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(size: int = 32, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(size))  # (n, 3, size, size)


def _normalized(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --------------------------------------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """(random open_clip model, path of its torch.save'd state_dict); the architecture is registered."""
    folder = tmp_path_factory.mktemp("open_clip")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder / f"{TINY_NAME}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_NAME).eval()
    checkpoint = folder / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return model, checkpoint


def test_open_clip_checkpoint_gives_the_library_features(tiny_open_clip):
    model, checkpoint = tiny_open_clip
    adapter = load_clip("open_clip", name=TINY_NAME, path=checkpoint, device="cpu")
    assert isinstance(adapter, PretrainedCLIP)
    images = _images()
    ids = open_clip.get_tokenizer(TINY_NAME)(TEXTS)
    assert torch.equal(adapter.tokenize(TEXTS), ids)
    with torch.no_grad():
        expected_image = model.encode_image(_normalized(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), normalize=True)
        expected_text = model.encode_text(ids, normalize=True)
        torch.testing.assert_close(adapter.encode_image(images), expected_image, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(adapter.encode_text(ids), expected_text, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(adapter.logit_scale, model.logit_scale.exp())
        raw = adapter.encode_text(ids, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(TEXTS)))  # unnormalised on request
    assert not any(p.requires_grad for p in adapter.parameters())  # frozen


def test_open_clip_adapter_resizes_other_image_sizes(tiny_open_clip):
    _, checkpoint = tiny_open_clip
    adapter = load_clip("open_clip", name=TINY_NAME, path=checkpoint, device="cpu")
    with torch.no_grad():
        features = adapter.encode_image(_images(size=48, n=2))
        wide = adapter.encode_image(torch.rand(2, 3, 20, 40, generator=torch.Generator().manual_seed(1)))
    assert features.shape == wide.shape == (2, TINY_CONFIG["embed_dim"])
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))


def test_open_clip_local_dir_uses_its_own_preprocessing(tiny_open_clip, tmp_path):
    model, checkpoint = tiny_open_clip
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CONFIG, "preprocess_cfg": {"mean": CUSTOM_MEAN, "std": CUSTOM_STD}}))
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(checkpoint.read_bytes())
    adapter = load_clip("open_clip", path=tmp_path, device="cpu")
    images = _images()
    with torch.no_grad():
        expected = model.encode_image(_normalized(images, CUSTOM_MEAN, CUSTOM_STD), normalize=True)
        torch.testing.assert_close(adapter.encode_image(images), expected, atol=1e-6, rtol=1e-5)


def _fake_hub_cache(cache, repo_id: str, filename: str, content: bytes) -> None:
    """The Hugging Face cache layout: refs/main names a snapshot folder holding the file."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / filename).write_bytes(content)


def test_open_clip_tag_is_found_in_the_local_cache_only(tiny_open_clip, tmp_path, monkeypatch, capsys):
    model, checkpoint = tiny_open_clip
    registry = importlib.import_module("open_clip.pretrained")._PRETRAINED
    monkeypatch.setitem(registry, TINY_NAME, {"tiny": {"hf_hub": "mmcourse/tiny-clip/", "mean": CUSTOM_MEAN,
                                                       "std": CUSTOM_STD}})
    empty = tmp_path / "empty"
    with pytest.raises(WeightsNotFound, match="tiny-clip"):
        load_clip("open_clip", name=TINY_NAME, tag="tiny", cache_dir=empty, device="cpu")
    assert try_load_clip("open_clip", name=TINY_NAME, tag="tiny", cache_dir=empty, device="cpu") is None
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("no pretrained CLIP weights found at open_clip")
    assert "from-scratch" in printed[0]

    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "mmcourse/tiny-clip", "open_clip_pytorch_model.bin", checkpoint.read_bytes())
    adapter = load_clip("open_clip", name=TINY_NAME, tag="tiny", cache_dir=cache, device="cpu")
    images = _images()
    with torch.no_grad():
        expected = model.encode_image(_normalized(images, CUSTOM_MEAN, CUSTOM_STD), normalize=True)
        torch.testing.assert_close(adapter.encode_image(images), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("templates", [["a picture of a {}.", "{}", "there is a {} here"],
                                       [lambda name: f"a {name}", lambda name: f"the {name} is left of a circle"]],
                         ids=["format strings", "callables"])
def test_zero_shot_classifier_matches_open_clip(tiny_open_clip, templates):
    model, checkpoint = tiny_open_clip
    adapter = load_clip("open_clip", name=TINY_NAME, path=checkpoint, device="cpu")
    classnames = ["red circle", "blue square", "green triangle", "yellow diamond"]
    ours = zero_shot_classifier(adapter, classnames, templates, batch_size=5)  # batches cut across classes
    theirs = open_clip.build_zero_shot_classifier(model, open_clip.get_tokenizer(TINY_NAME), classnames, templates,
                                                  num_classes_per_batch=3, device="cpu")
    assert ours.shape == (TINY_CONFIG["embed_dim"], len(classnames))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=0), torch.ones(len(classnames)))
    assert not torch.allclose(ours[:, 0], ours[:, 1], atol=1e-3)  # classes differ


def test_open_clip_bad_arguments(tiny_open_clip, tmp_path):
    _, checkpoint = tiny_open_clip
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_clip("open_clip", name=TINY_NAME, path=missing, device="cpu")
    with pytest.raises(ValueError, match="source"):
        load_clip("onnx", name=TINY_NAME, path=checkpoint)
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        load_clip("open_clip", name="no-such-arch", path=checkpoint, device="cpu")
    with pytest.raises(ValueError, match="name must"):
        load_clip("open_clip", path=checkpoint, device="cpu")
    with pytest.raises(ValueError, match="not both"):
        load_clip("open_clip", name=TINY_NAME, path=checkpoint, tag="openai", device="cpu")
    with pytest.raises(ValueError, match="tag="):
        load_clip("open_clip", name=TINY_NAME, device="cpu")
    with pytest.raises(ValueError, match="not a pretrained tag"):
        load_clip("open_clip", name=TINY_NAME, tag="no-such-tag", device="cpu")
    with pytest.raises(ValueError, match="open_clip_config.json"):
        load_clip("open_clip", path=tmp_path, device="cpu")
    # a missing path is "no weights here" for try_load_clip, which says so and returns None
    assert try_load_clip("open_clip", name=TINY_NAME, path=missing, device="cpu") is None


def test_adapter_refuses_bad_images_and_texts(tiny_open_clip):
    _, checkpoint = tiny_open_clip
    adapter = load_clip("open_clip", name=TINY_NAME, path=checkpoint, device="cpu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adapter.encode_image(_images() * 255)
    with pytest.raises(ValueError, match="RGB"):
        adapter.encode_image(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="4 dimensions"):
        adapter.encode_image(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="integer"):
        adapter.encode_text(torch.rand(2, 16))
    with pytest.raises(TypeError, match="sequence of str"):
        adapter.tokenize("a red circle")


def test_try_load_clip_without_arguments_never_blocks(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.cache/clip
    monkeypatch.setattr(importlib.import_module("huggingface_hub.constants"), "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert try_load_clip(device="cpu") is None
    assert "ViT-B-32 (openai)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ transformers


def _byte_symbols() -> list[str]:
    """The 256 printable characters that byte-level BPE (GPT-2, CLIP) uses to spell bytes: printable
    Latin-1 bytes stand for themselves, the others for the code points from 256 up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)}
    symbols, shifted = [], 256
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(shifted))
            shifted += 1
    return symbols


@pytest.fixture(scope="module")
def tiny_transformers(tmp_path_factory):
    """(folder saved with save_pretrained: a random CLIPModel, a CLIPTokenizer, an image processor; model)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("transformers")
    vocab_folder = tmp_path_factory.mktemp("vocab")
    symbols = _byte_symbols()
    vocab = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols), "re", "red</w>"]
    (vocab_folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (vocab_folder / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(vocab_folder))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=list(CUSTOM_MEAN),
                       image_std=list(CUSTOM_STD)).save_pretrained(folder)
    return folder, model, tokenizer


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers 4 vs 5


def test_transformers_folder_gives_the_library_features(tiny_transformers):
    folder, model, tokenizer = tiny_transformers
    adapter = load_clip("transformers", path=folder, device="cpu")
    ids = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(adapter.tokenize(TEXTS), ids)
    images = _images()
    with torch.no_grad():
        expected_image = F.normalize(_features(model.get_image_features(
            pixel_values=_normalized(images, CUSTOM_MEAN, CUSTOM_STD))), dim=-1)
        expected_text = F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
        torch.testing.assert_close(adapter.encode_image(images), expected_image, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(adapter.encode_text(adapter.tokenize(TEXTS)), expected_text, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(adapter.logit_scale, model.logit_scale.exp())
        # the feature is read at the end-of-text token, so the padding after it changes nothing
        short = tokenizer(["hi"], return_tensors="pt")["input_ids"]
        torch.testing.assert_close(adapter.encode_text(short), expected_text[2:], atol=1e-6, rtol=1e-5)


def test_transformers_without_image_processor_uses_clip_statistics(tiny_transformers, tmp_path):
    folder, model, _ = tiny_transformers
    for item in folder.iterdir():
        if item.name != "preprocessor_config.json":
            (tmp_path / item.name).write_bytes(item.read_bytes())
    adapter = load_clip("transformers", path=tmp_path, device="cpu")
    images = _images()
    with torch.no_grad():
        expected = F.normalize(_features(model.get_image_features(
            pixel_values=_normalized(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))), dim=-1)
        torch.testing.assert_close(adapter.encode_image(images), expected, atol=1e-6, rtol=1e-5)


def test_transformers_missing_weights(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_clip("transformers", path=tmp_path / "nothing-here", device="cpu")
    with pytest.raises(WeightsNotFound, match=str(tmp_path)):
        load_clip("transformers", path=tmp_path, device="cpu")  # a folder without a saved model
    with pytest.raises(WeightsNotFound, match="no-such-org/no-such-clip"):
        load_clip("transformers", name="no-such-org/no-such-clip", cache_dir=tmp_path, device="cpu")
    assert try_load_clip("transformers", path=tmp_path, device="cpu") is None
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="path= .* or name="):
        load_clip("transformers", device="cpu")
    with pytest.raises(ValueError, match="tag="):
        load_clip("transformers", path=tmp_path, tag="openai", device="cpu")
