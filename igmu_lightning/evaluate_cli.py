"""``evaluate.py --config CONFIG [--results_path PATH] [--devices N ...]``: run an ``Evaluation``
from a YAML config (class_path / init_args, as train.py) and write its results JSON atomically.
Several devices or nodes run through Lightning Fabric, for evaluations that share their work (world
evaluation, IGMU-folder scoring, generate-and-score, prompt-set target rate): each process makes and
scores its share of the prompts or images, the metrics sync across processes, and rank 0 writes the
results, prints every metric (``summary_table``), writes the attack outcomes, the image grids and
the report's figures beside the results and logs the evaluation as one W&B run (``eval_wandb``;
``--wandb false``: none). An evaluation that compares models keeps each method as it is scored
(``evaluation.resume``): started again after a crash or a stop, it scores only the rest."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from jsonargparse import ActionConfigFile
from lightning.fabric import Fabric
from lightning.pytorch import seed_everything

from igmu_lightning.artifacts.images import write_grids
from igmu_lightning.config_errors import OneLineParser
from igmu_lightning.errors import IGMUError
from igmu_lightning.eval_wandb import WandbSettings, log_evaluation
from igmu_lightning.evaluation import ASPECTS, Evaluation, results_document, write_results
from igmu_lightning.evaluation.attack_probe import outcomes_folder, write_attack_outcomes
from igmu_lightning.evaluation.base import ModelComparison
from igmu_lightning.evaluation.distributed import is_main
from igmu_lightning.evaluation.results import figures_folder, grids_folder
from igmu_lightning.evaluation.resume import FinishedMethods, partial_folder
from igmu_lightning.report import document as report_document
from igmu_lightning.report import make_figures


def build_parser(args: list[str] | None = None) -> OneLineParser:
    parser = OneLineParser(prog="evaluate.py", description="Evaluate unlearned models (EvalIGMU).", default_env=False)
    parser.igmu_args = list(args or [])
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config of the evaluation")
    parser.add_argument(
        "--results_path", type=str | None, default=None, help="results JSON (default: results/<config name>.json)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice of the evaluation")
    parser.add_subclass_arguments(Evaluation, "evaluation", required=True, help="what to evaluate, and how")
    parser.add_argument(
        "--wandb", type=WandbSettings | bool, default=WandbSettings(),
        help="the W&B run of the evaluation (--wandb.project, .group, .mode ...); --wandb false: none",
    )  # fmt: skip
    # Where it runs: Lightning Fabric's own launchers and cluster detection (torchrun, SLURM).
    parser.add_argument("--accelerator", type=str, default="auto", help="cpu / gpu / auto")
    parser.add_argument("--devices", type=int | str, default=1, help="processes per node (GPUs, or CPU processes)")
    parser.add_argument("--num_nodes", type=int, default=1, help="nodes (under SLURM or torchrun)")
    parser.add_argument("--strategy", type=str, default="auto", help="auto / ddp / ddp_spawn, for several devices")
    parser.add_argument("--precision", type=str, default="32-true", help="32-true / bf16-mixed / 16-mixed")
    return parser


def config_name(config) -> str:
    """The name of the last config file given (``object`` for configs/eval/world/object.yaml)."""
    files = [Path(str(c)) for c in (config.get("config") or []) if c]
    return files[-1].stem if files else "evaluation"


def default_results_path(config) -> Path:
    return Path("results") / f"{config_name(config)}.json"


def number(x: float) -> str:
    return f"{x:.3g}"


def cell(v: dict) -> str:
    """A metric as the summary shows it: value [ci low, ci high] n=N (an exact number: value exact)."""
    if v["ci_method"] == "exact":
        value = v["value"]
        return f"{int(value) if float(value).is_integer() else number(value)} exact"
    return f"{number(v['value'])} [{number(v['ci95'][0])}, {number(v['ci95'][1])}] n={v['n']}"


def summary_table(methods: dict, width: int | None = None) -> str:
    """Every metric of every method: a row per ``aspect.metric`` (aspects in the results' order), a
    column per method, each cell its value, 95% interval and n; the methods in blocks of columns
    that fit ``width`` (default: the terminal's, at least 80). Skipped metrics are listed below."""
    width = max(80, width or shutil.get_terminal_size((120, 24)).columns)
    order = {a: i for i, a in enumerate(ASPECTS)}
    keys = sorted({(a, m) for method in methods.values() for a, ms in method.get("aspects", {}).items() for m in ms},
                  key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))  # fmt: skip
    labels = [f"{a}.{m}" for a, m in keys]
    cells = {
        name: [cell(method["aspects"][a][m]) if m in method.get("aspects", {}).get(a, {}) else "-" for a, m in keys]
        for name, method in methods.items()
    }
    first = max([len(x) for x in labels] + [len("metric")])
    widths = {name: max([len(name)] + [len(c) for c in column]) for name, column in cells.items()}
    blocks, block, used = [], [], first
    for name in cells:
        if block and used + 2 + widths[name] > width:
            blocks.append(block)
            block, used = [], first
        block.append(name)
        used += 2 + widths[name]
    blocks.append(block)
    lines = []
    for block in blocks:
        if lines:
            lines.append("")
        lines.append("  ".join([f"{'metric':<{first}}"] + [f"{name:>{widths[name]}}" for name in block]).rstrip())
        for i, label in enumerate(labels):
            lines.append("  ".join([f"{label:<{first}}"] + [f"{cells[name][i]:>{widths[name]}}" for name in block]))
    for name, method in methods.items():
        for metric, why in sorted(method.get("skipped", {}).items()):
            lines.append(f"skipped: {name} {metric}: {why}")
    return "\n".join(lines)


def replace_lists(args: list[str]) -> list[str]:
    """``args`` with ``--key=[]`` before each command-line list of ``class_path`` objects: jsonargparse
    otherwise merges each new item with the config's item at its place, so a PromptFileProbe put
    where the config has ``AttackProbe(name=udiff)`` silently inherited the name ``udiff``."""
    out = []
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        value = value if eq else (args[i + 1] if i + 1 < len(args) else "")  # --key=VALUE or --key VALUE
        if key.startswith("--") and value.lstrip().startswith("[") and "class_path" in value:
            out.append(f"{key}=[]")
        out.append(arg)
    return out


def main(args: list[str] | None = None) -> Path:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = replace_lists(sys.argv[1:] if args is None else list(args))
    config = build_parser(args).parse_args(args)  # a bad config fails here, before any process starts
    check_results_path(Path(config.results_path) if config.results_path else default_results_path(config))
    try:
        fabric = Fabric(
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=config.precision,
        )
    except Exception as err:  # noqa: BLE001 - Lightning's MisconfigurationException (no GPU, too many devices), ValueError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IGMUError(f"--accelerator {config.accelerator} --devices {config.devices} cannot run here ({first}): "
                        "use --accelerator cpu, or fewer --devices") from None  # fmt: skip
    module, _, name = config.evaluation.class_path.rpartition(".")  # imported already, by the parser
    kind = getattr(importlib.import_module(module), name)
    if fabric.world_size > 1 and not kind.shares_work:
        raise IGMUError(
            f"{kind.__name__} runs in one process ({fabric.world_size} were asked for): drop --devices / --num_nodes; "
            "WorldEvaluation, IGMUFolder, GenerateAndScore and PromptSetTargetRate share their work across processes"
        )
    return fabric.launch(evaluate, config)


def evaluate(fabric: Fabric, config) -> Path:
    """One process's part of the evaluation (``config``: the parsed arguments, sent to spawned
    processes as they are); every rank returns the same results, rank 0 writes."""
    parser = build_parser()
    path = Path(config.results_path) if config.results_path else default_results_path(config)
    resolved = yaml.safe_load(parser.dump(config, skip_none=False, skip_link_targets=False))
    resolved.pop("config", None)
    resolved.pop("results_path", None)
    resolved.pop("wandb", None)  # where the run is logged is no part of what was measured
    seed_everything(config.seed, verbose=False)
    instantiated = parser.instantiate_classes(config)
    evaluation = instantiated.evaluation
    evaluation.device = fabric.device
    evaluation.check()  # every model, file and judge it needs, before the first image
    if isinstance(evaluation, ModelComparison):  # each method kept as it ends; a rerun skips the finished ones
        evaluation.finished_methods = FinishedMethods(partial_folder(path), resolved, config.seed)
        kept = evaluation.finished_methods.count()
        if kept and is_main():
            print(f"resuming: {kept} method(s) of an earlier run are kept in {partial_folder(path)}; those whose config, "
                  "seed and models are unchanged are not scored again")  # fmt: skip
    with fabric.autocast():
        output = evaluation.run(seed=config.seed)
    if fabric.global_rank == 0:
        document = results_document(resolved, config.seed, output.model_hashes, output.methods, output.evaluators)
        print(summary_table(output.methods))
        try:
            write_results(path, document)
        except OSError as err:
            saved = write_elsewhere(path, document)
            reason = err.strerror or type(err).__name__
            where = f"they were written to '{saved}' instead" if saved else "nowhere else was writable either (the table above is all)"
            raise IGMUError(f"results could not be written to '{path}' ({reason}): {where}; free space or fix the folder "
                            "and copy them over") from None  # fmt: skip
        print(f"results written to {path}")
        if output.attacks:
            written = write_attack_outcomes(path, output.attacks)
            print(f"attack outcomes ({len(written)} files) written to {outcomes_folder(path)}")
        if output.samples:
            grids = write_grids(grids_folder(path), output.samples)
            print(f"image grids ({len(grids) - 1} methods, and _all.png with a row each) written to {grids_folder(path)}")
        figures = write_figures(path, document)
        if instantiated.wandb is not False:
            settings = instantiated.wandb if isinstance(instantiated.wandb, WandbSettings) else WandbSettings()
            log_evaluation(settings, document, output.samples, output.sample_prompts, output.attacks,
                           group=config_name(config), name=path.stem, figures=figures)  # fmt: skip
        if isinstance(evaluation, ModelComparison):  # everything is written: the kept methods are no longer needed
            evaluation.finished_methods.clear()
    fabric.barrier()
    return path


def write_figures(path: Path, document: dict) -> dict[str, tuple[Path, str]]:
    """The benchmark report's figures of these results (``report.make_figures``: trade-off, profile,
    attacks, grid) beside them in ``<stem>.figures/``; kind -> (PNG, caption) of those made. A
    figure that cannot be made (no such metric, images not cached) is named with why, one line
    each; the results are written already, so nothing here fails the evaluation."""
    made = {}
    for kind, (written, caption) in make_figures(report_document(path.stem, document, path), figures_folder(path)):
        if written is None:
            print(f"figure '{kind}' not made: {caption}")
        else:
            made[kind] = (written, caption)
    if made:
        print(f"figures ({', '.join(made)}) written to {figures_folder(path)}")
    return made


def check_results_path(path: Path) -> None:
    """``path`` can be written: its nearest existing folder is a writable folder and the path itself
    is no folder. Checked before the evaluation runs, so hours of work never end in a failed write."""
    if path.is_dir():
        raise IGMUError(f"--results_path '{path}' is a folder: give a file path such as '{path / 'results.json'}'")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise IGMUError(f"--results_path '{path}' lies under '{ancestor}', which is a file, not a folder: "
                        "give a path in a folder")  # fmt: skip
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise IGMUError(f"--results_path '{path}': folder '{ancestor}' is not writable: give a path in a writable folder")


def write_elsewhere(path: Path, document: dict) -> Path | None:
    """When ``path`` cannot be written: the results beside the working directory, else in the temp
    folder; the path written, or None when neither took them."""
    name = f"{path.stem}.unsaved-{os.getpid()}.json"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            return write_results(folder / name, document)
        except OSError:
            continue
    return None
