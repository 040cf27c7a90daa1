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
# # 06 · Many tasks on one backbone
#
# **Goal.** The point of Piggyback: one frozen *backbone* serves any number of *tasks*, each
# adding only its *mask*, *head* and (optionally) *batchnorm*. Since the backbone never changes,
# adding a task cannot change an earlier task's predictions (paper §1). We add every task one
# after another to one network and check exactly that, compare accuracy with the baselines
# (classifier only, fine-tuning: Table 1 in miniature) and the total storage with one
# fine-tuned network per task.

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`); the defaults are the embedded CPU
# setting and `smoke=True` shrinks the run to seconds. For the paper's setting, set `backbone`,
# `weights`, `data_root`, `tasks` (e.g. `["cubs", "cars", "flowers", "wikiart", "sketch"]`),
# `recipe="paper"` and `device`. A wrong parameter stops the notebook in the next cell, naming it.

# %% tags=["parameters"]
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)

# The data
tasks = ["greek", "accents", "sketch", "textured", "fonts"]  # in the order they are added (or, with data_root, paper datasets)
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# The experiment
baselines = ["classifier", "finetune"]  # methods to compare with, each task on its own

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's
batch_size = None       # None: the recipe's
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/06_multitask"  # metrics.json, tables (CSV) and figures (HTML) go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import pandas as pd

import piggylab as pl
from piggylab import findings, notebook, plots

lab = pl.Lab("06_multitask", globals(), {
    "tasks": notebook.list_of(pl.experiments.TASKS), "baselines": notebook.list_of(("classifier", "finetune"))})

# %% [markdown]
# ## Run
#
# Add the tasks one by one to one network. Each task is trained twice, with the backbone's
# frozen batchnorm and with its own (§5.3); the network keeps the one with the higher
# *validation* accuracy and forgets the other. After each task, we measure the test accuracy of
# every task kept so far.

# %%
net = lab.network()
data = {task: lab.data(task) for task in tasks}
live = plots.LiveCurve(title="Tasks added one after another")
live.show()
piggyback_specs = [lab.spec("piggyback"), lab.spec("piggyback", bn_mode="task")]
multitask = pl.experiments.MultiTaskRun(net, batch_size=lab.batch_size, device=device)
for task in tasks:
    multitask.add(data[task], lab.compare(net, data[task], piggyback_specs, live=live)[0])

# %% [markdown]
# The baselines train each task on its own: a new head on the frozen backbone (classifier only)
# or a full fine-tuned copy of the network.

# %%
baseline_net = lab.network()
baseline_rows, _ = lab.compare(baseline_net, list(data.values()), [lab.spec(m) for m in baselines], live=live)
results = pd.concat([multitask.results(), baseline_rows], ignore_index=True)

# %% [markdown]
# ## Look
#
# Each row is the network after one more task was added; each column a task. The columns are
# constant: adding tasks changes nothing for the earlier ones.

# %%
lab.show(plots.accuracy_matrix(multitask.matrix), "accuracy_matrix")
lab.table(multitask.matrix, "accuracy_after_each")
lab.show(live.figure(), "training_curves")
lab.table(results[["task", "label", "kept", "accuracy", "val_accuracy", "sparsity", "storage_bytes"]], "results")
lab.show(plots.percent_bars(results, title="Test accuracy: piggyback vs the baselines"), "accuracy")

# %% [markdown]
# Total storage for the first k tasks: the backbone once plus one task file per task (about
# 1 bit per weight), against one fine-tuned float32 network per task.

# %%
totals = lab.table(multitask.storage_totals(), "total_storage")
lab.show(plots.storage_bars(totals, x="tasks", y="bytes", color="approach",
                            title="Total storage for the first k tasks (log scale)"), "total_storage")

# %% [markdown]
# ## What we learned

# %%
lab.learned(results, claims=["C1", "C2", "C3", "C10"], findings=findings.multitask(totals))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **Another order.** Reverse `tasks` and predict every number of the accuracy matrix's last
#    row before you re-run.
# 2. **Remove a task.** Call `net.remove_task(net_task)` for one of `multitask.kept` and evaluate
#    the others again with `pl.evaluate(net, loader, task=...)`. What changed?
# 3. **Frozen BN only.** Keep only `lab.spec("piggyback")` in `piggyback_specs`. On which task
#    do you expect the largest drop, and why (see notebook 04)?
