"""Generate IGMU's image layout with our batched sampler, then score it like a folder made
elsewhere: the SD-scale path of ``evaluate.py`` for diffusers folders and run checkpoints.

    <out>/<Concept>/forgot/<METHOD>/<Class>/i_j_k.png        every model, forget prompts
    <out>/<Concept>/remove_word/ORG/<Class>/i_j_k.png         the original, stripped prompts
    <out>/<Concept>/unrelated/<METHOD>/<Class>/i_j_k.png      every model, unrelated prompts

    <out>/<Concept>/multilingual/<METHOD>/<language>/0_j_k.png   HUB's multilingual prompts
    <out>/<Concept>/adversarial/<METHOD>/<name>/0_j_k.png        adversarial prompt files

Seeds depend only on (i, j, k), so every model draws each prompt from the same noise, and an
image already on disk is not generated again (an interrupted run resumes where it stopped).
Under several processes each writes a contiguous share of every folder, then all score together."""

from __future__ import annotations

from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from igmu_lightning.artifacts import save_png
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.data.prompts import read_multilingual_csv, read_prompt_lines
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import Evaluation, EvaluationOutput
from igmu_lightning.evaluation.distributed import barrier, is_main
from igmu_lightning.evaluation.igmu_folder import IGMUFolder, check_judge, own_share, read_prompt_file
from igmu_lightning.evaluation.judges import JudgeSpec
from igmu_lightning.evaluation.results import by_aspect
from igmu_lightning.evaluation.scoring import Scorecard
from igmu_lightning.sampling import Sampler, SamplerSettings


class GenerateAndScore(Evaluation):
    """Args:
    methods: name -> model to evaluate; ``original`` is written as ``reference`` (ORG).
    original: the model before unlearning.
    out: where the IGMU layout is written (kept: it is the evaluation's image record).
    concept, task: folder name and prompt-file key (``Nudity`` / ``nudity``).
    forget_prompts: ``forgot.json``, or HUB's headerless target CSV (one prompt a line).
    retain_prompts: ``retain.json`` (stripped prompts for nudity and style, unrelated classes for
        objects; ``retain_role`` says which), a one-prompt-a-line file, or None (not generated).
    multilingual_prompts: HUB's multilingual CSV (``Original,Spanish,French,German,Italian,
        Portuguese,Index``): ``robustness.multilingual.<language>.target_rate`` per language.
    adversarial_prompts: name -> a file of adversarial prompts, one a line:
        ``robustness.adversarial.<name>.target_rate`` (every prompt counts, also those that
        already worked before any attack).
    judge, target, fid_features, distance_features, clip, subject_judge: as ``IGMUFolder``.
    samples_per_prompt: k in i_j_k.
    category: the task table's category (default: from ``task``), as ``IGMUFolder``.
    """

    shares_work = True

    def __init__(
        self,
        methods: dict[str, BackboneSpec],
        original: BackboneSpec,
        out: str,
        concept: str,
        task: str,
        forget_prompts: str,
        retain_prompts: str | None,
        judge: JudgeSpec,
        target: str,
        retain_role: str = "remove_word",
        reference: str = "ORG",
        samples_per_prompt: int = 1,
        sampler: SamplerSettings | None = None,
        batch_size: int = 8,
        fid_features: str | None = "inception",
        distance_features: str | None = None,
        clip: str | None = None,
        subject_judge: JudgeSpec | None = None,
        multilingual_prompts: str | None = None,
        adversarial_prompts: dict[str, str] | None = None,
        category: str | None = None,
    ) -> None:
        if retain_role not in ("remove_word", "unrelated"):
            raise IGMUError(f"retain_role must be remove_word or unrelated, got '{retain_role}'")
        if reference in methods:
            raise IGMUError(f"'{reference}' names the original model: rename that method")
        self.methods, self.original, self.out = dict(methods), original, Path(out)
        self.concept, self.task, self.retain_role, self.reference = concept, task, retain_role, reference
        self.forget_file, self.retain_file = forget_prompts, retain_prompts
        self.samples, self.settings, self.batch_size = samples_per_prompt, sampler or SamplerSettings(), batch_size
        self.scorer = dict(judge=judge, target=target, fid_features=fid_features, distance_features=distance_features,
                           subject_judge=subject_judge, category=category)  # fmt: skip
        self.multilingual_file, self.adversarial_files = multilingual_prompts, dict(adversarial_prompts or {})
        for name in self.adversarial_files:
            if not name or "/" in name or "." in name:
                raise IGMUError(f"adversarial prompt set name '{name}' must be a plain folder name (no '/' or '.')")
        if clip:  # CSDR against the stripped prompts: only they exist for remove_word tasks
            if retain_role != "remove_word" or not retain_prompts:
                raise IGMUError("CSDR needs stripped prompts: set retain_role: remove_word (nudity, style)")
            self.scorer.update(clip=clip, stripped_prompts=retain_prompts)

    def _write(self, sampler: Sampler, folder: Path, classes: dict[str, list[str]], seed: int) -> None:
        jobs = [
            (folder / cls / f"{i}_{j}_{k}.png", prompt, seed * 1_000_003 + i * 100_000 + j * 100 + k)
            for i, (cls, prompts) in enumerate(classes.items())
            for j, prompt in enumerate(prompts)
            for k in range(self.samples)
        ]
        todo = [job for job in own_share(jobs) if not job[0].is_file()]
        desc = f"generating {folder.parent.name}/{folder.name}"
        for start in tqdm(range(0, len(todo), self.batch_size), desc=desc, unit="batch", disable=not is_main()):
            chunk = todo[start : start + self.batch_size]
            images = sampler.generate([p for _, p, _ in chunk], [s for _, _, s in chunk]).images
            for (path, _, _), image in zip(chunk, images):
                save_png(path, image)

    def _robustness_sets(self) -> dict[str, dict[str, list[str]]]:
        """``{"multilingual": {language: prompts}, "adversarial": {name: prompts}}``, read (and
        checked) before any image is generated."""
        sets = {}
        if self.multilingual_file:
            sets["multilingual"] = read_multilingual_csv(self.multilingual_file)
        if self.adversarial_files:
            sets["adversarial"] = {
                name: read_prompt_lines(path, f"adversarial prompt file '{name}'") for name, path in self.adversarial_files.items()
            }
        return sets

    def check(self) -> None:
        """Every prompt file, the judges and every model (original and methods), before generating."""
        read_prompt_file(self.forget_file, self.task)
        if self.retain_file:
            read_prompt_file(self.retain_file, self.task)
        self._robustness_sets()
        check_judge(self.scorer["judge"], self.scorer["target"], "judge", "target")
        super().check()

    def run(self, seed: int) -> EvaluationOutput:
        forget = read_prompt_file(self.forget_file, self.task)
        retain = read_prompt_file(self.retain_file, self.task) if self.retain_file else None
        robustness = self._robustness_sets()
        root = self.out / self.concept
        hashes = {}
        for name, spec in [(self.reference, self.original), *self.methods.items()]:
            model = spec.build().to(self.device).eval()
            hashes[name] = model.hashes()
            sampler = Sampler(model, self.settings, batch_size=self.batch_size)
            self._write(sampler, root / "forgot" / name, forget, seed)
            if retain is not None and self.retain_role == "unrelated":
                self._write(sampler, root / "unrelated" / name, retain, seed)
            elif retain is not None and name == self.reference:
                self._write(sampler, root / "remove_word" / name, retain, seed)
            for kind, sets in robustness.items():
                for set_name, prompts in sets.items():  # one class each: i = 0, so j follows the file's rows
                    self._write(sampler, root / kind / name, {set_name: prompts}, seed)
        barrier()  # every share of every folder is on disk before any process scores them
        scorer = IGMUFolder(
            str(self.out), self.concept, self.forget_file, self.task, reference=self.reference, **self.scorer
        )
        scorer.device = self.device
        scored = scorer.run(seed)
        if robustness:
            judge = self.scorer["judge"].build()
            if isinstance(judge, nn.Module):
                judge.to(self.device)
            target = judge.class_names.index(self.scorer["target"])
            for name in [self.reference, *self.methods]:  # not other folders an earlier run left in out/
                card = Scorecard(scorer.rule, scorer.category, seed)
                for kind, sets in robustness.items():
                    for set_name in sets:  # this process's share of the set's images
                        files = own_share(sorted((root / kind / name / set_name).glob("*.png")))
                        card.target_rate(f"robustness.{kind}.{set_name}.target_rate", scorer.judged(judge, files), target)
                aspects = scored.methods[name]["aspects"]
                aspects["robustness"] = dict(sorted({**aspects.get("robustness", {}), **by_aspect(card.metrics)["robustness"]}.items()))
        return EvaluationOutput(scored.methods, hashes, scored.evaluators)
