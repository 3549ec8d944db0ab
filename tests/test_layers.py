"""The package layering: a package imports only packages of lower layers (and itself), so the
low-level parts (backbone, on-disk formats, metrics) never import the high-level ones, and
algorithms and evaluation stand side by side without importing each other."""

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "igmu_lightning"
LAYERS = {
    "errors": 0, "utils": 1,
    "backbone": 2, "world": 2, "sampling": 3,
    "data": 4, "metrics": 4, "detectors": 4,
    "artifacts": 5,
    "modules": 6, "attacks": 6,
    "algorithms": 7, "evaluation": 7,
    "callbacks": 8, "config_errors": 8, "report": 8, "eval_wandb": 8,
    "cli": 9, "evaluate_cli": 9, "loggers": 9, "benchmark": 9,
}  # fmt: skip


def part_of(path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("igmu_lightning."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("igmu_lightning.")}
    return names


def test_every_part_has_a_layer():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts <= set(LAYERS), f"give these a layer: {sorted(parts - set(LAYERS))}"


def test_no_package_imports_a_higher_or_sibling_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part == "__init__":
            continue
        for other in imported_parts(path) - {part}:
            if LAYERS[other] >= LAYERS[part]:
                wrong.append(f"{path.relative_to(ROOT)} ({part}, layer {LAYERS[part]}) imports {other} (layer {LAYERS[other]})")
    assert not wrong, "\n".join(wrong)
