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
# validation accuracy move, and see afterwards
#
# - how accurate the task became, against training the classifier alone (the mask stays all
#   ones) and fine-tuning every weight (the paper's "individual networks");
# - how many of the backbone's weights the mask switched off (its *sparsity*), and at which
#   depth: the paper finds that harder, more distant tasks switch off more, and deeper layers
#   change most;
# - how the mask kind (binary or ternary), the score init and its scale, the threshold tau, the
#   learning rates and task-specific batchnorm change both.
#
# Every run adds a new task to the same network, so nothing you train disturbs an earlier run.

# %% [markdown]
# ## Setup
#
# The next cell (tagged `parameters`) sets the notebook's own first runs; the widgets can pick
# any task and setting. `smoke=True` makes those runs tiny (the tests use it).

# %% tags=["parameters"]
task = "greek"          # task of the notebook's own first runs (the widgets can pick any)
methods = ["classifier", "piggyback"]  # one first run per method, in this order
epochs = 3              # epochs of those first runs
scale = 1.0             # size of the embedded tasks (1.0: their default sizes)
batch_size = 64
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0                # data, task initialisation and training order

# This run
smoke = False           # True: tiny data and one epoch, so the notebook runs in seconds
output_dir = "runs/07_explorer"  # metrics.json, CSV tables and HTML figures go here

# %%
import piggylab as pl
from piggylab import findings, notebook
from piggylab.widgets import Explorer

lab = pl.Lab("07_explorer", globals(), {
    "task": pl.datasets.EMBEDDED_TASKS, "methods": notebook.list_of(pl.METHODS), "epochs": notebook.positive_int,
    "scale": notebook.fraction, "batch_size": notebook.positive_int, "device": notebook.known_device, "seed": int},
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
# or the multiple of mean |W|), the **threshold tau** and the scores' learning rate.

# %%
explorer = Explorer(scale=min(scale, 0.02) if smoke else scale, batch_size=batch_size, device=device, seed=seed)
explorer

# %% [markdown]
# The cell below does what pressing **Train** does, once for each method in `methods`, on
# `task`, so that every run of this notebook records numbers. If the explorer is on screen,
# watch its curve grow while it runs. Then try your own settings.

# %%
for method in methods:
    explorer.set(task=task, method=method, epochs=1 if smoke else epochs)
    explorer.train(raise_errors=True)

# %% [markdown]
# ## Look
#
# `explorer.runs` is the runs table; `explorer.layers[run]` the per-layer sparsity of one run.
# The cell below writes them, and both figures, to `output_dir`. Re-run it after your own runs
# to save those too.

# %%
runs = lab.table(explorer.runs, "runs")
lab.table(explorer.layer_table(), "layer_sparsity")
lab.show(explorer.curve, "training_curves")
lab.show(explorer.sparsity_figure, "latest_run_sparsity")
runs

# %% [markdown]
# ## What we learned
#
# Computed from the runs above (re-run the cell after your own runs to include them).

# %%
results = explorer.results()
lab.learned(results, findings=findings.explorer(explorer.runs, explorer.layers))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **The threshold.** Pick `fonts`, method `piggyback`, and train with tau 5e-3 and then 8e-3.
#    Predict which mask ends sparser before the second run finishes.
# 2. **Uniform init.** Train `greek` with the `uniform` score init: predict its first epoch's
#    validation accuracy against the `constant` init's.
# 3. **Task BN.** Train `textured` with BN mode `frozen`, then `task`. Which run switches off
#    more weights?
