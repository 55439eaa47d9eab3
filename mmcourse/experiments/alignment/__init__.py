"""Data and measurements for notebook 03, multimodal alignment: one module per part of the notebook.

- `scoreboard`: referring expressions with their target words, attention painted on pixels and
  scored against the objects' masks (every model of the notebook goes through it);
- `regions`: explicit word-region alignment scored against the caption spans (section 1), held-out
  captions one swapped word away from true, and region features pretrained on attributes;
- `affect`: MulT against resampled early fusion on unaligned affect sequences (section 2);
- `single_stream`: VisualBERT and ViLT pretrained with MLM + ITM, measured, and timed (sections 3, 6);
- `two_streams`: VisualBERT against ViLBERT on one-word swaps, reading the same pretrained detector (section 4);
- `milnce`: NCE against MIL-NCE on clips whose narrations are heard late (section 5);
- `albef`: ALBEF's ablation on noisy captions, and how often its negatives are true (section 7);
- `blip`: BLIP's caption bootstrapping, its filter and captioner measured against the world (section 8).
"""
from . import affect, albef, blip, milnce, regions, scoreboard, single_stream, two_streams
