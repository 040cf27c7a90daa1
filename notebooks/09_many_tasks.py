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
# # 09 · A hundred tasks on one backbone
#
# **Goal.** Notebook 06 showed that tasks added to one backbone never disturb each other. Here
# we take the idea further than the paper: we hold *100 frozen tasks* in memory at once and
# measure their bytes, serve one *mixed batch* whose images belong to different tasks, hand one
# task to someone without piggylab as a *plain model* of the backbone's own class, and ask
# whether far tasks switch off the same weights as near ones (the masks' *overlap*).

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
tasks = ["greek", "accents", "sketch", "textured", "fonts"]  # the trained tasks, near the source to far (or, with data_root, paper datasets)
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# The experiment
tasks_in_memory = 100   # frozen tasks held at once: the trained ones, then copies of them
copy_switch_off = 0.01  # each copy's mask switches off this random fraction more (so no two tasks are the same)
mixed_per_task = 100    # the first test images of each trained task, served in mixed batches (None: the whole test split)

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's
batch_size = None       # None: the recipe's (also the size of a mixed batch)
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/09_many_tasks"  # metrics.json, tables (CSV), figures (HTML) and the exported task go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import sys

import pandas as pd
import torch
import torchvision
from safetensors.torch import load_file

import piggylab as pl
from piggylab import analysis, bench, export, findings, notebook, plots

lab = pl.Lab("09_many_tasks", globals(), {
    "tasks": notebook.list_of(pl.experiments.TASKS), "tasks_in_memory": notebook.positive_int,
    "copy_switch_off": notebook.prune_fraction, "mixed_per_task": notebook.optional(notebook.positive_int)})

# %% [markdown]
# ## Run
#
# First the real tasks: each of `tasks` is trained with piggyback (the backbone's frozen
# batchnorm) as a task of one network. In a batch these are the runs notebooks 01, 05, 06 and
# 08 train too, so they come from the batch's run cache.

# %%
net = lab.network()
data = {task: lab.data(task) for task in tasks}
results = pd.DataFrame([lab.run(net, data[task], lab.spec("piggyback")).row for task in tasks])
net.to(memory_format=torch.contiguous_format)  # training leaves channels-last weights; back to PyTorch's default order
lab.table(results[["task", "label", "accuracy", "sparsity", "storage_bytes"]], "trained")

# %% [markdown]
# Then the other tasks, without training: each is a **copy** of a trained task (its head, its
# batchnorm and its mask with another `copy_switch_off` of the weights switched off at random),
# added frozen, as a task file loads: 1 bit per masked weight. Only the first `len(tasks)` tasks
# are trained; the rest are copies, named `<task>-copy<i>`.

# %%
for i in range(tasks_in_memory - len(tasks)):
    source = tasks[i % len(tasks)]
    pl.experiments.copy_task(net, net, source, name=f"{source}-copy{i}", switch_off=copy_switch_off, seed=seed + i)
memory = lab.table(pl.task_memory(net), "task_memory")
totals = lab.table(analysis.memory_totals(net), "memory_totals")
print(f"{len(tasks)} trained tasks and {len(net.tasks) - len(tasks)} copies in memory; shared by all of them:",
      {part: plots.human_bytes(n) for part, n in analysis.shared_memory(net).items()})

# %% [markdown]
# The tensors are what the network holds; the process's resident memory can be more. We add as
# many frozen tasks (random masks, as sparse as ours) to a network of the same architecture in a
# fresh Python process and measure how much its resident set grows (Linux only).

# %%
rss = bench.in_fresh_process("frozen_tasks", backbone=backbone, tasks=len(net.tasks),
                             zero_fraction=float(results["sparsity"].mean())) if sys.platform == "linux" else None
rss

# %% [markdown]
# A **mixed batch**: the first `mixed_per_task` test images of every trained task shuffled
# together and served `batch_size` at a time, each image under its own task
# (`net.predict(images, tasks)`). Each image is computed exactly as if it were alone, so every
# task's accuracy on its images (`mixed`) must equal the one it has when those images are
# evaluated on their own (`alone`). Then the speed of one mixed batch: `predict` (one switch
# and one pass per task) against calling the tasks one image at a time.

# %%
images = pl.experiments.task_test_images(data, per_task=mixed_per_task)
mixed = lab.table(pl.experiments.mixed_accuracy(net, images, batch_size=lab.batch_size, seed=seed, device=device),
                  "mixed_batch_accuracy")
x, _, owners = pl.experiments.mixed_test_batch(images, seed=seed)
speed = bench.mixed_batch_speed(net, x[:lab.batch_size], owners[:lab.batch_size], pl.resolve_device(device),
                                warmup=1, reps=3)
print("tasks in the batch:", owners[:lab.batch_size])
lab.table(pd.DataFrame(speed["images_per_s"]).T.reset_index(names="served"), "mixed_batch_images_per_s")

# %% [markdown]
# An **exported task**: `pl.export_task` bakes the first task's mask into the backbone's
# weights and gives a plain model of the backbone's own class. We write its state dict as a
# safetensors file and load it into a fresh model made by the backbone's constructor, with no
# piggylab in the way; its outputs must equal the network's.

# %%
exported = tasks[0]
classes = net.task(exported).num_classes
path = export.write_export(pl.export_task(net, exported), lab.output_dir / f"{exported}.safetensors", "safetensors",
                           images[exported][0][:2], force=True)
fresh = pl.tiny_resnet(num_classes=classes) if backbone == "tiny" else \
    torchvision.models.get_model(backbone, num_classes=classes)
fresh.load_state_dict(load_file(path))  # plain PyTorch and safetensors from here on
sample = images[exported][0][:lab.batch_size].to(pl.resolve_device(device))
net.set_task(exported)
with torch.no_grad():
    export_difference = float((fresh.to(sample.device).eval()(sample) - net.eval()(sample)).abs().max())
print(f"{path.name}: {type(fresh).__name__}, largest difference to the network's logits {export_difference}")

# %% [markdown]
# ## Look
#
# Memory holding 1, 10, 100, ... tasks: one backbone plus the frozen tasks, against one
# fine-tuned network per task (log scale).

# %%
lab.show(plots.storage_bars(totals, x="tasks", y="bytes", color="approach",
                            title="Memory holding k tasks (log scale)"), "memory")

# %% [markdown]
# Which weights do the trained tasks switch off? Each cell is the Jaccard index of two tasks'
# switched-off weights (1: the same weights; hover for the value expected if each task's zeros
# fell at random). The tasks run from near the backbone's source task to far from it.

# %%
overlap = pl.mask_overlap(net, tasks)
lab.table(overlap.pairs, "mask_overlap")
lab.show(plots.overlap_heatmap(overlap), "mask_overlap")

# %% [markdown]
# ## What we learned

# %%
results["memory_bytes"] = memory.set_index("task").loc[results["name"], "total_bytes"].to_numpy()
lab.learned(results, findings=findings.many_tasks(memory, totals, mixed, speed, export_difference, overlap, rss))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **A thousand tasks.** Set `tasks_in_memory = 1000`. From the bytes per task above, predict
#    the memory of 1000 tasks, piggyback and fine-tuned, before you re-run; then check the
#    figure's new bars.
# 2. **A copy's overlap.** `greek-copy0` switches off what `greek` does plus a random
#    `copy_switch_off` of the weights. From greek's sparsity in the first table, predict the
#    Jaccard index of the two, then check it with `pl.mask_overlap(net, ["greek", "greek-copy0"]).matrix()`.
# 3. **Export a copy.** Set `exported = "fonts-copy4"` and re-run the export cell: is the
#    difference still 0? Then compare the copy's test accuracy,
#    `pl.evaluate(net, pl.datasets.make_loaders(data["fonts"])[2], task="fonts-copy4")`, with the
#    trained `fonts` task's. How far did the extra zeros move it?
