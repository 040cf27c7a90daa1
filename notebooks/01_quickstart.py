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
# # 01 · Quickstart: one task, four ways
#
# **Goal.** Adapt one frozen *backbone* to one new *task* in the paper's ways and compare what
# each costs and buys (paper §3-§4):
#
# - **classifier only**: train a new *head* (a linear layer) on top of the frozen backbone;
# - **piggyback**: train the head and, for every weight of the backbone, a real-valued *score*;
#   the forward pass uses the weight only where its score is above the *threshold*, so the task
#   learns a binary *mask* over the frozen weights (1 bit per weight);
# - **piggyback + task BN**: the same, with the task's own copy of the batchnorm layers (§5.3);
# - **fine-tuning**: train a full copy of the network (the paper's "individual networks").
#
# We watch the training live, then look at test accuracy, the mask's *sparsity* (the fraction
# of weights it switches off) and the *storage* each method needs for the task.

# %% [markdown]
# ## Setup
#
# Every knob is in the next cell (tagged `parameters`). The defaults are the embedded CPU
# setting; `smoke=True` shrinks the run to seconds (the tests use it). The same notebook runs
# the paper's setting, for example with papermill:
#
# ```
# papermill notebooks/01_quickstart.ipynb out.ipynb -p backbone resnet50 -p weights IMAGENET1K_V1 \
#     -p task cubs -p data_root /data/piggyback -p recipe paper -p device cuda
# ```
#
# A parameter of the wrong type or an unknown value stops the notebook in the cell after it,
# with a message naming the parameter and what it accepts.

# %% tags=["parameters"]
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)

# The data
task = "textured"       # an embedded task (greek, accents, sketch, textured, fonts) or, with data_root, a paper dataset (cubs, cars, flowers, wikiart, sketch)
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: the recipe's share of an embedded task, all of a paper dataset)

# Training
recipe = "embedded"     # "embedded" (short CPU runs, chosen on validation splits) or "paper" (the paper's hyper-parameters)
epochs = None           # None: the recipe's
batch_size = None       # None: the recipe's
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0

# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/01_quickstart"  # metrics.json, tables (CSV) and figures (HTML) go here
cache_dir = None        # finished runs to reuse (the batch runner sets it, so a run trains once per batch)

# %%
import piggylab as pl
from piggylab import findings, plots

lab = pl.Lab("01_quickstart", globals(), {"task": pl.experiments.TASKS})

# %% [markdown]
# ## Run
#
# Load the backbone and the task, then train the task four times, on the same batches. The
# curve below redraws while the tasks train (in JupyterLab; a saved notebook keeps its last
# state).

# %%
net = lab.network()
data = lab.data(task)
print(f"{net.num_masked_weights:,} masked weights in {len(net.masked_layers)} layers; task: {data}")

# %%
live = plots.LiveCurve(title=f"{task}: training loss at every step, validation accuracy after each epoch")
live.show()
specs = [lab.spec("classifier"), lab.spec("piggyback"), lab.spec("piggyback", bn_mode="task"), lab.spec("finetune")]
results, histories = lab.compare(net, data, specs, live=live)

# %% [markdown]
# ## Look
#
# Test accuracy and storage per method. Storage is what the task adds to the shared backbone:
# the head for classifier-only; the mask at 1 bit per weight plus the head (and batchnorm) for
# piggyback; a whole float32 network for fine-tuning.

# %%
lab.table(results[["task", "label", "accuracy", "val_accuracy", "sparsity", "storage_bytes", "train_s"]], "results")

# %%
lab.show(live.figure(), "training_curves")
lab.show(plots.percent_bars(results, title=f"Test accuracy on {task}"), "accuracy")
lab.show(plots.storage_bars(results, title=f"What each method stores for {task} (log scale)"), "storage")

# %% [markdown]
# Where did the mask switch weights off? One point per masked layer, from the input (depth 0)
# to the output.

# %%
layers = pl.layer_sparsity(net, results.set_index("label").loc["piggyback", "name"]).assign(task=task)
lab.show(plots.sparsity_by_depth(layers, title=f"{task}: fraction of each layer's weights the mask switches off"),
         "sparsity_by_depth")

# %% [markdown]
# ## What we learned
#
# Computed from the numbers above by `piggylab.claims` (the paper's claims, the same check as the
# batch report's table) and `piggylab.findings`, so it stays true when a parameter changes.

# %%
lab.learned(results, claims=["C1", "C2", "C3"],
            findings=findings.methods(results) + findings.depth(layers) + findings.storage(results))
lab.finish(results)

# %% [markdown]
# ## Try it yourself
#
# 1. **A near task.** Set `task = "greek"` (new letters, printed like the source task) and
#    predict: will classifier-only come closer to piggyback than on `textured`? Will task BN
#    still matter? Re-run and check the accuracy chart.
# 2. **Fewer steps.** Set `epochs = 1`. A score starts 5e-3 above the threshold and Adam moves
#    it by about `lr_scores` per step: predict the sparsity of the mask before you re-run.
# 3. **Storage.** Compare the piggyback bar of the storage chart with `net.num_masked_weights / 8`
#    bytes. Where does the rest come from?
