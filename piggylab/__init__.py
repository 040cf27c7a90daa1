"""piggylab: learn, explore and reproduce Piggyback (Mallya et al., ECCV 2018).

One frozen pretrained network serves many tasks; each task learns only a binary mask over
the network's weights (1 bit per weight per task). The public names:

- the masked layer: `MaskConfig`, `init_scores`, `threshold_scores`, `MaskedConv2d`, `MaskedLinear`
- networks: `PiggybackNet` (add/switch/remove tasks, task-specific BN, mixed-task batches)
- baseline: `PackNet`, `PackNetConfig`, `train_packnet` (Mallya & Lazebnik, CVPR 2018)
- training: `Trainer`, `TrainConfig`, `train`, `fit_task`, `evaluate`, `recalibrate_batchnorm`,
  `paper_recipe`, `resolve_device`, `make_optimizer`
- storage: `save_task`, `load_task`, `TaskFileError`
- analysis: `layer_sparsity`, `overall_sparsity`, `sparsity_by_task`, `storage_table`, `task_memory`,
  `mask_overlap`
- export: `export_task` (a task as a plain model of the backbone's own class; files: `piggylab.export`)
- backbones: `load_backbone`, `tiny_resnet` (datasets live in `piggylab.datasets`)
- notebooks: `Lab`, the shared set-up of the lab's notebooks (`piggylab.notebook`)
"""

__version__ = "0.1.0"

from .analysis import layer_sparsity, mask_overlap, overall_sparsity, sparsity_by_task, storage_table, task_memory
from .backbones import load_backbone, tiny_resnet
from .export import export_task
from .notebook import Lab
from .masked import (GRAD_SCALINGS, INIT_SCHEMES, MASK_KINDS, MaskConfig, MaskedConv2d, MaskedLinear, init_scores,
                     threshold_scores)
from .packnet import PackNet, PackNetConfig, train_packnet
from .piggyback import BN_MODES, METHODS, PiggybackNet
from .storage import TaskFileError, load_task, save_task
from .train import (PAPER_RECIPES, Trainer, TrainConfig, TrainingDiverged, evaluate, fit_task, make_optimizer,
                    paper_recipe, recalibrate_batchnorm, resolve_device, train)

__all__ = [
    "BN_MODES", "GRAD_SCALINGS", "Lab", "INIT_SCHEMES", "MASK_KINDS", "METHODS", "PAPER_RECIPES", "MaskConfig", "MaskedConv2d",
    "MaskedLinear", "PackNet", "PackNetConfig", "PiggybackNet", "TaskFileError", "TrainConfig", "Trainer",
    "TrainingDiverged", "evaluate", "export_task", "fit_task", "init_scores", "layer_sparsity", "load_backbone", "load_task",
    "make_optimizer", "mask_overlap", "overall_sparsity", "paper_recipe", "recalibrate_batchnorm", "resolve_device", "save_task",
    "sparsity_by_task", "storage_table", "task_memory", "threshold_scores", "tiny_resnet", "train", "train_packnet",
]
