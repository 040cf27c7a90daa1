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
# # 05 · Where and how much the masks change
#
# **Goal.** A mask's *sparsity* is the fraction of the backbone's weights it switches off. The
# paper (§5, Table 6, Fig. 3) found that it grows with the task's distance from the source
# (VGG-16: Flowers 4.5%, WikiArt 34%), with the *threshold* and with the score init, and that
# the number of changes grows with depth. We train every embedded task on one backbone (ordered
# from near the source to far from it), map sparsity per layer and task, then vary the
# threshold and the init on one task. Last, the *storage* of each task: 1 bit per weight, or
# less when entropy-coded.

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`); the defaults are the embedded CPU
# setting and `smoke=True` shrinks the run to seconds. For the paper's setting, set `backbone`,
# `weights`, `data_root`, `tasks` (e.g. `["flowers", "cubs", "cars", "sketch", "wikiart"]`),
# `variant_task`, `recipe="paper"` and `device`. A wrong parameter stops the notebook in the next
# cell, naming it.

# %% tags=["parameters"]
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)

# The data
tasks = ["greek", "accents", "sketch", "textured", "fonts"]  # near to far from the source (or, with data_root, paper datasets)
variant_task = "fonts"  # the task on which the threshold and the init vary
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# The experiment
thresholds = [2e-3, 8e-3]  # thresholds tried besides the default 5e-3 (constant init 1e-2)
inits = ["weight"]      # score inits tried besides the default "constant"

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's
batch_size = None       # None: the recipe's
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/05_sparsity"  # metrics.json, tables (CSV) and figures (HTML) go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import pandas as pd

import piggylab as pl
from piggylab import findings, notebook, plots

lab = pl.Lab("05_sparsity", globals(), {
    "tasks": notebook.list_of(pl.experiments.TASKS), "variant_task": pl.experiments.TASKS,
    "thresholds": notebook.positive_numbers, "inits": notebook.list_of(pl.INIT_SCHEMES, empty=True)})

# %% [markdown]
# ## Run
#
# Every task with the default mask (binary, tau 5e-3, constant init 1e-2), then the variants on
# `variant_task`.

# %%
net = lab.network()
live = plots.LiveCurve(("loss", "val_acc", "sparsity"), title="Every task, then the threshold and init variants")
live.show()
default = lab.spec("piggyback")
variants = [lab.spec("piggyback", label=f"tau {t:g}", mask=pl.MaskConfig(threshold=t)) for t in thresholds] \
    + [lab.spec("piggyback", label=f"{init} init", mask=pl.MaskConfig(init=init)) for init in inits]
parts = [lab.compare(net, lab.data(task), [default] + (variants if task == variant_task else []), live=live)
         for task in dict.fromkeys([*tasks, variant_task])]
results = pd.concat([rows for rows, _ in parts], ignore_index=True)
main = results[(results["label"] == "piggyback") & results["task"].isin(tasks)]

# %% [markdown]
# ## Look
#
# Sparsity of every masked layer (rows, input at the top) for every task (columns, near to far):

# %%
layers = pl.sparsity_by_task(net, list(main["name"])).replace({"task": dict(zip(main["name"], main["task"]))})
lab.table(results[["task", "label", "threshold", "init", "accuracy", "sparsity", "storage_bytes"]], "results")
lab.show(plots.sparsity_heatmap(layers), "sparsity_heatmap")
lab.show(plots.sparsity_by_depth(layers), "sparsity_by_depth")
lab.show(plots.percent_bars(main, y="sparsity", color=None, y_title="zeros in the mask (%)",
                            title="Sparsity per task, near to far from the source"), "sparsity_per_task")

# %% [markdown]
# The threshold and init variants on one task, and the storage of every task's file: `packed`
# stores exactly 1 bit per weight, `rice` entropy-codes the mask (the sparser, the smaller).

# %%
on_variant = results[results["task"] == variant_task]
lab.show(plots.percent_bars(on_variant, x="label", color=None, y="sparsity", y_title="zeros in the mask (%)",
                            title=f"{variant_task}: sparsity by threshold and init"), "sparsity_variants")
storage = lab.table(pl.storage_table(net, list(main["name"])).assign(task=list(main["task"])), "storage")
long = storage.melt(id_vars="task", value_vars=["packed_bytes", "rice_bytes", "finetuned_bytes"],
                    var_name="format", value_name="bytes")
lab.show(plots.storage_bars(long, y="bytes", color="format", title="Storage per task (log scale)"), "storage")

# %% [markdown]
# ## What we learned

# %%
lab.learned(results, claims=["C7"], findings=findings.sparsity(results, layers, storage))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **A larger threshold.** Add `2e-2` to `thresholds`: the constant init (1e-2) then starts
#    *below* tau. Predict the initial sparsity and the accuracy, then check.
# 2. **Depth and batchnorm.** On the embedded tasks, frozen-BN masks change the first third of
#    the layers more than the last (the paper's Fig. 3 finds the opposite; data/README.md, "The
#    misses"). Train one task with its own BN and compare the thirds:
#    `rows, _ = lab.compare(net, lab.data("accents"), [lab.spec("piggyback", bn_mode="task")])`,
#    then `pd.concat([main, rows])[["task", "label", "first_third_sparsity", "last_third_sparsity"]]`.
#    `scripts/depth_diagnostics.py` tests three explanations of the difference (a deeper
#    backbone, the target's BN statistics, more steps): only more steps turn the trend.
# 3. **Entropy coding.** Predict the `rice` size of a mask with 1% zeros against one with 20%,
#    then compare two rows of the storage table.
