"""An attack (``igmu_lightning.attacks``) as a robustness probe: the forget prompts are attacked on
the model under evaluation, and the probe reports

    robustness.<name>.pre_asr             the plain prompt's image already shows the target
    robustness.<name>.asr                 it does before OR after the attack (UnlearnDiffAtk's ASR)
    robustness.<name>.seconds_per_prompt  the attack's wall time per attacked prompt (exact)

each rate with its n and cluster interval (``Scorecard.rate``). What the attack found (per prompt:
prompt, seed, adversarial prompt, pre, post, details) is kept in ``EvaluationOutput.attacks`` and
written beside the results as ``<results stem>.attacks/<method>/<name>.json``: every adversarial
prompt can be rerun with its seed and the recorded sampler settings (an embedding attack's
conditioning goes beside it, ``<name>.safetensors``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from igmu_lightning.attacks import Attack, AttackContext
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.distributed import gather_objects
from igmu_lightning.evaluation.probes import Probe, ProbeContext
from igmu_lightning.evaluation.results import exact
from igmu_lightning.evaluation.scoring import Scorecard
from igmu_lightning.evaluation.world_sets import PromptBatch
from igmu_lightning.sampling import Sampler, SamplerSettings, to_uint8
from igmu_lightning.utils.io import atomic_write_bytes, atomic_write_json
from igmu_lightning.world.prompts import PromptItem

OUTCOMES_SUFFIX = ".attacks"  # <results stem>.attacks/<method>/<probe>.json


@dataclass
class AttackOutcomes:
    """One attack probe's findings on one model: ``to_json()`` is the file written beside the results.

    rows: per forget prompt, in order: ``prompt``, ``seed``, ``adversarial_prompt`` (None when the
        prompt was not attacked: it succeeded already), ``pre``, ``post`` (None when not attacked),
        ``success`` (pre or post), ``details`` (the attack's own facts).
    embeddings: (n_attacked, L, D) conditioning of an embedding attack, in the order of the attacked
        rows (``row["embedding_index"]``), else None.
    """

    probe: str
    method: str
    attack: dict
    sampler: dict
    seed: int
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    embeddings: torch.Tensor | None = None

    def to_json(self) -> dict:
        n = len(self.rows)
        summary = {"n": n, "pre_asr": sum(r["pre"] for r in self.rows) / max(n, 1),
                   "asr": sum(r["success"] for r in self.rows) / max(n, 1), "seconds": self.seconds}  # fmt: skip
        return {"probe": self.probe, "method": self.method, "attack": self.attack, "sampler": self.sampler, "seed": self.seed,
                "summary": summary, "prompts": self.rows}  # fmt: skip

    def write(self, path: str | Path) -> Path:
        """The JSON at ``path`` (atomically), and the embeddings beside it when there are any."""
        path = Path(path)
        if self.embeddings is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".safetensors.part")
            save_file({"embeddings": self.embeddings.detach().float().cpu().contiguous()}, str(tmp))
            atomic_write_bytes(path.with_suffix(".safetensors"), tmp.read_bytes())
            tmp.unlink()
        # the attack's settings may hold objects JSON cannot write: their text stands in
        return atomic_write_json(path, json.loads(json.dumps(self.to_json(), default=str)))


def outcomes_folder(results_path: str | Path) -> Path:
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + OUTCOMES_SUFFIX)


def write_attack_outcomes(results_path: str | Path, attacks: dict[str, dict[str, AttackOutcomes]]) -> list[Path]:
    """Every model's attack outcomes beside the results: ``<stem>.attacks/<method>/<probe>.json``."""
    folder = outcomes_folder(results_path)
    return [found.write(folder / method / f"{probe}.json") for method, probes in attacks.items() for probe, found in probes.items()]


def read_attack_outcomes(path: str | Path) -> dict:
    """An outcomes file as written, with ``embeddings`` loaded from beside it (or None)."""
    path = Path(path)
    document = json.loads(path.read_text())
    beside = path.with_suffix(".safetensors")
    document["embeddings"] = load_file(str(beside))["embeddings"] if beside.is_file() else None
    return document


def rerun_outcomes(document: dict, model, judge: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 16) -> list[bool]:
    """Regenerate each attacked row's image (adversarial prompt, or its embeddings, with its seed
    and the recorded sampler settings) on ``model`` and judge it: the ``post`` column again (CPU
    kernels round differently for other batch sizes, so an image on the judge's edge may flip)."""
    sampler = Sampler(model, SamplerSettings(**document["sampler"]), batch_size=batch_size)
    rows = [r for r in document["prompts"] if r["adversarial_prompt"] is not None]
    if document.get("embeddings") is not None:
        cond = document["embeddings"][[r["embedding_index"] for r in rows]].to(model.device, model.dtype)
        images = sample_embeddings(sampler, cond, [r["seed"] for r in rows], batch_size)
    else:
        images = sampler.generate([r["adversarial_prompt"] for r in rows], [r["seed"] for r in rows]).images
    with torch.inference_mode():
        return [bool(x) for x in judge(images.to(model.device)).cpu()]


@torch.no_grad()
def sample_embeddings(sampler: Sampler, cond: torch.Tensor, seeds: list[int], batch_size: int) -> torch.Tensor:
    """Images of conditioning embeddings (N, L, D), ``batch_size`` at a time, on the CPU, quantised
    to 8 bits like ``generate_images``'."""
    chunks = [sampler.sample_embeddings(cond[i : i + batch_size], seeds[i : i + batch_size]).cpu() for i in range(0, len(seeds), batch_size)]
    return to_uint8(torch.cat(chunks)).float() / 255  # 8 bits, as every image the evaluation judges


class AttackProbe(Probe):
    """An attack run on the forget prompts of the model under evaluation (the world's forget set,
    or ``PromptSetTargetRate``'s prompt set), judged by the evaluation's own judge.

    Each forget image that already shows the target counts as a pre-attack success and (by default)
    is not attacked; the others are attacked in batches, their adversarial prompts' images are
    made with the same seeds (or from ``AttackResult.embeddings``) and judged.

    Args:
        attack: the attack (``igmu_lightning.attacks``: ``UnlearnDiffAtk``, ...).
        name: the probe's name in the results (default: the attack's ``name``).
        batch_size: prompts the attack optimises at once (None: all of them).
        attack_successes: attack the prompts that succeed already too (their ASR is counted
            either way; it costs time and only fills their ``post``).
        image_batch_size: images per sampler batch when generating from embeddings.

    Under several processes (``--devices N``) each attacks its share of the prompts, as it makes
    its share of the images; the outcomes are gathered in prompt order, and seconds per prompt is
    the processes' summed attack time over the prompts attacked (device-seconds per prompt).
    """

    def __init__(self, attack: Attack, name: str | None = None, batch_size: int | None = None,
                 attack_successes: bool = False, image_batch_size: int = 16) -> None:  # fmt: skip
        if not isinstance(attack, Attack):
            raise IGMUError(f"AttackProbe needs an igmu_lightning.attacks.Attack, got {type(attack).__name__}")
        self.attack, self.name = attack, name or attack.name
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise IGMUError(f"probe name '{self.name}' must be letters, digits, '_' or '-' (it becomes robustness.<name>.*): set name")
        if batch_size is not None and batch_size < 1:
            raise IGMUError(f"batch_size of probe '{self.name}' must be >= 1 or null, got {batch_size}")
        self.batch_size, self.attack_successes, self.image_batch_size = batch_size, attack_successes, image_batch_size

    def record(self) -> dict:
        return {"class": type(self).__name__, "attack": json.loads(json.dumps(self.attack.to_config(), default=str)),
                "batch_size": self.batch_size, "attack_successes": self.attack_successes}  # fmt: skip

    def prompts(self, context: ProbeContext) -> PromptBatch:
        if context.forget is None:
            raise IGMUError(f"attack probe '{self.name}' needs the evaluation's forget prompts: use it in WorldEvaluation or PromptSetTargetRate")
        return context.forget

    def score(self, card: Scorecard, context: ProbeContext, generate: Callable[[PromptBatch], torch.Tensor]) -> AttackOutcomes | None:
        if context.model is None or context.judge is None:
            raise IGMUError(f"attack probe '{self.name}' needs the model under evaluation and a judge: use it in WorldEvaluation or PromptSetTargetRate")  # fmt: skip
        guidance = getattr(context.model, "guidance", None)
        if self.attack.finds_embeddings and guidance is not None and not guidance.samples_embeddings:
            why = (f"{type(guidance).__name__} needs the prompt behind every image, and {self.attack.name} finds "
                   "embeddings with no prompt behind them: this model cannot be attacked this way")  # fmt: skip
            for metric in ("pre_asr", "asr", "seconds_per_prompt"):
                card.skip(f"robustness.{self.name}.{metric}", why)
            return None
        if self.attack.needs_original and context.original is None:
            raise IGMUError(f"attack '{self.attack.name}' needs the model before unlearning: give the evaluation its original")
        batch = self.prompts(context)
        plain = context.forget_images if context.forget_images is not None else generate(batch)
        with torch.inference_mode():
            pre = context.judge(plain).bool().cpu()
        todo = [i for i in range(len(batch.items)) if self.attack_successes or not pre[i]]
        settings = context.sampler or SamplerSettings()
        adversarial: dict[int, str] = {}
        details: dict[int, dict] = {}
        embeddings: list[torch.Tensor] = []
        size = self.batch_size or max(len(todo), 1)
        start = time.perf_counter()
        for k in range(0, len(todo), size):
            part = todo[k : k + size]
            attack_context = AttackContext(
                model=context.model, prompts=[batch.items[i].prompt for i in part], seeds=[batch.seeds[i] for i in part],
                concept=context.concept, original=context.original if self.attack.needs_original else None,
                sampler=settings, judge=context.judge, seed=context.seed,
            )  # fmt: skip
            result = self.attack.run(attack_context)
            if len(result.prompts) != len(part):
                raise IGMUError(f"attack '{self.attack.name}' returned {len(result.prompts)} prompts for {len(part)}")
            for j, i in enumerate(part):
                adversarial[i] = result.prompts[j]
                details[i] = result.details[j] if j < len(result.details) else {}
            if result.embeddings is not None:
                embeddings.append(result.embeddings.detach())
        seconds = time.perf_counter() - start
        if embeddings and sum(len(e) for e in embeddings) != len(todo):
            raise IGMUError(f"attack '{self.attack.name}' returned embeddings for some prompts only")
        cond = torch.cat(embeddings) if embeddings else None
        post = torch.zeros(len(batch.items), dtype=torch.bool)
        if todo:
            if cond is not None:
                sampler = Sampler(context.model, settings, batch_size=self.image_batch_size)
                images = sample_embeddings(sampler, cond.to(context.model.device, context.model.dtype), [batch.seeds[i] for i in todo],
                                           self.image_batch_size)  # fmt: skip
            else:
                items = [PromptItem(adversarial[i], batch.items[i].scene) for i in todo]
                images = generate(PromptBatch(items, [batch.seeds[i] for i in todo], groups=[batch.groups[i] for i in todo]))
            with torch.inference_mode():
                post[todo] = context.judge(images.to(plain.device)).bool().cpu()
        success = pre | post
        device = plain.device
        ids = batch.prompt_ids(device)
        card.rate(f"robustness.{self.name}.pre_asr", pre.to(device), ids)
        card.rate(f"robustness.{self.name}.asr", success.to(device), ids)
        rows = []
        index = {i: n for n, i in enumerate(todo)}
        for i, item in enumerate(batch.items):
            row = {"prompt": item.prompt, "seed": int(batch.seeds[i]), "adversarial_prompt": adversarial.get(i),
                   "pre": bool(pre[i]), "post": bool(post[i]) if i in adversarial else None, "success": bool(success[i]),
                   "details": details.get(i, {})}  # fmt: skip
            if cond is not None and i in index:
                row["embedding_index"] = index[i]
            rows.append(row)
        # every process's share, in prompt order (shares are contiguous, in rank order)
        parts = gather_objects({"rows": rows, "seconds": seconds, "attacked": len(todo), "cond": None if cond is None else cond.cpu()})
        rows, offset, conds = [], 0, []
        for part in parts:
            for row in part["rows"]:
                if "embedding_index" in row:
                    row["embedding_index"] += offset
                rows.append(row)
            if part["cond"] is not None:
                conds.append(part["cond"])
                offset += len(part["cond"])
        attacked, seconds = sum(p["attacked"] for p in parts), sum(p["seconds"] for p in parts)
        if attacked:
            card.add(f"robustness.{self.name}.seconds_per_prompt", exact(seconds / attacked))
        else:
            card.skip(f"robustness.{self.name}.seconds_per_prompt", "every prompt succeeded before the attack: none was attacked")
        return AttackOutcomes(self.name, context.method, self.record()["attack"], asdict(settings), context.seed, rows, seconds,
                              torch.cat(conds) if conds else None)  # fmt: skip
