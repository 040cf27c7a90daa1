"""Generate the lab's notebooks 00-06 from one template, so they all share one shape.

Every notebook is: a title and its **Goal**; **Setup** (imports, the cell tagged
``parameters``, the parameter check); **Run**; **Look** (figures and tables, each also
written into ``output_dir``); **What we learned** (text computed from the numbers just
produced) and the metrics.json cell. The notebooks are written without outputs.

    .venv/bin/python scripts/make_notebooks.py          # rewrite notebooks/00-06
    .venv/bin/python scripts/make_notebooks.py --check  # exit 1 if a notebook differs from this script

This script only writes notebooks; the logic they call lives in the package
(`piggylab.experiments`, `piggylab.plots`, `piggylab.runs`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"

# -- shared cells ---------------------------------------------------------------------------------

IMPORTS = '''\
import time

import pandas as pd
import torch
from IPython.display import Markdown, display

import piggylab as pl
from piggylab import experiments, plots
from piggylab.backbones import load_backbone
from piggylab.datasets import EMBEDDED_TASKS, make_loaders
from piggylab.datasets import load_data
from piggylab.runs import check_parameters, write_figure, write_metrics, write_table


def show(fig, name):
    """Display a figure and write it to output_dir/<name>.html."""
    write_figure(fig, output_dir, name)
    fig.show()


def table(df, name):
    """Display a table and write it to output_dir/<name>.csv."""
    write_table(df, output_dir, name)
    display(df)'''

BACKBONE_PARAMETERS = '''\
# The backbone (default: the lab's tiny ResNet, pretrained on the embedded source task "glyphs")
backbone = "tiny"       # "tiny" or a torchvision classifier: "resnet50", "vgg16", "densenet121", ...
weights = "DEFAULT"     # "DEFAULT" (tiny: data/tiny_resnet.safetensors), torchvision weights ("IMAGENET1K_V1"), None: random
weights_path = None     # a local weights file (None: the default place)'''

DATA_ROOT_PARAMETERS = '''\
data_root = None        # folder holding the paper's datasets (None: the embedded tasks, generated on the fly)
data_scale = None       # fraction of each split to use (None: {scale} of an embedded task, all of a paper dataset)'''

TRAINING_PARAMETERS = '''\
# Training
recipe = "embedded"     # "embedded" (short CPU runs) or "paper" (Adam 1e-4 for masks, SGD 1e-3 to fine-tune, 30 epochs)
epochs = None           # None: the recipe's (embedded 4, paper 30)
batch_size = None       # None: the recipe's (embedded 64, paper 32)
device = "auto"         # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0'''

RUN_PARAMETERS = '''\
# This run
smoke = False           # True: a few dozen images and one epoch, for the tests
output_dir = "runs/{name}"  # metrics.json, tables (CSV) and figures (HTML) go here'''

SETUP_MD = '''\
## Setup

Every knob is in the cell tagged `parameters`. Its defaults are the embedded CPU setting;
`smoke=True` shrinks the run to seconds (the tests use it). Input images are 32x32 for the
embedded tasks and 224x224 crops for the paper's datasets. The same notebook runs the paper's
setting, for example with papermill:

```
papermill notebooks/{name}.ipynb out.ipynb -p backbone resnet50 -p weights IMAGENET1K_V1 \\
    {paper_data} -p data_root /data/piggyback -p recipe paper -p device cuda
```

A parameter of the wrong type or an unknown value stops the notebook in the next cell, with a
message naming the parameter and what it accepts.'''

CHECK = '''\
RULES = {{**experiments.PARAMETER_RULES, {rules}}}
check_parameters(globals(), RULES)  # stops here, naming the parameter, if one is wrong
parameters = {{name: globals()[name] for name in RULES}}
data_scale, epochs, batch_size = experiments.resolve_sizes(
    recipe, smoke=smoke, data_scale=data_scale, epochs=epochs, batch_size=batch_size,
    embedded=data_root is None, embedded_scale={scale})
started = time.perf_counter()
print(f"{{backbone}} backbone, recipe {{recipe}}: data_scale {{data_scale}}, {{epochs}} epochs, "
      f"batch size {{batch_size}}, on {{pl.resolve_device(device)}}")'''

LOAD_BACKBONE = '''\
model = load_backbone(backbone, weights, weights_path=weights_path)
net = pl.PiggybackNet(model, backbone_name=backbone)
piggyback = experiments.train_config("piggyback", recipe, epochs=epochs, device=device, seed=seed)'''

METRICS = '''\
timings = {{"total_s": time.perf_counter() - started, "train_s": float({results}["train_s"].sum())}}
write_metrics(output_dir, "{name}", parameters, {results}, timings)
print(f"{{timings['total_s']:.0f}} s in all; metrics, tables and figures are in {{output_dir}}")'''

LEARNED_MD = '''\
## What we learned

The text below is computed from the numbers above, so it stays true when a parameter changes.'''


@dataclass
class Notebook:
    """The parts of one notebook that differ from the template."""

    name: str
    title: str
    goal: str
    parameters: str  # the notebook's own parameter lines (data and experiment)
    rules: str  # its own entries of the RULES dict
    scale: float  # data_scale of an embedded task (the CPU budget)
    paper_data: str  # how the papermill example names the paper dataset(s)
    cells: list[tuple[str, str]]  # ("md" | "code", source) from "## Run" to the end of "Look"
    learned: str  # code building the closing Markdown from the numbers
    results: str = "results"  # the DataFrame whose rows go into metrics.json
    training_parameters: str = TRAINING_PARAMETERS
    standard_setup: bool = True  # the shared data/backbone/recipe parameters and checks
    setup_md: str = SETUP_MD


def build(nb: Notebook) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_markdown_cell(f"# {nb.title}\n\n{nb.goal}"),
             nbformat.v4.new_markdown_cell(nb.setup_md.format(name=nb.name, paper_data=nb.paper_data)),
             nbformat.v4.new_code_cell(IMPORTS)]
    if nb.standard_setup:
        params = "\n\n".join([BACKBONE_PARAMETERS, "# The data\n" + nb.parameters + "\n"
                              + DATA_ROOT_PARAMETERS.format(scale=nb.scale), nb.training_parameters,
                              RUN_PARAMETERS.format(name=nb.name)])
        check = CHECK.format(rules=nb.rules, scale=nb.scale)
    else:
        params = nb.parameters + "\n\n" + RUN_PARAMETERS.format(name=nb.name)
        check = nb.rules
    cells.append(nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    cells.append(nbformat.v4.new_code_cell(check))
    for kind, source in nb.cells:
        cells.append(nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source))
    cells.append(nbformat.v4.new_markdown_cell(LEARNED_MD))
    cells.append(nbformat.v4.new_code_cell(nb.learned))
    cells.append(nbformat.v4.new_code_cell(METRICS.format(name=nb.name, results=nb.results)))
    for i, cell in enumerate(cells):
        cell["id"] = f"{nb.name[:2]}-{i:02d}"  # stable ids: regenerating changes nothing
    notebook["cells"] = cells
    notebook["metadata"] = {"kernelspec": {"name": "python3", "display_name": "Python 3 (piggylab)", "language": "python"},
                            "language_info": {"name": "python"}}
    return notebook


# -- 00 -----------------------------------------------------------------------------------------

PRETRAIN = Notebook(
    name="00_pretrain_backbone",
    title="00 · Pretrain the tiny backbone",
    goal='''\
**Goal.** Piggyback needs a *backbone* that already knows a large source task: the paper uses
networks pretrained on ImageNet and never changes their weights again. The lab's stand-in is a
tiny ResNet pretrained on the embedded source task `glyphs`: 62 printed characters in 21
fonts, 32x32 colour images. This notebook trains it with
`piggylab.pretrain.pretrain_tiny_backbone`, shows how well it learned the source task and
writes the checkpoint.

- Every later notebook loads the committed checkpoint `data/tiny_resnet.safetensors`; this
  notebook writes into `output_dir` unless `update_checkpoint=True`.
- The defaults are the committed checkpoint's recipe (`piggylab.pretrain.RECIPE`, over 30,000
  images): on a CPU that takes minutes, not seconds (the committed run's time is in
  `data/tiny_resnet.json` and in the table below). For the paper's setting there is nothing to
  pretrain: torchvision's ImageNet weights are the backbone (`backbone="resnet50",
  weights="IMAGENET1K_V1"` in the other notebooks).''',
    parameters='''\
from piggylab.pretrain import RECIPE

# Pretraining (defaults: the committed checkpoint's recipe)
epochs = RECIPE["epochs"]
optimizer = RECIPE["optimizer"]  # "adam" or "sgd" (with momentum)
lr = RECIPE["lr"]
batch_size = RECIPE["batch_size"]
data_scale = RECIPE["scale"]      # size of the source task, times its default (30000 / 2000 / 4000 images)
device = "auto"                   # "auto", "cpu", "cuda", "cuda:1" or "mps"
seed = 0
update_checkpoint = False         # True: overwrite the committed data/tiny_resnet.safetensors''',
    rules='''\
from pathlib import Path

from piggylab.backbones import TINY_CHECKPOINT
from piggylab.pretrain import pretrain_tiny_backbone, record_path

RULES = {"epochs": experiments.positive_int, "optimizer": ("adam", "sgd"), "lr": experiments.positive_number, "batch_size": experiments.positive_int,
         "data_scale": experiments.positive_number, "device": experiments.known_device, "seed": int,
         "update_checkpoint": bool, "smoke": bool, "output_dir": str}
check_parameters(globals(), RULES)  # stops here, naming the parameter, if one is wrong
parameters = {name: globals()[name] for name in RULES}
if smoke:
    epochs, data_scale = 1, experiments.SMOKE["data_scale"]
checkpoint = TINY_CHECKPOINT if update_checkpoint and not smoke else Path(output_dir) / "tiny_resnet.safetensors"
started = time.perf_counter()
print(f"pretraining for {epochs} epochs on {data_scale:g} x the source task, on {pl.resolve_device(device)}; "
      f"checkpoint -> {checkpoint}")''',
    scale=1.0,
    paper_data="",
    cells=[
        ("md", '''\
## Run

The source task, a few images per row (each titled with its class):'''),
        ("code", '''\
from piggylab.datasets import EMBEDDED_SOURCE, gallery

show(gallery([EMBEDDED_SOURCE], per_task=10), "source_task")'''),
        ("md", '''\
Pretraining trains every weight of a fresh `tiny_resnet` (batchnorm included) with the package's
own `Trainer` (method `finetune`), then measures validation and test accuracy on the source
task and writes the checkpoint with a JSON record beside it.'''),
        ("code", '''\
model, info = pretrain_tiny_backbone(epochs=epochs, optimizer=optimizer, lr=lr, batch_size=batch_size, seed=seed,
                                     scale=data_scale, device=device, output=checkpoint, progress=False)
history = pd.DataFrame(info["history"]).assign(run="pretraining")
results = pd.DataFrame([{"task": info["source_task"], "method": "pretrain", "accuracy": info["test_accuracy"],
                         "val_accuracy": info["val_accuracy"], "sparsity": 0.0, "storage_bytes": info["bytes"],
                         "parameters": info["parameters"], "epochs": epochs, "train_s": info["wall_time_s"],
                         "fingerprint": info["fingerprint"]}])'''),
        ("md", '''\
## Look

The training curves and the checkpoint's numbers, next to the committed checkpoint's record
(`data/tiny_resnet.json`) when there is one.'''),
        ("code", '''\
show(plots.training_curves(history, ("loss", "train_acc", "val_acc"), title="Pretraining on the source task"),
     "training_curves")
committed = record_path(TINY_CHECKPOINT)
compare = results[["task", "accuracy", "val_accuracy", "parameters", "epochs", "train_s"]].assign(checkpoint="this run")
if committed.exists() and checkpoint != TINY_CHECKPOINT:
    import json

    record = json.loads(committed.read_text())
    compare = pd.concat([compare, pd.DataFrame([{
        "task": record["source_task"], "accuracy": record["test_accuracy"], "val_accuracy": record["val_accuracy"],
        "parameters": record["parameters"], "epochs": record["recipe"]["epochs"], "train_s": record["wall_time_s"],
        "checkpoint": "committed"}])], ignore_index=True)
table(compare, "checkpoints")'''),
    ],
    learned='''\
acc, classes = info["test_accuracy"], info["num_classes"]
lines = [f"- The backbone reached **{acc:.1%}** test accuracy on the {classes}-class source task "
         f"(chance: {1 / classes:.1%}) after {epochs} epochs over {info['sizes']['train']:,} images, "
         f"in {info['wall_time_s']:.0f} s on {info['device']}.",
         f"- It has {info['parameters']:,} parameters; the checkpoint takes {plots.human_bytes(info['bytes'])} "
         f"and was written to `{checkpoint}` (fingerprint `{info['fingerprint']}`: task files record it, "
         "so a mask cannot be loaded onto another backbone)."]
if "committed" in set(compare["checkpoint"]):
    ref = compare.set_index("checkpoint").loc["committed", "accuracy"]
    lines.append(f"- The committed checkpoint reaches {ref:.1%}; this run is {(acc - ref) * 100:+.1f} points "
                 f"{'above' if acc >= ref else 'below'} it"
                 + (" (a smoke run: far too short to compare)." if smoke else "."))
display(Markdown("\\n".join(lines)))''',
    standard_setup=False,
    setup_md='''\
## Setup

Every knob is in the cell tagged `parameters`; the defaults are the committed checkpoint's
recipe. `smoke=True` trains for one epoch on a few dozen images (the tests use it) and never
touches the committed checkpoint. A parameter of the wrong type or an unknown value stops the
notebook in the next cell, with a message naming the parameter and what it accepts.''',
)

# -- 01 -----------------------------------------------------------------------------------------

QUICKSTART = Notebook(
    name="01_quickstart",
    title="01 · Quickstart: one task, three ways",
    goal='''\
**Goal.** Adapt one frozen *backbone* to one new *task* three ways and compare what each costs
and buys (paper §3-§4):

- **classifier only**: train a new *head* (a linear layer) on top of the frozen backbone;
- **piggyback**: train the head and, for every weight of the backbone, a real-valued *score*;
  the forward pass uses the weight only where its score is above the *threshold*, so the task
  learns a binary *mask* over the frozen weights (1 bit per weight);
- **fine-tuning**: train a full copy of the network (the paper's "individual networks").

We watch the training live, then look at test accuracy, the mask's *sparsity* (the fraction
of weights it switches off) and the *storage* each method needs for the task.''',
    parameters='''\
dataset = "greek"       # an embedded task (greek, accents, sketch, textured, fonts) or, with data_root, a paper dataset (cubs, cars, flowers, wikiart, sketch)''',
    rules='"dataset": experiments.TASKS',
    scale=0.4,
    paper_data="-p dataset cubs",
    cells=[
        ("md", '''\
## Run

Load the backbone and the task, then train the task three times, on the same batches. The
curve below redraws while the tasks train (in JupyterLab; a saved notebook keeps its last state).'''),
        ("code", LOAD_BACKBONE + '''
data = load_data(dataset, root=data_root, seed=seed, scale=data_scale)
print(f"{net.num_masked_weights:,} masked weights in {len(net.masked_layers)} layers; task: {data}")'''),
        ("code", '''\
live = plots.LiveCurve(title=f"{dataset}: training loss at every step, validation accuracy after each epoch")
live.show()
runs = {method: {"config": experiments.train_config(method, recipe, epochs=epochs, device=device, seed=seed)}
        for method in ("classifier", "piggyback", "finetune")}
results, histories = experiments.compare_methods(net, data, runs, batch_size=batch_size, live=live)'''),
        ("md", '''\
## Look

Test accuracy and storage per method. Storage is what the task adds to the shared backbone:
the head for classifier-only; the mask at 1 bit per weight plus the head for piggyback; a whole
float32 network for fine-tuning.'''),
        ("code", '''\
table(results[["task", "method", "accuracy", "val_accuracy", "sparsity", "storage_bytes", "train_s"]], "results")
show(live.figure(), "training_curves")
show(plots.percent_bars(results, title=f"Test accuracy on {dataset}"), "accuracy")
show(plots.storage_bars(results, title=f"What each method stores for {dataset} (log scale)"), "storage")'''),
        ("md", '''\
Where did the mask switch weights off? One point per masked layer, from the input (depth 0)
to the output. The storage table compares the task file's two formats: `packed` (exactly 1 bit
per weight, the paper's figure) and `rice` (entropy-coded: a sparse mask costs less).'''),
        ("code", '''\
piggyback_task = experiments.task_name(dataset, "piggyback")
layers = pl.layer_sparsity(net, piggyback_task).assign(task=dataset)
show(plots.sparsity_by_depth(layers, title=f"{dataset}: fraction of each layer's weights the mask switches off"),
     "sparsity_by_depth")
table(pl.storage_table(net, [piggyback_task]), "storage")'''),
    ],
    learned='''\
r = results.set_index("method")
acc, storage = r["accuracy"], r["storage_bytes"]
gain, gap = acc["piggyback"] - acc["classifier"], acc["finetune"] - acc["piggyback"]
one_image = 1 / len(data.test)
third = max(1, len(layers) // 3)
shallow, deep = layers["sparsity"].iloc[:third].mean(), layers["sparsity"].iloc[-third:].mean()
lines = [
    f"- **Piggyback vs classifier only:** {acc['piggyback']:.1%} vs {acc['classifier']:.1%} test accuracy: "
    f"learning a mask {'added' if gain > 0 else 'did not add'} accuracy over a new head alone "
    f"({gain * 100:+.1f} points; one test image is {one_image:.1%}).",
    f"- **Piggyback vs fine-tuning:** fine-tuning every weight reached {acc['finetune']:.1%}, "
    + (f"{abs(gap) * 100:.1f} points {'above' if gap > 0 else 'below'} piggyback" if gap else "the same as piggyback")
    + (" (in the paper piggyback comes within a few points of fine-tuning)." if gap > 0 else "."),
    f"- **Mask:** it switched off {r.loc['piggyback', 'sparsity']:.2%} of the {net.num_masked_weights:,} "
    f"masked weights; on average {deep:.2%} per layer in the last third of the layers against {shallow:.2%} in the "
    f"first third ({'changes grow with depth, as in the paper' if deep > shallow else 'no more change in depth, unlike the paper'}).",
    f"- **Storage:** the piggyback task takes {plots.human_bytes(storage['piggyback'])} against "
    f"{plots.human_bytes(storage['finetune'])} for a fine-tuned copy: {storage['finetune'] / storage['piggyback']:.0f}x "
    + (f"less, for {abs(gap) * 100:.1f} points of accuracy {'less' if gap > 0 else 'more'}." if gap else "less, for the same accuracy."),
]
display(Markdown("\\n".join(lines)))''',
)

# -- 02 -----------------------------------------------------------------------------------------

INIT_SCHEMES = Notebook(
    name="02_init_schemes",
    title="02 · How to initialise the scores",
    goal='''\
**Goal.** Each weight's *score* decides its *mask* entry: the weight is used while its score is
above the *threshold* (tau = 5e-3). Where the scores start matters (paper §3, "initialization"):

- `constant`: every score equals the scale (1e-2 > tau), so the mask starts all ones and
  training starts exactly from the pretrained backbone (the paper's choice);
- `uniform`: scores drawn from U(-scale, scale), so the mask starts with many zeros: the paper
  found this "performs poorly";
- `weight`: each layer's scores equal scale x mean |W| of that layer (the reference's
  weight-based init).

We train one task with each scheme at a few *scales* (multiples of each scheme's default:
1e-2, 1e-2 and 1 x mean |W|) and compare the training curves, the final accuracy and the
sparsity of the masks they end with.''',
    parameters='''\
dataset = "greek"       # an embedded task or, with data_root, a paper dataset
inits = ["constant", "uniform", "weight"]  # score init schemes to compare
scale_factors = [1.0, 10.0]  # multiples of each scheme's default scale
threshold = 5e-3        # tau: a score above it keeps its weight''',
    rules='''"dataset": experiments.TASKS, "inits": experiments.non_empty_list_of(pl.INIT_SCHEMES),
         "scale_factors": experiments.positive_numbers, "threshold": experiments.positive_number''',
    scale=0.2,
    paper_data="-p dataset cubs",
    cells=[
        ("md", '''\
## Run

One piggyback run per (scheme, scale), each a task of the same network, all on the same
batches. The curves show loss, validation accuracy and the mask's sparsity after each epoch.'''),
        ("code", LOAD_BACKBONE + '''
data = load_data(dataset, root=data_root, seed=seed, scale=data_scale)
print(f"{net.num_masked_weights:,} masked weights; task: {data}")'''),
        ("code", '''\
from piggylab.masks import DEFAULT_SCALE

live = plots.LiveCurve(("loss", "val_acc", "sparsity"), title=f"{dataset}: one run per score init and scale")
live.show()
variants = [(init, factor) for init in inits for factor in scale_factors]
runs = {f"{init} x{factor:g}": {"config": piggyback, "mask": pl.MaskConfig(
            init=init, threshold=threshold, scale=factor * DEFAULT_SCALE[init])} for init, factor in variants}
results, histories = experiments.compare_methods(net, data, runs, batch_size=batch_size, live=live)
results["scale"] = [f"x{factor:g}" for _, factor in variants]'''),
        ("md", '''\
## Look

`initial_sparsity` is the fraction of zeros in the mask before training: 0 for a scheme that
starts from the pretrained network.'''),
        ("code", '''\
table(results[["method", "init", "scale", "init_scale", "initial_sparsity", "sparsity", "val_accuracy", "accuracy"]],
      "results")
show(live.figure(), "training_curves")
show(plots.percent_bars(results, x="init", color="scale", title=f"Test accuracy on {dataset} by score init and scale"),
     "accuracy")
show(plots.percent_bars(results, x="init", color="scale", y="sparsity", y_title="zeros in the final mask (%)",
                        title="Sparsity of the final mask"), "sparsity")'''),
    ],
    learned='''\
r = results.set_index(["init", "scale"])
best = results.loc[results["accuracy"].idxmax()]
base = f"x{min(scale_factors):g}"
one_image = 1 / len(data.test)
lines = [f"- The best run was **{best['method']}** with {best['accuracy']:.1%} test accuracy "
         f"(one test image is {one_image:.1%})."]
if {"constant", "uniform"} <= set(inits):
    c, u = r.loc[("constant", base)], r.loc[("uniform", base)]
    lines.append(f"- At scale {base}, a `uniform` init starts with {u['initial_sparsity']:.0%} of the mask off and "
                 f"ended at {u['accuracy']:.1%}, against {c['accuracy']:.1%} for `constant` (mask all ones at the start): "
                 + ("as in the paper, a random start is worse." if c["accuracy"] > u["accuracy"] else
                    "unlike the paper, the random start did not do worse here."))
if "constant" in inits and len(scale_factors) > 1:
    top = f"x{max(scale_factors):g}"
    lo, hi = r.loc[("constant", base)], r.loc[("constant", top)]
    lines.append(f"- With `constant` scores, a larger start ({top}) leaves them further above the threshold, so fewer "
                 f"weights switch off: sparsity {lo['sparsity']:.2%} at {base} vs {hi['sparsity']:.2%} at {top}"
                 + (" (as expected)." if hi["sparsity"] < lo["sparsity"] else " (not what we expected)."))
if {"constant", "weight"} <= set(inits):
    w, c = r.loc[("weight", base)], r.loc[("constant", base)]
    lines.append(f"- The weight-based init ({w['accuracy']:.1%}) {'matched or beat' if w['accuracy'] >= c['accuracy'] else 'trailed'} "
                 f"the constant one ({c['accuracy']:.1%}) at {base}; its masks ended {w['sparsity']:.2%} sparse.")
display(Markdown("\\n".join(lines)))''',
)

# -- 03 -----------------------------------------------------------------------------------------

TERNARY = Notebook(
    name="03_ternary_vs_binary",
    title="03 · Binary or ternary masks?",
    goal='''\
**Goal.** A *binary* mask keeps or drops each weight ({0, 1}); a *ternary* mask may also flip
its sign ({-1, 0, 1}: a score below 0 gives -1, between 0 and the threshold 0, above it +1).
The paper tried ternary masks and found results "not significantly different" from binary.
We train both on a near and a far task and compare test accuracy, sparsity and storage: a
ternary mask needs 2 bits per weight.''',
    parameters='''\
datasets = ["greek", "fonts"]  # embedded tasks or, with data_root, paper datasets
mask_kinds = ["binary", "ternary"]''',
    rules='"datasets": experiments.non_empty_list_of(experiments.TASKS), "mask_kinds": experiments.non_empty_list_of(pl.MASK_KINDS)',
    scale=0.25,
    paper_data="-p datasets '[\"cubs\", \"wikiart\"]'",
    cells=[
        ("md", '''\
## Run

For each task, one piggyback run per mask kind, all tasks of one network.'''),
        ("code", LOAD_BACKBONE + '''
print(f"{net.num_masked_weights:,} masked weights")'''),
        ("code", '''\
live = plots.LiveCurve(title="Binary and ternary masks")
live.show()
runs = {kind: {"config": piggyback, "mask": pl.MaskConfig(kind=kind)} for kind in mask_kinds}
parts, test_images = [], {}
for dataset in datasets:
    data = load_data(dataset, root=data_root, seed=seed, scale=data_scale)
    test_images[dataset] = len(data.test)
    parts.append(experiments.compare_methods(net, data, runs, batch_size=batch_size, live=live))
results = pd.concat([rows for rows, _ in parts], ignore_index=True)
results["negated"] = [sum(int((m < 0).sum()) for m in net.masks(name).values()) / net.num_masked_weights
                      for name in results["name"]]'''),
        ("md", '''\
## Look

`sparsity` is the fraction of weights set to 0, `negated` the fraction set to -1 (ternary only).'''),
        ("code", '''\
table(results[["task", "method", "accuracy", "val_accuracy", "sparsity", "negated", "storage_bytes"]], "results")
show(live.figure(), "training_curves")
show(plots.percent_bars(results, title="Test accuracy: binary vs ternary masks"), "accuracy")
show(plots.storage_bars(results, title="Task file size (log scale): 1 bit vs 2 bits per weight"), "storage")'''),
    ],
    learned='''\
lines = []
if {"binary", "ternary"} <= set(mask_kinds):
    acc = results.pivot(index="task", columns="method", values="accuracy")
    size = results.pivot(index="task", columns="method", values="storage_bytes")
    diff = (acc["ternary"] - acc["binary"]) * 100
    noise = pd.Series({task: 200 / n for task, n in test_images.items()})[acc.index]  # two test images, in points
    for task in acc.index:
        lines.append(f"- `{task}`: ternary {acc.loc[task, 'ternary']:.1%} vs binary {acc.loc[task, 'binary']:.1%} "
                     f"({diff[task]:+.1f} points; two test images are {noise[task]:.1f} points).")
    small = bool((diff.abs() <= noise).all())
    lines.append(f"- {'As in the paper, the' if small else 'The'} difference is "
                 f"{'within two test images on every task' if small else 'larger than two test images on some task'}"
                 f"{'' if small else ', unlike the paper (not significantly different)'}.")
    neg = results[results["method"] == "ternary"]["negated"].mean()
    lines.append(f"- The ternary masks negated {neg:.2%} of the weights on average, and their task files are "
                 f"{(size['ternary'] / size['binary']).mean():.1f}x the binary ones (2 bits vs 1 bit per weight).")
else:
    lines.append(f"- Only {', '.join(mask_kinds)} masks were trained: nothing to compare.")
display(Markdown("\\n".join(lines)))''',
)

# -- 04 -----------------------------------------------------------------------------------------

BATCHNORM = Notebook(
    name="04_batchnorm_adaptation",
    title="04 · Task-specific batchnorm for large domain shifts",
    goal='''\
**Goal.** By default a piggyback task keeps the backbone's batchnorm (BN) layers frozen: their
statistics describe the *source* images. Paper §5.3: for tasks far from the source (WikiArt,
Sketch) giving each task its own trainable BN parameters (a few KB per task here, about 1 MB
for the paper's networks) closes most of the remaining gap to fine-tuning. We compare frozen BN
and task BN on a task near the source and one far from it, with fine-tuning as the reference.''',
    parameters='''\
datasets = ["greek", "textured"]  # a small-shift and a large-shift task (embedded or, with data_root, paper datasets)
with_finetune = True    # also fine-tune each task, as the reference''',
    rules='"datasets": experiments.non_empty_list_of(experiments.TASKS), "with_finetune": bool',
    scale=0.2,
    paper_data="-p datasets '[\"flowers\", \"wikiart\"]'",
    cells=[
        ("md", '''\
## Run

For each task: piggyback with frozen BN, piggyback with task BN and, optionally, fine-tuning.'''),
        ("code", LOAD_BACKBONE + '''
finetune = experiments.train_config("finetune", recipe, epochs=epochs, device=device, seed=seed)
print(f"{net.num_masked_weights:,} masked weights, {len(list(net.batchnorms()))} batchnorm layers")'''),
        ("code", '''\
live = plots.LiveCurve(title="Frozen vs task-specific batchnorm")
live.show()
runs = {"frozen BN": {"config": piggyback}, "task BN": {"config": piggyback, "task_bn": True}}
if with_finetune:
    runs["finetune"] = {"config": finetune}
parts, test_images = [], {}
for dataset in datasets:
    data = load_data(dataset, root=data_root, seed=seed, scale=data_scale)
    test_images[dataset] = len(data.test)
    parts.append(experiments.compare_methods(net, data, runs, batch_size=batch_size, live=live))
results = pd.concat([rows for rows, _ in parts], ignore_index=True)'''),
        ("md", '''\
## Look'''),
        ("code", '''\
table(results[["task", "method", "accuracy", "val_accuracy", "sparsity", "storage_bytes"]], "results")
show(live.figure(), "training_curves")
show(plots.percent_bars(results, title="Test accuracy: frozen vs task-specific batchnorm"), "accuracy")
show(plots.storage_bars(results, title="Storage per task (log scale): task BN adds its parameters"), "storage")'''),
    ],
    learned='''\
acc = results.pivot(index="task", columns="method", values="accuracy").loc[datasets]
size = results.pivot(index="task", columns="method", values="storage_bytes").loc[datasets]
gain = (acc["task BN"] - acc["frozen BN"]) * 100
lines = []
for task in datasets:
    line = (f"- `{task}`: task BN {acc.loc[task, 'task BN']:.1%} vs frozen BN {acc.loc[task, 'frozen BN']:.1%} "
            f"({gain[task]:+.1f} points; one test image is {100 / test_images[task]:.1f} points)")
    if with_finetune:
        gap = acc.loc[task, "finetune"] - acc.loc[task, "frozen BN"]
        line += f"; fine-tuning {acc.loc[task, 'finetune']:.1%}" + (
            f", so task BN closed {gain[task] / 100 / gap:.0%} of the gap" if gap > 0 and gain[task] > 0 else
            ", and task BN closed none of the gap" if gap > 0 else ", not above frozen BN here")
    lines.append(line + ".")
if len(datasets) >= 2:
    near, far = datasets[0], datasets[-1]
    lines.append(f"- Task BN helped {'more' if gain[far] > gain[near] else 'no more'} on the far task `{far}` "
                 f"({gain[far]:+.1f} points) than on the near task `{near}` ({gain[near]:+.1f}): "
                 + ("as in the paper's §5.3, BN adaptation matters most for a large domain shift." if gain[far] > gain[near]
                    else "the paper's §5.3 pattern (largest gains for a large shift) did not show here."))
extra = (size["task BN"] - size["frozen BN"]).mean()
lines.append(f"- The task BN parameters add {plots.human_bytes(extra)} per task "
             f"({extra / size['frozen BN'].mean():.0%} of a frozen-BN task file).")
display(Markdown("\\n".join(lines)))''',
)

# -- 05 -----------------------------------------------------------------------------------------

SPARSITY = Notebook(
    name="05_sparsity",
    title="05 · Where and how much the masks change",
    goal='''\
**Goal.** A mask's *sparsity* is the fraction of the backbone's weights it switches off. The
paper (§5) found that it grows with the task's distance from the source (VGG-16: Flowers 4.5%,
WikiArt 34%), with the *threshold* and with the score init, and that the number of changes grows
with depth. We train every embedded task on one backbone (ordered from near the source to far
from it), map sparsity per layer and task, then vary the threshold and the init on one task.
Last, the *storage* of each task: 1 bit per weight, or less when entropy-coded.''',
    parameters='''\
datasets = list(EMBEDDED_TASKS)  # tasks, near to far from the source (or, with data_root, paper datasets)
variant_dataset = "fonts"        # the task on which the threshold and the init vary
thresholds = [2e-3, 8e-3]        # thresholds tried besides the default 5e-3 (constant init 1e-2)
inits = ["weight"]               # score inits tried besides the default "constant"
lr_scores = 5e-4                 # the scores' learning rate (None: the recipe's, 2e-4 embedded, 1e-4 paper)''',
    rules='''"datasets": experiments.non_empty_list_of(experiments.TASKS), "variant_dataset": experiments.TASKS,
         "thresholds": experiments.positive_numbers, "inits": experiments.non_empty_list_of(pl.INIT_SCHEMES),
         "lr_scores": experiments.optional(experiments.positive_number)''',
    scale=0.15,
    paper_data="-p datasets '[\"flowers\", \"cubs\", \"cars\", \"sketch\", \"wikiart\"]' -p variant_dataset wikiart",
    cells=[
        ("md", '''\
## Run

Every task with the default mask (binary, tau 5e-3, constant init 1e-2), then the variants.
A score moves by about `lr_scores` per step and starts 5e-3 above the threshold: in a short
CPU run the recipe's 2e-4 leaves most masks untouched, so this notebook defaults to 5e-4.'''),
        ("code", LOAD_BACKBONE + '''
if lr_scores is not None:
    piggyback = experiments.train_config("piggyback", recipe, epochs=epochs, device=device, seed=seed,
                                         lr_scores=lr_scores)
print(f"{net.num_masked_weights:,} masked weights in {len(net.masked_layers)} layers")'''),
        ("code", '''\
live = plots.LiveCurve(("loss", "val_acc", "sparsity"), title="Every task, then the threshold and init variants")
live.show()
rows, default = [], pl.MaskConfig()
for dataset in dict.fromkeys([*datasets, variant_dataset]):
    data = load_data(dataset, root=data_root, seed=seed, scale=data_scale)
    loaders = make_loaders(data, batch_size=batch_size, seed=seed)
    variants = {"default": default} if dataset in datasets else {}
    if dataset == variant_dataset:
        variants.update({f"tau {t:g}": pl.MaskConfig(threshold=t) for t in thresholds if t != default.threshold})
        variants.update({f"{i} init": pl.MaskConfig(init=i) for i in inits if i != default.init})
    for label, mask in variants.items():
        name = dataset if label == "default" else experiments.task_name(dataset, label)
        row, _ = experiments.run_method(net, data, piggyback, label=label, mask=mask, name=name, loaders=loaders,
                                        callbacks=live.callbacks(f"{dataset}: {label}"))
        rows.append(row)
results = pd.DataFrame(rows)
main = results[results["method"] == "default"]'''),
        ("md", '''\
## Look

Sparsity of every masked layer (rows, input at the top) for every task (columns, near to far):'''),
        ("code", '''\
table(results[["task", "method", "threshold", "init", "accuracy", "sparsity", "storage_bytes"]], "results")
layers = pl.sparsity_by_task(net, list(main["name"]))
table(layers, "layer_sparsity")
show(live.figure(), "training_curves")
show(plots.sparsity_heatmap(layers), "sparsity_heatmap")
show(plots.sparsity_by_depth(layers), "sparsity_by_depth")
show(plots.percent_bars(main, y="sparsity", color=None, y_title="zeros in the mask (%)",
                        title="Sparsity per task, near to far from the source"), "sparsity_per_task")'''),
        ("md", '''\
The threshold and init variants on one task, and the storage of every task's file: `packed`
stores exactly 1 bit per weight, `rice` entropy-codes the mask (the sparser, the smaller).'''),
        ("code", '''\
variant_rows = results[results["task"] == variant_dataset]
if len(variant_rows) > 1:
    show(plots.percent_bars(variant_rows, x="method", color=None, y="sparsity", y_title="zeros in the mask (%)",
                            title=f"{variant_dataset}: sparsity by threshold and init"), "sparsity_variants")
storage = pl.storage_table(net, list(main["name"]))
table(storage, "storage")
long = storage.melt(id_vars="task", value_vars=["packed_bytes", "rice_bytes", "finetuned_bytes"],
                    var_name="format", value_name="bytes")
show(plots.storage_bars(long, y="bytes", color="format", title="Storage per task (log scale)"), "storage")'''),
    ],
    learned='''\
s = main.set_index("task")["sparsity"]
lines = [f"- Sparsity ranged from {s.min():.2%} (`{s.idxmin()}`) to {s.max():.2%} (`{s.idxmax()}`)."]
if len(s) > 2 and s.nunique() > 1:
    rho = pd.Series(range(len(s)), index=s.index).corr(s, method="spearman")
    lines.append(f"- Rank correlation between a task's distance from the source (the order {', '.join(s.index)}) "
                 f"and its sparsity: {rho:+.2f} " + ("(as in the paper, farther tasks switch off more weights)."
                                                     if rho > 0.3 else "(the paper's trend did not show clearly here)."))
if "greek" in s and ({"sketch", "fonts"} & set(s.index)):
    far = [t for t in ("sketch", "fonts") if t in s]
    sparser = [t for t in far if s[t] > s["greek"]]
    lines.append(f"- Compared with the near task `greek` ({s['greek']:.2%}): "
                 + ", ".join(f"`{t}` {s[t]:.2%}" for t in far)
                 + (f"; {' and '.join(sparser)} {'is' if len(sparser) == 1 else 'are'} sparser." if sparser
                    else "; neither is sparser."))
third = max(1, layers["depth"].nunique() // 3)
shallow = layers[layers["depth"] < third]["sparsity"].mean()
deep = layers[layers["depth"] >= layers["depth"].max() + 1 - third]["sparsity"].mean()
lines.append(f"- Averaged over tasks, the first third of the layers lost {shallow:.2%} of their weights and the last "
             f"third {deep:.2%}: " + ("changes grow with depth, as in the paper." if deep > shallow
                                      else "here the deep layers did not change more than the shallow ones."))
v = results[results["task"] == variant_dataset].set_index("method")
taus = v[v["init"] == "constant"].sort_values("threshold")
if len(taus) > 1:
    rising = bool(taus["sparsity"].is_monotonic_increasing)
    lines.append(f"- On `{variant_dataset}`, raising tau from {taus['threshold'].iloc[0]:g} to {taus['threshold'].iloc[-1]:g} "
                 f"took sparsity from {taus['sparsity'].iloc[0]:.2%} to {taus['sparsity'].iloc[-1]:.2%}"
                 + (" (it grows with the threshold, as in the paper)." if rising else " (not monotonically)."))
for label in v.index:
    if label.endswith(" init") and "default" in v.index:
        lines.append(f"- The {label} gave {v.loc[label, 'sparsity']:.2%} sparsity and {v.loc[label, 'accuracy']:.1%} "
                     f"accuracy, against {v.loc['default', 'sparsity']:.2%} and {v.loc['default', 'accuracy']:.1%} "
                     "with the constant init.")
ratio = (storage["rice_bytes"] / storage["packed_bytes"]).mean()
lines.append(f"- Entropy coding made the task files {ratio:.0%} of the 1-bit packing on average "
             f"(the sparser the mask, the smaller), against {plots.human_bytes(storage['finetuned_bytes'].iloc[0])} "
             "for a fine-tuned copy.")
display(Markdown("\\n".join(lines)))''',
)

# -- 06 -----------------------------------------------------------------------------------------

MULTITASK = Notebook(
    name="06_multitask",
    title="06 · Many tasks on one backbone",
    goal='''\
**Goal.** The point of Piggyback: one frozen *backbone* serves any number of *tasks*, each
adding only its *mask* and *head*. Since the backbone never changes, adding a task cannot
change an earlier task's predictions, and the order in which tasks are added does not matter.
We add every task one after another to one network and check exactly that, compare the total
storage with one fine-tuned network per task, and compare accuracy with the baselines
(classifier only, fine-tuning).''',
    parameters='''\
datasets = list(EMBEDDED_TASKS)  # the tasks, in the order they are added (or, with data_root, paper datasets)
baselines = ["classifier", "finetune"]  # methods to compare with, each task on its own
check_order = True               # also train the first task last, in another network''',
    rules='''"datasets": experiments.non_empty_list_of(experiments.TASKS),
         "baselines": experiments.non_empty_list_of(("classifier", "finetune")), "check_order": bool''',
    scale=0.12,
    paper_data="-p datasets '[\"cubs\", \"cars\", \"flowers\", \"wikiart\", \"sketch\"]'",
    cells=[
        ("md", '''\
## Run

Add the tasks one by one to one network. After each one, measure the test accuracy of every
task added so far.'''),
        ("code", LOAD_BACKBONE + '''
data = {d: load_data(d, root=data_root, seed=seed, scale=data_scale) for d in datasets}
loaders = {d: make_loaders(data[d], batch_size=batch_size, seed=seed) for d in datasets}
tests = {d: loaders[d][2] for d in datasets}
print(f"{net.num_masked_weights:,} masked weights; tasks in order: {', '.join(datasets)}")'''),
        ("code", '''\
live = plots.LiveCurve(title="Tasks added one after another")
live.show()
rows, matrix = [], []
for i, dataset in enumerate(datasets):
    row, _ = experiments.run_method(net, data[dataset], piggyback, loaders=loaders[dataset],
                                    callbacks=live.callbacks(dataset))
    rows.append(row)
    matrix += [{"after": dataset, **m} for m in experiments.accuracy_after_each(net, datasets[: i + 1], tests, device=device)]
matrix = pd.DataFrame(matrix)'''),
        ("md", '''\
Another order: a second network loads every task but the first from its task file (written
here into `output_dir/tasks`), then trains the first task last, with the same seed.'''),
        ("code", '''\
from pathlib import Path

files = {d: pl.save_task(net, d, Path(output_dir) / "tasks" / f"{d}.safetensors") for d in datasets}
first = datasets[0]
if check_order:
    other = pl.PiggybackNet(model, backbone_name=backbone)
    for d in reversed(datasets[1:]):
        pl.load_task(other, files[d])
    reordered, _ = experiments.run_method(other, data[first], piggyback, loaders=loaders[first])
    same_masks = all(torch.equal(a, b) for a, b in zip(net.masks(first).values(), other.masks(first).values()))
    order = pd.DataFrame([
        {"network": f"{first} trained first, alone", "accuracy": matrix.query("after == @first and task == @first")["accuracy"].item()},
        {"network": f"{first} after all {len(datasets)} tasks", "accuracy": matrix.query("after == @datasets[-1] and task == @first")["accuracy"].item()},
        {"network": f"{first} trained last, other order", "accuracy": reordered["accuracy"]},
    ])'''),
        ("md", '''\
The baselines train each task on its own: a new head on the frozen backbone (classifier only)
or a full fine-tuned copy of the network.'''),
        ("code", '''\
baseline_net = pl.PiggybackNet(model, backbone_name=backbone)
for dataset in datasets:
    for method in baselines:
        config = experiments.train_config(method, recipe, epochs=epochs, device=device, seed=seed)
        row, _ = experiments.run_method(baseline_net, data[dataset], config, loaders=loaders[dataset],
                                        name=experiments.task_name(dataset, method),
                                        callbacks=live.callbacks(f"{dataset}: {method}"))
        rows.append(row)
results = pd.DataFrame(rows)'''),
        ("md", '''\
## Look

Each row is the network after one more task was added; each column a task. Piggyback's
columns are constant: adding tasks changes nothing for the earlier ones.'''),
        ("code", '''\
show(plots.accuracy_matrix(matrix), "accuracy_matrix")
table(matrix, "accuracy_after_each")
if check_order:
    table(order.assign(same_masks=same_masks), "task_order")
show(live.figure(), "training_curves")
table(results[["task", "method", "accuracy", "sparsity", "storage_bytes"]], "results")
show(plots.percent_bars(results, title="Test accuracy: piggyback vs the baselines"), "accuracy")'''),
        ("md", '''\
Total storage for the first k tasks: the backbone once plus one task file per task (at 1 bit
per weight), against one fine-tuned float32 network per task.'''),
        ("code", '''\
backbone_bytes = sum(4 * t.numel() for t in net.backbone_state().values() if t.is_floating_point())
task_files = [files[d].stat().st_size for d in datasets]
finetuned = [pl.analysis.finetuned_bytes(net, d) for d in datasets]
totals = pd.DataFrame(
    [{"tasks": k, "approach": "piggyback: backbone + task files", "bytes": backbone_bytes + sum(task_files[:k])}
     for k in range(1, len(datasets) + 1)]
    + [{"tasks": k, "approach": "one fine-tuned network per task", "bytes": sum(finetuned[:k])}
       for k in range(1, len(datasets) + 1)])
table(totals, "total_storage")
show(plots.storage_bars(totals, x="tasks", y="bytes", color="approach",
                        title="Total storage for the first k tasks (log scale)"), "total_storage")'''),
    ],
    learned='''\
grid = matrix.pivot(index="after", columns="task", values="accuracy")
drift = float((grid.max() - grid.min()).max())
lines = [f"- After adding all {len(datasets)} tasks, no task's test accuracy moved: the largest change of any task "
         f"between additions is {drift * 100:.2f} points." if drift == 0 else
         f"- Some task's accuracy changed by up to {drift * 100:.2f} points while tasks were added: "
         "this should not happen with a frozen backbone and needs a look."]
if check_order:
    same_acc = order["accuracy"].nunique() == 1
    lines.append(f"- `{first}` trained last in another network, after loading the other tasks from files: "
                 f"{reordered['accuracy']:.1%} vs {order['accuracy'].iloc[0]:.1%} trained first, and its mask is "
                 f"{'bit-for-bit identical' if same_masks else 'different'}: task order "
                 + ("does not matter." if same_acc and same_masks else "made a difference, which needs a look."))
total_p, total_f = totals.groupby("approach")["bytes"].max().loc[
    ["piggyback: backbone + task files", "one fine-tuned network per task"]]
lines.append(f"- {len(datasets)} tasks cost {plots.human_bytes(total_p)} with piggyback (one backbone of "
             f"{plots.human_bytes(backbone_bytes)} plus {plots.human_bytes(sum(task_files) / len(task_files))} per task) "
             f"against {plots.human_bytes(total_f)} for separate fine-tuned networks: {total_f / total_p:.1f}x less.")
mean = results.groupby("method")["accuracy"].mean()
lines.append("- Mean test accuracy over the tasks: " + ", ".join(f"{m} {a:.1%}" for m, a in mean.items()) + ".")
display(Markdown("\\n".join(lines)))''',
)

NOTEBOOKS = [PRETRAIN, QUICKSTART, INIT_SCHEMES, TERNARY, BATCHNORM, SPARSITY, MULTITASK]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed notebook differs from this script")
    args = parser.parse_args(argv)
    stale = []
    for nb in NOTEBOOKS:
        path = NOTEBOOKS_DIR / f"{nb.name}.ipynb"
        text = nbformat.writes(build(nb)) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run scripts/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
