"""CLEVR-style questions, their functional programs, a symbolic executor and a rule-based parser.

CLEVR (Johnson et al. 2017) pairs every question about a scene with a *functional program*: a
small graph of modules (`scene`, `filter_color`, `relate`, `count`, ...) whose execution on the
scene gives the answer. Neural Module Networks (Andreas et al. 2016) learn one neural module per
function and assemble them along a layout read off the question by a rule-based parser; the
program-executor models of Johnson et al. (2017b) predict the program instead. This module is the
ground truth those models are measured against, in three parts:

1. the program language and its **executor** (`FUNCTIONS`, `execute`, `execute_trace`);
2. a small **grammar** of questions: noun phrases (`Phrase`) inside question frames (`TEMPLATES`),
   rendered to text by `render` and read back to a program by `parse`;
3. the **generator**: `ask` for one scene, and `QuestionSampler` / `ask_balanced`, which reject
   candidates whose answer is already over-represented for their template or their question
   skeleton (as CLEVR did), so that a model that sees only the question cannot do much better
   than guessing.

A program is a list of nodes in execution order, each `{"function": str, "inputs": [int],
"value_inputs": [str]}`; `inputs` index earlier nodes (exactly CLEVR's format). Values flowing
between nodes are a set of objects (a frozenset of object indices), one object (an index), a
count (int), a yes/no (bool) or an attribute value (str). Relations follow CLEVR: `relate` with
"left" on object o gives every *other* object whose centre has a smaller x; "above" a smaller y
(y grows downwards, see `scene`).
"""
from __future__ import annotations

import hashlib
import itertools
import operator as operators
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Callable, Iterator, Sequence

import numpy as np

from .language import _Stuck, _WordReader, split_words
from .scene import (ALL_SHAPES, ALL_STYLES, ATTRIBUTES, COLOR_RGB, SIZE_RADIUS, Scene, check_count,
                    check_seed, scene_rng)

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

# Every value an attribute takes in any preset; the executor and the parser accept all of them.
VALUES: dict[str, tuple[str, ...]] = {
    "shape": ALL_SHAPES, "color": tuple(COLOR_RGB), "size": tuple(SIZE_RADIUS), "style": ALL_STYLES,
}
RELATIONS = ("left", "right", "above", "below")
# (coordinate, sign): object o is <relation> of anchor a when sign * (o.coord - a.coord) > 0.
_RELATION_AXIS = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1)}
# CLEVR's filter order, which is also the order of adjectives in a noun phrase (shape is the noun).
FILTER_ORDER = ("size", "color", "style", "shape")
ADJECTIVE_ATTRIBUTES = ("size", "color", "style")

BOOLEAN_ANSWERS = ("yes", "no")
COUNT_ANSWERS = tuple(str(n) for n in range(11))
ANSWERS: tuple[str, ...] = BOOLEAN_ANSWERS + COUNT_ANSWERS + tuple(v for a in ATTRIBUTES for v in VALUES[a])

# ---------------------------------------------------------------------------------------------
# The program language and its executor
# ---------------------------------------------------------------------------------------------

# Types of the values flowing between nodes; an attribute value has its attribute's name as type.
OBJECTS, OBJECT, INTEGER, BOOLEAN = "objects", "object", "integer", "boolean"
ANSWER_TYPES = (BOOLEAN, INTEGER) + ATTRIBUTES
_TYPE_NAMES = {OBJECTS: "a set of objects", OBJECT: "a single object", INTEGER: "a count",
               BOOLEAN: "a yes/no", **{a: f"a {a} value" for a in ATTRIBUTES}}
_VALUE_CHOICES = {**VALUES, "relation": RELATIONS}
_NODE_KEYS = ("function", "inputs", "value_inputs")


class AmbiguousReference(ValueError):
    """`unique` met a set that is not exactly one object: the question names no single thing."""


@dataclass(frozen=True)
class Function:
    """One module of the program language: the types it takes and gives, the kind of its value
    input ("color", "relation", ... or None when it takes none) and what it computes."""

    name: str
    inputs: tuple[str, ...]
    output: str
    value: str | None
    run: Callable  # run(scene, args, value) -> output


def related(scene: Scene, index: int, relation: str) -> frozenset[int]:
    """The other objects of `scene` that are `relation` ("left", "right", "above", "below") of object `index`."""
    coordinate, sign = _RELATION_AXIS[relation]
    anchor = getattr(scene.objects[index], coordinate)
    return frozenset(j for j, obj in enumerate(scene.objects)
                     if j != index and sign * (getattr(obj, coordinate) - anchor) > 0)


def _run_scene(scene, args, value):
    return frozenset(range(len(scene.objects)))


def _run_filter(scene, args, value, attribute):
    (objects,) = args
    return frozenset(i for i in objects if scene.objects[i].attribute(attribute) == value)


def _run_unique(scene, args, value):
    (objects,) = args
    if len(objects) != 1:
        raise AmbiguousReference(f"expected exactly one object, got {len(objects)} (objects {sorted(objects)})")
    return next(iter(objects))


def _run_relate(scene, args, value):
    return related(scene, args[0], value)


def _run_query(scene, args, value, attribute):
    return scene.objects[args[0]].attribute(attribute)


def _run_binary(scene, args, value, operator):
    return operator(*args)


def _function_table() -> dict[str, Function]:
    table = [
        Function("scene", (), OBJECTS, None, _run_scene),
        Function("unique", (OBJECTS,), OBJECT, None, _run_unique),
        Function("relate", (OBJECT,), OBJECTS, "relation", _run_relate),
        Function("count", (OBJECTS,), INTEGER, None, lambda scene, args, value: len(args[0])),
        Function("exist", (OBJECTS,), BOOLEAN, None, lambda scene, args, value: len(args[0]) > 0),
    ]
    for name, operator in (("intersect", operators.and_), ("union", operators.or_)):
        table.append(Function(name, (OBJECTS, OBJECTS), OBJECTS, None, partial(_run_binary, operator=operator)))
    comparisons = (("equal_integer", operators.eq), ("less_than", operators.lt), ("greater_than", operators.gt))
    for name, operator in comparisons:
        table.append(Function(name, (INTEGER, INTEGER), BOOLEAN, None, partial(_run_binary, operator=operator)))
    for attribute in ATTRIBUTES:
        table += [
            Function(f"filter_{attribute}", (OBJECTS,), OBJECTS, attribute, partial(_run_filter, attribute=attribute)),
            Function(f"query_{attribute}", (OBJECT,), attribute, None, partial(_run_query, attribute=attribute)),
            Function(f"equal_{attribute}", (attribute, attribute), BOOLEAN, None,
                     partial(_run_binary, operator=operators.eq)),
        ]
    return {function.name: function for function in table}


FUNCTIONS: dict[str, Function] = _function_table()


def check_program(program: Sequence[dict]) -> list[Function]:
    """Validate `program` fully (functions, inputs, value inputs, types, an answer at the end) and
    return the `Function` of every node. Raises ValueError/TypeError naming the node at fault."""
    if not isinstance(program, (list, tuple)):
        raise TypeError(f"program must be a list of node dicts, got {type(program).__name__}")
    if not program:
        raise ValueError("program is empty; expected at least one node")
    functions: list[Function] = []
    for k, node in enumerate(program):
        functions.append(_check_node(k, node, functions))
    last = functions[-1]
    if last.output not in ANSWER_TYPES:
        raise ValueError(f"program node {len(program) - 1} ({last.name}) is the last node and gives "
                         f"{_TYPE_NAMES[last.output]}; the last node must give an answer "
                         f"(a yes/no, a count or an attribute value)")
    return functions


def _check_node(k: int, node, earlier: list[Function]) -> Function:
    if not isinstance(node, dict):
        raise TypeError(f"program node {k} is a {type(node).__name__}; expected a dict with keys {list(_NODE_KEYS)}")
    if set(node) != set(_NODE_KEYS):
        raise ValueError(f"program node {k} has keys {sorted(node)}; expected exactly {list(_NODE_KEYS)}")
    name = node["function"]
    if name not in FUNCTIONS:
        raise ValueError(f"program node {k} ({name!r}): function is unknown; expected one of {sorted(FUNCTIONS)}")
    function, where = FUNCTIONS[name], f"program node {k} ({name})"
    inputs, values = node["inputs"], node["value_inputs"]
    if not isinstance(inputs, (list, tuple)) or len(inputs) != len(function.inputs):
        raise ValueError(f"{where} has inputs={inputs!r}; expected a list of {len(function.inputs)} node indices")
    for slot, (j, expected) in enumerate(zip(inputs, function.inputs)):
        if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < k:
            earlier_nodes = f"0 to {k - 1}" if k else "none: node 0 can take no input"
            raise ValueError(f"{where}: input {slot} is {j!r}; expected the index of an earlier node ({earlier_nodes})")
        if earlier[j].output != expected:
            raise ValueError(f"{where}: input {slot} is node {j} ({earlier[j].name}), which gives "
                             f"{_TYPE_NAMES[earlier[j].output]}; {name} expects {_TYPE_NAMES[expected]}")
    wanted = "no value inputs" if function.value is None else f"one {function.value}"
    if not isinstance(values, (list, tuple)) or len(values) != (function.value is not None):
        raise ValueError(f"{where} has value_inputs={values!r}; expected {wanted}")
    if function.value is not None and values[0] not in _VALUE_CHOICES[function.value]:
        raise ValueError(f"{where}: value {values[0]!r} is not a known {function.value}; "
                         f"expected one of {_VALUE_CHOICES[function.value]}")
    return function


def _check_scene(scene) -> Scene:
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    return scene


def execute_trace(program: Sequence[dict], scene: Scene) -> list:
    """Every node's output, in order (module by module, as a Neural Module Network runs them).

    Sets of objects are frozensets of object indices; `unique` gives an index. Raises
    `AmbiguousReference` (a ValueError) when a `unique` node meets anything but one object.
    """
    _check_scene(scene)
    functions = check_program(program)
    outputs: list = []
    for k, (node, function) in enumerate(zip(program, functions)):
        args = [outputs[j] for j in node["inputs"]]
        value = node["value_inputs"][0] if node["value_inputs"] else None
        try:
            outputs.append(function.run(scene, args, value))
        except AmbiguousReference as error:
            raise AmbiguousReference(f"program node {k} ({function.name}): {error}") from None
    return outputs


# ---------------------------------------------------------------------------------------------
# Layouts: a program as one token per module, the sequence a program generator predicts
# ---------------------------------------------------------------------------------------------

def _module_tokens(function: Function) -> list[str]:
    if function.value is None:
        return [function.name]
    return [f"{function.name}[{value}]" for value in _VALUE_CHOICES[function.value]]


# Every module with its value bound ("filter_color[red]", "relate[left]", "count", ...).
LAYOUT_TOKENS: tuple[str, ...] = tuple(token for function in FUNCTIONS.values() for token in _module_tokens(function))
_LAYOUT_SET = frozenset(LAYOUT_TOKENS)
_LAYOUT_TOKEN = re.compile(r"([a-z_]+)(?:\[([a-z]+)\])?")


def layout_tokens(program: Sequence[dict]) -> list[str]:
    """The program as a layout: its tree in prefix (Polish) order from the answer node down, one
    token per module, e.g. ["count", "filter_color[red]", "scene"]. Each function's arity fixes the
    tree, so `program_from_layout` reads it back (Hu et al. 2017 and Johnson et al. 2017b predict
    programs in this form)."""
    check_program(program)
    tokens: list[str] = []

    def visit(k: int) -> None:
        node = program[k]
        value = node["value_inputs"]
        tokens.append(f"{node['function']}[{value[0]}]" if value else node["function"])
        for j in node["inputs"]:
            visit(j)

    visit(len(program) - 1)
    return tokens


def program_from_layout(tokens: Sequence[str]) -> list[dict]:
    """The program (nodes in execution order) of a prefix-order layout; ValueError names the token
    at fault: an unknown module, a layout that ends early or goes on after its tree, wrong types."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a sequence of layout tokens, got {type(tokens).__name__}")
    if not tokens:
        raise ValueError("tokens is empty; expected a layout such as ['count', 'filter_color[red]', 'scene']")
    nodes: list[dict] = []
    position = 0

    def read() -> int:
        nonlocal position
        if position >= len(tokens):
            raise ValueError(f"layout {list(tokens)} ends early: a module still waits for an input")
        token = tokens[position]
        if token not in _LAYOUT_SET:
            raise ValueError(f"layout token {position} ({token!r}) is an unknown module; expected one of "
                             f"the {len(LAYOUT_TOKENS)} LAYOUT_TOKENS, e.g. 'filter_color[red]' or 'count'")
        name, value = _LAYOUT_TOKEN.fullmatch(token).groups()
        position += 1
        inputs = [read() for _ in FUNCTIONS[name].inputs]
        nodes.append({"function": name, "inputs": inputs, "value_inputs": [value] if value else []})
        return len(nodes) - 1

    read()
    if position != len(tokens):
        raise ValueError(f"layout {list(tokens)} goes on after its tree is complete, at token {position} "
                         f"({tokens[position]!r})")
    check_program(nodes)
    return nodes


def format_answer(value) -> str:
    """The answer string of a final node's output: "yes"/"no", a count's digits or the value itself."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def execute(program: Sequence[dict], scene: Scene) -> str:
    """Run `program` on `scene` and return the answer as a string (one of `ANSWERS` for counts <= 10)."""
    return format_answer(execute_trace(program, scene)[-1])


# ---------------------------------------------------------------------------------------------
# The grammar: noun phrases inside question frames
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phrase:
    """A noun phrase: attribute constraints ((attribute, value) pairs in FILTER_ORDER; a shape is
    the noun, else `generic` is), optionally tied by `relation` to the single object `anchor`
    names: "small red circle", "thing left of the blue square"."""

    attributes: tuple[tuple[str, str], ...] = ()
    relation: str | None = None
    anchor: Phrase | None = None
    generic: str = "thing"  # "thing" or "object"

    def value(self, attribute: str) -> str | None:
        return dict(self.attributes).get(attribute)


def make_phrase(values: dict[str, str], generic: str = "thing") -> Phrase:
    """A `Phrase` without relation from a {attribute: value} dict (any order)."""
    return Phrase(tuple((a, values[a]) for a in FILTER_ORDER if a in values), generic=generic)


@dataclass(frozen=True)
class Template:
    """A question frame. `pattern` is words and slots: {a_npN} "a/an" + singular phrase N,
    {the_npN} "the" + singular phrase N, {npsN} plural phrase N, {relN} the relation clause of
    phrase N (when the frame splits it from its head), {adjN} phrase N as one adjective, {attr} an
    attribute name. `kind` says how the program is built; `relational` that phrase 1 hangs on an
    anchor object."""

    name: str
    family: str
    kind: str
    pattern: str
    relational: bool = False


TEMPLATES: tuple[Template, ...] = (
    Template("exist", "exist", "exist", "is there {a_np1} ?"),
    Template("exist_any", "exist", "exist", "are there any {nps1} ?"),
    Template("exist_relate", "exist", "exist", "is there {a_np1} ?", relational=True),
    Template("count", "count", "count", "how many {nps1} are there ?"),
    Template("count_number", "count", "count", "what number of {nps1} are there ?"),
    Template("count_relate", "count", "count", "how many {nps1} are {rel1} ?", relational=True),
    Template("query", "query_attribute", "query", "what {attr} is {the_np1} ?"),
    Template("query_of", "query_attribute", "query", "what is the {attr} of {the_np1} ?"),
    Template("query_has", "query_attribute", "query", "{the_np1} has what {attr} ?"),
    Template("same_does", "compare_attribute", "same_attribute", "does {the_np1} have the same {attr} as {the_np2} ?"),
    Template("same_is", "compare_attribute", "same_attribute", "is {the_np1} the same {attr} as {the_np2} ?"),
    Template("same_do", "compare_attribute", "same_attribute", "do {the_np1} and {the_np2} have the same {attr} ?"),
    Template("more", "compare_count", "greater", "are there more {nps1} than {nps2} ?"),
    Template("fewer", "compare_count", "less", "are there fewer {nps1} than {nps2} ?"),
    Template("same_number", "compare_count", "equal_count", "are there the same number of {nps1} and {nps2} ?"),
    Template("number_same", "compare_count", "equal_count",
             "is the number of {nps1} the same as the number of {nps2} ?"),
    Template("relate", "relate", "query", "what {attr} is {the_np1} ?", relational=True),
    Template("relate_of", "relate", "query", "what is the {attr} of {the_np1} ?", relational=True),
    Template("or_exist", "and_or", "union_exist", "are there {nps1} or {nps2} ?"),
    Template("or_count", "and_or", "union_count", "how many {nps1} or {nps2} are there ?"),
    Template("and_count", "and_or", "intersect_count", "how many things are {adj1} and {adj2} ?"),
)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(t.family for t in TEMPLATES))
_TEMPLATES_OF = {family: tuple(t for t in TEMPLATES if t.family == family) for family in FAMILIES}
_COUNT_COMPARISONS = {"greater": "greater_than", "less": "less_than", "equal_count": "equal_integer"}

_SLOT = re.compile(r"\{(a_np|the_np|nps|rel|adj|attr)(\d?)\}")
_RELATION_WORDS = {"left": ("left", "of"), "right": ("right", "of"), "above": ("above",), "below": ("below",)}
_RELATION_START = {words[0]: relation for relation, words in _RELATION_WORDS.items()}
_GENERIC_NOUNS = ("thing", "object")
_ADJECTIVES = {value: attribute for attribute in ADJECTIVE_ATTRIBUTES for value in VALUES[attribute]}
# noun word -> what it names (a shape or a generic noun), for singular and plural phrases.
_NOUNS = {plural: {noun + ("s" if plural else ""): noun for noun in ALL_SHAPES + _GENERIC_NOUNS}
          for plural in (False, True)}


@lru_cache(maxsize=None)
def _tokens(pattern: str) -> tuple:
    """The pattern's words, with each slot as a (kind, phrase number) pair."""
    return tuple((m.group(1), int(m.group(2) or 0)) if (m := _SLOT.fullmatch(word)) else word
                 for word in pattern.split())


def _clause_split(template: Template, number: int) -> bool:
    """Whether the frame puts phrase `number`'s relation clause in its own {relN} slot."""
    return ("rel", number) in _tokens(template.pattern)


def _head_words(phrase: Phrase, plural: bool) -> list[str]:
    noun = phrase.value("shape") or phrase.generic
    return [value for attribute, value in phrase.attributes if attribute != "shape"] + [noun + "s" * plural]


def _clause_words(phrase: Phrase) -> list[str]:
    return [*_RELATION_WORDS[phrase.relation], "the", *_phrase_words(phrase.anchor, plural=False, clause=True)]


def _phrase_words(phrase: Phrase, plural: bool, clause: bool) -> list[str]:
    words = _head_words(phrase, plural)
    return words + _clause_words(phrase) if clause and phrase.relation else words


def _slot_words(kind: str, phrase: Phrase | None, attribute: str | None, clause: bool) -> list[str]:
    if kind == "attr":
        return [attribute]
    if kind == "rel":
        return _clause_words(phrase)
    if kind == "adj":
        return [value for _, value in phrase.attributes]
    words = _phrase_words(phrase, plural=kind == "nps", clause=clause)
    if kind == "a_np":
        return ["an" if words[0][0] in "aeiou" else "a"] + words
    return ["the"] + words if kind == "the_np" else words


def render(template: Template, phrases: Sequence[Phrase], attribute: str | None = None) -> str:
    """The question text of `template` filled with `phrases` (and `attribute` for {attr})."""
    words: list[str] = []
    for token in _tokens(template.pattern):
        if isinstance(token, str):
            words.append(token)
        else:
            kind, number = token
            phrase = phrases[number - 1] if number else None
            words += _slot_words(kind, phrase, attribute, clause=not _clause_split(template, number))
    return " ".join(words).replace(" ?", "?")


class _ProgramBuilder:
    """Appends CLEVR nodes; every method returns the index of the node it added last."""

    def __init__(self):
        self.nodes: list[dict] = []

    def add(self, function: str, inputs: Sequence[int] = (), value: str | None = None) -> int:
        values = [] if value is None else [value]
        self.nodes.append({"function": function, "inputs": list(inputs), "value_inputs": values})
        return len(self.nodes) - 1

    def objects(self, phrase: Phrase) -> int:
        """The set of objects `phrase` names."""
        if phrase.relation is None:
            node = self.add("scene")
        else:
            node = self.add("relate", [self.the(phrase.anchor)], phrase.relation)
        for attribute, value in phrase.attributes:
            node = self.add(f"filter_{attribute}", [node], value)
        return node

    def the(self, phrase: Phrase) -> int:
        """The single object `phrase` names."""
        return self.add("unique", [self.objects(phrase)])


def build_program(kind: str, phrases: Sequence[Phrase], attribute: str | None = None) -> list[dict]:
    """The program of a question of `kind` (a `Template.kind`) about `phrases`."""
    build = _ProgramBuilder()
    if kind in ("exist", "count"):
        build.add(kind, [build.objects(phrases[0])])
    elif kind == "query":
        build.add(f"query_{attribute}", [build.the(phrases[0])])
    elif kind == "same_attribute":
        left, right = (build.add(f"query_{attribute}", [build.the(p)]) for p in phrases)
        build.add(f"equal_{attribute}", [left, right])
    elif kind in _COUNT_COMPARISONS:
        left, right = (build.add("count", [build.objects(p)]) for p in phrases)
        build.add(_COUNT_COMPARISONS[kind], [left, right])
    elif kind in ("union_exist", "union_count", "intersect_count"):
        combine, final = kind.split("_")
        left, right = (build.objects(p) for p in phrases)
        build.add(final, [build.add(combine, [left, right])])
    else:
        raise ValueError(f"kind={kind!r} is unknown; expected one of {sorted({t.kind for t in TEMPLATES})}")
    return build.nodes


class _Reader(_WordReader):
    """Recursive-descent reader of one question's words against one frame.

        phrase  := adjective* noun [relation "the" phrase]      (one adjective per attribute)
        relation := "left" "of" | "right" "of" | "above" | "below"
    """

    def phrase(self, plural: bool, clause: bool) -> Phrase:
        values: dict[str, str] = {}
        while self.peek() in _ADJECTIVES:
            attribute = _ADJECTIVES[self.peek()]
            if attribute in values:
                raise _Stuck(self.position, f"one {attribute} per noun phrase, not a second one")
            values[attribute] = self.take(_ADJECTIVES, "an adjective")
        nouns = _NOUNS[plural]
        noun = nouns[self.take(nouns, f"a size, color, style or {'plural' if plural else 'singular'} noun "
                                      f"(one of {sorted(nouns)})")]
        generic = "thing"
        if noun in ALL_SHAPES:
            values["shape"] = noun
        else:
            generic = noun
        phrase = make_phrase(values, generic)
        if clause and self.peek() in _RELATION_START:
            phrase = self.clause(phrase)
        return phrase

    def clause(self, head: Phrase) -> Phrase:
        relation = _RELATION_START[self.take(_RELATION_START, "a relation (left of, right of, above, below)")]
        for word in _RELATION_WORDS[relation][1:]:
            self.take((word,), repr(word))
        self.take(("the",), "'the'")
        return replace(head, relation=relation, anchor=self.phrase(plural=False, clause=True))

    def frame(self, template: Template) -> tuple[list[Phrase], str | None]:
        """The phrases and attribute of the words read as `template`."""
        phrases: dict[int, Phrase] = {}
        attribute = None
        for token in _tokens(template.pattern):
            if isinstance(token, str):
                self.take((token,), repr(token))
                continue
            kind, number = token
            clause = not _clause_split(template, number)
            if kind == "attr":
                attribute = self.take(ATTRIBUTES, f"an attribute name {ATTRIBUTES}")
            elif kind == "rel":
                phrases[number] = self.clause(phrases[number])
            elif kind == "adj":
                word = self.take(_ADJECTIVES, "a size, color or style")
                phrases[number] = make_phrase({_ADJECTIVES[word]: word})
            else:
                if kind != "nps":
                    self.take(("a", "an") if kind == "a_np" else ("the",), "'a' or 'an'" if kind == "a_np" else "'the'")
                phrases[number] = self.phrase(plural=kind == "nps", clause=clause)
        if self.peek() is not None:
            raise _Stuck(self.position, "the end of the question")
        return [phrases[n] for n in sorted(phrases)], attribute


def parse(text: str) -> list[dict]:
    """The program of a question, read by a rule-based grammar (like the layout parser of Neural
    Module Networks): a question frame from `TEMPLATES` whose slots hold noun phrases.

    Raises ValueError naming `text` and the word where reading failed.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = split_words(text)
    if not words:
        raise ValueError(f"text={text!r} has no words; expected a question such as 'is there a red circle?'")
    furthest, expected = -1, []  # the furthest word any frame reached, and what the frames wanted there
    for template in TEMPLATES:
        try:
            phrases, attribute = _Reader(words).frame(template)
        except _Stuck as stuck:
            if stuck.position > furthest:
                furthest, expected = stuck.position, []
            if stuck.position == furthest and stuck.expected not in expected:
                expected.append(stuck.expected)
            continue
        return build_program(template.kind, phrases, attribute)
    at = f"word {furthest + 1} ({words[furthest]!r})" if furthest < len(words) else "the end"
    raise ValueError(f"cannot parse text={text!r}: at {at} expected {' or '.join(expected)}")


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Question:
    """A question about one scene, its CLEVR program, its answer, its family and template name."""

    text: str
    program: tuple[dict, ...]
    answer: str
    family: str
    template: str


_ATTEMPTS = 40  # proposals tried per template before a question slot falls back to another template


def _informative(scene: Scene, attributes: Sequence[str] = FILTER_ORDER) -> list[str]:
    """The attributes that tell objects apart in this scene's preset (more than one value)."""
    return [a for a in attributes if len(scene.spec.values(a)) > 1]


def _generic(rng: np.random.Generator) -> str:
    return "object" if rng.random() < 0.25 else "thing"


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _random_values(scene: Scene, rng: np.random.Generator, attributes: Sequence[str]) -> dict[str, str]:
    """Values for `attributes`: half the time those of a random object (so the phrase often names
    something), else drawn from the preset."""
    if scene.objects and rng.random() < 0.5:
        source = _pick(rng, scene.objects)
        return {a: source.attribute(a) for a in attributes}
    return {a: _pick(rng, scene.spec.values(a)) for a in attributes}


def _random_phrase(scene: Scene, rng: np.random.Generator, fewest: int, most: int = 3) -> Phrase:
    """A phrase with `fewest`..`most` random attribute constraints."""
    informative = _informative(scene)
    count = int(rng.integers(fewest, min(most, len(informative)) + 1))
    chosen = [informative[i] for i in rng.permutation(len(informative))[:count]]
    return make_phrase(_random_values(scene, rng, chosen), _generic(rng))


def _describe(scene: Scene, target: int, among: frozenset[int], rng: np.random.Generator,
              exclude: str | None = None) -> Phrase | None:
    """A shortest phrase that names object `target` and no other object of `among`, without
    using attribute `exclude`; None when no such phrase exists."""
    obj = scene.objects[target]
    allowed = [a for a in _informative(scene) if a != exclude]
    others = [scene.objects[j] for j in among if j != target]
    for size in range(len(allowed) + 1):
        fitting = [subset for subset in itertools.combinations(allowed, size)
                   if all(any(other.attribute(a) != obj.attribute(a) for a in subset) for other in others)]
        if fitting:
            return make_phrase({a: obj.attribute(a) for a in _pick(rng, fitting)}, _generic(rng))
    return None


def _anchored(scene: Scene, rng: np.random.Generator) -> tuple[str, Phrase, frozenset[int]] | None:
    """A random relation to a uniquely described anchor object: (relation, anchor phrase, the
    objects in that relation to the anchor), or None when the drawn anchor cannot be described."""
    if not scene.objects:
        return None
    anchor = int(rng.integers(len(scene)))
    anchor_phrase = _describe(scene, anchor, frozenset(range(len(scene))), rng)
    relation = _pick(rng, RELATIONS)
    return None if anchor_phrase is None else (relation, anchor_phrase, related(scene, anchor, relation))


def _propose(template: Template, scene: Scene, rng: np.random.Generator):
    """Random (phrases, attribute) for `template` on `scene`, or None when this draw does not fit."""
    kind = template.kind
    everything = frozenset(range(len(scene)))
    if kind in ("exist", "count"):
        if not template.relational:
            return [_random_phrase(scene, rng, fewest=1 if kind == "exist" else 0)], None
        anchored = _anchored(scene, rng)
        if anchored is None:
            return None
        relation, anchor, _ = anchored
        return [replace(_random_phrase(scene, rng, 0, 2), relation=relation, anchor=anchor)], None
    if kind == "query":
        attribute = _pick(rng, _informative(scene))
        if not template.relational:
            if not scene.objects:
                return None
            target = _describe(scene, int(rng.integers(len(scene))), everything, rng, attribute)
            return None if target is None else ([target], attribute)
        anchored = _anchored(scene, rng)
        if anchored is None or not anchored[2]:
            return None
        relation, anchor, candidates = anchored
        head = _describe(scene, _pick(rng, sorted(candidates)), candidates, rng, attribute)
        return None if head is None else ([replace(head, relation=relation, anchor=anchor)], attribute)
    if kind == "same_attribute":
        if len(scene) < 2:
            return None
        attribute = _pick(rng, _informative(scene))
        phrases = [_describe(scene, int(t), everything, rng, attribute) for t in rng.permutation(len(scene))[:2]]
        return None if None in phrases else (phrases, attribute)
    if kind == "intersect_count":
        adjectives = _informative(scene, ADJECTIVE_ATTRIBUTES)
        if len(adjectives) < 2:
            return None
        chosen = [adjectives[i] for i in rng.permutation(len(adjectives))[:2]]
        values = _random_values(scene, rng, chosen)
        return [make_phrase({a: values[a]}) for a in chosen], None
    # two plural phrases compared or combined: they must differ, or the question is trivial
    phrases = [_random_phrase(scene, rng, fewest=1, most=2) for _ in range(2)]
    return None if phrases[0].attributes == phrases[1].attributes else (phrases, None)


def _make_question(template: Template, scene: Scene, rng: np.random.Generator) -> Question | None:
    proposal = _propose(template, scene, rng)
    if proposal is None:
        return None
    phrases, attribute = proposal
    program = build_program(template.kind, phrases, attribute)
    return Question(render(template, phrases, attribute), tuple(program), execute(program, scene),
                    template.family, template.name)


def _proposals(template: Template, scene: Scene, rng: np.random.Generator) -> Iterator[Question]:
    """The questions that `_ATTEMPTS` random proposals of `template` give on `scene`."""
    for _ in range(_ATTEMPTS):
        question = _make_question(template, scene, rng)
        if question is not None:
            yield question


def _candidates(scene: Scene, rng: np.random.Generator, families: tuple[str, ...]) -> Iterator[Iterator[Question]]:
    """For one question slot, the proposals of one template after another: a family drawn uniformly
    from `families`, then a template drawn uniformly from it. Another template (first of the same
    family) is only reached when the drawn one cannot be asked of the scene."""
    for family in (families[i] for i in rng.permutation(len(families))):
        templates = _TEMPLATES_OF[family]
        for template in (templates[i] for i in rng.permutation(len(templates))):
            yield _proposals(template, scene, rng)


def _check_families(families) -> tuple[str, ...]:
    if families is None:
        return FAMILIES
    if isinstance(families, str) or not isinstance(families, Sequence):
        raise TypeError(f"families must be a sequence of family names or None, got {type(families).__name__}")
    if not families:
        raise ValueError(f"families is empty; expected some of {FAMILIES}")
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"families contains {family!r}, which is unknown; expected some of {FAMILIES}")
    if len(set(families)) != len(families):
        raise ValueError(f"families={list(families)} names a family twice; expected distinct names")
    return tuple(families)


def _fingerprint(scene: Scene) -> int:
    """A stable 64-bit number for the scene's content (the same on every machine), so that one seed
    gives different questions on different scenes."""
    digest = hashlib.sha256(repr((scene.preset, scene.objects)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def ask(scene: Scene, seed: int, n: int, families: Sequence[str] | None = None) -> list[Question]:
    """`n` questions about `scene`, each of a family drawn uniformly from `families` (default all).

    Question i depends only on (scene, seed, i, families): its generator is seeded with the seed,
    i and a fingerprint of the scene's content. Answers are whatever the scene gives;
    for answer-balanced sets across scenes use `ask_balanced`.
    """
    _check_scene(scene)
    seed, n, families = check_seed(seed), check_count("n", n), _check_families(families)
    questions = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, _fingerprint(scene)])
        question = next((q for proposals in _candidates(scene, rng, families) for q in proposals), None)
        if question is None:
            raise ValueError(f"scene ({len(scene)} objects) admits no question of families {families}: "
                             f"{_ATTEMPTS} proposals of each template found no object they can refer to uniquely")
        questions.append(question)
    return questions


def balance_keys(question: Question) -> tuple[str, str]:
    """The groups whose answers the sampler balances: the question's template, and what a
    question-only model sees once values are hidden (its family and program functions, e.g.
    "count: scene filter_color filter_shape count")."""
    return question.template, f"{question.family}: " + " ".join(node["function"] for node in question.program)


class QuestionSampler:
    """Asks questions scene after scene, keeping answers balanced (CLEVR's rejection sampling).

    It counts the answers accepted so far in each group of `balance_keys`. A candidate is rejected
    while, in one of its groups, its answer's count is at least `tolerance` x the mean count of the
    group's answers (yes and no for a yes/no question, those seen so far otherwise) plus `slack`;
    when all proposals for a slot are rejected, the least over-represented one is kept. The n-th
    scene's questions depend on the seed and on every scene asked before it, so the same scenes in
    the same order give the same bytes.

    A scene that admits no question of the chosen families (two identical objects cannot be told
    apart, so no question can single one out) gets fewer questions, possibly none, rather than
    stopping the whole collection; `ask` on that scene alone raises instead.
    """

    def __init__(self, seed: int, families: Sequence[str] | None = None, tolerance: float = 1.1, slack: int = 1):
        self.seed, self.families = check_seed(seed), _check_families(families)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 1:
            raise ValueError(f"tolerance must be a number >= 1, got {tolerance!r}")
        self.tolerance, self.slack = float(tolerance), check_count("slack", slack)
        self.answer_counts: defaultdict[str, Counter] = defaultdict(Counter)
        self.scenes_asked = 0

    def excess(self, question: Question) -> float:
        """How far the answer's count is past the acceptance limit, in its worst group (< 0: accept)."""
        return max(self._excess(self.answer_counts[key], question.answer) for key in balance_keys(question))

    def _excess(self, counts: Counter, answer: str) -> float:
        answers = set(BOOLEAN_ANSWERS) if answer in BOOLEAN_ANSWERS else set(counts) | {answer}
        mean = sum(counts[a] for a in answers) / len(answers)
        return counts[answer] - (self.tolerance * mean + self.slack)

    def ask(self, scene: Scene, n: int) -> list[Question]:
        """Up to `n` questions about `scene`, the next scene of the collection (fewer only when the
        scene admits no question of the sampler's families)."""
        _check_scene(scene)
        n = check_count("n", n)
        rng = scene_rng(self.seed, self.scenes_asked, "balanced")
        self.scenes_asked += 1
        questions = []
        for _ in range(n):
            question = self._choose(scene, rng)
            if question is None:
                break
            for key in balance_keys(question):
                self.answer_counts[key][question.answer] += 1
            questions.append(question)
        return questions

    def _choose(self, scene: Scene, rng: np.random.Generator) -> Question | None:
        for proposals in _candidates(scene, rng, self.families):
            best, best_excess = None, float("inf")
            for question in proposals:
                excess = self.excess(question)
                if excess < 0:
                    return question
                if excess < best_excess:
                    best, best_excess = question, excess
            if best is not None:
                return best
        return None


def ask_balanced(scenes: Sequence[Scene], seed: int, per_scene: int,
                 families: Sequence[str] | None = None) -> list[list[Question]]:
    """`per_scene` questions for each of `scenes` (one list per scene), answers balanced across
    the collection by a `QuestionSampler` (a scene that admits no question of `families` gets fewer)."""
    if isinstance(scenes, Scene) or not isinstance(scenes, Sequence):
        raise TypeError(f"scenes must be a sequence of Scene, got {type(scenes).__name__}")
    for i, scene in enumerate(scenes):
        if not isinstance(scene, Scene):
            raise TypeError(f"scenes[{i}] is a {type(scene).__name__}; expected a Scene")
    sampler = QuestionSampler(seed, families)
    per_scene = check_count("per_scene", per_scene)
    return [sampler.ask(scene, per_scene) for scene in scenes]


def _vocabulary() -> frozenset[str]:
    """Every word and mark a question or an answer can contain."""
    words = set(ANSWERS) | set(ATTRIBUTES) | {"a", "an", "the"}
    words |= {w for relation in _RELATION_WORDS.values() for w in relation}
    words |= {w for nouns in _NOUNS.values() for w in nouns}
    words |= {w for t in TEMPLATES for w in _tokens(t.pattern) if isinstance(w, str)}
    return frozenset(words)


WORDS: frozenset[str] = _vocabulary()
