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
# # 02 · How to initialise the scores
#
# **Goal.** Each weight's *score* decides its *mask* entry: the weight is used while its score is
# above the *threshold* (tau = 5e-3). Where the scores start matters (paper §3, "initialization"):
#
# - `constant`: every score equals the scale (1e-2 > tau), so the mask starts all ones and
#   training starts exactly from the pretrained backbone (the paper's choice);
# - `uniform`: scores drawn from U(-scale, scale), so the mask starts with many zeros: the paper
#   found this "performs poorly";
# - `weight`: each layer's scores equal scale x mean |W| of that layer (the reference code's
#   weight-based init).
#
# We train one task with each scheme at a few *scales* (multiples of each scheme's default:
# 1e-2, 1e-2 and 1 x mean |W|) and compare the training curves, the final accuracy and the
# sparsity of the masks they end with.

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`); the defaults are the embedded CPU
# setting and `smoke=True` shrinks the run to seconds. For the paper's setting, set `backbone`,
# `weights`, `data_root`, `task` (e.g. `cubs`), `recipe="paper"` and `device` (see notebook 01).
# A wrong parameter stops the notebook in the next cell, naming it.

# %% tags=["parameters"]
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)

# The data
task = "accents"        # an embedded task or, with data_root, a paper dataset
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# The experiment
inits = ["constant", "uniform", "weight"]  # score init schemes to compare
scale_factors = [1.0]   # multiples of each scheme's default scale, e.g. [1.0, 10.0]
threshold = 5e-3        # tau: a score above it keeps its weight

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's
batch_size = None       # None: the recipe's
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/02_init_schemes"  # metrics.json, tables (CSV) and figures (HTML) go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import piggylab as pl
from piggylab import findings, notebook, plots

lab = pl.Lab("02_init_schemes", globals(), {
    "task": pl.experiments.TASKS, "inits": notebook.list_of(pl.INIT_SCHEMES),
    "scale_factors": notebook.positive_numbers, "threshold": notebook.positive_number})

# %% [markdown]
# ## Run
#
# One piggyback run per (scheme, scale), each a task of the same network, all on the same
# batches. The curves show loss, validation accuracy and the mask's sparsity after each epoch.

# %%
net = lab.network()
data = lab.data(task)
live = plots.LiveCurve(("loss", "val_acc", "sparsity"), title=f"{task}: one run per score init and scale")
live.show()
specs = [lab.spec("piggyback", label=f"{init} x{factor:g}",
                  mask=pl.MaskConfig(init=init, threshold=threshold, scale=factor * pl.masked.DEFAULT_SCALE[init]))
         for init in inits for factor in scale_factors]
results, histories = lab.compare(net, data, specs, live=live)

# %% [markdown]
# ## Look
#
# `initial_sparsity` is the fraction of zeros in the mask before training: 0 for a scheme that
# starts from the pretrained network.

# %%
lab.table(results[["label", "init", "init_scale", "initial_sparsity", "sparsity", "val_accuracy", "accuracy"]],
          "results")

# %%
lab.show(live.figure(), "training_curves")
lab.show(plots.percent_bars(results, x="label", color="init", title=f"Test accuracy on {task} by score init and scale"),
         "accuracy")
lab.show(plots.percent_bars(results, x="label", color="init", y="sparsity", y_title="zeros in the final mask (%)",
                            title="Sparsity of the final mask"), "sparsity")

# %% [markdown]
# ## What we learned

# %%
lab.learned(results, claims=["C5"], findings=findings.init_schemes(results))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **A larger constant.** Set `scale_factors = [1.0, 10.0]`. Scores that start at 0.1 are twenty
#    steps of tau above the threshold: predict the sparsity of the `constant x10` mask, then check.
# 2. **A narrower uniform start.** With `scale_factors = [0.5]` a uniform init draws from
#    U(-5e-3, 5e-3), all at or below tau: how many weights start switched off? Compare
#    `initial_sparsity` with your guess.
# 3. **Another threshold.** Set `threshold = 2e-3` and predict which scheme moves the most.
