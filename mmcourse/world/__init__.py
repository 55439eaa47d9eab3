"""The embedded multimodal world: scenes, pixels, captions, questions, clips and affect.

A procedural 2-D world in the tradition of SHAPES (Andreas et al. 2016), Sort-of-CLEVR (Santoro et
al. 2017) and CLEVR (Johnson et al. 2017). Every output is a deterministic function of a seed.
"""
from .affect import AffectData, sample_affect
from .clips import Clip, sample_clips
from .language import (Caption, Tokenizer, caption_is_true, default_tokenizer, describe, describe_with_spans,
                       noisy_captions, refer, referring_expressions)
from .programs import ANSWERS, FAMILIES, Question, ask, ask_balanced, execute, execute_trace, parse
from .render import Rendered, render, render_batch
from .scene import PRESETS, Scene, SceneObject, sample_scenes
from .sort_of_clevr import sample_sort_of_clevr

__all__ = [
    "ANSWERS", "FAMILIES", "PRESETS", "AffectData", "Caption", "Clip", "Question", "Rendered", "Scene",
    "SceneObject", "Tokenizer", "ask", "ask_balanced", "caption_is_true", "default_tokenizer", "describe",
    "describe_with_spans", "execute", "execute_trace", "noisy_captions", "parse", "refer", "referring_expressions",
    "render", "render_batch", "sample_affect", "sample_clips", "sample_scenes", "sample_sort_of_clevr",
]
