"""Datasets: the lab's embedded tasks and the paper's five datasets, as tasks to train.

Piggyback (Mallya et al., ECCV 2018, §5) adapts one frozen ImageNet network to CUBS, Stanford
Cars, Flowers-102, WikiArt and Sketch. The lab ships a miniature stand-in generated from a
seed, with no download (six tasks of 3x32x32 images, one per paper dataset plus the source
task), and reads the real datasets from disk when they are there.

One job per module:

- `piggylab.datasets.taskdata`: how a task's data is held (`TaskData`, `ArrayDataset`), the
  task names and the normalisation constants;
- `piggylab.datasets.embedded`: generating the embedded tasks (`embedded_task`): rendering,
  and the disk cache of generated splits;
- `piggylab.datasets.paper`: the paper's datasets in the reference code's layout or
  torchvision's (`paper_task`);
- `piggylab.datasets.loaders`: a task by name (`load_data`) and its DataLoaders (`make_loaders`).

Embedded images are stored as uint8 and normalised on access with fixed per-channel constants
(`GLYPHS_MEAN`, `GLYPHS_STD`, measured on the source task, used for every embedded task the
way the paper uses ImageNet statistics for every target dataset).

Not here: downloading the paper's datasets (see data/README.md) or drawing them: the gallery
of sample images is `piggylab.plots.gallery`.
"""

from __future__ import annotations

from .embedded import embedded_task, glyph_fonts, task_table
from .loaders import load_data, make_loaders
from .paper import IMAGENET_MEAN, IMAGENET_STD, paper_task
from .taskdata import (EMBEDDED_SOURCE, EMBEDDED_TASKS, GLYPHS_MEAN, GLYPHS_STD, IMAGE_SIZE, PAPER_DATASETS,
                       ArrayDataset, TaskData, channel_stats)

__all__ = [
    "EMBEDDED_SOURCE", "EMBEDDED_TASKS", "PAPER_DATASETS", "GLYPHS_MEAN", "GLYPHS_STD", "IMAGENET_MEAN",
    "IMAGENET_STD", "IMAGE_SIZE", "ArrayDataset", "TaskData", "embedded_task", "paper_task", "load_data",
    "make_loaders", "task_table", "glyph_fonts", "channel_stats",
]
