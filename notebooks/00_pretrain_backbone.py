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
# # 00 · Pretrain the tiny backbone
#
# **Goal.** Piggyback needs a *backbone* that already knows a large source task: the paper uses
# networks pretrained on ImageNet and never changes their weights again (§3; §5.1 shows that
# masks over a poorly initialised network do much worse). The lab's stand-in is a tiny ResNet
# pretrained on the embedded source task `glyphs`: 62 printed characters in 21 fonts, 32x32
# colour images. This notebook trains it with `piggylab.pretrain.pretrain_tiny_backbone`, shows
# how well it learned the source task and writes the checkpoint.
#
# - Every later notebook loads the committed checkpoint `data/tiny_resnet.safetensors`; this
#   notebook writes into `output_dir` unless `update_checkpoint=True`.
# - The defaults are the committed checkpoint's recipe (`piggylab.pretrain.RECIPE`): on a CPU
#   that takes minutes, not seconds (the committed run's time is in `data/tiny_resnet.json` and
#   in the table below). For the paper's setting there is nothing to pretrain: torchvision's
#   ImageNet weights are the backbone (`backbone="resnet50", weights="IMAGENET1K_V1"` in the
#   other notebooks).

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`); the defaults are the committed
# checkpoint's recipe. `smoke=True` trains for one epoch on a few dozen images (the tests use
# it) and never touches the committed checkpoint. A wrong parameter stops the notebook in the
# next cell, naming it.

# %% tags=["parameters"]
# Pretraining (defaults: the committed checkpoint's recipe, piggylab.pretrain.RECIPE)
epochs = 4
optimizer = "adam"      # "adam" or "sgd" (with momentum)
lr = 1e-3
batch_size = 64
blocks = 1              # basic blocks per stage of the tiny ResNet
data_scale = 1.0        # size of the source task, times its default (30000 / 2000 / 4000 images)
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0
update_checkpoint = False  # True: overwrite the committed data/tiny_resnet.safetensors

# This run
smoke = False           # True: one epoch on a few dozen images, for the tests
output_dir = "runs/00_pretrain_backbone"  # metrics.json, tables (CSV), figures (HTML) and the checkpoint go here

# %%
import piggylab as pl
from piggylab import findings, notebook, plots, pretrain

lab = pl.Lab("00_pretrain_backbone", globals(), {
    "epochs": notebook.positive_int, "optimizer": ("adam", "sgd"), "lr": notebook.positive_number,
    "batch_size": notebook.positive_int, "blocks": notebook.positive_int, "data_scale": notebook.positive_number,
    "device": notebook.known_device, "seed": int, "update_checkpoint": bool}, shared=False)
checkpoint = pretrain.checkpoint_path(update_checkpoint and not smoke, output_dir)

# %% [markdown]
# ## Run
#
# The source task, a few images per row (each titled with its class):

# %%
lab.show(plots.gallery([pl.datasets.EMBEDDED_SOURCE], per_task=10), "source_task")

# %% [markdown]
# Pretraining trains every weight of a fresh `tiny_resnet` (batchnorm included) with the lab's
# one `Trainer`, then measures validation and test accuracy on the source task and writes the
# checkpoint with a JSON record beside it.

# %%
model, info = pretrain.pretrain_tiny_backbone(
    epochs=1 if smoke else epochs, optimizer=optimizer, lr=lr, batch_size=batch_size, blocks=blocks, seed=seed,
    scale=pl.experiments.SMOKE["data_scale"] if smoke else data_scale, device=device, output=checkpoint,
    progress=False)

# %% [markdown]
# ## Look
#
# The training curves and the checkpoint's numbers, next to the committed checkpoint's record
# (`data/tiny_resnet.json`).

# %%
lab.show(plots.training_curves(pretrain.history_frame(info), ("loss", "train_acc", "val_acc"),
                               title="Pretraining on the source task"), "training_curves")
checkpoints = lab.table(pretrain.compare_with_committed(info, checkpoint), "checkpoints")
checkpoints

# %% [markdown]
# ## What we learned

# %%
results = pretrain.result_rows(info)
lab.learned(results, findings=findings.pretraining(info, checkpoints, checkpoint))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **Pretrain less.** Set `epochs = 1`: predict the source-task accuracy, then compare it with
#    the early checkpoint's (`data/tiny_resnet_early.json`), which notebook 08 uses.
# 2. **SGD.** Set `optimizer = "sgd"` and `lr = 0.05`: will it beat Adam in four epochs?
# 3. **Deeper.** Set `blocks = 2` (twice the convolutions per stage). Predict the parameter count
#    and the training time from the table, then check.
