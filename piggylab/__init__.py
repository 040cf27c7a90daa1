"""piggylab: learn, explore and reproduce Piggyback (Mallya et al., ECCV 2018).

One frozen pretrained network serves many tasks; each task learns only a binary mask over
the network's weights (1 bit per weight per task). The public names:

- masks: `MaskConfig`, `init_scores`, `threshold_scores`, `masked_weight`, `MaskedWeight`
- network: `PiggybackNet` (add/switch/remove tasks, task-specific BN)
- baseline: `PackNet`, `PackNetConfig`, `train_packnet` (Mallya & Lazebnik, CVPR 2018)
- training: `Trainer`, `TrainConfig`, `train`, `evaluate`, `paper_recipe`, `resolve_device`, `make_optimizer`
- storage: `save_task`, `load_task`, `TaskFileError`
- analysis: `layer_sparsity`, `overall_sparsity`, `sparsity_by_task`, `storage_table`
- backbones: `load_backbone`, `tiny_resnet` (datasets live in `piggylab.datasets`)
"""

__version__ = "0.1.0"

from .analysis import layer_sparsity, overall_sparsity, sparsity_by_task, storage_table
from .backbones import load_backbone, tiny_resnet
from .masks import GRAD_SCALINGS, INIT_SCHEMES, MASK_KINDS, MaskConfig, MaskedWeight, init_scores, masked_weight, threshold_scores
from .network import PiggybackNet
from .packnet import PackNet, PackNetConfig, train_packnet
from .storage import TaskFileError, load_task, save_task
from .train import (PAPER_RECIPES, Trainer, TrainConfig, TrainingDiverged, evaluate, make_optimizer, paper_recipe,
                    resolve_device, train)

__all__ = [
    "GRAD_SCALINGS", "INIT_SCHEMES", "MASK_KINDS", "PAPER_RECIPES", "MaskConfig", "MaskedWeight", "PackNet",
    "PackNetConfig", "PiggybackNet", "train_packnet",
    "TaskFileError", "Trainer", "TrainConfig", "TrainingDiverged", "evaluate", "init_scores", "layer_sparsity",
    "load_backbone",
    "load_task", "make_optimizer", "masked_weight", "overall_sparsity", "paper_recipe", "resolve_device", "save_task",
    "sparsity_by_task", "storage_table", "threshold_scores", "tiny_resnet", "train",
]
