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
# # 08 · Baselines: fine-tuning, classifier only, PackNet; task order and the backbone
#
# **Goal.** Piggyback's claims are comparisons, and this notebook makes each one:
#
# 1. **Against the baselines** (paper §4-§5): test accuracy per task of training the classifier
#    only, fine-tuning a whole copy of the network per task (the paper's "individual
#    networks"), PackNet (Mallya & Lazebnik, CVPR 2018: tasks packed into one network by
#    pruning), piggyback and piggyback with task-specific batchnorm (§5.3), and the storage each
#    one needs per task.
# 2. **Task order.** A piggyback task cannot depend on the order in which tasks are added: the
#    backbone never changes. A PackNet task does: each task trains only the weights its
#    predecessors left free, starting from what they left. We train PackNet in two orders, and
#    one piggyback task once more, last, in a network that already holds all the others.
# 3. **The backbone's initialisation** (§5.1: "a well-initialised backbone is essential"): masks
#    learned over the pretrained backbone, over an early checkpoint of its pretraining and over
#    the same architecture with random weights (as a supermask would).

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`); the defaults are the embedded CPU
# setting and `smoke=True` shrinks the run to seconds. For the paper's setting, set `backbone`,
# `weights`, `data_root`, `tasks`, `recipe="paper"`, `early_epochs=0` and `device`. A wrong
# parameter stops the notebook in the next cell, naming it.

# %% tags=["parameters"]
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)

# The data
tasks = ["greek", "accents", "sketch", "textured", "fonts"]  # every method on each (or, with data_root, paper datasets)
packnet_tasks = ["greek", "textured"]  # PackNet's first order (the second is the reverse), out of tasks
init_tasks = ["greek"]  # tasks of the backbone-initialisation ablation, out of tasks ([]: skip it)
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# The experiment
prune_fraction = 0.5    # PackNet: the share of a task's free weights it gives back after training
retrain_epochs = 1      # PackNet: epochs of re-training the kept weights after pruning
early_epochs = 1        # without data/tiny_resnet_early.safetensors, pretrain an early backbone here for this many epochs
early_scale = 0.05      # ... on this fraction of the source task's training set (early_epochs 0: no early variant)

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's (PackNet's before pruning)
batch_size = None       # None: the recipe's
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/08_baselines"  # metrics.json, tables (CSV) and figures (HTML) go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import pandas as pd

import piggylab as pl
from piggylab import ablations, findings, notebook, plots

lab = pl.Lab("08_baselines", globals(), {
    "tasks": notebook.list_of(pl.experiments.TASKS), "packnet_tasks": notebook.list_of(tasks),
    "init_tasks": notebook.list_of(tasks, empty=True),
    "prune_fraction": notebook.prune_fraction, "retrain_epochs": notebook.count, "early_epochs": notebook.count,
    "early_scale": notebook.fraction})

# %% [markdown]
# ## Run
#
# ### 1. The baselines, each task on its own
#
# Classifier only (a new head on the frozen backbone, batchnorm frozen), fine-tuning (every
# weight of a copy of the network, batchnorm included), piggyback with frozen and with
# task-specific batchnorm.

# %%
net = lab.network()
data = {task: lab.data(task) for task in tasks}
specs = [lab.spec("classifier"), lab.spec("finetune"), lab.spec("piggyback"), lab.spec("piggyback", bn_mode="task")]
baselines, _ = lab.compare(net, list(data.values()), specs)

# %% [markdown]
# ### 2. Task order
#
# PackNet adds the tasks of `packnet_tasks` in their order, then in the reverse order (by
# default a near and a far task, to keep the CPU run short: each order trains every task once
# more; add tasks on a GPU). Each task keeps its seed whatever its turn, so any difference
# between the orders is the order's doing. PackNet trains each task for `epochs`, prunes
# `prune_fraction` of its free weights by magnitude, layer by layer, re-trains the rest for
# `retrain_epochs` and freezes them; each task has its own batchnorm copy. Piggyback's side:
# the first task trained once more, last, in a new network holding every other task.

# %%
packnet_config = ablations.packnet_config(recipe, epochs=lab.epochs, prune_fraction=prune_fraction,
                                          retrain_epochs=retrain_epochs, device=device, seed=seed)
packnet, packnet_histories = ablations.packnet_orders(lab.backbone(), [data[task] for task in packnet_tasks],
                                                      packnet_config, batch_size=lab.batch_size)
first = baselines[(baselines["task"] == tasks[0]) & (baselines["label"] == "piggyback")].iloc[0]
order_check = pl.experiments.order_check(net, lab.backbone(), data[tasks[0]], lab.spec("piggyback"),
                                         task=first["name"], batch_size=lab.batch_size)

# %% [markdown]
# ### 3. The backbone's initialisation
#
# Piggyback over three backbones of one architecture: the pretrained one; the early checkpoint
# of its pretraining run (`data/tiny_resnet_early.safetensors`) where there is one, otherwise the
# lab's own pretraining cut short here (`early_epochs` on `early_scale` of the source task); and
# a copy with every layer re-initialised at random (batchnorm statistics too).

# %%
variants = ablations.init_variants(lab.backbone(), source_accuracy=ablations.checkpoint_accuracy(weights_path)
                                   if backbone == "tiny" and weights == "DEFAULT" else None, seed=seed, device=device,
                                   early_epochs=early_epochs if backbone == "tiny" else 0, early_scale=early_scale)
init_rows = ablations.backbone_init_ablation(variants, [data[task] for task in init_tasks], lab.spec("piggyback"),
                                             batch_size=lab.batch_size, cache=lab.cache)
pd.DataFrame([{"variant": v.name, "what": v.description, "source accuracy": v.source_accuracy} for v in variants])

# %% [markdown]
# ## Look
#
# **The comparison table**: test accuracy (%) per task and method, and the mean over the tasks.

# %%
results = pd.concat([baselines, packnet, pd.DataFrame([order_check]), init_rows], ignore_index=True)
main = pd.concat([baselines, packnet], ignore_index=True)
lab.table(findings.comparison_table(main, tasks), "comparison")
lab.show(plots.percent_bars(main, title="Test accuracy per task: piggyback against the baselines"), "comparison")

# %% [markdown]
# **Storage.** Per task, what a method adds to what all tasks share: a classifier-only task its
# head; a piggyback task its 1-bit-per-weight mask, head (and batchnorm); a PackNet task its
# head, batchnorm and its share of the per-weight task index (`ceil(log2(T + 1))` bits per weight
# for T tasks); a fine-tuned task a whole float32 network.

# %%
lab.show(plots.storage_bars(main, title="Storage each task adds (log scale)"), "storage")
lab.table(main.groupby("label", sort=False)["storage_bytes"].mean().rename("bytes_per_task").reset_index(), "storage")

# %% [markdown]
# **Task order.** Each PackNet task's accuracy in the two orders; the piggyback task trained last.

# %%
lab.table(ablations.order_spread(packnet), "task_order")
lab.show(plots.percent_bars(packnet, color="label", title="PackNet: test accuracy per task in two task orders"),
         "task_order")
pd.DataFrame([order_check])[["task", "label", "tasks_before", "accuracy", "order_check"]]

# %% [markdown]
# **The backbone's initialisation.** Piggyback's test accuracy over each backbone variant.

# %%
if len(init_rows):
    lab.table(init_rows[["task", "backbone_variant", "source_accuracy", "accuracy", "sparsity"]], "backbone_init")
    lab.show(plots.percent_bars(init_rows, color="backbone_variant",
                                title="Piggyback over differently initialised backbones"), "backbone_init")

# %% [markdown]
# ## What we learned

# %%
lab.learned(results, claims=["C1", "C2", "C3", "C8", "C9"], findings=findings.baselines(main, packnet_config))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **Prune less.** Set `prune_fraction = 0.25`: predict what happens to the last task in
#    each order, then re-run and compare the task-order table.
# 2. **A random backbone.** Over random weights a mask is all a task has (a "supermask"). Add
#    `"fonts"` to `init_tasks` and predict its accuracy over the random backbone before you look.
# 3. **Storage at scale.** Using the storage table, estimate the bytes for 100 tasks with each
#    method, over this backbone and over ResNet-50 (23.5M masked weights).
