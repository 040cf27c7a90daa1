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
# # 07 · Explorer: train a task and watch it learn
#
# **Goal.** Get a feel for Piggyback's knobs by turning them yourself. One frozen, pretrained
# backbone serves every task; a task learns only a mask over its weights (paper §3). With the
# explorer below you pick a task and the settings of a run, press **Train**, watch the loss and
# validation accuracy move (press **Stop** to end a run early), or pick one or two knobs and
# their values and press **Sweep** to train the whole grid. You see
#
# - how accurate the task became, against training the classifier alone (the mask stays all
#   ones) and fine-tuning every weight (the paper's "individual networks");
# - how many of the backbone's weights the mask switched off (its *sparsity*), at which depth,
#   and which ones: the paper finds that harder, more distant tasks switch off more, and deeper
#   layers change most;
# - how the mask kind (binary or ternary), the score init and its scale, the threshold tau, the
#   learning rates and task-specific batchnorm change both.
#
# Runs train in the background: the notebook stays free while they do. Every run adds a new task
# to the same network, so nothing you train disturbs an earlier run, and every run is kept on
# disk: after a kernel restart the explorer shows them again.

# %% [markdown]
# ## Setup
#
# The next cell (tagged `parameters`) sets the notebook's own first runs and sweep; the widgets
# can pick any task and setting. `smoke=True` makes those runs tiny (the tests use it).

# %% tags=["parameters"]
task = "greek"          # task of the notebook's own first runs (the widgets can pick any)
methods = ["classifier", "piggyback"]  # one first run per method, in this order
epochs = 3              # epochs of those first runs
sweep = {"lr_scores": [1e-4, 1e-3], "threshold": [5e-3, 8e-3]}  # the first sweep: up to two knobs, their values
scale = 1.0             # size of the embedded tasks (1.0: their default sizes)
batch_size = 64
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0                # data, task initialisation and training order

# This run
smoke = False           # True: tiny data and one epoch, so the notebook runs in seconds
output_dir = "runs/07_explorer"  # metrics.json, CSV tables, HTML figures, and the explorer's runs go here

# %%
import piggylab as pl
from piggylab import findings, notebook
from piggylab.widgets import Explorer, is_sweep

lab = pl.Lab("07_explorer", globals(), {
    "task": pl.datasets.EMBEDDED_TASKS, "methods": notebook.list_of(pl.METHODS), "epochs": notebook.positive_int,
    "sweep": is_sweep, "scale": notebook.fraction, "batch_size": notebook.positive_int,
    "device": notebook.known_device, "seed": int},
    shared=False)

# %% [markdown]
# ## Run
#
# Left column: the **task** (the five embedded tasks, from near the source task to far from it),
# the **method** (`piggyback` learns a mask and a classifier; `classifier` trains only the
# classifier; `finetune` trains every weight of a copy of the backbone), the **epochs**, the
# **BN mode** (`frozen` keeps the backbone's batchnorm, `task` trains a copy of it for this task,
# §5.3) and the classifier's learning rate. Right column, used by `piggyback` only: the **mask
# kind**, the **score init** and its **scale** (the constant, the half-width of the uniform range,
# or the multiple of mean |W|), the **threshold tau** and the scores' learning rate. Choosing a
# method or a BN mode sets the learning rates to the lab's recipe for it.
#
# **Sweep** trains every combination of one or two knobs' values (`lr_scores`, `threshold`,
# `scale`, `lr`, `epochs`) with the other settings as they are, one run after another, and fills
# two heatmaps, validation accuracy and mask sparsity, as the runs finish. **Stop** ends the run,
# or the sweep, after the current training step; the run is kept as `stopped`.
#
# Below the curves: the mask of a chosen run and layer (black: weights switched off; a conv
# layer's filters are the rows), and how each layer's sparsity grew epoch by epoch. The runs are
# kept in `output_dir/explorer` (`runs.csv`, and `sweep-<n>.csv` per sweep); an explorer created
# on that folder again, after a kernel restart, shows them.

# %%
explorer = Explorer(folder=lab.output_dir / "explorer", scale=min(scale, 0.02) if smoke else scale,
                    batch_size=batch_size, device=device, seed=seed)
explorer

# %% [markdown]
# The cell below does what pressing **Train** does, once for each method in `methods`, on
# `task`, then what **Sweep** does with `sweep`, so that every run of this notebook records
# numbers. It waits for them (the buttons do not): watch the curve grow and the heatmaps fill
# while it runs. Then try your own settings.

# %%
for method in methods:
    explorer.set(task=task, method=method, epochs=1 if smoke else epochs)
    explorer.train(raise_errors=True)
explorer.set(method="piggyback")
explorer.sweep(sweep, raise_errors=True)

# %% [markdown]
# ## Look
#
# `explorer.runs` is the runs table (with the runs of earlier sessions in the same folder);
# `explorer.layers[run]` the per-layer sparsity of one run, `explorer.growth` its growth epoch
# by epoch. The cell below writes them, and the figures, to `output_dir`. Re-run it after your
# own runs to save those too.

# %%
runs = lab.table(explorer.runs, "runs")
lab.table(explorer.layer_table(), "layer_sparsity")
lab.table(explorer.growth, "sparsity_growth")
lab.show(explorer.curve, "training_curves")
lab.show(explorer.sweep_figure, "sweep")
lab.show(explorer.mask_figure, "mask")
lab.show(explorer.growth_figure, "sparsity_growth")
runs

# %% [markdown]
# ## What we learned
#
# Computed from the finished runs above (re-run the cell after your own runs to include them).

# %%
results = explorer.results()
lab.learned(results, findings=findings.explorer(explorer.runs, explorer.layers))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **The threshold.** Pick `fonts`, method `piggyback`, and sweep `threshold` over 5e-3, 8e-3,
#    1.2e-2. Predict which cell of the sparsity heatmap ends darkest before the sweep finishes.
# 2. **Uniform init.** Train `greek` with the `uniform` score init: predict its first epoch's
#    validation accuracy against the `constant` init's, then look at its mask: which filters
#    are off from the start?
# 3. **Task BN.** Train `textured` with BN mode `frozen`, then `task`. Which run switches off
#    more weights? Press Stop halfway through a third run: what did it keep?
