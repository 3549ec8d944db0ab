"""Generate IGMU's image layout with our batched sampler, then score it like a folder made
elsewhere: the SD-scale path of ``evaluate.py`` for diffusers folders and run checkpoints.

    <out>/<Concept>/forgot/<METHOD>/<Class>/i_j_k.png        every model, forget prompts
    <out>/<Concept>/remove_word/ORG/<Class>/i_j_k.png         the original, stripped prompts
    <out>/<Concept>/unrelated/<METHOD>/<Class>/i_j_k.png      every model, unrelated prompts

Seeds depend only on (i, j, k), so every model draws each prompt from the same noise, and an
image already on disk is not generated again (an interrupted run resumes where it stopped).
Under several processes each writes a contiguous share of every folder, then all score together."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import Evaluation, EvaluationOutput
from igmu_lightning.evaluation.distributed import barrier, is_main
from igmu_lightning.evaluation.generation import save_png
from igmu_lightning.evaluation.igmu_folder import IGMUFolder, own_share, read_prompt_file
from igmu_lightning.evaluation.judges import JudgeSpec
from igmu_lightning.sampling import Sampler, SamplerSettings


class GenerateAndScore(Evaluation):
    """Args:
    methods: name -> model to evaluate; ``original`` is written as ``reference`` (ORG).
    original: the model before unlearning.
    out: where the IGMU layout is written (kept: it is the evaluation's image record).
    concept, task: folder name and prompt-file key (``Nudity`` / ``nudity``).
    forget_prompts: ``forgot.json``; retain_prompts: ``retain.json`` (stripped prompts for nudity
        and style, unrelated classes for objects); ``retain_role`` says which.
    judge, target, fid_features, distance_features, clip: as ``IGMUFolder``.
    samples_per_prompt: k in i_j_k.
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
        retain_prompts: str,
        judge: JudgeSpec,
        target: str,
        retain_role: str = "remove_word",
        reference: str = "ORG",
        samples_per_prompt: int = 1,
        sampler: SamplerSettings | None = None,
        batch_size: int = 8,
        fid_features: str = "inception",
        distance_features: str | None = None,
        clip: str | None = None,
    ) -> None:
        if retain_role not in ("remove_word", "unrelated"):
            raise IGMUError(f"retain_role must be remove_word or unrelated, got '{retain_role}'")
        if reference in methods:
            raise IGMUError(f"'{reference}' names the original model: rename that method")
        self.methods, self.original, self.out = dict(methods), original, Path(out)
        self.concept, self.task, self.retain_role, self.reference = concept, task, retain_role, reference
        self.forget_file, self.retain_file = forget_prompts, retain_prompts
        self.samples, self.settings, self.batch_size = samples_per_prompt, sampler or SamplerSettings(), batch_size
        self.scorer = dict(judge=judge, target=target, fid_features=fid_features, distance_features=distance_features)
        if clip:  # CSDR against the stripped prompts: only they exist for remove_word tasks
            if retain_role != "remove_word":
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

    def run(self, seed: int) -> EvaluationOutput:
        forget = read_prompt_file(self.forget_file, self.task)
        retain = read_prompt_file(self.retain_file, self.task)
        root = self.out / self.concept
        hashes = {}
        for name, spec in [(self.reference, self.original), *self.methods.items()]:
            model = spec.build().to(self.device).eval()
            hashes[name] = model.hashes()
            sampler = Sampler(model, self.settings, batch_size=self.batch_size)
            self._write(sampler, root / "forgot" / name, forget, seed)
            if self.retain_role == "unrelated":
                self._write(sampler, root / "unrelated" / name, retain, seed)
            elif name == self.reference:
                self._write(sampler, root / "remove_word" / name, retain, seed)
        barrier()  # every share of every folder is on disk before any process scores them
        scorer = IGMUFolder(
            str(self.out), self.concept, self.forget_file, self.task, reference=self.reference, **self.scorer
        )
        scorer.device = self.device
        scored = scorer.run(seed)
        return EvaluationOutput(scored.methods, hashes, scored.evaluators)
