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
# # 03 · Binary or ternary masks?
#
# **Goal.** A *binary* mask keeps or drops each weight ({0, 1}); a *ternary* mask may also flip
# its sign ({-1, 0, 1}: a score below 0 gives -1, between 0 and the threshold 0, above it +1,
# the reference code's two cut-offs). The paper tried ternary masks and found results "not
# significantly different" from binary (§3). We train both on a near and a far task and compare
# test accuracy, sparsity, the share of weights actually negated and storage: a ternary mask
# needs 2 bits per weight.

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`); the defaults are the embedded CPU
# setting and `smoke=True` shrinks the run to seconds. For the paper's setting, set `backbone`,
# `weights`, `data_root`, `tasks` (e.g. `["cubs", "wikiart"]`), `recipe="paper"` and `device`.
# A wrong parameter stops the notebook in the next cell, naming it.

# %% tags=["parameters"]
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)

# The data
tasks = ["greek", "fonts"]  # embedded tasks or, with data_root, paper datasets
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# The experiment
mask_kinds = ["binary", "ternary"]
bn_mode = "task"        # "task" (§5.3; the masks move furthest in a short run) or "frozen" (the backbone's BN)

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's
batch_size = None       # None: the recipe's
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/03_ternary_vs_binary"  # metrics.json, tables (CSV) and figures (HTML) go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import piggylab as pl
from piggylab import findings, notebook, plots

lab = pl.Lab("03_ternary_vs_binary", globals(), {
    "tasks": notebook.list_of(pl.experiments.TASKS), "mask_kinds": notebook.list_of(pl.MASK_KINDS),
    "bn_mode": pl.BN_MODES})

# %% [markdown]
# ## Run
#
# For each task, one piggyback run per mask kind, all tasks of one network. A score turns a
# weight negative only once it has fallen from 1e-2 below 0, twice as far as it must fall to
# switch the weight off: with the backbone's frozen BN, whose recipe moves the scores slowly,
# almost no weight gets there in a short run, and the two kinds would be the same mask. So the
# comparison runs with task BN by default (`bn_mode`), where the recipe moves scores faster.

# %%
net = lab.network()
live = plots.LiveCurve(("loss", "val_acc", "sparsity"), title="Binary and ternary masks")
live.show()
specs = [lab.spec("piggyback", label=kind, mask=pl.MaskConfig(kind=kind), bn_mode=bn_mode) for kind in mask_kinds]
results, _ = lab.compare(net, [lab.data(task) for task in tasks], specs, live=live)

# %% [markdown]
# ## Look
#
# `sparsity` is the fraction of weights set to 0, `negated` the fraction set to -1 (ternary only).

# %%
lab.table(results[["task", "label", "accuracy", "val_accuracy", "sparsity", "negated", "storage_bytes"]], "results")

# %%
lab.show(live.figure(), "training_curves")
lab.show(plots.percent_bars(results, title="Test accuracy: binary vs ternary masks"), "accuracy")
lab.show(plots.percent_bars(results, y="negated", y_title="weights set to -1 (%)",
                            title="Share of the weights a mask negates"), "negated")
lab.show(plots.storage_bars(results, title="Task file size (log scale): 1 bit vs 2 bits per weight"), "storage")

# %% [markdown]
# ## What we learned

# %%
lab.learned(results, claims=["C6"], findings=findings.ternary(results))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **Where are the -1s?** Call `pl.layer_sparsity(net, "fonts-ternary")` and look for the
#    layers with the most negative entries (`net.masks("fonts-ternary")`). Are they early or late?
# 2. **Frozen BN.** Set `bn_mode = "frozen"`: predict the share of negated weights, then check
#    the `negated` chart. Are the two kinds still different masks?
# 3. **Storage.** A ternary task file is about twice a binary one. Predict the ratio for a
#    mask that negates nothing, then compare with the storage chart.
