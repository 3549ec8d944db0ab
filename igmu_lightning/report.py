"""``python -m igmu_lightning.report --results FILES_OR_FOLDERS --out docs/benchmark.md --figures
docs/figures/benchmark``: the benchmark report, regenerated from ``evaluate.py``'s results JSONs.

Per results document (one evaluation of one target): a table of every metric (value, 95%
interval, n, interval method) for every method, and four figures (matplotlib, PNG): forgetting vs
preservation with the Pareto front, a per-method profile over the six aspects, the plain against
the attacked target rate, and an image grid of the forget prompts (rows: methods; the same
prompts and seeds) read from the image cache, never generated. Every caption states n and the
evaluation config (a digest of the resolved config and its main settings). The same inputs give
the same markdown and the same PNG bytes (no dates, sorted everything)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

from igmu_lightning.errors import IGMUError, run_main
from igmu_lightning.evaluation.base import ORIGINAL
from igmu_lightning.evaluation.results import ASPECTS
from igmu_lightning.utils.io import atomic_write_bytes, atomic_write_text

# One headline metric per aspect for the profile figure: (metric, lower is better). Robustness
# takes the first attack's ASR when an attack was run (UnlearnDiffAtk's ``udiff`` first), else
# the synonym probe; an aspect whose headline is absent shows its first metric.
HEADLINES = {
    "forgetting": ("forgetting.target_rate", True),
    "preservation": ("preservation.retain_accuracy", False),
    "quality": ("quality.fid", True),
    "alignment": ("alignment.attribute_rate", False),
    "robustness": ("robustness.synonym.target_rate", True),
    "efficiency": ("efficiency.wall_time_s", True),
}
PREFERRED_ATTACK = "udiff"
GRID_COLUMNS = 8  # forget prompts per grid row (WorldEvaluation keeps the same count for its grids)
AUTOCAST = {"bf16-mixed": "torch.bfloat16", "16-mixed": "torch.float16"}  # evaluate.py --precision -> cache key


# --- reading ------------------------------------------------------------------------------------
@dataclass
class Document:
    """One results JSON: its name (file stem), path, bytes' digest and content."""

    name: str
    path: Path
    sha256: str
    data: dict
    methods: list[str] = field(default_factory=list)

    @property
    def init_args(self) -> dict:
        evaluation = self.data.get("run", {}).get("config", {}).get("evaluation") or {}
        return evaluation.get("init_args") or {}

    @property
    def target(self) -> str:
        return str(self.init_args.get("target") or self.name)

    def metric(self, method: str, key: str) -> dict | None:
        aspect, name = key.split(".", 1)
        return self.data["methods"][method].get("aspects", {}).get(aspect, {}).get(name)

    def metric_names(self) -> list[str]:
        """Every ``aspect.metric`` any method reports, in aspect order, then by name."""
        found = {f"{a}.{m}" for method in self.data["methods"].values() for a, ms in method.get("aspects", {}).items() for m in ms}
        return sorted(found, key=lambda k: (ASPECTS.index(k.split(".")[0]) if k.split(".")[0] in ASPECTS else len(ASPECTS), k))

    def config_digest(self) -> str:
        config = self.data.get("run", {}).get("config", {})
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]

    def config_line(self) -> str:
        """The evaluation config in one line: its digest and the settings that decide the numbers."""
        run, args = self.data.get("run", {}), self.init_args
        sampler = args.get("sampler") or {}
        size = (f"max_half_width {args['max_half_width']}" if args.get("max_half_width") is not None else
                f"{args['prompts_per_class']} prompts per class" if args.get("prompts_per_class") is not None else
                f"{args.get('prompts_per_set', '?')} prompts per set")  # fmt: skip
        recorded = run.get("evaluators", {}).get("probes")
        probes = [probe_label(n, r) for n, r in recorded.items()] if recorded else [probe_label(None, p) for p in args.get("probes") or []]
        parts = [f"`{self.path.name}` (config sha256 {self.config_digest()})", f"target {self.target}", size,
                 f"seed {run.get('seed', '?')}",
                 f"{sampler.get('steps', 25)} {sampler.get('scheduler', 'ddim').upper()} steps, CFG {sampler.get('guidance_scale', 7.5)}",
                 f"precision {run.get('config', {}).get('precision', '?')}"]  # fmt: skip
        if probes:
            parts.append("probes " + ", ".join(probes))
        return "; ".join(parts)

    def n_of(self, key: str) -> str:
        """The n of a metric over the methods: one number, or the range."""
        ns = sorted({m["n"] for m in (self.metric(x, key) for x in self.methods) if m})
        return "?" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def probe_label(name: str | None, probe: dict) -> str:
    """A probe's name and its attack's preset: ``udiff (quick)``."""
    args = probe.get("init_args") or probe
    name = name or args.get("name") or probe.get("class_path", "?").rsplit(".", 1)[-1]
    preset = ((args.get("attack") or args.get("relearning") or {}).get("init_args") or {}).get("preset")
    return f"{name} ({preset})" if preset else str(name)


def read_document(path: Path) -> Document:
    """A results JSON, or one error line naming the file and what is wrong with it."""
    if not path.is_file():
        raise IGMUError(f"results file '{path}' does not exist: give a results JSON written by evaluate.py (--results_path)")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise IGMUError(f"results file '{path}' is not valid JSON{where}: rerun evaluate.py to write it again") from None
    methods = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(methods, dict) or not methods or not all(isinstance(m, dict) for m in methods.values()):
        raise IGMUError(f"results file '{path}' has no 'methods' mapping: give a results JSON written by evaluate.py")
    for name, method in methods.items():
        for aspect, metrics in (method.get("aspects") or {}).items():
            for metric, value in metrics.items():
                numbers = [value.get("value"), *value.get("ci95", [])] if isinstance(value, dict) else []
                if not (len(numbers) == 3 and all(isinstance(x, (int, float)) for x in numbers) and "n" in value):
                    raise IGMUError(f"results file '{path}': {name} {aspect}.{metric} lacks value, ci95 [lo, hi] or n: "
                                    "give a results JSON written by evaluate.py")  # fmt: skip
    return document(path.stem, data, path, hashlib.sha256(raw).hexdigest())


def document(name: str, data: dict, path: Path | None = None, sha256: str = "") -> Document:
    """A results document already in memory (evaluate.py's, before or after writing it)."""
    order = sorted(data["methods"], key=lambda m: (m != ORIGINAL, m))
    return Document(name, path or Path(f"{name}.json"), sha256, data, order)


def find_results(paths: list[str]) -> list[Path]:
    """The files given, and the ``*.json`` directly inside each folder given, in name order."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                raise IGMUError(f"results folder '{path}' holds no *.json: give results files written by evaluate.py")
            found.extend(files)
        else:
            found.append(path)
    return found


def read_documents(paths: list[str]) -> list[Document]:
    documents = [read_document(p) for p in find_results(paths)]
    seen: dict[str, Path] = {}
    for doc in documents:
        if doc.name in seen:
            raise IGMUError(f"results '{seen[doc.name]}' and '{doc.path}' have the same name '{doc.name}' (figure names "
                            "come from it): rename one")  # fmt: skip
        seen[doc.name] = doc.path
    return documents


# --- numbers ------------------------------------------------------------------------------------
def number(x: float) -> str:
    """A value for the tables: rates and scores with 3 decimals, values from 10 on with 1."""
    x = float(x)
    if x != 0 and abs(x) < 0.01:
        return f"{x:.2e}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def cell(metric: dict | None, with_n: bool) -> str:
    """``value [lo, hi]`` (an exact measurement: its value alone, its interval being the value)."""
    if metric is None:
        return "-"
    lo, hi = metric["ci95"]
    exact = metric.get("ci_method") == "exact" and lo == hi == metric["value"]
    count = exact and float(metric["value"]).is_integer() and abs(metric["value"]) >= 2  # parameters, seconds, MB
    text = f"{metric['value']:.0f}" if count else number(metric["value"]) if exact else f"{number(metric['value'])} [{number(lo)}, {number(hi)}]"
    return f"{text} (n={metric['n']})" if with_n else text


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The methods no other method beats on both axes: lower x (target rate) and higher y
    (retain accuracy), strictly on at least one. Sorted by x, then y descending, then name."""

    def dominates(a, b) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    front = [m for m, p in points.items() if not any(dominates(q, p) for o, q in points.items() if o != m)]
    return sorted(front, key=lambda m: (points[m][0], -points[m][1], m))


def headline(doc: Document, aspect: str) -> tuple[str, bool | None] | None:
    """The profile's metric for ``aspect`` and whether lower is better (None: unknown)."""
    names = [k for k in doc.metric_names() if k.split(".")[0] == aspect]
    if aspect == "robustness":
        attacks = attack_names(doc)
        if attacks:
            return f"robustness.{attacks[0]}.asr", True
    key, lower = HEADLINES[aspect]
    if key in names:
        return key, lower
    return (names[0], None) if names else None


def attack_names(doc: Document) -> list[str]:
    """Attacks with an ASR in the results, UnlearnDiffAtk first, then by name."""
    found = {k.split(".")[1] for k in doc.metric_names() if k.startswith("robustness.") and k.endswith(".asr")}
    return sorted(found, key=lambda a: (a != PREFERRED_ATTACK, a))


# --- figures ------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "figure.dpi": 100})
    return plt


def save_figure(fig, path: Path) -> Path:
    """A PNG without dates or software version in it: the same figure, the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def colours(doc: Document) -> dict[str, tuple]:
    """A colour per method, none repeated: tab10 up to 10 methods, then tab20's 20, then a cyclic map."""
    n = len(doc.methods)
    plt = pyplot()
    if n <= 10:
        return {m: plt.get_cmap("tab10")(i) for i, m in enumerate(doc.methods)}
    if n <= 20:  # dark then light shade of each hue, hues first
        cmap = plt.get_cmap("tab20")
        return {m: cmap((2 * i) % 20 + (2 * i) // 20) for i, m in enumerate(doc.methods)}
    cmap = plt.get_cmap("hsv")
    return {m: cmap(i / n) for i, m in enumerate(doc.methods)}


def interval(metric: dict) -> tuple[float, float, float]:
    """value and the (below, above) distances to the interval's ends, for error bars."""
    v, (lo, hi) = metric["value"], metric["ci95"]
    return v, max(v - lo, 0.0), max(hi - v, 0.0)


def footer(fig, text: str) -> None:
    fig.text(0.01, -0.02, textwrap.fill(text, 130), ha="left", va="top", fontsize=7, color="0.25")


def tradeoff_figure(doc: Document, path: Path) -> tuple[Path, str] | tuple[None, str]:
    x_key, y_key = "forgetting.target_rate", "preservation.retain_accuracy"
    points = {m: (doc.metric(m, x_key), doc.metric(m, y_key)) for m in doc.methods}
    points = {m: (x, y) for m, (x, y) in points.items() if x and y}
    if not points:
        return None, f"no forgetting vs preservation figure: no method reports both {x_key} and {y_key}"
    plt, colour = pyplot(), colours(doc)
    front = pareto_front({m: (x["value"], y["value"]) for m, (x, y) in points.items()})
    # a second panel zooms onto the front when it is crowded into a corner of the unit square
    box = (min(points[m][0]["ci95"][0] for m in front) - 0.03, max(points[m][0]["ci95"][1] for m in front) + 0.1,
           min(points[m][1]["ci95"][0] for m in front) - 0.1, max(points[m][1]["ci95"][1] for m in front) + 0.04)  # fmt: skip
    zoom = (box[1] - box[0]) < 0.5 and (box[3] - box[2]) < 0.5
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(11.5 if zoom else 6.4, 4.8), squeeze=False)
    fx, fy = [points[m][0]["value"] for m in front], [points[m][1]["value"] for m in front]
    for k, ax in enumerate(axes[0]):
        ax.step(fx, fy, where="post", color="0.5", linestyle="--", linewidth=1, label="Pareto front", zorder=1)
        for m, (x, y) in points.items():
            xv, xl, xh = interval(x)
            yv, yl, yh = interval(y)
            ax.errorbar(xv, yv, xerr=[[xl], [xh]], yerr=[[yl], [yh]], fmt="o", color=colour[m], capsize=3, markersize=6, zorder=2,
                        label=m if k == 0 else None)  # fmt: skip
            if m in front:
                ax.scatter([xv], [yv], s=160, facecolors="none", edgecolors="black", linewidths=1.2, zorder=3)
        span = 1.2 if k == 0 else max(box[1] - box[0], box[3] - box[2])
        shown = {m: (x["value"], y["value"]) for m, (x, y) in points.items()
                 if k == 0 or (box[0] <= x["value"] <= box[1] and box[2] <= y["value"] <= box[3])}  # fmt: skip
        x0, x1 = (-0.05, 1.15) if k == 0 else box[:2]
        groups = sorted(label_groups(shown, 0.03 * span), key=lambda g: (round(g[0][0], 2), -g[0][1]))
        for i, ((xv, yv), names) in enumerate(groups):  # one label, a name a line, for points on top of each other
            left, below = xv > x0 + 0.75 * (x1 - x0), i % 2 == 1  # neighbours along x alternate above / below
            ax.annotate("\n".join(names), (xv, yv), xytext=(-6 if left else 6, -5 if below else 5), textcoords="offset points",
                        ha="right" if left else "left", va="top" if below else "bottom", fontsize=8, clip_on=True,
                        color=colour[names[0]] if len(names) == 1 else "0.15")  # fmt: skip
        ax.set(xlabel=f"{x_key} (lower: more forgotten), n = {doc.n_of(x_key)}", ylabel=f"{y_key} (higher: more kept), n = {doc.n_of(y_key)}")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.set(xlim=(-0.05, 1.15), ylim=(-0.05, 1.32), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])  # room for stacked labels
            ax.set_title(f"{doc.target}: forgetting vs preservation (95% intervals)")
            ax.scatter([], [], s=160, facecolors="none", edgecolors="black", label="on the Pareto front")
            ax.legend(loc="lower left", fontsize=8, ncol=2)
        else:
            ax.set(xlim=box[:2], ylim=box[2:])
            ax.set_title(f"zoom onto the front: target rate {box[0]:.2f} to {box[1]:.2f}, retain accuracy {box[2]:.2f} to {box[3]:.2f}", fontsize=9)
    caption = (f"Forgetting vs preservation, {doc.target} target: each method's {x_key} (n = {doc.n_of(x_key)} forget-prompt "
               f"images) against its {y_key} (n = {doc.n_of(y_key)} unrelated-prompt images), bars the 95% intervals; "
               f"circled and joined by the dashed line: the Pareto front ({', '.join(front)}: no other method has both a lower "
               f"target rate and a higher retain accuracy){'; right: the same, zoomed onto the front' if zoom else ''}. "
               f"Config: {doc.config_line()}.")  # fmt: skip
    fig.tight_layout()
    footer(fig, caption.replace("`", ""))
    return save_figure(fig, path), caption


def label_groups(positions: dict[str, tuple[float, float]], tol: float) -> list[tuple[tuple[float, float], list[str]]]:
    """Methods whose points lie within ``tol`` of a group's first point (both axes) share one label
    there, so labels of coinciding points do not print over each other; in the methods' order."""
    groups: list[tuple[tuple[float, float], list[str]]] = []
    for m, (x, y) in positions.items():
        for (gx, gy), names in groups:
            if abs(x - gx) <= tol and abs(y - gy) <= tol:
                names.append(m)
                break
        else:
            groups.append(((x, y), [m]))
    return groups


def profile_figure(doc: Document, path: Path) -> tuple[Path, str] | tuple[None, str]:
    chosen = [(a, h) for a in ASPECTS if (h := headline(doc, a))]
    if not chosen:
        return None, "no profile figure: the results hold no metric"
    plt, colour = pyplot(), colours(doc)
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.6))
    y = list(range(len(doc.methods)))
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    notes = []
    for ax, (aspect, (key, lower)) in zip(axes.flat, chosen):
        for i, m in enumerate(doc.methods):
            metric = doc.metric(m, key)
            if metric is None:
                ax.text(0.01, i, "n/a", va="center", fontsize=8, color="0.4", transform=ax.get_yaxis_transform())
                continue
            v, lo, hi = interval(metric)
            ax.barh(i, v, xerr=[[lo], [hi]], color=colour[m], capsize=2, height=0.7)
            ax.text(v + hi, i, f" {number(v)}", va="center", fontsize=7)
        ax.set_yticks(y, doc.methods)
        ax.invert_yaxis()
        better = "" if lower is None else " (lower is better)" if lower else " (higher is better)"
        ax.set_title(f"{aspect}: {key.split('.', 1)[1]}{better}\nn = {doc.n_of(key)}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, ax.get_xlim()[1] * 1.15)
        notes.append(f"{aspect}: `{key}`{better} (n = {doc.n_of(key)})")
    fig.suptitle(f"{doc.target}: one headline metric per aspect (bars: 95% intervals)", fontsize=11)
    fig.tight_layout()
    caption = (f"Per-method profile, {doc.target} target, one headline metric per aspect: {'; '.join(notes)}. "
               f"n/a: the method has no value (see the skipped list). Config: {doc.config_line()}.")  # fmt: skip
    footer(fig, caption.replace("`", ""))
    return save_figure(fig, path), caption


ATTACK_FIGURE_METHODS_PER_ROW = 7


def attack_figure(doc: Document, path: Path) -> tuple[Path, str] | tuple[None, str]:
    attacks = attack_names(doc)
    if not attacks:
        return None, "no plain vs attacked figure: these results hold no attack (no robustness.<attack>.asr)"
    plt = pyplot()
    from matplotlib.patches import Patch

    keys = ["forgetting.target_rate"] + [f"robustness.{a}.asr" for a in attacks]
    labels = ["plain target rate"] + [f"{a} ASR" for a in attacks]
    rows = -(-len(doc.methods) // ATTACK_FIGURE_METHODS_PER_ROW)  # wrap: a readable width for many methods
    per_row = -(-len(doc.methods) // rows)
    fig, axes = plt.subplots(rows, 1, squeeze=False,
                             figsize=(max(6.4, 1.1 * per_row * len(keys) / 2 + 2), 0.4 + 4.0 * rows))  # fmt: skip
    width = 0.8 / len(keys)
    cmap = plt.get_cmap("Set2")
    for r, ax in enumerate(axes[:, 0]):
        methods = doc.methods[r * per_row : (r + 1) * per_row]
        for k, key in enumerate(keys):
            for i, m in enumerate(methods):
                metric, x = doc.metric(m, key), i + (k - (len(keys) - 1) / 2) * width
                if metric is None:  # skipped (e.g. an embedding attack on prompt-reading guidance): say so
                    ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.35")
                    continue
                v, lo, hi = interval(metric)
                ax.bar(x, v, width, yerr=[[lo], [hi]], capsize=2, color=cmap(k), edgecolor="0.3", linewidth=0.5)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_xlim(-0.5, per_row - 0.5)
        ax.set(ylim=(0, 1.1), ylabel="share of forget prompts showing the target")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"{doc.target}: plain vs attacked target rate (95% intervals)")
    handles = [Patch(facecolor=cmap(k), edgecolor="0.3", linewidth=0.5) for k in range(len(keys))]
    names = [f"{label} (n = {doc.n_of(key)})" for key, label in zip(keys, labels)]  # one entry a bar kind
    axes[0, 0].legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    parts = [f"`forgetting.target_rate` (n = {doc.n_of(keys[0])})"] + [f"`{k}` (n = {doc.n_of(k)})" for k in keys[1:]]
    caption = (f"Plain vs attacked target rate, {doc.target} target: per method, the plain forget prompts' target rate and "
               f"each attack's ASR (the target shows before or after the attack): {', '.join(parts)}; bars the 95% "
               f"intervals; n/a: no value for the method (see the skipped list). Config: {doc.config_line()}.")  # fmt: skip
    footer(fig, caption.replace("`", ""))
    return save_figure(fig, path), caption


# --- image grid from the cache --------------------------------------------------------------------
def grid_figure(doc: Document, path: Path, root: Path, cache: Path | None) -> tuple[Path, str] | tuple[None, str]:
    """Rows: methods; columns: the first forget prompts with their seeds, read from the image cache
    under each model's fingerprint (weights hashes and sampling-time guidance). Nothing is generated."""
    from igmu_lightning.artifacts.images import ImageCache, fingerprint
    from igmu_lightning.backbone.guidance import read_guidance
    from igmu_lightning.evaluation.world_sets import flatten_sets, set_sizes
    from igmu_lightning.sampling import SamplerSettings
    from igmu_lightning.world.concepts import TARGETS

    args, run = doc.init_args, doc.data.get("run", {})
    if doc.target not in TARGETS:
        return None, f"no image grid: '{doc.target}' is not a world target (only world evaluations' prompts are known here)"
    cache_dir = cache or (root / args["cache_dir"] if args.get("cache_dir") else None)
    if cache_dir is None or not cache_dir.is_dir():
        return None, (f"no image grid: the image cache '{cache_dir}' is not here (give --cache, or --root where the "
                      "evaluation ran); the report generates no images")  # fmt: skip
    sizes = set_sizes(doc.target, int(args.get("prompts_per_set") or 64), args.get("max_half_width"), args.get("prompts_per_class"))
    forget = flatten_sets(doc.target, sizes, int(run.get("seed", 0)))["forget"]
    prompts, seeds = forget.prompts[:GRID_COLUMNS], forget.seeds[:GRID_COLUMNS]
    settings = asdict(SamplerSettings(**(args.get("sampler") or {})))
    precision = str(run.get("config", {}).get("precision", "32-true"))
    if precision in AUTOCAST:
        settings["autocast"] = AUTOCAST[precision]
    store, rows, missing = ImageCache(cache_dir), {}, []
    specs = {ORIGINAL: args.get("original") or {}, **(args.get("methods") or {})}
    for m in doc.methods:
        hashes = run.get("model_hashes", {}).get(m)
        source = ((specs.get(m) or {}).get("init_args") or {}).get("path")
        guidance = read_guidance(root / source) if source and (root / source).is_dir() else None
        if not hashes:
            missing.append(f"{m} (no model hashes in the results)")
            continue
        folder = store.folder(fingerprint(hashes, guidance), settings)
        images = [store.load(folder, p, s) for p, s in zip(prompts, seeds)]
        if any(i is None for i in images):
            missing.append(f"{m} (not in the cache: {folder})")
            continue
        rows[m] = images
    if not rows:
        return None, f"no image grid: no method's forget images are in the cache '{cache_dir}': " + "; ".join(missing)
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(prompts), figsize=(1.2 * len(prompts) + 1, 1.2 * len(rows) + 0.8), squeeze=False,
                             gridspec_kw={"wspace": 0.06, "hspace": 0.06})  # fmt: skip
    for r, (m, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(m, fontsize=9, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(textwrap.fill(f"{prompts[c]} (seed {seeds[c]})", 22), fontsize=6)
    fig.subplots_adjust(left=0.1, right=0.99, bottom=0.01, top=0.9)
    fig.suptitle(f"{doc.target}: forget prompts (columns) for each method (rows), the same prompts and seeds", fontsize=10, y=0.99)
    note = f" Left out: {'; '.join(missing)}." if missing else ""
    caption = (f"Image grid, {doc.target} target: the first {len(prompts)} forget prompts (columns, each with its seed) for each "
               f"method (rows: {', '.join(rows)}), read from the image cache ({len(rows)} x {len(prompts)} = "
               f"{len(rows) * len(prompts)} images; n = {len(prompts)} per row).{note} Config: {doc.config_line()}.")  # fmt: skip
    footer(fig, caption.replace("`", ""))
    return save_figure(fig, path), caption


def make_figures(doc: Document, folder: Path, root: Path = Path("."), cache: Path | None = None) -> list[tuple[str, tuple]]:
    """The four figures of one results document as ``folder/<name>_<kind>.png``: per kind
    (tradeoff, profile, attacks, grid) the path written and its caption, or None and why not."""
    makers = [("tradeoff", tradeoff_figure), ("profile", profile_figure), ("attacks", attack_figure)]
    made = [(kind, maker(doc, folder / f"{doc.name}_{kind}.png")) for kind, maker in makers]
    return made + [("grid", grid_figure(doc, folder / f"{doc.name}_grid.png", root, cache))]


# --- the markdown ---------------------------------------------------------------------------------
def metric_table(doc: Document) -> list[str]:
    head = "| metric | n | interval | " + " | ".join(doc.methods) + " |"
    lines = [head, "|" + "---|" * (3 + len(doc.methods))]
    for key in doc.metric_names():
        present = [m for m in (doc.metric(x, key) for x in doc.methods) if m]
        ns = {m["n"] for m in present}
        kinds = sorted({str(m.get("ci_method", "?")) for m in present})
        row = [f"`{key}`", doc.n_of(key), ", ".join(kinds)] + [cell(doc.metric(m, key), len(ns) > 1) for m in doc.methods]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def section(doc: Document, figures: Path, out: Path, root: Path, cache: Path | None, number_from: int) -> tuple[list[str], int]:
    evaluators = doc.data.get("run", {}).get("evaluators", {})
    lines = [f"## {doc.target}: `{doc.path.name}`", "", f"Evaluation: {doc.config_line()}. Results file sha256 "
             f"{doc.sha256[:12]}.", ""]  # fmt: skip
    sets = evaluators.get("prompt_sets") or {}
    if sets:
        lines += ["Prompt sets: " + ", ".join(f"{s} {v['images']} images ({v['prompts']} distinct prompts)" for s, v in sorted(sets.items())) + ".", ""]
    specs = doc.init_args.get("methods") or {}
    hashes = doc.data.get("run", {}).get("model_hashes", {})
    models = []
    for m in doc.methods:
        spec = (doc.init_args.get("original") if m == ORIGINAL else specs.get(m)) or {}
        source = (spec.get("init_args") or {}).get("path") or (spec.get("init_args") or {}).get("delta") or "?"
        unet = (hashes.get(m) or {}).get("unet", "?")[:12]
        models.append(f"`{m}` = `{source}` (unet {unet})")
    lines += ["Models: " + ", ".join(models) + ".", ""]
    lines += ["Each cell: value [95% interval]; `n` is the images (or prompts) behind it, 1 for an exact measurement "
              "(the interval column says how each interval was made: README, Results JSON).", ""]  # fmt: skip
    lines += metric_table(doc) + [""]
    skipped = [(m, k, why) for m in doc.methods for k, why in sorted((doc.data["methods"][m].get("skipped") or {}).items())]
    if skipped:
        lines += ["Skipped (applied but not computed):", ""] + [f"- `{m}` `{k}`: {why}" for m, k, why in skipped] + [""]
    for kind, (written, caption) in make_figures(doc, figures, root, cache):
        if written is None:
            lines += [f"*{caption}.*", ""]
            continue
        link = Path(os.path.relpath(written, out.parent)).as_posix()
        lines += [f"![{doc.target} {kind}]({link})", "", f"*Figure {number_from}. {caption}*", ""]
        number_from += 1
    return lines, number_from


def write_report(results: list[str], out: str | Path, figures: str | Path, root: str | Path = ".", cache: str | Path | None = None) -> Path:
    """Read every results document, write the figures under ``figures`` and the markdown to ``out``."""
    documents = read_documents(results)
    out, figures, root = Path(out), Path(figures), Path(root)
    cache = Path(cache) if cache else None
    command = ["python -m igmu_lightning.report", "--results", *results, "--out", str(out), "--figures", str(figures)]
    command += (["--root", str(root)] if str(root) != "." else []) + (["--cache", str(cache)] if cache else [])
    lines = ["# Benchmark", "", "<!-- generated by igmu_lightning/report.py: edits here are overwritten -->", "",
             "Regenerated from the results JSONs of `evaluate.py` by", "", "```bash", " ".join(command), "```", "",
             "Every number is a value with its 95% interval and n; forgetting and attack rates: lower is better "
             "(more forgotten), preservation and alignment: higher is better.", ""]  # fmt: skip
    figure = 1
    for doc in sorted(documents, key=lambda d: (d.target, d.name)):
        body, figure = section(doc, figures, out, root, cache, figure)
        lines += body
    return atomic_write_text(out, "\n".join(lines).rstrip() + "\n")


def main(args: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m igmu_lightning.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", nargs="+", required=True, help="results JSONs of evaluate.py, or folders of them")
    parser.add_argument("--out", default="docs/benchmark.md", help="the markdown report to write")
    parser.add_argument("--figures", default="docs/figures/benchmark", help="folder for the PNG figures")
    parser.add_argument("--root", default=".", help="the folder the evaluations ran in (their relative paths start there)")
    parser.add_argument("--cache", default=None, help="image cache for the grids (default: the results' cache_dir under --root)")
    parsed = parser.parse_args(args)
    path = write_report(parsed.results, parsed.out, parsed.figures, parsed.root, parsed.cache)
    print(f"report written to {path}")
    return path


__all__ = ["Document", "document", "main", "make_figures", "pareto_front", "read_document", "write_report"]

if __name__ == "__main__":
    run_main(main)
