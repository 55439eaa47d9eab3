"""Notebook 04's experiments: data, training and the measurements of reasoning models.

- `data`: question sets (and the CoGenT split), majority baselines, program traces, object regions;
- `features`: the pretrained CNN every VQA model reads, and its features computed once per image;
- `vqa`: training, accuracy per family and attention scored against the trace for the VQA models;
- `relations`: relation networks against CNN+MLP on Sort-of-CLEVR;
- `modules`: neural module networks run on the parser's layouts, every module scored against the trace;
- `programs`: NMN v2's program generator, cloned from expert layouts and trained with REINFORCE;
- `ask`: one question of your own about one scene, answered by every model, module by module.
"""
from . import ask, data, features, modules, programs, relations, vqa
