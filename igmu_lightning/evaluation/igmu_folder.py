"""Scoring images generated elsewhere, in IGMU's layout:

    <root>/<Concept>/{forgot,remove_word,unrelated}/<METHOD>[/<Class>]/i_j_k.png

i = class index in the prompt file's order, j = prompt index, k = sample index; ``remove_word``
exists for the original model (``ORG``) only. Every method folder found is scored; images of two
methods are paired by their relative path (same class, prompt and sample), never by list order.
Under several processes (``evaluate.py --devices N``) each scores a contiguous share of every
image list and the metric states sync, so the numbers equal a one-process run."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm.auto import tqdm

from igmu_lightning.data.captioned_folder import load_image
from igmu_lightning.data.labelled_folder import IMAGE_SUFFIXES
from igmu_lightning.data.prompts import read_prompt_lines
from igmu_lightning.errors import IGMUError
from igmu_lightning.evaluation.base import Evaluation, EvaluationOutput
from igmu_lightning.evaluation.distributed import is_main, share
from igmu_lightning.evaluation.evaluators import CI_METHODS, detector_record, fid_record
from igmu_lightning.evaluation.judges import JudgeSpec, feature_extractor
from igmu_lightning.evaluation.scoring import FID_OFF, Scorecard
from igmu_lightning.evaluation.tasks import task_category, task_rule
from igmu_lightning.metrics.clip_score import CSDR, ClipScorer
from igmu_lightning.metrics.paired import TimmFeatureMaps, match_pairs

NAME = re.compile(r"^(\d+)_(\d+)_(\d+)$")


def list_images(folder: Path) -> dict[str, Path]:
    """Relative path (without suffix) -> file, for every image below ``folder``."""
    return {
        str(p.relative_to(folder).with_suffix("")): p
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    }


def read_prompt_file(path: str | Path, task: str) -> dict[str, list[str]]:
    """``{class: [prompt]}`` of one task of an IGMU prompt file (JSON), with one-line errors. Any
    other file is HUB's one prompt a line (a headerless ``.csv`` or a ``.txt``): one class, named
    after the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise IGMUError(f"prompt file '{path}' does not exist: fix the path (IGMU's forgot.json, or a file of one prompt a line)")
    if path.suffix.lower() != ".json":
        return {path.stem: read_prompt_lines(path)}
    layout = '{"<task>": {"<class>": ["prompt", ...]}}'
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise IGMUError(f"prompt file '{path}' is not UTF-8 text (byte {err.start}): save it as UTF-8 JSON") from None
    if not text.strip():
        raise IGMUError(f"prompt file '{path}' is empty: give IGMU's JSON, {layout}")
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as err:
        raise IGMUError(f"prompt file '{path}' is not valid JSON ({err.msg}, line {err.lineno}): fix it to IGMU's {layout}") from None
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise IGMUError(f"prompt file '{path}' is JSON but not IGMU's layout {layout}")
    if task not in tasks:
        raise IGMUError(f"prompt file '{path}' has no task '{task}' (it has {', '.join(tasks) or 'none'}): "
                        "set task to one of them, or give the prompt file of this task")  # fmt: skip
    classes = tasks[task]
    if not classes or not any(classes.values()):
        raise IGMUError(f"task '{task}' in '{path}' has no prompts: give at least one prompt per class")
    return {str(c): list(p) for c, p in classes.items()}


def check_names(files: dict[str, Path], prompts: list[list[str]]) -> None:
    """Each file must be i_j_k with class i and prompt j present in the prompt file."""
    for key, path in files.items():
        match = NAME.match(Path(key).name)
        if not match:
            raise IGMUError(f"image '{path}' is not named i_j_k (class_prompt_sample), as IGMU's layout requires")
        i, j = int(match[1]), int(match[2])
        if i >= len(prompts) or j >= len(prompts[i]):
            raise IGMUError(f"image '{path}' names prompt {j} of class {i}, which the prompt file does not have")


def check_files(folder: Path) -> None:
    """Every file below a method folder is an image (hidden files such as .DS_Store aside)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise IGMUError(f"'{path}' is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}): move it out of the image folder")


def check_sizes(folder: Path) -> None:
    """All images of one method folder have one size (they are stacked into batches); each file's
    header is read, so a corrupt image is named here too."""
    first: tuple[Path, tuple[int, int]] | None = None
    if folder.is_dir():
        for path in list_images(folder).values():
            try:
                with Image.open(path) as im:
                    size = im.size
                    im.verify()
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise IGMUError(f"image '{path}' cannot be read ({type(err).__name__}): remove or replace it") from None
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise IGMUError(f"image '{path}' is {size[0]}x{size[1]}, but '{first[0]}' is {first[1][0]}x{first[1][1]}: "
                                "give every image of a method folder one size")  # fmt: skip


def check_judge(spec: JudgeSpec, name: str, what: str, key: str) -> None:
    """The judge builds and knows the class the config names (a detector of another task does not)."""
    judge = spec.build()
    if name not in judge.class_names:
        where = f" '{spec.path}'" if getattr(spec, "path", None) else ""
        raise IGMUError(f"{key} '{name}' is not a class of the {what}{where} ({', '.join(judge.class_names)}): "
                        f"give a {what} trained for this task, or set {key} to one of its classes")  # fmt: skip


def prompt_ids(keys: list[str], device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Each image's prompt (class i, prompt j of its i_j_k name) as one integer, the cluster of the
    intervals: the k samples of a prompt are not independent. None when a name is not i_j_k."""
    matches = [NAME.match(Path(key).name) for key in keys]
    if not all(matches):
        return None
    return torch.tensor([int(m[1]) * 1_000_000 + int(m[2]) for m in matches], dtype=torch.long, device=device)


def own_share(items: list) -> list:
    """This process's contiguous share of a sorted list of images (all of it in one process)."""
    return items[share(len(items), "images")]


def files_hash(concept_folder: Path, method: str) -> str:
    """SHA-256 over the relative paths and bytes of every image of one method."""
    digest = hashlib.sha256()
    for split in ("forgot", "remove_word", "unrelated"):
        for key, path in list_images(concept_folder / split / method).items():
            digest.update(f"{split}/{key}|".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class IGMUFolder(Evaluation):
    """Args:
    root: the folder holding ``<concept>/``.
    concept: e.g. ``Nudity``, ``VanGogh``, ``Church``.
    prompts: IGMU-format forget prompts (``forgot.json``: ``{task: {class: [prompt]}}``).
    task: the key of the task in the prompt file (``nudity``, ``style_vangogh``...).
    judge: the detector that decides whether the target is present.
    target: the judge's class name that means "the target is present".
    reference: the original model's method folder (one of the folders under ``forgot/``).
    fid_features: ``inception`` (torchmetrics' FID Inception; its weights are fetched on first use),
        a detector folder whose backbone gives the FID features, or None: no FID, and each method's
        ``skipped`` says which FIDs were left out.
    distance_features: a timm detector folder for the paired feature distance (None: skipped).
    clip: a CLIP model (hub id or folder) for CSDR (None: skipped).
    stripped_prompts: IGMU's ``retain.json`` holding, index for index, the forget prompts with the
        concept words removed (nudity, style); CSDR scores both models' images against them.
    subject_judge: a person-present judge (``judges.NudeNetPerson``, ``judges.YOLOPerson``) run on
        the forget images: ``preservation.subject_kept``, the share where the subject is still drawn.
    subject_class: the subject judge's class that means "present".
    category: the task table's category (``evaluation.tasks``), which decides the splits scored
        and the metrics that apply (default: from ``task``, e.g. ``style_vangogh`` -> style).
    """

    shares_work = True

    def __init__(
        self,
        root: str,
        concept: str,
        prompts: str,
        task: str,
        judge: JudgeSpec,
        target: str,
        reference: str = "ORG",
        fid_features: str | None = "inception",
        distance_features: str | None = None,
        clip: str | None = None,
        stripped_prompts: str | None = None,
        batch_size: int = 64,
        subject_judge: JudgeSpec | None = None,
        subject_class: str = "present",
        category: str | None = None,
    ) -> None:
        if clip and not stripped_prompts:
            raise IGMUError("CSDR needs stripped_prompts (IGMU's retain.json for nudity and style tasks)")
        self.category = category or task_category(task)
        self.rule = task_rule(self.category)
        for given, metric, key in ((subject_judge, "preservation.subject_kept", "subject_judge"), (clip, "alignment.csdr", "clip")):
            if given is not None and not self.rule.allows(metric):
                raise IGMUError(f"{key} is set, but {metric} does not apply to {self.category} erasures (evaluation/tasks.py): "
                                f"drop {key}, or set category to one it applies to")  # fmt: skip
        self.clip, self.stripped_file = clip, stripped_prompts
        self.folder = Path(root) / concept
        self.prompts_file, self.task, self.judge_spec, self.target = Path(prompts), task, judge, target
        self.reference, self.fid_features, self.distance_features = reference, fid_features, distance_features
        self.batch_size = batch_size
        self.subject_spec, self.subject_class = subject_judge, subject_class

    def _prompts(self) -> list[list[str]]:
        return list(read_prompt_file(self.prompts_file, self.task).values())

    def _load(self, files: list[Path]) -> torch.Tensor:
        return torch.stack([load_image(p) for p in files]).to(self.device)

    def judged(self, judge, files: list[Path]) -> torch.Tensor:
        """The judge's class of each image file, read and judged in batches."""
        out = [judge.predict(self._load(files[i : i + self.batch_size])) for i in range(0, len(files), self.batch_size)]
        # on the metrics' device: NCCL syncs CUDA states only, and NudeNet answers on the CPU
        return torch.cat(out).to(self.device) if out else torch.zeros(0, dtype=torch.long, device=self.device)

    def _methods(self) -> list[str]:
        """The method folders under ``forgot/``; the reference must be one of them."""
        forgot = self.folder / "forgot"
        if not forgot.is_dir():
            raise IGMUError(f"'{forgot}' does not exist: give root and concept of a folder in IGMU's layout, "
                            "<root>/<concept>/forgot/<METHOD>/[<Class>/]i_j_k.png")  # fmt: skip
        methods = sorted(p.name for p in forgot.iterdir() if p.is_dir())
        if not methods:
            raise IGMUError(f"'{forgot}' holds no method folders: put each method's images in forgot/<METHOD>/")
        if self.reference not in methods:
            raise IGMUError(
                f"reference '{self.reference}' is not a method folder under '{forgot}' (found: {', '.join(methods)}): "
                "set reference to the original model's folder"
            )
        return methods

    def check(self) -> None:
        """Before any image is scored: the prompt files, the layout, every image's name and size,
        no stray files, and the judge's classes."""
        prompts = self._prompts()
        if self.clip:
            read_prompt_file(self.stripped_file, self.task)
        methods = self._methods()
        for split in ("forgot", "remove_word", "unrelated"):
            for method in methods:
                check_files(self.folder / split / method)
        for method in methods:
            check_names(list_images(self.folder / "forgot" / method), prompts)
        for split in ("forgot", "remove_word", "unrelated"):
            for method in methods:
                check_sizes(self.folder / split / method)
        check_judge(self.judge_spec, self.target, "judge", "target")
        if self.subject_spec is not None:
            check_judge(self.subject_spec, self.subject_class, "subject judge", "subject_class")

    def run(self, seed: int) -> EvaluationOutput:
        prompts = self._prompts()
        forgot = self.folder / "forgot"
        methods = self._methods()
        judge = self.judge_spec.build()
        first = next(iter(list_images(forgot / methods[0]).values()), None)
        if isinstance(judge, nn.Module):
            judge.to(self.device)
        if self.target not in judge.class_names:
            raise IGMUError(f"target '{self.target}' is not a class of the judge ({', '.join(judge.class_names)})")
        target = judge.class_names.index(self.target)
        subject, present = None, None
        if self.subject_spec is not None:
            subject = self.subject_spec.build()
            if isinstance(subject, nn.Module):
                subject.to(self.device)
            if self.subject_class not in subject.class_names:
                raise IGMUError(
                    f"subject_class '{self.subject_class}' is not a class of the subject judge ({', '.join(subject.class_names)})"
                )
            present = subject.class_names.index(self.subject_class)
        fid_net = feature_extractor(self.fid_features).to(self.device) if self.fid_features is not None else None
        distance_net = None
        if self.distance_features:
            distance_net = TimmFeatureMaps(feature_extractor(self.distance_features)).to(self.device)
        scorer = ClipScorer(self.clip).to(self.device) if self.clip else None
        stripped = list(read_prompt_file(self.stripped_file, self.task).values()) if self.clip else []
        removed = list_images(self.folder / "remove_word" / self.reference) if "remove_word" in self.rule.reference_sets else {}
        unrelated_ref = list_images(self.folder / "unrelated" / self.reference)
        size = list(load_image(first).shape[-2:]) if first else None
        evaluators = {
            "judge": detector_record(judge, getattr(self.judge_spec, "path", None)),
            "target": self.target,
            "fid": fid_record(self.fid_features, fid_net, size),
            "ci": CI_METHODS,
        }
        if distance_net is not None:
            evaluators["feature_distance"] = fid_record(self.distance_features, distance_net.extractor, size)
        if self.clip:
            evaluators["clip"] = {"model": self.clip}
        results, hashes = {}, {}
        for method in tqdm(methods, desc="scoring methods", unit="method", disable=not is_main()):
            forget_files = list_images(forgot / method)
            check_names(forget_files, prompts)
            card = Scorecard(self.rule, self.category, seed)
            keys = own_share(list(forget_files))
            card.target_rate("forgetting.target_rate", self.judged(judge, [forget_files[k] for k in keys]), target, prompt_ids(keys, self.device))
            if subject is not None:
                # the same share and the same prompt clusters as the target rate: a prompt's k samples are not independent
                kept = self.judged(subject, [forget_files[k] for k in keys])
                card.target_rate("preservation.subject_kept", kept, present, prompt_ids(keys, self.device))
            unrelated = list_images(self.folder / "unrelated" / method) if "unrelated" in self.rule.prompt_sets else {}
            if unrelated:
                mine_unrelated = own_share(list(unrelated.items()))
                ids = prompt_ids([key for key, _ in mine_unrelated], self.device)
                card.rate("preservation.retain_accuracy", self._retained(judge, target, mine_unrelated), ids)
            for suffix, mine, theirs in (("remove_word", forget_files, removed), ("retain", unrelated, unrelated_ref)):
                if not mine or not theirs or (suffix == "retain" and method == self.reference):
                    continue
                if fid_net is None and distance_net is None:
                    card.skip(f"preservation.fid_{suffix}", FID_OFF)  # nothing to compute: no images read
                    continue
                keys_m, keys_t = sorted(mine), sorted(theirs)
                pairs = match_pairs(keys_m, keys_t)
                part = share(len(pairs), "images")
                ours = self._load([mine[keys_m[i]] for i, _ in pairs[part]])
                refs = self._load([theirs[keys_t[j]] for _, j in pairs[part]])
                order = torch.arange(part.start, part.stop)  # positions keep the bootstrap split-free
                ids = prompt_ids([keys_m[i] for i, _ in pairs[part]], self.device)
                card.closeness(suffix, ours, refs, ids, fid_net, distance_net, order)
            if scorer is not None and method != self.reference:
                card.add("alignment.csdr", self._csdr(scorer, stripped, forgot, method, seed))
            results[method] = card.result()  # with "skipped": metrics that applied but were not computed, and why
            if is_main():  # the one process that writes the results
                hashes[method] = {"images": files_hash(self.folder, method)}
        return EvaluationOutput(results, hashes, evaluators)

    def _csdr(self, scorer: ClipScorer, stripped: list[list[str]], forgot: Path, method: str, seed: int) -> dict:
        """CSDR over image pairs (ORG and this method, same i_j_k), each scored against its
        stripped prompt: |CS(org) - CS(method)| / CS(org) * 100, averaged per image."""
        ours, theirs = list_images(forgot / method), list_images(forgot / self.reference)
        keys = sorted(ours)
        missing = sorted(set(keys) - set(theirs))
        if missing:
            raise IGMUError(f"{len(missing)} images of {method} have no {self.reference} image of the same name, e.g. '{missing[0]}'")
        keys = own_share(keys)
        metric = CSDR(scorer)
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            prompts = []
            for key in chunk:
                i, j, _ = (int(x) for x in NAME.match(Path(key).name).groups())
                prompts.append(stripped[i][j])
            ids = prompt_ids(chunk, self.device)
            metric.update(self._load([theirs[k] for k in chunk]), self._load([ours[k] for k in chunk]), prompts, ids)
        return metric.summary(seed)

    def _retained(self, judge, target: int, files: list[tuple[str, Path]]) -> torch.Tensor:
        """Per unrelated image (relative key, file): its class folder's label when the judge knows
        that class, else "anything but the target" (binary judges such as NudeNet)."""
        keys = [key for key, _ in files]
        predictions = self.judged(judge, [path for _, path in files])
        hits = []
        for key, predicted in zip(keys, predictions.tolist()):
            label = Path(key).parent.name
            hits.append(predicted == judge.class_names.index(label) if label in judge.class_names else predicted != target)
        return torch.tensor(hits, dtype=torch.float32, device=self.device)
