"""Tests of mmcourse.world.language: the tokenizer, captions with spans, referring expressions and
noisy web captions. Truth is checked by an independent reading of the text written here, not by
the generator's own helpers."""
import math

import numpy as np
import pytest

from mmcourse.world import language
from mmcourse.world.language import (NOISE_KINDS, SPECIAL_TOKENS, WORDS, Caption, Tokenizer, caption_is_true, describe,
                                     describe_with_spans, noisy_captions, refer, refer_with_spans,
                                     referring_expressions, split_words)
from mmcourse.world.scene import ALL_SHAPES, COLOR_RGB, SIZE_RADIUS, Scene, SceneObject, sample_scenes

# ---------------------------------------------------------------- an independent reading of the text

MEANING = {
    **{s: ("shape", s) for s in ALL_SHAPES}, **{s + "s": ("shape", s) for s in ALL_SHAPES},
    **{c: ("color", c) for c in COLOR_RGB}, **{z: ("size", z) for z in SIZE_RADIUS},
    "filled": ("style", "filled"), "solid": ("style", "filled"),
    "outline": ("style", "outline"), "hollow": ("style", "outline"),
}
GENERIC_NOUNS = {"shape", "shapes", "object", "objects"}
RELATION_OF = {"left": "left", "right": "right", "above": "above", "below": "below", "under": "below"}
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def holds(relation, a, b):
    return {"left": a.x < b.x, "right": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}[relation]


def phrase_values(words):
    """The attribute values a noun phrase (without its determiner) states; fails on any other word."""
    *adjectives, noun = words
    assert noun in GENERIC_NOUNS or MEANING.get(noun, ("",))[0] == "shape", f"{words} does not end in a noun"
    values = {}
    for word in adjectives + ([noun] if noun in MEANING else []):
        assert word in MEANING, f"{word!r} in phrase {words} is not an attribute word"
        attribute, value = MEANING[word]
        assert attribute not in values, f"{words} names the {attribute} twice"
        values[attribute] = value
    return values


def fits(obj, values):
    return all(getattr(obj, attribute) == value for attribute, value in values.items())


def span_groups(caption):
    """{(start, end): [object indices]} in word order."""
    groups = {}
    for start, end, index in caption.spans:
        groups.setdefault((start, end), []).append(index)
    return dict(sorted(groups.items()))


def assert_true_of(scene, caption):
    """Every phrase fits the objects its span names, counts are exact, relations and orders hold, and
    no attribute word sits outside a span."""
    words = split_words(caption.text)
    groups = span_groups(caption)
    covered = set()
    for (start, end), indices in groups.items():
        assert 0 <= start < end <= len(words) and all(0 <= i < len(scene) for i in indices), caption
        covered.update(range(start, end))
        determiner, values = words[start], phrase_values(words[start + 1:end])
        assert all(fits(scene.objects[i], values) for i in indices), (caption, values)
        if determiner in NUMBERS:
            matching = [i for i, obj in enumerate(scene.objects) if fits(obj, values)]
            assert NUMBERS.index(determiner) == len(indices) and sorted(indices) == matching, caption
        else:
            assert len(indices) == 1, caption
            assert determiner in ("the", "an" if words[start + 1][0] in "aeiou" else "a"), caption
    assert not [w for k, w in enumerate(words) if w in MEANING and k not in covered], caption
    ordered = list(groups.items())
    for ((_, end), first), ((start, _), second) in zip(ordered, ordered[1:]):
        relations = [RELATION_OF[w] for w in words[end:start] if w in RELATION_OF]
        if relations:
            assert holds(relations[0], scene.objects[first[0]], scene.objects[second[0]]), caption
    objects = [indices[0] for indices in groups.values()]
    if words[:3] in (["there", "are", NUMBERS[len(scene)]], ["there", "is", "one"]) and words[3] in GENERIC_NOUNS:
        assert sorted(objects) == list(range(len(scene))), caption
    for prefix, coordinate in ((["from", "left", "to", "right"], "x"), (["from", "top", "to", "bottom"], "y")):
        if words[:4] == prefix:
            assert sorted(objects) == list(range(len(scene))), caption
            positions = [getattr(scene.objects[i], coordinate) for i in objects]
            assert positions == sorted(positions), caption


def singled_out(scene, expression):
    """Every object that `expression` ("the P", or "the P [that is] REL the Q") fits."""
    words = split_words(expression)
    assert words[0] == "the", expression
    if not any(w in RELATION_OF for w in words):
        values = phrase_values(words[1:])
        return [i for i, obj in enumerate(scene.objects) if fits(obj, values)]
    relation_at = [k for k, w in enumerate(words) if w in RELATION_OF]
    assert len(relation_at) == 1, expression
    head = relation_at[0]
    second = words.index("the", head)  # the landmark's phrase
    head -= 2 * (words[head - 2:head] == ["to", "the"])  # "to the left of"
    head -= 2 * (words[head - 2:head] == ["that", "is"])
    target_values, landmark_values = phrase_values(words[1:head]), phrase_values(words[second + 1:])
    landmarks = [j for j, obj in enumerate(scene.objects) if fits(obj, landmark_values)]
    assert len(landmarks) == 1, f"{expression!r}: the landmark is not unique"
    relation = RELATION_OF[words[relation_at[0]]]
    return [i for i, obj in enumerate(scene.objects) if i != landmarks[0] and fits(obj, target_values)
            and holds(relation, obj, scene.objects[landmarks[0]])]


SCENES = sample_scenes(40, seed=3) + sample_scenes(10, seed=3, preset="sort_of_clevr")


def obj(shape, color, x, y, size="small", style="filled"):
    return SceneObject(shape, color, size, style, x, y)


# Two identical red circles told apart by the blue square between them.
TWINS = Scene((obj("circle", "red", 0.2, 0.5), obj("circle", "red", 0.8, 0.5), obj("square", "blue", 0.5, 0.5)))
# Two identical red circles on the same side of the only other object: they cannot be told apart.
HOPELESS = Scene((obj("circle", "red", 0.2, 0.2), obj("circle", "red", 0.2, 0.5), obj("square", "blue", 0.8, 0.8)))

# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_special_ids():
    tok = Tokenizer(["red", "circle", "a", ","])
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 1, 2, 3)
    assert tok.itos[:len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS) and len(tok) == tok.vocab_size == 11
    ids = tok.encode("A red circle, a red circle")
    assert tok.decode(ids) == "a red circle , a red circle"
    assert tok.encode("a blue circle")[1] == tok.unk_id
    assert tok.decode([tok.pad_id, tok.stoi["red"]], skip_special=False) == "<pad> red"
    with pytest.raises(AttributeError):
        tok.nothing_id


def test_tokenizer_wraps():
    tok = Tokenizer(["red", "circle"])
    assert tok.encode("red circle", wrap="cls_sep") == [tok.cls_id, tok.stoi["red"], tok.stoi["circle"], tok.sep_id]
    assert tok.encode("red", wrap="bos_eos") == [tok.bos_id, tok.stoi["red"], tok.eos_id]
    assert tok.decode(tok.encode("red circle", wrap="cls_sep")) == "red circle"


def test_encode_batch_pads_and_refuses_or_truncates_long_texts():
    tok = Tokenizer(["red", "circle", "square"])
    batch = tok.encode_batch(["red circle", "square"], length=4, wrap="bos_eos")
    assert batch.shape == (2, 4) and batch.dtype == np.int64
    assert batch[1].tolist() == [tok.bos_id, tok.stoi["square"], tok.eos_id, 0]
    assert tok.decode_batch(batch) == ["red circle", "square"]
    with pytest.raises(ValueError, match="length=3"):
        tok.encode_batch(["red circle square"], length=3, wrap="cls_sep")
    cut = tok.encode_batch(["red circle square"], length=3, wrap="cls_sep", truncate=True)
    assert cut[0].tolist() == [tok.cls_id, tok.stoi["red"], tok.sep_id]
    assert tok.encode_batch(["red circle square"], length=2, truncate=True)[0].tolist() == [
        tok.stoi["red"], tok.stoi["circle"]]


def test_tokenizer_bad_input():
    tok = Tokenizer(["red"])
    with pytest.raises(ValueError, match="wrap"):
        tok.encode("red", wrap="brackets")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([len(tok)])
    with pytest.raises(TypeError, match="texts"):
        tok.encode_batch("red", length=2)
    with pytest.raises(ValueError, match="length"):
        tok.encode_batch(["red"], length=0)
    with pytest.raises(ValueError, match="words"):
        Tokenizer(["red circle"])
    with pytest.raises(TypeError, match="text"):
        split_words(3)


def test_default_tokenizer_covers_captions():
    for module in ("programs", "clips", "affect"):
        pytest.importorskip(f"mmcourse.world.{module}")
    tok = language.default_tokenizer()
    assert WORDS <= set(tok.stoi)
    texts = describe(SCENES[0], 0, 20) + [c.text for c in noisy_captions(SCENES[1], 0, 20, 1.0)]
    assert all(tok.unk_id not in tok.encode(t) for t in texts)

# ---------------------------------------------------------------- captions


def test_captions_are_true_and_use_only_known_words():
    tok = Tokenizer(WORDS)
    for k, scene in enumerate(SCENES):
        for caption in describe_with_spans(scene, seed=k, n=12):
            assert_true_of(scene, caption)
            assert tok.unk_id not in tok.encode(caption.text), caption.text


def test_captions_cover_every_kind():
    texts = [t for k, scene in enumerate(SCENES[:20]) for t in describe(scene, k, 10)]
    for marker in ("left", "right", "above", "below", "there are", "from left to right", "from top to bottom",
                   "solid", "hollow", "shape", " two "):
        assert any(marker in f" {t} " for t in texts), marker
    assert any(split_words(t)[0] in NUMBERS for t in texts)


def test_describe_is_deterministic_and_prefix_stable():
    scene = SCENES[5]
    assert describe(scene, 7, 8) == describe(scene, 7, 8)
    assert describe(scene, 7, 4) == describe(scene, 7, 8)[:4]
    assert describe(scene, 7, 8) != describe(scene, 8, 8)
    assert describe(scene, 7) == describe(scene, 7, 1) and describe(scene, 7, 0) == []
    assert describe_with_spans(scene, 7, 3)[0].text == describe(scene, 7)[0]
    # Scenes captioned with one seed do not share their wordings.
    assert len({describe(s, 0)[0] for s in SCENES[:10]}) == 10


def test_alignment_matrix():
    scene = SCENES[2]
    for caption in describe_with_spans(scene, 1, 10):
        matrix = caption.alignment(len(scene))
        assert matrix.shape == (len(caption.words), len(scene)) and matrix.dtype == bool
        assert matrix.sum() == sum(end - start for start, end, _ in caption.spans)
        for start, end, index in caption.spans:
            assert matrix[start:end, index].all()
    with pytest.raises(ValueError, match="num_objects"):
        Caption("a red circle", ((0, 3, 4),)).alignment(2)

# ---------------------------------------------------------------- referring expressions


def minimal_unique_size(scene, index):
    from itertools import combinations
    target = scene.objects[index]
    for size in range(1, 5):
        for attributes in combinations(("shape", "color", "size", "style"), size):
            values = {a: getattr(target, a) for a in attributes}
            if [i for i, o in enumerate(scene.objects) if fits(o, values)] == [index]:
                return size
    return None


def test_refer_singles_out_exactly_its_object():
    tok = Tokenizer(WORDS)
    for k, scene in enumerate(SCENES):
        expressions = dict(referring_expressions(scene, seed=k))
        for index in range(len(scene)):
            size = minimal_unique_size(scene, index)
            if size is not None:  # attributes alone suffice: the expression uses the fewest
                assert index in expressions
                words = split_words(expressions[index])
                assert "the" not in words[1:] and len(phrase_values(words[1:])) == size, expressions[index]
            if index in expressions:
                assert singled_out(scene, expressions[index]) == [index], expressions[index]
                caption = refer_with_spans(scene, index, k)
                assert caption.text == expressions[index] and caption.spans[0][2] == index
                assert_true_of(scene, caption)
                assert tok.unk_id not in tok.encode(expressions[index])


def test_refer_uses_a_relation_for_identical_objects():
    for seed in range(5):
        for index in (0, 1):
            caption = refer_with_spans(TWINS, index, seed)
            assert singled_out(TWINS, caption.text) == [index], caption.text
            assert [i for _, _, i in caption.spans] == [index, 2]
            assert_true_of(TWINS, caption)
    assert refer(TWINS, 2, 0) in ("the square", "the blue shape", "the blue object")


def test_refer_refuses_objects_that_cannot_be_singled_out():
    with pytest.raises(ValueError, match="index=0"):
        refer(HOPELESS, 0, 0)
    assert [i for i, _ in referring_expressions(HOPELESS, 0)] == [2]


def test_refer_is_deterministic():
    scene = SCENES[4]
    assert referring_expressions(scene, 3) == referring_expressions(scene, 3)
    assert refer(scene, 1, 3) == refer(scene, 1, 3)
    assert refer(TWINS, 0, 1) == refer_with_spans(TWINS, 0, 1).text

# ---------------------------------------------------------------- noisy captions


def test_noise_rate_is_realised():
    captions = [c for k, scene in enumerate(SCENES) for c in noisy_captions(scene, k, 40, 0.3)]
    noisy = [c for c in captions if c.is_noisy]
    assert abs(len(noisy) / len(captions) - 0.3) < 0.04  # 2000 captions: sd 0.01
    for kind in NOISE_KINDS:
        assert abs(sum(c.noise_kind == kind for c in noisy) / len(noisy) - 1 / 3) < 0.07
    assert all(c.noise_kind is None for c in captions if not c.is_noisy)


def test_noise_extremes_and_monotonicity():
    scene = SCENES[0]
    assert noisy_captions(scene, 2, 15, 0.0) == describe_with_spans(scene, 2, 15)
    assert all(c.is_noisy for c in noisy_captions(scene, 2, 15, 1.0))
    low, high = noisy_captions(scene, 2, 60, 0.2), noisy_captions(scene, 2, 60, 0.6)
    assert all(h.is_noisy for lo, h in zip(low, high) if lo.is_noisy)
    assert noisy_captions(scene, 2, 60, 0.6) == high and noisy_captions(scene, 2, 30, 0.6) == high[:30]
    assert {c.noise_kind for c in noisy_captions(scene, 2, 30, 1.0, kinds=["truncate"])} == {"truncate"}


def test_noisy_captions_use_only_known_words():
    tok = Tokenizer(WORDS)
    for k, scene in enumerate(SCENES[:10]):
        for caption in noisy_captions(scene, k, 30, 1.0):
            assert tok.unk_id not in tok.encode(caption.text), caption.text


def test_swap_changes_exactly_one_attribute_word_and_lies():
    for k, scene in enumerate(SCENES[:25]):
        clean = describe_with_spans(scene, k, 12)
        for before, after in zip(clean, noisy_captions(scene, k, 12, 1.0, kinds=("swap",))):
            if after.noise_kind == "irrelevant":  # no one-word swap could make this caption false
                continue
            old, new = before.words, after.words
            assert after.noise_kind == "swap" and after.spans == before.spans and len(old) == len(new)
            changed = [w for w in range(len(old)) if old[w] != new[w]]
            attribute_changes = [w for w in changed if old[w] in MEANING]
            assert len(attribute_changes) == 1, (before.text, after.text)
            w = attribute_changes[0]
            assert MEANING[old[w]][0] == MEANING[new[w]][0] and MEANING[old[w]][1] != MEANING[new[w]][1]
            assert all(v == w - 1 and {old[v], new[v]} == {"a", "an"} for v in changed if v != w)
            start, end, index = next(span for span in after.spans if span[0] <= w < span[1])
            swapped = phrase_values(new[start + 1:end])
            assert not fits(scene.objects[index], swapped)
            assert caption_is_true(scene, after.text) is False, after.text
            if new[start] in ("a", "an"):
                assert new[start] == ("an" if new[start + 1][0] in "aeiou" else "a"), after.text


def test_truncate_keeps_a_strict_prefix():
    for k, scene in enumerate(SCENES[:25]):
        clean = describe_with_spans(scene, k, 12)
        for before, after in zip(clean, noisy_captions(scene, k, 12, 1.0, kinds=("truncate",))):
            words = after.words
            assert 0 < len(words) < len(before.words) and before.words[:len(words)] == words
            assert all(0 <= s < e <= len(words) for s, e, _ in after.spans)
            assert {i for _, _, i in after.spans} <= {i for _, _, i in before.spans}


def test_irrelevant_captions_describe_nothing_in_the_scene():
    seen_phrase = False
    for k, scene in enumerate(SCENES[:25]):
        for caption in noisy_captions(scene, k, 12, 1.0, kinds=("irrelevant",)):
            assert caption.noise_kind == "irrelevant" and caption.spans == ()
            named = {MEANING[w] for w in caption.words if w in MEANING}
            if named:
                seen_phrase = True
                assert not any(fits(o, dict(named)) for o in scene.objects), caption.text
    assert seen_phrase

# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, error, name", [
    (lambda: describe("scene", 0), TypeError, "scene"),
    (lambda: describe(SCENES[0], -1), ValueError, "seed"),
    (lambda: describe(SCENES[0], 0, -1), ValueError, "n"),
    (lambda: describe(SCENES[0], 0, 1.5), TypeError, "n"),
    (lambda: describe(Scene(()), 0), ValueError, "scene"),
    (lambda: refer([1], 0, 0), TypeError, "scene"),
    (lambda: refer(SCENES[0], len(SCENES[0]), 0), ValueError, "index"),
    (lambda: refer(SCENES[0], -1, 0), ValueError, "index"),
    (lambda: refer(SCENES[0], True, 0), TypeError, "index"),
    (lambda: refer(SCENES[0], 0, -2), ValueError, "seed"),
    (lambda: referring_expressions(None, 0), TypeError, "scene"),
    (lambda: referring_expressions(SCENES[0], -1), ValueError, "seed"),
    (lambda: noisy_captions(SCENES[0], 0, 3, 1.5), ValueError, "noise_rate"),
    (lambda: noisy_captions(SCENES[0], 0, 3, -0.1), ValueError, "noise_rate"),
    (lambda: noisy_captions(SCENES[0], 0, 3, math.nan), ValueError, "noise_rate"),
    (lambda: noisy_captions(SCENES[0], 0, 3, "0.5"), TypeError, "noise_rate"),
    (lambda: noisy_captions(SCENES[0], 0, 3, 0.5, kinds=("blur",)), ValueError, "kinds"),
    (lambda: noisy_captions(SCENES[0], 0, 3, 0.5, kinds=()), ValueError, "kinds"),
    (lambda: noisy_captions(SCENES[0], 0, 3, 0.5, kinds="swap"), TypeError, "kinds"),
    (lambda: noisy_captions(SCENES[0], 0, -3, 0.5), ValueError, "n"),
    (lambda: noisy_captions("scene", 0, 3, 0.5), TypeError, "scene"),
])
def test_bad_input(call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_prompt_templates_encode_without_unknown_words():
    from mmcourse.world.language import default_tokenizer

    tokenizer = default_tokenizer()
    for template in ("a photo of a {}.", "a drawing of the {}.", "a blurry photo of a {}.", "a rendering of a {}."):
        assert tokenizer.unk_id not in tokenizer.encode(template.format("red circle"))


def test_fingerprint_tracks_the_vocabulary():
    assert Tokenizer(["a", "b"]).fingerprint == Tokenizer(["b", "a"]).fingerprint
    assert Tokenizer(["a", "b"]).fingerprint != Tokenizer(["a", "c"]).fingerprint
