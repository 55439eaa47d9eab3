"""The language side of the embedded world: a word-level tokenizer with a fixed vocabulary.

Every generator of text in `mmcourse.world` (captions here, questions in `programs`, narrations in
`clips`, affect sentences in `affect`) declares the words it can emit in a module-level `WORDS`
frozenset; the default vocabulary is the special tokens followed by the sorted union of those sets,
so it is the same on every machine and every generated sentence encodes without `<unk>`.

The second half generates the world's captions, in the tradition of SHAPES (Andreas et al. 2016)
and CLEVR (Johnson et al. 2017) for templated text about synthetic scenes, of Flickr30k Entities
(Plummer et al. 2015) for phrase-to-region ground truth, and of the incremental algorithm of Dale &
Reiter (1995) and CLEVR-Ref+ (Liu et al. 2019) for referring expressions:

- `describe_with_spans(scene, seed, n)` -> `Caption`s: whole-scene lists, counts, object phrases and
  spatial relations, all true of the scene; `describe` returns their texts only.
- `Caption.spans` holds `(start, end, object_index)` triples over `split_words(text)`: the words
  `[start, end)` name that object (the word-region alignment that attention maps are scored against).
- `refer(scene, index, seed)`: the shortest expression that singles out one object.
- `noisy_captions(scene, seed, n, noise_rate)`: "web" captions, some irrelevant, swapped or truncated
  (the noise that ALIGN, Jia et al. 2021, and ALBEF, Li et al. 2021, learn through).
- `caption_is_true(scene, text)`: reads a caption back with the same grammar and judges it against
  the scene (the oracle for BLIP's CapFilt, Li et al. 2022: which generated captions are true).

Spatial words follow CLEVR: A is "left of" B when A.x < B.x and "above" B when A.y < B.y
(x grows to the right, y grows downwards).
"""
from __future__ import annotations

import hashlib
import numbers
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Iterable, Sequence

import numpy as np

from .scene import (ALL_SHAPES, ALL_STYLES, ATTRIBUTES, COLOR_RGB, SIZE_RADIUS, Preset, Scene, SceneObject,
                    check_count, check_seed)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>", "<sep>", "<mask>", "<bos>", "<eos>")
WRAPS = {None: (None, None), "cls_sep": ("<cls>", "<sep>"), "bos_eos": ("<bos>", "<eos>")}

_WORD_PATTERN = re.compile(r"[a-z0-9]+|[?.,;!']")


def split_words(text: str) -> list[str]:
    """Lower-case `text` and split it into words and punctuation marks."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD_PATTERN.findall(text.lower())


class Tokenizer:
    """Maps words to integer ids and back. Id 0 is `<pad>`; unknown words map to `<unk>`."""

    def __init__(self, words: Iterable[str]):
        words = sorted(set(words) - set(SPECIAL_TOKENS))
        for word in words:
            if split_words(word) != [word]:
                raise ValueError(f"words contains {word!r}, which is not a single lower-case word or mark")
        self.itos: list[str] = list(SPECIAL_TOKENS) + words
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __getattr__(self, name: str) -> int:
        # pad_id, unk_id, cls_id, sep_id, mask_id, bos_id, eos_id
        if name.endswith("_id") and f"<{name[:-3]}>" in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(f"<{name[:-3]}>")
        raise AttributeError(name)

    def encode(self, text: str, wrap: str | None = None) -> list[int]:
        """Ids of the words of `text`; `wrap` adds `<cls>`..`<sep>` ("cls_sep") or `<bos>`..`<eos>` ("bos_eos")."""
        if wrap not in WRAPS:
            raise ValueError(f"wrap={wrap!r} is unknown; expected one of {tuple(WRAPS)}")
        first, last = WRAPS[wrap]
        ids = [self.stoi.get(w, self.unk_id) for w in split_words(text)]
        return ([self.stoi[first]] if first else []) + ids + ([self.stoi[last]] if last else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """The text of `ids`, words joined by spaces (special tokens dropped unless skip_special=False)."""
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"ids contains {i}, outside the vocabulary [0, {len(self.itos)})")
            if skip_special and i < len(SPECIAL_TOKENS):
                continue
            words.append(self.itos[i])
        return " ".join(words)

    def encode_batch(self, texts: Sequence[str], length: int, wrap: str | None = None,
                     truncate: bool = False) -> np.ndarray:
        """(N, length) int64 ids, right-padded with `<pad>`.

        A text longer than `length` raises ValueError unless `truncate=True` (then it is cut, and a
        wrap's closing token is kept as the last id).
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, got a single str")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        out = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text, wrap)
            if len(ids) > length:
                if not truncate:
                    raise ValueError(f"texts[{row}] has {len(ids)} tokens, more than length={length}; "
                                     f"raise length or pass truncate=True")
                ids = ids[:length - 1] + [ids[-1]] if wrap else ids[:length]
            out[row, :len(ids)] = ids
        return out

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary: token ids mean the same words wherever it is equal."""
        return hashlib.sha256("\n".join(self.itos).encode()).hexdigest()[:12]

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids)]


# Words of zero-shot prompt templates in the style of CLIP's ("a photo of a {}.", "a drawing of the
# {}."): no generator emits them, so a prompt that uses them reads as unfamiliar but not unknown text.
PROMPT_WORDS = frozenset("a an the of this is photo picture image drawing rendering sketch painting "
                         "cropped blurry bad good close up art shape object thing .".split())


def world_words() -> frozenset[str]:
    """Every word any generator of the world can emit, and the words of prompt templates."""
    # Imported here, not at the top: those modules may import this one for `split_words`.
    from . import affect, clips, programs

    return frozenset(WORDS) | programs.WORDS | clips.WORDS | affect.WORDS | PROMPT_WORDS


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The course's tokenizer: the same fixed vocabulary on every machine."""
    return Tokenizer(world_words())


# ------------------------------------------------------------------------------------------------
# Captions and referring expressions
# ------------------------------------------------------------------------------------------------

RELATIONS = ("left", "right", "above", "below")
NOISE_KINDS = ("irrelevant", "swap", "truncate")

# How each relation and style can be said; the first wording is the plain one.
_RELATION_WORDS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
_STYLE_WORDS = {"filled": ("filled", "solid"), "outline": ("outline", "hollow")}
_NOUNS = ("shape", "object")  # the noun of a phrase that does not name the shape
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()

# Templates: `{name}` is a slot filled with text (an object phrase, a list, a relation word, ...).
_SLOT = re.compile(r"(\{\w+\})")
_OBJECT_TEMPLATES = ("{a}", "there is {a}", "a picture of {a}")
_RELATION_TEMPLATES = ("{a} {rel} {b}", "{a} is {rel} {b}", "there is {a} {rel} {b}")
_COUNT_TEMPLATES = ("{count}", "there {be} {count}", "the picture shows {count}")
_LIST_TEMPLATES = ("{list}", "there {be} {n} {objects}, {list}", "the picture shows {list}",
                   "from left to right, {list}", "from top to bottom, {list}")
_LIST_ORDER = {"from left to right, {list}": "x", "from top to bottom, {list}": "y"}  # else shuffled
_REFER_RELATION_TEMPLATES = ("{a} {rel} {b}", "{a} that is {rel} {b}")
_WEB_PHRASES = ("click here for more photos", "image may contain shapes", "free stock image",
                "view full size", "all rights reserved", "best wallpaper of the year", "my new favourite picture")

# Every word that names an attribute value -> (attribute, value), plurals and paraphrases included.
ATTRIBUTE_WORDS: dict[str, tuple[str, str]] = {
    **{shape: ("shape", shape) for shape in ALL_SHAPES},
    **{shape + "s": ("shape", shape) for shape in ALL_SHAPES},
    **{color: ("color", color) for color in COLOR_RGB},
    **{size: ("size", size) for size in SIZE_RADIUS},
    **{word: ("style", style) for style, words in _STYLE_WORDS.items() for word in words},
}
_WORLD_VALUES = {"shape": ALL_SHAPES, "color": tuple(COLOR_RGB), "size": tuple(SIZE_RADIUS), "style": ALL_STYLES}

WORDS: frozenset[str] = frozenset(
    word
    for text in (*_OBJECT_TEMPLATES, *_RELATION_TEMPLATES, *_COUNT_TEMPLATES, *_LIST_TEMPLATES,
                 *_REFER_RELATION_TEMPLATES, *_WEB_PHRASES, *(w for ws in _RELATION_WORDS.values() for w in ws),
                 *ATTRIBUTE_WORDS, *_NOUNS, *(noun + "s" for noun in _NOUNS), *_ONES, *_TENS,
                 "a an the is are and ,")
    for word in split_words(_SLOT.sub(" ", text))
)


@dataclass(frozen=True)
class Caption:
    """A sentence about a scene and which of its words name which objects.

    `spans` holds `(start, end, object_index)` triples over `split_words(text)`: words[start:end]
    name `scene.objects[object_index]`, article or count word included ("a red circle"). A phrase
    naming several objects ("two green shapes") has one triple per object. Clean captions are true
    of their scene. `noisy_captions` tags corrupted ones with `is_noisy` and `noise_kind`; their
    spans say which object the words were about (for a "swap" the phrase is now false of it).
    """

    text: str
    spans: tuple[tuple[int, int, int], ...] = ()
    is_noisy: bool = False
    noise_kind: str | None = None

    @property
    def words(self) -> list[str]:
        return split_words(self.text)

    def alignment(self, num_objects: int) -> np.ndarray:
        """(num_words, num_objects) bool: entry [w, k] is True when word w names object k."""
        num_objects = check_count("num_objects", num_objects)
        out = np.zeros((len(self.words), num_objects), dtype=bool)
        for start, end, index in self.spans:
            if index >= num_objects:
                raise ValueError(f"num_objects={num_objects} is too small: the caption names object {index}")
            out[start:end, index] = True
        return out


def describe_with_spans(scene: Scene, seed: int, n: int = 1) -> list[Caption]:
    """`n` true captions of `scene` with their word spans; caption k depends only on (scene, seed, k).

    Each caption is one of: a whole-scene list ("there are two objects, a red circle and a large
    blue square"), a count ("two green shapes"), an object phrase ("a small filled triangle") or a
    spatial relation ("a red circle left of a blue square"), in one of several wordings.
    """
    _check_scene(scene)
    seed = check_seed(seed)
    n = check_count("n", n)
    if len(scene) == 0:
        raise ValueError("scene has no objects; describe needs at least one")
    relations = _true_relations(scene)
    # Each kind is called as kind(scene, rng, relations); only _relation_caption uses `relations`.
    kinds = [_list_caption, _count_caption, _object_caption] + ([_relation_caption] if relations else [])
    captions = []
    for k in range(n):
        rng = _caption_rng(scene, seed, k, "describe")
        captions.append(_pick(rng, kinds)(scene, rng, relations))
    return captions


def describe(scene: Scene, seed: int, n: int = 1) -> list[str]:
    """The texts of `describe_with_spans(scene, seed, n)`."""
    return [caption.text for caption in describe_with_spans(scene, seed, n)]


def refer_with_spans(scene: Scene, index: int, seed: int) -> Caption:
    """A referring expression that singles out `scene.objects[index]`, with its spans.

    The shortest attribute combination that no other object shares ("the red circle"); else the
    shortest one that, with a relation to an object that has such a combination, fits this object
    alone ("the red circle left of the blue square"). Ties are broken by `seed`. An object that no
    such expression singles out (e.g. one of two identical objects on the same side of every
    landmark) raises ValueError.
    """
    _check_scene(scene)
    index = _check_index(scene, index)
    rng = _caption_rng(scene, check_seed(seed), index, "refer")
    target = scene.objects[index]
    unique = _unique_descriptions(scene, index)
    if unique:
        return _fill("{a}", a=[(_noun_phrase(_values(target, _pick(rng, unique)), rng, "the"), (index,))])
    relational = _relational_descriptions(scene, index)
    if not relational:
        raise ValueError(f"index={index} ({target.phrase()}) cannot be singled out in this scene: an identical "
                         f"object stands on the same side of every uniquely describable object")
    attributes, relation, landmark = _pick(rng, relational)
    landmark_values = _values(scene.objects[landmark], _pick(rng, _unique_descriptions(scene, landmark)))
    return _fill(_pick(rng, _REFER_RELATION_TEMPLATES),
                 a=[(_noun_phrase(_values(target, attributes), rng, "the"), (index,))],
                 rel=[(_pick(rng, _RELATION_WORDS[relation]), ())],
                 b=[(_noun_phrase(landmark_values, rng, "the"), (landmark,))])


def refer(scene: Scene, index: int, seed: int) -> str:
    """The text of `refer_with_spans(scene, index, seed)`."""
    return refer_with_spans(scene, index, seed).text


def referring_expressions(scene: Scene, seed: int) -> list[tuple[int, str]]:
    """`(index, expression)` for every object of `scene` that can be singled out, in index order."""
    _check_scene(scene)
    seed = check_seed(seed)
    expressions = []
    for index in range(len(scene)):
        if _unique_descriptions(scene, index) or _relational_descriptions(scene, index):
            expressions.append((index, refer(scene, index, seed)))
    return expressions


def noisy_captions(scene: Scene, seed: int, n: int, noise_rate: float,
                   kinds: Sequence[str] = NOISE_KINDS) -> list[Caption]:
    """`n` "web" captions: caption k is `describe_with_spans(scene, seed, n)[k]`, corrupted with
    probability `noise_rate` by one of `kinds` (chosen uniformly):

    - "irrelevant": text about something not in the scene (an absent object or a web phrase), no spans;
    - "swap": one attribute word inside an object's span replaced by another value of that attribute
      (the article a/an follows) so that the caption is false of the scene (`caption_is_true`); a
      caption that no one-word swap makes false becomes an "irrelevant" one;
    - "truncate": the caption cut short, losing at least its last word; spans are clipped.

    Whether caption k is corrupted does not depend on `kinds`, and raising `noise_rate` only adds
    corrupted captions.
    """
    noise_rate = _check_rate(noise_rate)
    kinds = _check_kinds(kinds)
    captions = []
    for k, caption in enumerate(describe_with_spans(scene, seed, n)):
        rng = _caption_rng(scene, seed, k, "noise")
        if rng.random() < noise_rate:
            caption = _CORRUPTIONS[_pick(rng, kinds)](scene, caption, rng)
        captions.append(caption)
    return captions


def caption_is_true(scene: Scene, text: str) -> bool:
    """Whether `text`, read with the grammar of the world's captions, is true of `scene`.

    `text` is read back into the template and phrases `describe_with_spans` would have filled (any
    of its templates and wordings, plurals, "solid"/"hollow", number words) and judged with the
    generators' own semantics (a phrase fits an object that has every value it states):

    - an object caption ("there is a small filled triangle", "a picture of a red circle") is true
      when some object fits its phrase;
    - a relation caption ("a red circle left of a blue square", "... is to the left of ...",
      "above", "below", "under") when two different objects fit the phrases and the relation
      holds between them (CLEVR's rule, strict: left of means a smaller x);
    - a count caption ("two green shapes", "there are three objects") when exactly that many
      objects fit its phrase;
    - a list caption ("there are two objects, a red circle and a large blue square", "the picture
      shows ...", "from left to right, ...") when it names every object once: its stated count
      (if any) and its number of phrases are the number of objects, and the phrases can be given
      distinct objects that they fit, in order of x ("from left to right") or y ("from top to
      bottom") for an ordered list (objects at the same coordinate may come in either order).

    A single phrase with nothing around it ("a red circle") reads as an object caption (a list of
    one object says the same in a scene of one object). A caption cut short that still reads as a
    caption is judged as the caption it now is: "there is a red circle left of a blue square" cut
    to "there is a red circle" is a true object caption; "the picture shows a red circle and a blue
    square" cut to "the picture shows a red circle" is a list of one object, false in a scene of
    two. Text outside the grammar (a web phrase such as "click here for more photos", a caption
    cut inside a phrase, word salad, "an red circle", "two red circle") raises ValueError naming
    `text` and the word where reading failed.
    """
    _check_scene(scene)
    reading = _read_caption(text)
    return _IS_TRUE[reading.kind](scene, reading)


# ---------------------------------------------------------------- caption kinds


def _object_caption(scene: Scene, rng: np.random.Generator, relations) -> Caption:
    index = int(rng.integers(len(scene)))
    phrase = _noun_phrase(_values(scene.objects[index], _random_attributes(rng)), rng)
    return _fill(_pick(rng, _OBJECT_TEMPLATES), a=[(phrase, (index,))])


def _relation_caption(scene: Scene, rng: np.random.Generator, relations) -> Caption:
    first, relation, second = _pick(rng, relations)
    return _fill(_pick(rng, _RELATION_TEMPLATES),
                 a=[(_noun_phrase(_values(scene.objects[first], _random_attributes(rng)), rng), (first,))],
                 rel=[(_pick(rng, _RELATION_WORDS[relation]), ())],
                 b=[(_noun_phrase(_values(scene.objects[second], _random_attributes(rng)), rng), (second,))])


def _count_caption(scene: Scene, rng: np.random.Generator, relations) -> Caption:
    """How many objects share some attributes of a random object: exactly that many do."""
    values = _values(scene.objects[int(rng.integers(len(scene)))], _random_attributes(rng))
    members = tuple(i for i, obj in enumerate(scene.objects) if _matches(obj, values))
    phrase = _noun_phrase(values, rng, _number_word(len(members)), plural=len(members) != 1)
    return _fill(_pick(rng, _COUNT_TEMPLATES), be=_be(len(members)), count=[(phrase, members)])


def _list_caption(scene: Scene, rng: np.random.Generator, relations) -> Caption:
    template = _pick(rng, _LIST_TEMPLATES)
    if template in _LIST_ORDER:
        order = sorted(range(len(scene)), key=lambda i: getattr(scene.objects[i], _LIST_ORDER[template]))
    else:
        order = [int(i) for i in rng.permutation(len(scene))]
    phrases = [(_noun_phrase(_values(scene.objects[i], _random_attributes(rng)), rng), (i,)) for i in order]
    noun = _pick(rng, _NOUNS) + ("" if len(scene) == 1 else "s")
    return _fill(template, be=_be(len(scene)), n=[(_number_word(len(scene)), ())], objects=[(noun, ())],
                 list=_enumerate(phrases))


# ---------------------------------------------------------------- noise


def _irrelevant(scene: Scene, caption: Caption, rng: np.random.Generator) -> Caption:
    """A caption of a colour-shape pair absent from the scene, or a generic web phrase."""
    spec = scene.spec
    absent = [(color, shape) for color in spec.colors for shape in spec.shapes
              if not any(obj.color == color and obj.shape == shape for obj in scene.objects)]
    if absent and rng.random() < 0.5:
        color, shape = _pick(rng, absent)
        text = _fill(_pick(rng, _OBJECT_TEMPLATES), a=[(_noun_phrase({"color": color, "shape": shape}, rng), ())]).text
    else:
        text = _pick(rng, _WEB_PHRASES)
    return Caption(text, (), True, "irrelevant")


def _swap(scene: Scene, caption: Caption, rng: np.random.Generator) -> Caption:
    """One attribute word of a phrase replaced so that the caption is false of the scene.

    The first try is a random attribute word and, where one exists, a value that no object has
    together with the phrase's other attributes. When that leaves the caption true (no such value
    exists and the new one fits another object: "a square" -> "a triangle" beside a triangle), every
    other one-word swap is tried in a random order and the first false one kept. A caption that no
    one-word swap makes false ("a square" in a scene with every shape) becomes an irrelevant one.
    """
    words = caption.words
    positions = sorted({(w, start, end) for start, end, _ in caption.spans for w in range(start, end)
                        if words[w] in ATTRIBUTE_WORDS})
    position, start, end = _pick(rng, positions)
    attribute, value = ATTRIBUTE_WORDS[words[position]]
    phrase_values = dict(ATTRIBUTE_WORDS[word] for word in words[start:end] if word in ATTRIBUTE_WORDS)
    others = _other_values(scene.spec, attribute, value)
    fitting_nothing = [other for other in others if not _matching(scene, {**phrase_values, attribute: other})]
    swapped = _swapped(caption, position, _pick(rng, fitting_nothing or others))
    if not caption_is_true(scene, swapped.text):
        return swapped
    for k in rng.permutation(len(positions)):
        position = positions[k][0]
        attribute, value = ATTRIBUTE_WORDS[words[position]]
        for other in rng.permutation(_other_values(scene.spec, attribute, value)):
            swapped = _swapped(caption, position, str(other))
            if not caption_is_true(scene, swapped.text):
                return swapped
    return _irrelevant(scene, caption, rng)


def _swapped(caption: Caption, position: int, new_value: str) -> Caption:
    """`caption` with its attribute word at `position` saying `new_value` (same form; article fixed)."""
    words = caption.words
    old_word = words[position]
    attribute, value = ATTRIBUTE_WORDS[old_word]
    new_word = _same_form(old_word, attribute, value, new_value)
    text = _replace_word(caption.text, position, new_word)
    if position > 0 and words[position - 1] in ("a", "an"):
        text = _replace_word(text, position - 1, _article(new_word))
    return Caption(text, caption.spans, True, "swap")


def _truncate(scene: Scene, caption: Caption, rng: np.random.Generator) -> Caption:
    matches = list(_WORD_PATTERN.finditer(caption.text))
    cut = int(rng.integers(1, len(matches)))  # keep words [0, cut): the last word is always lost
    text = caption.text[:matches[cut].start()].rstrip(" ,")
    kept = len(split_words(text))
    spans = tuple((start, min(end, kept), index) for start, end, index in caption.spans if start < kept)
    return Caption(text, spans, True, "truncate")


_CORRUPTIONS = {"irrelevant": _irrelevant, "swap": _swap, "truncate": _truncate}


def _other_values(spec: Preset, attribute: str, value: str) -> list[str]:
    """Other values of `attribute` in the preset; the whole world's when the preset has just one."""
    others = [v for v in spec.values(attribute) if v != value]
    return others or [v for v in _WORLD_VALUES[attribute] if v != value]


def _same_form(old_word: str, attribute: str, old_value: str, new_value: str) -> str:
    """The word for `new_value` in the form of `old_word` (plural shape, style paraphrase)."""
    if attribute == "style":
        return _STYLE_WORDS[new_value][_STYLE_WORDS[old_value].index(old_word)]
    return new_value + old_word[len(old_value):]


def _replace_word(text: str, position: int, word: str) -> str:
    match = list(_WORD_PATTERN.finditer(text))[position]
    return text[:match.start()] + word + text[match.end():]


# ---------------------------------------------------------------- referring


def _unique_descriptions(scene: Scene, index: int) -> list[tuple[str, ...]]:
    """The smallest attribute subsets whose values no other object shares; [] when none does."""
    target = scene.objects[index]
    for size in range(1, len(ATTRIBUTES) + 1):
        unique = [attributes for attributes in combinations(ATTRIBUTES, size)
                  if _matching(scene, _values(target, attributes)) == [index]]
        if unique:
            return unique
    return []


def _relational_descriptions(scene: Scene, index: int) -> list[tuple[tuple[str, ...], str, int]]:
    """The `(attributes, relation, landmark)` with the fewest attributes such that the object alone
    has those attribute values and that relation to a uniquely describable landmark."""
    target = scene.objects[index]
    landmarks = [j for j in range(len(scene)) if j != index and _unique_descriptions(scene, j)]
    for size in range(1, len(ATTRIBUTES) + 1):
        found = [(attributes, relation, landmark)
                 for attributes in combinations(ATTRIBUTES, size) for landmark in landmarks for relation in RELATIONS
                 if [i for i in _matching(scene, _values(target, attributes))
                     if i != landmark and _holds(relation, scene.objects[i], scene.objects[landmark])] == [index]]
        if found:
            return found
    return []


def _matching(scene: Scene, values: dict[str, str]) -> list[int]:
    return [i for i, obj in enumerate(scene.objects) if _matches(obj, values)]


def _true_relations(scene: Scene) -> list[tuple[int, str, int]]:
    """Every `(first, relation, second)` that holds between two different objects."""
    return [(a, relation, b) for a in range(len(scene)) for b in range(len(scene)) if a != b
            for relation in RELATIONS if _holds(relation, scene.objects[a], scene.objects[b])]


def _holds(relation: str, first: SceneObject, second: SceneObject) -> bool:
    """CLEVR's rule: `first` is left of `second` when first.x < second.x (y grows downwards)."""
    return {"left": first.x < second.x, "right": first.x > second.x,
            "above": first.y < second.y, "below": first.y > second.y}[relation]


# ---------------------------------------------------------------- phrases and templates


def _values(obj: SceneObject, attributes: Sequence[str]) -> dict[str, str]:
    return {attribute: obj.attribute(attribute) for attribute in attributes}


def _matches(obj: SceneObject, values: dict[str, str]) -> bool:
    return all(obj.attribute(attribute) == value for attribute, value in values.items())


def _random_attributes(rng: np.random.Generator) -> tuple[str, ...]:
    """Which attributes a caption's phrase names: each adjective with probability 1/2, and the shape,
    which may give way to "shape"/"object" when the colour is named. Shape or colour is always named."""
    adjectives = tuple(attribute for attribute in ("size", "color", "style") if rng.random() < 0.5)
    if "color" in adjectives and rng.random() < 0.2:
        return adjectives
    return adjectives + ("shape",)


def _noun_phrase(values: dict[str, str], rng: np.random.Generator, determiner: str = "a",
                 plural: bool = False) -> str:
    """E.g. 'a small red solid circle', 'the large object', 'two green shapes' (adjectives in the
    order size, colour, style; the shape is the noun, else "shape" or "object")."""
    words = [values[attribute] for attribute in ("size", "color") if attribute in values]
    if "style" in values:
        words.append(_pick(rng, _STYLE_WORDS[values["style"]]))
    words.append(values.get("shape") or _pick(rng, _NOUNS))
    if plural:
        words[-1] += "s"
    if determiner == "a":
        determiner = _article(words[0])
    return " ".join([determiner] + words)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _be(count: int) -> list[tuple[str, tuple[int, ...]]]:
    return [("is" if count == 1 else "are", ())]


def _number_word(count: int) -> str:
    if count >= 100:
        raise ValueError(f"scene has {count} matching objects; captions count up to 99")
    if count < 20:
        return _ONES[count]
    tens, ones = divmod(count, 10)
    return _TENS[tens - 2] + (f" {_ONES[ones]}" if ones else "")


def _enumerate(phrases: list[tuple[str, tuple[int, ...]]]) -> list[tuple[str, tuple[int, ...]]]:
    """'a, b and c': the phrases joined by commas and a final 'and'."""
    pieces = []
    for k, phrase in enumerate(phrases):
        if k:
            pieces.append(("and" if k == len(phrases) - 1 else ",", ()))
        pieces.append(phrase)
    return pieces


def _fill(template: str, **slots: list[tuple[str, tuple[int, ...]]]) -> Caption:
    """The caption of `template` with each `{slot}` replaced by its pieces; a piece is
    `(text, object_indices)` and becomes one span per index over its words."""
    text, spans, num_words = "", [], 0
    for part in _SLOT.split(template):
        pieces = slots[part[1:-1]] if _SLOT.fullmatch(part) else [(part, ())]
        for piece, objects in pieces:
            piece = piece.strip()
            if not piece:
                continue
            text += ("" if not text or piece.startswith(",") else " ") + piece
            start, num_words = num_words, num_words + len(split_words(piece))
            spans.extend((start, num_words, index) for index in objects)
    return Caption(text, tuple(spans))


def _caption_rng(scene: Scene, seed: int, k: int, stream: str) -> np.random.Generator:
    """The generator for item k of `stream` about `scene`. It depends on the scene's content (not
    only on `seed`), so that scenes captioned with one seed do not all get the same templates."""
    content = zlib.crc32(repr((scene.preset, scene.objects)).encode())
    return np.random.default_rng([seed, content, k, zlib.crc32(stream.encode())])


def _pick(rng: np.random.Generator, options: Sequence):
    """One of `options`, uniformly (keeps Python types, unlike rng.choice)."""
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------- reading captions back


@dataclass(frozen=True)
class _Reading:
    """A caption read back: its kind ("object", "relation", "count" or "list"), its template, the
    values each of its phrases states, the number it states ({count} or {n}) and its relation."""

    kind: str
    template: str
    phrases: tuple[dict[str, str], ...]
    number: int | None = None
    relation: str | None = None


# The templates of each kind, in the order they are tried: an object caption before a list, so that
# a bare phrase ("a red circle") is an object caption rather than a list of one object.
_CAPTION_TEMPLATES = {"object": _OBJECT_TEMPLATES, "relation": _RELATION_TEMPLATES,
                      "count": _COUNT_TEMPLATES, "list": _LIST_TEMPLATES}
_ADJECTIVE_WORDS = {word: meaning for word, meaning in ATTRIBUTE_WORDS.items() if meaning[0] != "shape"}
# noun word -> the shape it names (None for "shape"/"object"), for singular and plural phrases.
_NOUN_WORDS = {plural: {noun + "s" * plural: (noun if noun in ALL_SHAPES else None) for noun in ALL_SHAPES + _NOUNS}
               for plural in (False, True)}
_RELATION_OF = {tuple(wording.split()): relation for relation, wordings in _RELATION_WORDS.items()
                for wording in wordings}
_NUMBER_OF = {word: value for value, word in enumerate(_ONES)}
_TENS_OF = {word: 20 + 10 * k for k, word in enumerate(_TENS)}


class _Stuck(Exception):
    """The reader cannot go on at word `position`; `expected` says what would have fitted."""

    def __init__(self, position: int, expected: str):
        super().__init__(position, expected)
        self.position, self.expected = position, expected


class _WordReader:
    """Reads a list of words left to right: `peek` looks at the next one, `take` consumes it or
    raises `_Stuck` naming what was expected there (the caption reader here, the question reader of
    `programs`)."""

    def __init__(self, words: list[str]):
        self.words, self.position = words, 0

    def peek(self) -> str | None:
        return self.words[self.position] if self.position < len(self.words) else None

    def take(self, allowed, expected: str) -> str:
        word = self.peek()
        if word not in allowed:
            raise _Stuck(self.position, expected)
        self.position += 1
        return word


class _CaptionReader(_WordReader):
    """Recursive-descent reader of a caption's words against one template (as `programs._Reader`
    reads questions). A template's literal words must appear as they are; its slots read

        {a}, {b}          := ("a" | "an") phrase          (the article agreeing with the next word)
        {rel}             := "left of" | "to the left of" | "right of" | ... | "above" | "below" | "under"
        {be}              := "is" | "are"                  (agreeing with the number that follows)
        {count}           := number phrase                 (plural unless the number is one)
        {n} {objects}     := number ("shape" | "object")   (plural unless the number is one)
        {list}            := {a} | {a} ("," {a})* "and" {a}
        phrase            := adjective* noun   (at most one size, colour and style, in any order;
                                                the noun a shape, or "shape"/"object" for any shape)
        number            := "zero" .. "nineteen" | ("twenty" .. "ninety") ["one" .. "nine"]
    """

    def caption(self, kind: str, template: str) -> _Reading:
        slots: dict[str, object] = {}
        for is_slot, token in _template_tokens(template):
            if is_slot:
                slots[token] = self.slot(token, slots)
            else:
                self.take((token,), repr(token))
        if self.peek() is not None:
            raise _Stuck(self.position, "the end of the caption")
        phrases = slots["list"] if kind == "list" else [slots[name] for name in ("a", "b", "count") if name in slots]
        return _Reading(kind, template, tuple(phrases), slots.get("n", slots.get("number")), slots.get("rel"))

    def slot(self, name: str, slots: dict):
        """What slot `name` holds: a phrase's values, a list of them, a relation, a number, ..."""
        if name in ("a", "b"):
            return self.a_phrase()
        if name == "list":
            return self.phrase_list()
        if name == "rel":
            return self.relation()
        if name == "be":
            return self.take(("is", "are"), "'is' or 'are'")
        if name == "n":
            return self.number(slots.get("be"))
        if name == "objects":
            nouns = [noun + "s" * (slots["n"] != 1) for noun in _NOUNS]
            return self.take(nouns, " or ".join(map(repr, nouns)))
        if name == "count":  # "two green shapes": the number goes with the phrase
            slots["number"] = self.number(slots.get("be"))
            return self.phrase(plural=slots["number"] != 1)
        raise ValueError(f"template slot {{{name}}} is unknown to the caption reader")

    def a_phrase(self) -> dict[str, str]:
        at = self.position
        article = self.take(("a", "an"), "an article ('a' or 'an')")
        if self.peek() is not None and article != _article(self.peek()):
            raise _Stuck(at, f"{_article(self.peek())!r} before {self.peek()!r}")
        return self.phrase(plural=False)

    def phrase(self, plural: bool) -> dict[str, str]:
        values: dict[str, str] = {}
        while self.peek() in _ADJECTIVE_WORDS:
            attribute, value = _ADJECTIVE_WORDS[self.peek()]
            if attribute in values:
                raise _Stuck(self.position, f"one {attribute} per phrase, not a second one")
            values[attribute] = value
            self.position += 1
        nouns = _NOUN_WORDS[plural]
        shape = nouns[self.take(nouns, f"a size, color, style or {'plural' if plural else 'singular'} noun "
                                       f"(one of {sorted(nouns)})")]
        return {**values, "shape": shape} if shape else values

    def phrase_list(self) -> list[dict[str, str]]:
        phrases = [self.a_phrase()]
        while self.peek() == ",":
            self.position += 1
            phrases.append(self.a_phrase())
        if self.peek() == "and":
            self.position += 1
            phrases.append(self.a_phrase())
        elif len(phrases) > 1:
            raise _Stuck(self.position, "',' or 'and' before the last phrase of a list")
        return phrases

    def relation(self) -> str:
        """The relation of the wording that starts here (no wording begins another, so at most one
        fits), else stuck where the wordings that came closest part from the text."""
        matched = {wording: self._matched_words(wording) for wording in _RELATION_OF}
        for wording, count in matched.items():
            if count == len(wording):
                self.position += count
                return _RELATION_OF[wording]
        closest = max(matched.values())
        if closest == 0:
            raise _Stuck(self.position, f"a relation ({', '.join(' '.join(w) for w in _RELATION_OF)})")
        following = dict.fromkeys(repr(w[closest]) for w, count in matched.items() if count == closest)
        raise _Stuck(self.position + closest, " or ".join(following))

    def _matched_words(self, wording: tuple[str, ...]) -> int:
        """How many words of `wording` the text has from here on."""
        ahead = self.words[self.position:self.position + len(wording)]
        return next((k for k, (word, wanted) in enumerate(zip(ahead, wording)) if word != wanted), len(ahead))

    def number(self, be: str | None) -> int:
        at = self.position
        word = self.take({**_NUMBER_OF, **_TENS_OF}, "a number word (one, two, ...)")
        value = _NUMBER_OF[word] if word in _NUMBER_OF else _TENS_OF[word]
        if word in _TENS_OF and _NUMBER_OF.get(self.peek(), 0) in range(1, 10):  # "twenty one"
            value += _NUMBER_OF[self.take(_NUMBER_OF, "a number word")]
        if be is not None and be != _be(value)[0][0]:  # "is" for one, else "are"
            raise _Stuck(at, "'one' after 'is'" if be == "is" else "a number other than 'one' after 'are'")
        return value


@lru_cache(maxsize=None)
def _template_tokens(template: str) -> tuple[tuple[bool, str], ...]:
    """The template's words and slots, in order: (False, word) or (True, slot name)."""
    tokens: list[tuple[bool, str]] = []
    for part in _SLOT.split(template):
        if _SLOT.fullmatch(part):
            tokens.append((True, part[1:-1]))
        else:
            tokens.extend((False, word) for word in split_words(part))
    return tuple(tokens)


def _read_caption(text: str) -> _Reading:
    """`text` read as the first template (of every kind, in `_CAPTION_TEMPLATES` order) that fits it
    whole. Raises ValueError naming `text`, the furthest word any template reached and what the
    templates expected there."""
    if not isinstance(text, str):
        hint = "; pass caption.text" if isinstance(text, Caption) else ""
        raise TypeError(f"text must be a str, got {type(text).__name__}{hint}")
    words = split_words(text)
    if not words:
        raise ValueError(f"text={text!r} has no words; expected a caption such as 'there is a red circle'")
    furthest, expected = -1, []
    for kind, templates in _CAPTION_TEMPLATES.items():
        for template in templates:
            try:
                return _CaptionReader(words).caption(kind, template)
            except _Stuck as stuck:
                if stuck.position > furthest:
                    furthest, expected = stuck.position, []
                if stuck.position == furthest and stuck.expected not in expected:
                    expected.append(stuck.expected)
    at = f"word {furthest + 1} ({words[furthest]!r})" if furthest < len(words) else "the end"
    expected = ", ".join(expected[:-1]) + " or " * (len(expected) > 1) + expected[-1]
    raise ValueError(f"cannot read text={text!r} as a caption of the world: at {at} expected {expected}")


def _object_is_true(scene: Scene, reading: _Reading) -> bool:
    return bool(_matching(scene, reading.phrases[0]))


def _relation_is_true(scene: Scene, reading: _Reading) -> bool:
    firsts, seconds = (_matching(scene, values) for values in reading.phrases)
    return any(a != b and _holds(reading.relation, scene.objects[a], scene.objects[b])
               for a in firsts for b in seconds)


def _count_is_true(scene: Scene, reading: _Reading) -> bool:
    return len(_matching(scene, reading.phrases[0])) == reading.number


def _list_is_true(scene: Scene, reading: _Reading) -> bool:
    """Every object named once: the phrases, in order for an ordered list, fit distinct objects."""
    if len(reading.phrases) != len(scene) or reading.number not in (None, len(scene)):
        return False
    return all(_one_to_one(scene, reading.phrases[start:end], objects)
               for start, end, objects in _ranks(scene, _LIST_ORDER.get(reading.template)))


def _ranks(scene: Scene, coordinate: str | None) -> list[tuple[int, int, list[int]]]:
    """`(start, end, objects)`: list positions [start, end) hold `objects` in some order. Unordered,
    one group of every object; ordered by x or y, one group per coordinate value, in sorted order."""
    if coordinate is None:
        return [(0, len(scene), list(range(len(scene))))]
    groups: dict[float, list[int]] = {}
    for i in sorted(range(len(scene)), key=lambda i: getattr(scene.objects[i], coordinate)):
        groups.setdefault(getattr(scene.objects[i], coordinate), []).append(i)
    ranks, start = [], 0
    for objects in groups.values():
        ranks.append((start, start + len(objects), objects))
        start += len(objects)
    return ranks


def _one_to_one(scene: Scene, phrases: Sequence[dict[str, str]], objects: list[int]) -> bool:
    """Whether each phrase can be given its own object of `objects` that it fits (a perfect
    matching, found with Kuhn's augmenting paths)."""
    owner: dict[int, int] = {}  # object -> the phrase it is given to

    def give(phrase: int, tried: set[int]) -> bool:
        for i in objects:
            if i not in tried and _matches(scene.objects[i], phrases[phrase]):
                tried.add(i)
                if i not in owner or give(owner[i], tried):
                    owner[i] = phrase
                    return True
        return False

    return len(phrases) == len(objects) and all(give(phrase, set()) for phrase in range(len(phrases)))


_IS_TRUE = {"object": _object_is_true, "relation": _relation_is_true, "count": _count_is_true,
            "list": _list_is_true}


# ---------------------------------------------------------------- argument checks


def _check_scene(scene) -> None:
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")


def _check_index(scene: Scene, index) -> int:
    index = check_count("index", index)
    if index >= len(scene):
        raise ValueError(f"index={index} is out of range for a scene of {len(scene)} objects; "
                         f"expected 0 <= index < {len(scene)}")
    return index


def _check_rate(noise_rate) -> float:
    if isinstance(noise_rate, bool) or not isinstance(noise_rate, numbers.Real):
        raise TypeError(f"noise_rate must be a number, got {type(noise_rate).__name__}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate={noise_rate!r} must be in [0, 1]")
    return float(noise_rate)


def _check_kinds(kinds) -> tuple[str, ...]:
    if isinstance(kinds, str):
        raise TypeError(f"kinds must be a sequence of noise kinds, got the single str {kinds!r}; wrap it in a tuple")
    kinds = tuple(kinds)
    if not kinds or any(kind not in NOISE_KINDS for kind in kinds):
        raise ValueError(f"kinds={kinds!r} must be a non-empty selection of {NOISE_KINDS}")
    return kinds
