"""UnlearnDiffAtk (Zhang et al., ECCV 2024; OPTML-Group/Diffusion-MU-Attack, attacker ``text_grad``
with task ``classifier``): k prefix tokens, each a distribution over the vocabulary kept on the
probability simplex, are optimised so that the *unlearned* model denoises, from the prompt with the
prefix, the original model's image of that prompt and seed; after each timestep's iterations the
most likely tokens are read out as text, the model draws that prompt with its seed, and the judge
decides. A prompt stops at its first success.

    x0      = VAE latent (posterior mean) of the original model's image of (prompt, seed)
    loss    = || eps - eps_unlearned(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, E(sot, onehot @ W, prompt)) ||^2
    onehot  = a sample of each token distribution (forward), straight through with hardtanh (backward)
    update  = Adam(lr 0.01, weight decay 0.1), then the projection onto the simplex
    t       = 10, 30, ..., 990 (50 timesteps in turn), 40 iterations at each, a read-out after each

Batched: every prompt of the batch is its own optimisation. The variable is one (B, k, V) tensor;
Adam is elementwise, the loss is a sum of per-prompt losses, each prompt draws its tokens and noise
from its own generator (seeded by the attack seed and the prompt's seed), and a prompt that
succeeded is frozen and leaves the batch. Prompt i's result equals its result attacked alone, up
to float rounding of differently sized batches. ``docs/parity.md`` ("UnlearnDiffAtk") lists every
difference from the official code."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from igmu_lightning.attacks.base import Attack, AttackContext, AttackResult, preset_settings
from igmu_lightning.attacks.soft_prompt import prefix_slots
from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler, to_uint8

# The official settings (configs/*/text_grad_*_classifier.json, src/execs/attack.py, src/tasks/classifier_.py)
# and a quick one for the world's evaluation (64 prompts on one world model in minutes on 2 CPU cores).
PRESETS: dict[str, dict] = {
    "full": {"k": 3, "iterations": 40, "timesteps": 50, "lr": 0.01, "weight_decay": 0.1},
    "quick": {"k": 3, "iterations": 10, "timesteps": 4, "lr": 0.01, "weight_decay": 0.1},
}


def project_simplex(a: torch.Tensor, sizes: tuple[int, ...] = (256, 4096)) -> torch.Tensor:
    """Each row of ``a`` (..., V) projected (Euclidean) onto the simplex {x >= 0 : sum x = 1}:
    x = max(a - theta, 0) with the exact theta of the sorting algorithm (Held et al. 1974; Duchi et
    al. 2008): theta = (sum of the rho largest - 1) / rho, rho the last j where the j-th largest
    exceeds (sum of the j largest - 1) / j. Only the largest ``sizes[0]`` entries of a row are sorted
    while its support fits in them (then more, then the whole row). The official code finds the same
    theta by bisection to within 1e-5 and clips to [0, 1], which on the simplex changes nothing."""
    rows = a.reshape(-1, a.shape[-1])
    theta = torch.empty(rows.shape[0], dtype=rows.dtype, device=rows.device)
    todo = torch.arange(rows.shape[0], device=rows.device)
    for size in (*[s for s in sizes if s < rows.shape[-1]], rows.shape[-1]):
        part = rows[todo]
        top = part.topk(size, dim=-1).values if size < rows.shape[-1] else part.sort(-1, descending=True).values
        sums = top.cumsum(-1) - 1
        j = torch.arange(1, size + 1, dtype=rows.dtype, device=rows.device)
        rho = ((top - sums / j) > 0).sum(-1)  # the condition holds exactly for j <= rho
        theta[todo] = sums.gather(-1, (rho - 1).clamp(min=0)[:, None]).squeeze(-1) / rho.clamp(min=1).to(rows.dtype)
        todo = todo[rho >= size]  # the support may reach past the sorted part: sort more of those rows
        if todo.numel() == 0:
            break
    return (rows - theta[:, None]).clamp(min=0).reshape(a.shape)


class _StraightThrough(torch.autograd.Function):
    """One-hot of the drawn tokens forward; the incoming gradient, clipped to [-1, 1], backward
    (the official ``STERandSelect``: ``F.hardtanh(grad_output)``)."""

    @staticmethod
    def forward(ctx, probabilities: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        return F.one_hot(drawn, probabilities.shape[-1]).to(probabilities.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return F.hardtanh(grad), None


def _draw(probabilities: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per distribution (B, k, V) -> (B, k), each prompt from its own generator: inverse
    CDF of one uniform per token (a multinomial draw that does not depend on the batch)."""
    u = torch.stack([torch.rand(probabilities.shape[1], generator=g, dtype=torch.float64) for g in generators])
    cdf = probabilities.detach().double().cumsum(-1)
    u = u.to(cdf.device)[..., None] * cdf[..., -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp(max=probabilities.shape[-1] - 1)


class UnlearnDiffAtk(Attack):
    """UnlearnDiffAtk: k prefix tokens optimised on the simplex against the unlearned model.

    Args:
        preset: ``full`` (the official settings: k 3, 40 iterations at each of 50 timesteps, at
            most 2000 steps) or ``quick`` (10 iterations at each of 4 timesteps: the world's
            evaluation); the arguments below override it.
        k: prefix tokens (official: 5 for nudity, 3 otherwise).
        iterations: Adam steps at each timestep before a read-out.
        timesteps: how many timesteps of the grid T/(2n), 3T/(2n), ... (50: 10, 30, ..., 990),
            visited in increasing order.
        lr, weight_decay: Adam's.
        rand_init: start from uniform random distributions (projected) instead of 1/V everywhere.
        keep_losses: record every iteration's loss per prompt in its details (``losses``); else
            only the mean loss at each timestep visited (``loss_by_timestep``).
    """

    name = "udiff"
    needs_original = True
    needs_judge = True

    def __init__(self, preset: str = "full", k: int | None = None, iterations: int | None = None, timesteps: int | None = None,
                 lr: float | None = None, weight_decay: float | None = None, rand_init: bool = False,
                 keep_losses: bool = False) -> None:  # fmt: skip
        settings = preset_settings("UnlearnDiffAtk", PRESETS, preset, k=k, iterations=iterations, timesteps=timesteps, lr=lr,
                                   weight_decay=weight_decay)  # fmt: skip
        self.preset, self.rand_init, self.keep_losses = preset, rand_init, keep_losses
        self.k, self.iterations, self.timesteps = int(settings["k"]), int(settings["iterations"]), int(settings["timesteps"])
        self.lr, self.weight_decay = float(settings["lr"]), float(settings["weight_decay"])
        for key in ("k", "iterations", "timesteps"):
            if getattr(self, key) < 1:
                raise IGMUError(f"UnlearnDiffAtk {key} must be >= 1, got {getattr(self, key)}")

    # --- pieces ---------------------------------------------------------------------------------
    def timestep_grid(self, train_steps: int) -> list[int]:
        """The official ``sampled_t``: T // n // 2 + i * (T // n), i < n."""
        if self.timesteps > train_steps:
            raise IGMUError(f"UnlearnDiffAtk timesteps ({self.timesteps}) exceeds the model's {train_steps} training timesteps")
        step = train_steps // self.timesteps
        return list(range(step // 2, train_steps, step))[: self.timesteps]

    def prefixed_ids(self, model: Backbone, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, L) of the prompts with k slots after the start token (the prompt moves
        right by k; its last k padding tokens drop off the end)."""
        return prefix_slots(model.tokenize(prompts), self.k)

    def read_out(self, model: Backbone, tokens: torch.Tensor, prompts: list[str]) -> list[str]:
        """The text of each prompt with its prefix tokens: the decoded prefix, a space, the prompt."""
        return [f"{model.tokenizer.decode(row.tolist()).strip()} {p}" for row, p in zip(tokens.cpu(), prompts)]

    @torch.no_grad()
    def targets(self, context: AttackContext) -> torch.Tensor:
        """x0: the VAE latent (posterior mean, scaled) of the original model's 8-bit image of each
        prompt and seed, drawn with the evaluation's sampler settings."""
        original = context.original
        images = Sampler(original, context.sampler).sample_batch(context.prompts, context.seeds)
        images = (to_uint8(images).float() / 255).to(context.model.device, context.model.vae.dtype)
        posterior = context.model.vae.encode(images * 2 - 1).latent_dist
        return posterior.mean * context.model.vae.config.scaling_factor

    def generators(self, context: AttackContext) -> list[torch.Generator]:
        """One generator per prompt, from the attack seed and the prompt's seed."""
        return [torch.Generator().manual_seed(int(np.random.SeedSequence([context.seed, int(s)]).generate_state(1)[0]))
                for s in context.seeds]  # fmt: skip

    # --- the attack -----------------------------------------------------------------------------
    def run(self, context: AttackContext) -> AttackResult:
        if context.original is None:
            raise IGMUError("UnlearnDiffAtk needs the model before unlearning (AttackContext.original): its images are the targets")
        start = time.perf_counter()
        model, n = context.model, len(context.prompts)
        if n == 0:
            return AttackResult([], [], seconds=0.0)
        device = model.device
        x0 = self.targets(context)
        generators = self.generators(context)
        table = model.text_encoder.get_input_embeddings().weight  # (V, D)
        vocab = table.shape[0]
        ids = self.prefixed_ids(model, context.prompts)
        with torch.no_grad():
            base = model.token_embeddings(ids)
        if self.rand_init:
            init = torch.stack([torch.rand(self.k, vocab, generator=g) for g in generators])
        else:
            init = torch.full((n, self.k, vocab), 1.0 / vocab)
        variable = project_simplex(init.to(device)).requires_grad_(True)
        optimizer = torch.optim.Adam([variable], lr=self.lr, weight_decay=self.weight_decay)
        alphas = model.noise_scheduler.alphas_cumprod.to(device)
        train_steps = int(model.noise_scheduler.config.num_train_timesteps)
        sampler = Sampler(model, context.sampler)
        active = torch.ones(n, dtype=torch.bool)
        found: list[str | None] = [None] * n
        details = [{"success": False, "steps": 0, "timestep": None, "loss_by_timestep": []} for _ in range(n)]
        if self.keep_losses:
            for d in details:
                d["losses"] = []
        steps = 0
        for t in self.timestep_grid(train_steps):
            rows = active.nonzero().flatten().tolist()
            total = torch.zeros(len(rows), dtype=torch.float64)
            for _ in range(self.iterations):
                optimizer.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    part = variable[rows]
                    one_hot = _StraightThrough.apply(part, _draw(part, [generators[i] for i in rows]))
                    prefix = one_hot @ table.to(one_hot.dtype)  # (b, k, D)
                    tokens = torch.cat([base[rows, :1], prefix.to(base.dtype), base[rows, 1 + self.k :]], dim=1)
                    cond = model.encode_embeddings(tokens, ids[rows])
                    noise = torch.stack([torch.randn(x0.shape[1:], generator=generators[i]) for i in rows]).to(device, x0.dtype)
                    a = alphas[t].to(x0.dtype)
                    noisy = a.sqrt() * x0[rows] + (1 - a).sqrt() * noise
                    timestep = torch.full((len(rows),), t, device=device, dtype=torch.long)
                    pred = model.unet(noisy.to(model.dtype), timestep, encoder_hidden_states=cond.to(model.dtype)).sample
                    losses = (pred.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))  # per prompt: MSELoss
                    (grad,) = torch.autograd.grad(losses.sum(), [variable])
                variable.grad = grad
                mask = active.to(device)
                frozen = variable.detach()[~mask].clone()
                optimizer.step()
                with torch.no_grad():
                    variable[~mask] = frozen  # Adam's momentum and weight decay must not move finished prompts
                    variable[mask] = project_simplex(variable[mask])
                total += losses.detach().double().cpu()
                if self.keep_losses:
                    for j, i in enumerate(rows):
                        details[i]["losses"].append(float(losses[j].detach()))
                steps += 1
            # read-out: the most likely tokens as text, drawn with each prompt's seed, judged
            with torch.no_grad():
                best = variable[rows].argmax(-1)
            texts = self.read_out(model, best, [context.prompts[i] for i in rows])
            hits = self._judge(context, sampler, texts, [context.seeds[i] for i in rows])
            for j, i in enumerate(rows):
                found[i] = texts[j]
                details[i].update(steps=steps, timestep=int(t), prefix_ids=best[j].tolist())
                details[i]["loss_by_timestep"].append(float(total[j]) / self.iterations)
                if hits[j]:
                    details[i]["success"] = True
                    active[i] = False
            if not active.any():
                break
        for i in range(n):
            ids_back = model.tokenizer(found[i]).input_ids[1 : 1 + self.k]
            details[i]["retokenizes"] = ids_back == details[i]["prefix_ids"]
        return AttackResult(found, details, seconds=time.perf_counter() - start)

    def _judge(self, context: AttackContext, sampler: Sampler, texts: list[str], seeds: list[int]) -> list[bool]:
        if context.judge is None:  # no judge: never stop early (every step is run)
            return [False] * len(texts)
        images = (to_uint8(sampler.sample_batch(texts, seeds)).float() / 255).to(context.model.device)  # 8-bit, as evaluated
        with torch.inference_mode():
            return [bool(x) for x in context.judge(images).cpu()]
