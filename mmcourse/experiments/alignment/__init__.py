"""Data and measurements for notebook 03, multimodal alignment: one module per part of the notebook.

- `scoreboard`: referring expressions with their target words, attention painted on pixels and
  scored against the objects' masks (every model of the notebook goes through it);
- `regions`: explicit word-region alignment scored against the caption spans (section 1), and
  held-out captions one swapped word away from true (for ViLBERT, the next section to come);
- `affect`: MulT against resampled early fusion on unaligned affect sequences (section 2);
- `milnce`: NCE against MIL-NCE on clips whose narrations are heard late (section 4);
- `albef`, `blip`: ALBEF's ablation on noisy captions and BLIP's caption bootstrapping, measured and
  tested, for the notebook's next sections;
- `single_stream`: VisualBERT and ViLT pretrained with MLM + ITM, measured, and timed (sections 3, 5).
"""
from . import affect, albef, blip, milnce, regions, scoreboard, single_stream
