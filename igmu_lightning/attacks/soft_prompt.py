"""AdvUnlearn's soft-prompt attack (Zhang et al., NeurIPS 2024, "Defensive Unlearning with Adversarial
Training for Robust Concept Erasure in Diffusion Models"; OPTML-Group/AdvUnlearn,
train-scripts/utils/attack_util.py ``soft_prompt_attack``, attack_type ``prefix_k``, attack_embd_type
``word_embd``): k continuous word embeddings delta (the text encoder's width, free, not tied to the
vocabulary) are put right after the start token, the prompt's tokens move right by k, and delta is
optimised by Adam to minimise the caller's ``objective`` of the conditioning E([sot, delta, c, pad]):

    pgd:      g_i = grad_delta objective, Adam step on g_i
    fast_at:  the same with the gradient's sign (the official ``adv_embedding.grad.sign_()``)

The official loop never zeroes delta's gradient (attack_util.py:175-212: ``loss.backward()`` then
``attack_opt.step()``), so step i sees the running sum of the gradients (for fast_at: the sign of
the previous signed sum plus the new gradient). ``accumulate=True`` keeps that; False zeroes it.
AdvUnlearn's objective is ||eps(x_t, E_phi([delta, c])) - eps*(x_t, E*(c))||^2 with x_t drawn anew
each step (``algorithms/advunlearn.py``); ``soft_prompt_attack`` knows no model but the text
encoder. ``SoftPromptAttack`` is the same attack for the evaluation (``AttackProbe``), with that
objective against the model before unlearning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from igmu_lightning.attacks.base import Attack, AttackContext, AttackResult
from igmu_lightning.backbone import Backbone
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler, SamplerSettings

METHODS = ("pgd", "fast_at")


def prefix_slots(ids: torch.Tensor, k: int, lengths: list[int] | None = None) -> torch.Tensor:
    """Token ids (B, L) with k zero slots after the start token. Without ``lengths`` the prompt
    moves right by k and its last k (padding) tokens drop off the end. With ``lengths`` (the
    official ``split_id``, attack_util.py:224-230) row i keeps its first lengths[i] tokens after the
    start token and drops the k after them: with lengths counted in words (the official
    ``len(word.split())``) a word of several tokens loses its last ones ("nudity" is "nu" "dity")."""
    slots = torch.zeros(ids.shape[0], k, dtype=ids.dtype, device=ids.device)
    if lengths is None:
        return torch.cat([ids[:, :1], slots, ids[:, 1 : ids.shape[1] - k]], dim=1)
    rows = [torch.cat([row[:1], slots[0], row[1 : 1 + n], row[1 + n + k :]]) for row, n in zip(ids, lengths)]
    return torch.stack(rows)


def prefixed_ids(model: Backbone, prompts: list[str], k: int, prompt_length: Literal["tokens", "words"] = "tokens"):
    """``prefix_slots`` of the prompts' ids, the prompt's length counted in tokens or in words."""
    if prompt_length not in ("tokens", "words"):
        raise IGMUError(f"unknown prompt_length '{prompt_length}': choose tokens or words (the official count)")
    lengths = [len(p.split()) for p in prompts] if prompt_length == "words" else None
    return prefix_slots(model.tokenize(prompts), k, lengths)


def splice(base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, L, D) of ``prefix_slots`` ids with the slots replaced by delta (B, k, D)."""
    k = delta.shape[1]
    return torch.cat([base[:, :1], delta.to(base.dtype), base[:, 1 + k :]], dim=1)


def random_vocab_init(model: Backbone, batch: int, k: int) -> torch.Tensor:
    """The official ``init_adv`` without an initial embedding: k random vocabulary rows per prompt."""
    table = model.text_encoder.get_input_embeddings().weight
    ids = torch.randint(0, table.shape[0], (batch, k))
    return table.detach()[ids.to(table.device)].clone()


def soft_prompt_attack(
    model: Backbone,
    prompts: list[str],
    objective: Callable[[torch.Tensor], torch.Tensor],
    delta: torch.Tensor,
    steps: int = 30,
    lr: float = 1e-3,
    method: Literal["pgd", "fast_at"] = "pgd",
    accumulate: bool = True,
    prompt_length: Literal["tokens", "words"] = "tokens",
) -> tuple[torch.Tensor, list[float]]:
    """Optimise delta (B, k, D) from its given value; returns it (detached) and each step's loss.
    ``objective`` maps the conditioning (B, L, D) of the prefixed prompts to a scalar to minimise.
    Only delta receives gradients: the model's own tensors are left as they are. ``prompt_length``:
    ``tokens`` keeps the whole prompt, ``words`` the official layout (``prefix_slots``)."""
    if method not in METHODS:
        raise IGMUError(f"unknown soft-prompt attack method '{method}': choose one of {', '.join(METHODS)}")
    if steps < 0 or delta.ndim != 3 or delta.shape[0] != len(prompts):
        raise IGMUError(
            f"soft-prompt attack needs steps >= 0 and delta (B={len(prompts)}, k, D), got {steps} and {tuple(delta.shape)}"
        )
    ids = prefixed_ids(model, prompts, delta.shape[1], prompt_length)
    with torch.no_grad():
        base = model.token_embeddings(ids)
    delta = delta.detach().clone().to(base.device).requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    grad, losses = torch.zeros_like(delta), []
    for _ in range(steps):
        with torch.enable_grad():
            loss = objective(model.encode_embeddings(splice(base, delta), ids))
            (g,) = torch.autograd.grad(loss, [delta])
        grad = grad + g if accumulate else g
        if method == "fast_at":
            grad = grad.sign()
        delta.grad = grad.clone()
        optimizer.step()
        losses.append(float(loss.detach()))
    return delta.detach(), losses


class SoftPromptAttack(Attack):
    """AdvUnlearn's attack as an evaluation attack (an embedding-space one: its result is the
    conditioning to generate with). Objective: ||eps(x_t, E([delta, c])) - eps*(x_t, E*(c))||^2 with
    x_t from ``ddim_steps``-step DDIM sampling of the original model (CFG ``start_guidance``) stopped
    after k ~ U{0..ddim_steps-1} steps and queried at the timestep it sits at (ESD's ``aligned``
    mapping; AdvUnlearn's training uses the compvis one), eps from the model under attack, eps* and
    E* from the original. Random draws come from ``context.seed``; the readable prompt puts delta's
    nearest vocabulary token (Euclidean) in front of the prompt.

    Args: k (1), steps (30), lr (1e-3), method (pgd / fast_at), accumulate (the official
    never-zeroed gradient), prompt_length (tokens / words), ddim_steps (50), start_guidance (3)."""

    finds_embeddings = True

    name = "softprompt"
    needs_original = True

    def __init__(self, k: int = 1, steps: int = 30, lr: float = 1e-3, method: str = "pgd", accumulate: bool = True,
                 prompt_length: str = "tokens", ddim_steps: int = 50, start_guidance: float = 3.0) -> None:  # fmt: skip
        if method not in METHODS or prompt_length not in ("tokens", "words") or min(k, steps, ddim_steps) < 1:
            raise IGMUError(f"soft-prompt attack: method pgd/fast_at, prompt_length tokens/words, k, steps, ddim_steps >= 1; got {method}, {prompt_length}, {k}, {steps}, {ddim_steps}")  # fmt: skip
        self.k, self.steps, self.lr, self.method, self.accumulate = k, steps, lr, method, accumulate
        self.prompt_length, self.ddim_steps, self.start_guidance = prompt_length, ddim_steps, start_guidance

    def run(self, context: AttackContext) -> AttackResult:
        model, original, n = context.model, context.original, len(context.prompts)
        if original is None:
            raise IGMUError(
                "the soft-prompt attack needs the model before unlearning (AttackContext.original): it gives the targets"
            )
        start = time.perf_counter()
        if n == 0:
            return AttackResult([], [], seconds=0.0)
        teacher = Sampler(original, SamplerSettings(steps=self.ddim_steps, guidance_scale=self.start_guidance))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            with torch.no_grad():
                c, null = original.encode_prompts(context.prompts), original.encode_prompts([""] * n)

            def objective(cond: torch.Tensor) -> torch.Tensor:
                seeds = torch.randint(0, 2**31 - 1, (n,)).tolist()
                x_t, t = teacher.partial(c, null, int(torch.randint(0, self.ddim_steps, ())), seeds)
                with torch.no_grad():
                    target = original.unet(x_t, t, encoder_hidden_states=c).sample
                return F.mse_loss(model.unet(x_t, t, encoder_hidden_states=cond).sample.float(), target.float())

            delta, losses = soft_prompt_attack(model, context.prompts, objective, random_vocab_init(model, n, self.k),
                                               self.steps, self.lr, self.method, self.accumulate, self.prompt_length)  # fmt: skip
        ids = prefixed_ids(model, context.prompts, self.k, self.prompt_length)
        with torch.no_grad():
            embeddings = model.encode_embeddings(splice(model.token_embeddings(ids), delta), ids)
            table = model.text_encoder.get_input_embeddings().weight
            nearest = (
                torch.cdist(delta.reshape(-1, delta.shape[-1]).to(table.dtype), table).argmin(-1).reshape(n, self.k)
            )
        texts = [
            f"{model.tokenizer.decode(row.tolist()).strip()} {p}" for row, p in zip(nearest.cpu(), context.prompts)
        ]
        details = [{"nearest_ids": row.tolist(), "final_loss": losses[-1]} for row in nearest.cpu()]
        return AttackResult(texts, details, embeddings=embeddings, seconds=time.perf_counter() - start)
