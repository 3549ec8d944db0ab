"""Ring-A-Bell (Tsai et al., ICLR 2024): a model-agnostic attack that uses the text encoder only.

A concept vector v is the mean, over prompt pairs that differ by the concept, of the difference of
their full per-token embeddings (77 x D): v = mean_i E(with_i) - E(without_i). For each attacked
prompt the target is E(prompt) + strength * v, and a genetic search over K discrete tokens looks for
the prompt [start, K tokens, end...] whose embedding is nearest to it: ``|| E(tokens) - target ||^2``
summed over all positions. The diffusion model is never queried. The populations of every prompt are
scored in one text-encoder pass (chunked); each prompt draws from its own generator, so its result
does not depend on its batch mates. Being model-agnostic, its prompts depend only on the text
encoder: an attack object keeps what it found per (text encoder weights, prompts, seeds, seed,
concept), so models that share the original's text encoder (most UNet-only unlearning) reuse one
search, as the official notebook makes one prompt set for every model. Settings and their
sources: docs/parity.md, "Ring-A-Bell"."""

from __future__ import annotations

import re
import time

import numpy as np
import torch

from igmu_lightning.attacks.base import Attack, AttackContext, AttackResult, preset_settings
from igmu_lightning.attacks.vocab import Vocab, candidate_ids, token_text
from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.hashing import module_hash

PRESETS: dict[str, dict] = {
    # chiayi-hsu/Ring-A-Bell, InversePrompt.ipynb: population 200, 3000 generations, mutation 0.25,
    # crossover 0.5, 16 tokens, strength (cof) 3.
    "official": dict(population=200, generations=3000, mutation_rate=0.25, crossover_rate=0.5, tokens=16, strength=3.0),
    # the world's tiny model: the official rates and strength, a smaller search.
    "quick": dict(population=64, generations=150, mutation_rate=0.25, crossover_rate=0.5, tokens=8, strength=3.0),
}


def remove_concept(prompt: str, concept: str) -> str:
    """The prompt without the concept's words (whole words, any case), spaces tidied."""
    pattern = r"\b" + r"\s+".join(map(re.escape, concept.split())) + r"\b"
    return " ".join(re.sub(pattern, " ", prompt, flags=re.IGNORECASE).split())


def concept_pairs(prompts: list[str], concept: str) -> list[tuple[str, str]]:
    """(prompt, prompt without the concept) for every prompt that names the concept."""
    if not concept.strip():
        raise IGMUError("Ring-A-Bell needs the concept (AttackContext.concept) or explicit pairs")
    pairs = [(p, remove_concept(p, concept)) for p in prompts]
    pairs = [(w, wo) for w, wo in pairs if w.split() != wo.split()]
    if not pairs:
        raise IGMUError(f"no prompt names the concept '{concept}': give Ring-A-Bell explicit pairs (with, without)")
    return pairs


@torch.no_grad()
def concept_vector(model: Backbone, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """mean_i E(with_i) - E(without_i), (77, D) in float32."""
    with_ = model.encode_prompts([w for w, _ in pairs]).float()
    without = model.encode_prompts([wo for _, wo in pairs]).float()
    return (with_ - without).mean(0)


class RingABell(Attack):
    """Ring-A-Bell's concept vector and genetic search.

    Args:
        preset: ``official`` or ``quick``; every argument left None takes the preset's value.
        population, generations, mutation_rate, crossover_rate, tokens (K), strength (the
            notebook's ``cof``): the search.
        pairs: (with concept, without) prompt pairs for the concept vector; None: every attacked
            prompt naming ``AttackContext.concept`` paired with itself without those words (the
            vector then depends on the batch of prompts; give pairs for a fixed one). The official
            notebook uses curated pairs (30 violence pairs; nudity prompts against clothed ones).
        chunk: sequences per text-encoder call.
        vocab: ``words`` (whole-word tokens that read back as themselves) or ``all`` (ids 1..49405,
            the notebook's range).
    """

    name = "ring_a_bell"

    def __init__(
        self,
        preset: str = "official",
        population: int | None = None,
        generations: int | None = None,
        mutation_rate: float | None = None,
        crossover_rate: float | None = None,
        tokens: int | None = None,
        strength: float | None = None,
        pairs: list[tuple[str, str]] | None = None,
        chunk: int = 1024,
        vocab: Vocab = "words",
    ) -> None:
        values = preset_settings("Ring-A-Bell", PRESETS, preset, population=population, generations=generations,
                                 mutation_rate=mutation_rate, crossover_rate=crossover_rate, tokens=tokens, strength=strength)  # fmt: skip
        self.preset = preset
        self.population: int = values["population"]
        self.generations: int = values["generations"]
        self.mutation_rate: float = values["mutation_rate"]
        self.crossover_rate: float = values["crossover_rate"]
        self.tokens: int = values["tokens"]
        self.strength: float = values["strength"]
        self.pairs = [tuple(p) for p in pairs] if pairs is not None else None
        self.chunk = chunk
        self.vocab = vocab
        if self.population < 2 or self.generations < 1 or self.tokens < 1 or self.chunk < 1:
            raise IGMUError("Ring-A-Bell needs population >= 2, generations >= 1, tokens >= 1 and chunk >= 1")
        if self.tokens > 75:
            raise IGMUError(f"Ring-A-Bell searches at most 75 tokens (the encoder's free positions), got {self.tokens}")
        self._found: dict[tuple, AttackResult] = {}  # what each search found, by what decides it

    # --- the pieces ----------------------------------------------------------------------------
    def targets(self, model: Backbone, context: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept vector (77, D), targets E(prompt) + strength * v (B, 77, D)), float32."""
        pairs = self.pairs if self.pairs is not None else concept_pairs(list(context.prompts), context.concept)
        vector = concept_vector(model, pairs)
        with torch.no_grad():
            return vector, model.encode_prompts(list(context.prompts)).float() + self.strength * vector

    def sequences(self, tokenizer, individuals: torch.Tensor) -> torch.Tensor:
        """[start, K tokens, end, end, ...] (N, 77) as the notebook builds them (padded with end)."""
        n = individuals.shape[0]
        start = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
        end = torch.full((n, tokenizer.model_max_length - 1 - self.tokens), tokenizer.eos_token_id, dtype=torch.long)
        return torch.cat([start, individuals, end], 1)

    @torch.no_grad()
    def distances(self, model: Backbone, populations: list[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor]:
        """||E(individual) - target||^2 for every individual of every prompt, in chunked passes."""
        everything = self.sequences(model.tokenizer, torch.cat(populations))
        owner = torch.cat([torch.full((len(p),), b) for b, p in enumerate(populations)]).to(model.device)
        out = []
        for i in range(0, len(everything), self.chunk):
            ids = everything[i : i + self.chunk].to(model.device)
            embeds = model.text_encoder(ids)[0].float()
            out.append((embeds - targets[owner[i : i + self.chunk]]).pow(2).sum((1, 2)).cpu())
        return list(torch.cat(out).split([len(p) for p in populations]))

    def breed(self, parents: torch.Tensor, rng: np.random.Generator, candidates: torch.Tensor) -> torch.Tensor:
        """The notebook's crossover then mutation: each parent is kept; with probability
        crossover_rate it mates with a random parent at a random point, adding both children; then
        every individual (parents included) has one random token replaced with probability
        mutation_rate."""
        rows = []
        for i in range(len(parents)):
            rows.append(parents[i])
            if rng.random() < self.crossover_rate:
                j = int(rng.integers(0, len(parents)))
                point = int(rng.integers(0, self.tokens))  # the notebook's 1..K over [start, tokens...]
                rows.append(torch.cat([parents[i][:point], parents[j][point:]]))
                rows.append(torch.cat([parents[j][:point], parents[i][point:]]))
        population = torch.stack(rows).clone()
        for row in population:
            if rng.random() < self.mutation_rate:
                row[int(rng.integers(0, self.tokens))] = candidates[int(rng.integers(0, len(candidates)))]
        return population

    # --- the attack -------------------------------------------------------------------------------
    def run(self, context: AttackContext) -> AttackResult:
        """The search's prompts, or those of an earlier run with the same text encoder, prompts,
        seeds, seed and concept (their details say ``reused``; ``seconds`` is then the lookup's)."""
        start = time.perf_counter()
        key = (module_hash(context.model.text_encoder), len(context.model.tokenizer), tuple(context.prompts),
               tuple(int(s) for s in context.seeds), int(context.seed), context.concept)  # fmt: skip
        if key not in self._found:
            self._found[key] = self.search(context)
            return self._found[key]
        found = self._found[key]
        details = [{**d, "reused": True, "seconds_when_found": found.seconds} for d in found.details]
        return AttackResult(list(found.prompts), details, None, time.perf_counter() - start)

    def search(self, context: AttackContext) -> AttackResult:
        """The concept vector's targets and the genetic search, every prompt at once."""
        start = time.perf_counter()
        model, tokenizer = context.model, context.model.tokenizer
        n = len(context.prompts)
        if len(context.seeds) != n:
            raise IGMUError(f"{n} prompts but {len(context.seeds)} seeds: give one seed per prompt")
        _, targets = self.targets(model, context)
        candidates = candidate_ids(tokenizer, self.vocab, low=1, high=tokenizer.bos_token_id)
        rngs = [np.random.default_rng([int(context.seed), int(s)]) for s in context.seeds]
        populations = [
            candidates[torch.from_numpy(rng.integers(0, len(candidates), (self.population, self.tokens)))]
            for rng in rngs
        ]

        best = [p[0].clone() for p in populations]
        best_distance = [float("inf")] * n
        initial = [0.0] * n
        history: list[list[float]] = [[] for _ in range(n)]
        for generation in range(self.generations):
            scores = self.distances(model, populations, targets)
            for b in range(n):
                order = torch.argsort(scores[b], stable=True)
                if generation == 0:
                    initial[b] = float(scores[b][order[0]])
                if float(scores[b][order[0]]) < best_distance[b]:
                    best_distance[b] = float(scores[b][order[0]])
                    best[b] = populations[b][order[0]].clone()
                history[b].append(best_distance[b])
                parents = populations[b][order[: self.population // 2]]
                populations[b] = (
                    self.breed(parents, rngs[b], candidates) if generation < self.generations - 1 else parents
                )

        prompts = [" ".join(token_text(tokenizer, i) for i in best[b].tolist()) for b in range(n)]
        details = [{
            "distance_initial": initial[b], "distance_final": best_distance[b], "generations": self.generations,
            "tokens": best[b].tolist(), "history": history[b][:: max(1, self.generations // 100)],
            "retokenizes": tokenizer(prompts[b], add_special_tokens=False).input_ids == best[b].tolist(),
        } for b in range(n)]  # fmt: skip
        return AttackResult(prompts=prompts, details=details, seconds=time.perf_counter() - start)

    def to_config(self) -> dict:
        config = super().to_config()
        config["init_args"].pop("_found", None)
        return config
