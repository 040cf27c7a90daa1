# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (piggylab)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Task-specific batchnorm for large domain shifts
#
# **Goal.** By default a piggyback task keeps the backbone's batchnorm (BN) layers frozen: their
# statistics describe the *source* images. Paper §5.3: for tasks far from the source (WikiArt,
# Sketch), giving each task its own trainable BN parameters (a few KB per task here, about 1 MB
# for the paper's networks) closes most of the remaining gap to fine-tuning. We compare frozen
# BN and task BN on a task near the source and two far from it, with fine-tuning as the
# reference.
#
# One detail matters here. While a mask trains, a task BN layer keeps a running average of the
# statistics it sees, each batch under the mask of its own step. The mask keeps changing, so
# that average describes no mask, least of all the final one. The trainer therefore
# re-estimates the task BN statistics with the current mask before each validation and at the
# end (`piggylab.recalibrate_batchnorm`: one pass over the training set, a plain average).

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`); the defaults are the embedded CPU
# setting and `smoke=True` shrinks the run to seconds. For the paper's setting, set `backbone`,
# `weights`, `data_root`, `tasks` (e.g. `["flowers", "wikiart", "sketch"]`), `recipe="paper"`
# and `device`. A wrong parameter stops the notebook in the next cell, naming it.

# %% tags=["parameters"]
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)

# The data
tasks = ["greek", "textured", "fonts"]  # a near task first, then far ones (embedded or, with data_root, paper datasets)
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# The experiment
with_finetune = True    # also fine-tune each task, as the reference

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's
batch_size = None       # None: the recipe's
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/04_batchnorm_adaptation"  # metrics.json, tables (CSV) and figures (HTML) go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import piggylab as pl
from piggylab import findings, notebook, plots

lab = pl.Lab("04_batchnorm_adaptation", globals(), {
    "tasks": notebook.list_of(pl.experiments.TASKS), "with_finetune": bool})

# %% [markdown]
# ## Run
#
# For each task: piggyback with frozen BN, piggyback with task BN and, optionally, fine-tuning.

# %%
net = lab.network()
live = plots.LiveCurve(title="Frozen vs task-specific batchnorm")
live.show()
specs = [lab.spec("piggyback"), lab.spec("piggyback", bn_mode="task")] + ([lab.spec("finetune")] if with_finetune else [])
results, _ = lab.compare(net, [lab.data(task) for task in tasks], specs, live=live)

# %% [markdown]
# ## Look

# %%
lab.table(results[["task", "label", "accuracy", "val_accuracy", "sparsity", "storage_bytes"]], "results")

# %%
lab.show(live.figure(), "training_curves")
lab.show(plots.percent_bars(results, title="Test accuracy: frozen vs task-specific batchnorm"), "accuracy")
lab.show(plots.storage_bars(results, title="Storage per task (log scale): task BN adds its parameters"), "storage")

# %% [markdown]
# ## What we learned

# %%
lab.learned(results, claims=["C4"], findings=findings.batchnorm(results))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **Without re-estimated statistics.** Predict what happens to `textured` with task BN when
#    its statistics stay the running average of training, then run
#    `lab.run(net, lab.data("textured"), lab.spec("piggyback", bn_mode="task", recalibrate_bn=False, label="EMA statistics"))`
#    and compare its test accuracy and the swings of its validation curve with the run above.
# 2. **Another near task.** Replace `"greek"` by `"sketch"` (hand-drawn digits): predict
#    whether task BN helps it more or less than `greek`.
# 3. **What it costs.** From the storage chart, how many bytes does task BN add per task? How
#    does that compare with the mask?
