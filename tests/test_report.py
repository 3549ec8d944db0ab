"""The benchmark report (``python -m igmu_lightning.report``) from a small results JSON written
here: the table's numbers and intervals, the Pareto front against a hand-computed one, valid
PNG figures (the grid read from an image cache made here), the same bytes twice, and one error
line for a missing or corrupt results file."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from igmu_lightning.artifacts.images import ImageCache, fingerprint
from igmu_lightning.errors import IGMUError, run_main
from igmu_lightning.evaluation.world_sets import flatten_sets, set_sizes
from igmu_lightning.report import main, pareto_front, read_document
from igmu_lightning.sampling import SamplerSettings

# (target rate, retain accuracy) per method; hand-computed Pareto front (lower x, higher y):
# b has the lowest target rate, original the highest retain accuracy, a beats c (0.10 < 0.20 and
# 0.90 > 0.80) and d (same target rate, 0.90 > 0.85); neither b, a nor original beats another.
POINTS = {"original": (0.95, 0.98), "a": (0.10, 0.90), "b": (0.05, 0.70), "c": (0.20, 0.80), "d": (0.10, 0.85)}
FRONT = ["b", "a", "original"]
HASHES = {m: {"unet": f"{i:064x}", "text_encoder": "e" * 64, "vae": "f" * 64} for i, m in enumerate(POINTS)}
COLOURS = {"original": (255, 0, 0), "a": (0, 0, 255)}  # the cached images of these two: solid colours


def metric(value, lo, hi, n, how="wilson"):
    return {"value": value, "ci95": [lo, hi], "n": n, "ci_method": how}


def results(path, attacks=True):
    methods = {}
    for k, (m, (x, y)) in enumerate(POINTS.items()):
        aspects = {
            "forgetting": {"target_rate": metric(x, max(x - 0.05, 0), x + 0.08, 16)},
            "preservation": {"retain_accuracy": metric(y, y - 0.1, min(y + 0.02, 1), 20 if m != "d" else 18)},
            "quality": {"fid": metric(10.0 + k, 8.5 + k, 12.25 + k, 36, "percentile_bootstrap")},
            "alignment": {"attribute_rate": metric(0.9, 0.8, 0.95, 16)},
            "robustness": {"synonym.target_rate": metric(x, 0.0, 0.3, 16)},
            "efficiency": {"params_changed": metric(1234.0 * k, 1234.0 * k, 1234.0 * k, 1, "exact")},
        }
        if attacks:
            aspects["robustness"]["udiff.asr"] = metric(min(x + 0.5, 1), 0.4, 1.0, 16)
        methods[m] = {"aspects": aspects}
    methods["original"]["skipped"] = {"efficiency.wall_time_s": "no run record beside base"}
    config = {"precision": "32-true", "evaluation": {"class_path": "igmu_lightning.evaluation.world_eval.WorldEvaluation",
              "init_args": {"target": "object", "prompts_per_set": 4, "sampler": {"steps": 2}, "cache_dir": "cache",
                            "original": {"init_args": {"path": "base"}},
                            "methods": {m: {"init_args": {"path": f"models/{m}"}} for m in POINTS if m != "original"}}}}  # fmt: skip
    document = {"run": {"config": config, "seed": 0, "model_hashes": HASHES,
                        "evaluators": {"prompt_sets": {"forget": {"images": 16, "prompts": 12}}}}, "methods": methods}  # fmt: skip
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def fill_cache(root):
    """Solid-colour images for 'original' and 'a' where the evaluation would have cached them."""
    sizes = set_sizes("object", 4, None, None)
    forget = flatten_sets("object", sizes, 0)["forget"]
    settings = asdict(SamplerSettings(steps=2))
    cache = ImageCache(root / "cache")
    for m, rgb in COLOURS.items():
        folder = cache.folder(fingerprint(HASHES[m]), settings)
        image = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 8, 8) / 255
        for p, s in zip(forget.prompts, forget.seeds):
            cache.save(folder, p, s, image)
    return len(forget.prompts[:8])


def table_row(markdown: str, key: str) -> dict[str, str]:
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| metric |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in lines if line.startswith(f"| `{key}` |"))
    return dict(zip(names, [c.strip() for c in row.strip("|").split("|")]))


def test_pareto_front_by_hand():
    assert pareto_front(POINTS) == FRONT
    assert pareto_front({"x": (0.1, 0.9), "y": (0.1, 0.9)}) == ["x", "y"]  # ties: neither beats the other


def test_report_numbers_figures_and_determinism(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results(tmp_path / "obj.json")
    columns = fill_cache(tmp_path)
    main(["--results", "obj.json", "--out", "docs/bench.md", "--figures", "docs/fig"])
    text = (tmp_path / "docs/bench.md").read_text()
    row = table_row(text, "forgetting.target_rate")
    assert row["n"] == "16" and row["interval"] == "wilson"
    assert row["a"] == "0.100 [0.050, 0.180]" and row["b"] == "0.050 [0.000, 0.130]" and row["original"] == "0.950 [0.900, 1.030]"
    row = table_row(text, "preservation.retain_accuracy")  # n differs between methods: each cell says its own
    assert row["n"] == "18-20" and row["d"] == "0.850 [0.750, 0.870] (n=18)" and row["a"] == "0.900 [0.800, 0.920] (n=20)"
    row = table_row(text, "quality.fid")
    assert row["c"] == "13.0 [11.5, 15.2]" and row["interval"] == "percentile_bootstrap"
    assert table_row(text, "efficiency.params_changed")["b"] == "2468"  # exact: the value is its interval
    assert "`original` `efficiency.wall_time_s`: no run record beside base" in text
    assert "the Pareto front (b, a, original:" in text
    figures = sorted(p.name for p in (tmp_path / "docs/fig").iterdir())
    assert figures == ["obj_attacks.png", "obj_grid.png", "obj_profile.png", "obj_tradeoff.png"]
    for name in figures:
        assert f"](fig/{name})" in text  # linked relative to the markdown
        with Image.open(tmp_path / "docs/fig" / name) as image:
            image.verify()
        assert Image.open(tmp_path / "docs/fig" / name).format == "PNG"
    captions = [line for line in text.splitlines() if line.startswith("*Figure")]
    assert len(captions) == 4 and all("n = " in c and "config sha256" in c for c in captions)
    assert f"the first {columns} forget prompts" in captions[3] and "rows: original, a)" in captions[3]
    assert "Left out: b (not in the cache" in captions[3]
    grid = np.asarray(Image.open(tmp_path / "docs/fig/obj_grid.png").convert("RGB")).reshape(-1, 3).astype(int)
    for rgb in COLOURS.values():  # each cached row is drawn
        assert (np.abs(grid - rgb).sum(1) < 10).sum() > 100
    before = {p: p.read_bytes() for p in (tmp_path / "docs").rglob("*") if p.is_file()}
    main(["--results", "obj.json", "--out", "docs/bench.md", "--figures", "docs/fig"])
    assert {p: p.read_bytes() for p in (tmp_path / "docs").rglob("*") if p.is_file()} == before


def test_no_attack_no_cache_notes(tmp_path):
    results(tmp_path / "obj.json", attacks=False)
    main(["--results", str(tmp_path), "--out", str(tmp_path / "r.md"), "--figures", str(tmp_path / "f"), "--root", str(tmp_path)])
    text = (tmp_path / "r.md").read_text()
    assert "*no plain vs attacked figure: these results hold no attack" in text
    assert "*no image grid: the image cache" in text and "the report generates no images" in text
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["obj_profile.png", "obj_tradeoff.png"]


@pytest.mark.parametrize(
    "content, message",
    [(None, "does not exist"), ('{"methods": {', "is not valid JSON (line 1"), ('{"run": {}}', "has no 'methods' mapping"),
     ('{"methods": {"a": {"aspects": {"forgetting": {"target_rate": {"value": 1}}}}}}', "a forgetting.target_rate lacks"),
     ('{"methods": {"a": {"aspects": {"quality": {"fid": {"value": 1, "ci95": [null, 2], "n": 3}}}}}}', "a quality.fid lacks")],
)  # fmt: skip
def test_bad_results_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(IGMUError, match="results file"):
        read_document(path)
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main(["--results", str(path), "--out", str(tmp_path / "r.md"), "--figures", str(tmp_path)]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: results file") and message in err
    assert str(path) in err and not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("n", [3, 13, 25])
def test_every_method_gets_its_own_colour(n):
    from igmu_lightning.report import colours, document

    methods = {f"m{i}": {"aspects": {}} for i in range(n)}
    doc = document("x", {"run": {"config": {"evaluation": {"init_args": {"target": "object"}}}}, "methods": methods})
    assert len(set(colours(doc).values())) == n


def test_attack_figure_wraps_many_methods_into_rows(tmp_path):
    """13 methods x 2 bars: one row would be ~16 inches wide; wrapped at 7 a row it is 2 rows of 7/6,
    about 0.6 of the one-row width, and every method's label is on an axis."""
    from igmu_lightning.report import attack_figure, document, pyplot

    attacked = {"forgetting": {"target_rate": metric(0.1, 0.0, 0.3, 16)}, "robustness": {"udiff.asr": metric(0.5, 0.3, 0.7, 16)}}
    methods = {f"m{i}": {"aspects": attacked} for i in range(13)}
    doc = document("x", {"run": {"config": {"evaluation": {"init_args": {"target": "object"}}}}, "methods": methods})
    seen = {}
    plt = pyplot()
    original_save = plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["axes"] = [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes]
        seen["width"] = fig.get_figwidth()
        return original_save(fig, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        path, caption = attack_figure(doc, tmp_path / "a.png")
    finally:
        plt.Figure.savefig = original_save
    assert len(doc.methods) == 13 and seen["axes"] == [doc.methods[:7], doc.methods[7:]]
    assert seen["width"] < 0.6 * (1.1 * 13 * 2 / 2 + 2) and "n = 16" in caption  # one row: 16.3 in
    assert Image.open(path).size[0] < Image.open(path).size[1] * 3


def test_label_groups_share_one_label_for_coinciding_points():
    """By hand: a and c coincide, b is 0.02 from a (inside tol 0.03), d is 0.05 away (outside)."""
    from igmu_lightning.report import label_groups

    groups = label_groups({"a": (0.0, 1.0), "b": (0.02, 0.99), "c": (0.0, 1.0), "d": (0.05, 1.0)}, 0.03)
    assert groups == [((0.0, 1.0), ["a", "b", "c"]), ((0.05, 1.0), ["d"])]
