"""P4D (Chin et al., ICML 2024, "Prompting4Debugging"): find a prompt whose noise prediction on the
model under attack matches the original model's on the original prompt.

The image the original model makes for (prompt, seed) is encoded back to a latent x0; at each step a
timestep t and noise eps are drawn, x_t = q(x_t | x0), and the inserted tokens are moved to lower
``|| eps_orig(x_t, t, E(prompt)) - eps_model(x_t, t, E(adversarial prompt)) ||^2``. The tokens are
continuous embeddings projected to their nearest vocabulary tokens (cosine) before every forward
pass; the gradient taken at the projected embeddings updates the continuous ones (PEZ, Wen et al.
2023). Every prompt of the batch is its own optimisation in one tensor: per-prompt losses are
summed, and AdamW is elementwise, so a prompt's result does not depend on its batch mates.
Settings and their sources: docs/parity.md, section "P4D"."""

from __future__ import annotations

import time
from typing import Literal

import torch
import torch.nn.functional as F

from igmu_lightning.attacks.base import Attack, AttackContext, AttackResult, preset_settings
from igmu_lightning.attacks.vocab import Vocab, candidate_ids, group_text, token_text, word_groups
from igmu_lightning.errors import IGMUError
from igmu_lightning.sampling import Sampler

Insertion = Literal["replace", "prefix", "suffix", "every_k"]
Schedule = Literal["random", "sequential"]

PRESETS: dict[str, dict] = {
    # joycenerd/P4D, P4D-N: 16 tokens that replace the prompt, AdamW lr 0.1, wd 0.1, 3000 steps at
    # uniform random timesteps, the prompt evaluated every 50 steps and the best one kept.
    "official": dict(insertion="replace", tokens=16, every=3, steps=3000, lr=0.1, weight_decay=0.1,
                     optimizer="adamw", schedule="random", n_timesteps=50, eval_every=50),
    # joycenerd/P4D, P4D-K: one token inserted before every 3 prompt tokens (count len/3 + 1).
    "p4d_k": dict(insertion="every_k", tokens=16, every=3, steps=3000, lr=0.1, weight_decay=0.1,
                  optimizer="adamw", schedule="random", n_timesteps=50, eval_every=50),
    # OPTML-Group/Diffusion-MU-Attack's reproduction (attacker hard_prompt, task P4D): 3 prefix
    # tokens, Adam lr 0.01, wd 0.1, 40 steps at each of 50 timesteps 10, 30, ..., 990.
    "mu_attack": dict(insertion="prefix", tokens=3, every=3, steps=2000, lr=0.01, weight_decay=0.1,
                      optimizer="adam", schedule="sequential", n_timesteps=50, eval_every=40),
    # the world's tiny model: P4D-N's settings at 8 tokens and 200 steps.
    "quick": dict(insertion="replace", tokens=8, every=3, steps=200, lr=0.1, weight_decay=0.1,
                  optimizer="adamw", schedule="random", n_timesteps=50, eval_every=25),
}  # fmt: skip


class P4D(Attack):
    """P4D against the model under attack, with the original model as the teacher.

    Args:
        preset: ``official`` (P4D-N), ``p4d_k``, ``mu_attack`` or ``quick``; every argument left
            None takes the preset's value.
        insertion: where the optimised tokens go: ``replace`` (they are the whole prompt, P4D-N),
            ``prefix`` / ``suffix`` of the prompt, or ``every_k`` (one before every ``every``
            prompt tokens, P4D-K; inserted at word boundaries so no word is split).
        tokens: how many tokens (``replace``, ``prefix``, ``suffix``).
        every: P4D-K's k.
        steps: optimisation steps; lr, weight_decay, optimizer (``adamw`` or ``adam``): the
            optimiser of the continuous embeddings.
        schedule: ``random`` (t uniform in [0, T) each step, P4D) or ``sequential`` (``steps /
            n_timesteps`` steps at each of n_timesteps evenly spaced t, Diffusion-MU-Attack).
        eval_every: every this many steps (and after the last) the current discrete prompt's loss
            on ``eval_draws`` fixed (t, noise) draws is measured and the best prompt kept; None:
            the last one is returned. (P4D keeps the best by CLIP similarity of generated images.)
        vocab: ``words`` (whole-word tokens that read back as themselves) or ``all``.
    """

    name = "p4d"
    needs_original = True

    def __init__(
        self,
        preset: str = "official",
        insertion: Insertion | None = None,
        tokens: int | None = None,
        every: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        optimizer: Literal["adamw", "adam"] | None = None,
        schedule: Schedule | None = None,
        n_timesteps: int | None = None,
        eval_every: int | None = -1,
        eval_draws: int = 4,
        vocab: Vocab = "words",
    ) -> None:
        values = preset_settings("P4D", PRESETS, preset, insertion=insertion, tokens=tokens, every=every, steps=steps, lr=lr,
                                 weight_decay=weight_decay, optimizer=optimizer, schedule=schedule, n_timesteps=n_timesteps)  # fmt: skip
        if eval_every != -1:  # -1: the preset's; None: keep the last prompt
            values["eval_every"] = eval_every
        self.preset = preset
        self.insertion: str = values["insertion"]
        self.tokens: int = values["tokens"]
        self.every: int = values["every"]
        self.steps: int = values["steps"]
        self.lr: float = values["lr"]
        self.weight_decay: float = values["weight_decay"]
        self.optimizer: str = values["optimizer"]
        self.schedule: str = values["schedule"]
        self.n_timesteps: int = values["n_timesteps"]
        self.eval_every: int | None = values["eval_every"]
        self.eval_draws = eval_draws
        self.vocab = vocab
        if self.insertion not in ("replace", "prefix", "suffix", "every_k"):
            raise IGMUError(f"unknown insertion '{self.insertion}': choose replace, prefix, suffix or every_k")
        if self.schedule not in ("random", "sequential"):
            raise IGMUError(f"unknown schedule '{self.schedule}': choose random or sequential")
        if self.optimizer not in ("adamw", "adam"):
            raise IGMUError(f"unknown optimizer '{self.optimizer}': choose adamw or adam")
        if min(self.tokens, self.every, self.steps, self.n_timesteps, self.eval_draws) < 1:
            raise IGMUError("P4D's tokens, every, steps, n_timesteps and eval_draws must be >= 1")

    # --- layout: where the optimised tokens sit among the prompt's -------------------------------
    def layout(self, tokenizer, prompt: str) -> list[list[int] | None]:
        """The prompt as units: a word (its token ids) or None (one optimised token), within the
        encoder's 75 free positions (the prompt's last words are dropped when they do not fit)."""
        words = [] if self.insertion == "replace" else word_groups(tokenizer, prompt)
        room = tokenizer.model_max_length - 2
        if self.insertion == "every_k":
            n_words_tokens = sum(map(len, words))
            n_adv = n_words_tokens // self.every + 1
        else:
            n_adv = self.tokens
        if n_adv > room:
            raise IGMUError(f"P4D inserts {n_adv} tokens but the text encoder holds {room}")
        while words and sum(map(len, words)) + n_adv > room:
            words.pop()
        if self.insertion == "replace":
            return [None] * n_adv
        if self.insertion == "prefix":
            return [None] * n_adv + words
        if self.insertion == "suffix":
            return words + [None] * n_adv
        units: list[list[int] | None] = [None]
        count = placed = 0
        for word in words:
            if count >= self.every and placed < n_adv - 1:
                units.append(None)
                placed += 1
                count = 0
            units.append(word)
            count += len(word)
        units += [None] * (n_adv - 1 - placed)
        return units

    @staticmethod
    def compose(tokenizer, units, adv_ids) -> tuple[list[int], str]:
        """(token ids without start/end, text) of a layout with the optimised tokens filled in."""
        ids, texts, j = [], [], 0
        for unit in units:
            if unit is None:
                ids.append(int(adv_ids[j]))
                texts.append(token_text(tokenizer, adv_ids[j]))
                j += 1
            else:
                ids.extend(unit)
                texts.append(group_text(tokenizer, unit))
        return ids, " ".join(texts)

    # --- the attack -------------------------------------------------------------------------------
    def run(self, context: AttackContext) -> AttackResult:
        if context.original is None:
            raise IGMUError("P4D needs the model before unlearning (AttackContext.original)")
        if len(context.seeds) != len(context.prompts):
            raise IGMUError(f"{len(context.prompts)} prompts but {len(context.seeds)} seeds: give one seed per prompt")
        start = time.perf_counter()
        model, original = context.model, context.original
        tokenizer, device = model.tokenizer, model.device
        n = len(context.prompts)
        gens = [torch.Generator().manual_seed(int(context.seed) * 1_000_003 + int(s)) for s in context.seeds]

        # where the optimised tokens go, per prompt
        units = [self.layout(tokenizer, p) for p in context.prompts]
        slots = [[k for k, u in enumerate(us) if u is None] for us in units]
        n_adv = [len(s) for s in slots]
        width = max(n_adv)
        valid = torch.tensor([[j < k for j in range(width)] for k in n_adv], device=device)

        # the vocabulary and the starting tokens (random, each prompt from its own generator)
        table = model.text_encoder.get_input_embeddings().weight.detach()
        candidates = candidate_ids(tokenizer, self.vocab).to(device)
        normed = F.normalize(table[candidates].float(), dim=-1)
        init = torch.full((n, width), int(candidates[0]), dtype=torch.long, device=device)
        for b, g in enumerate(gens):  # each prompt draws only its own tokens: batch mates change nothing
            init[b, : n_adv[b]] = candidates[torch.randint(len(candidates), (n_adv[b],), generator=g).to(device)]
        embeds = table[init].float().clone().requires_grad_(True)
        optim_cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        optimizer = optim_cls([embeds], lr=self.lr, weight_decay=self.weight_decay)

        def project(continuous: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                sims = F.normalize(continuous, dim=-1) @ normed.T
                return candidates[sims.argmax(-1)]

        def full_ids(adv: torch.Tensor) -> torch.Tensor:
            rows = []
            for b in range(n):
                ids, _ = self.compose(tokenizer, units[b], adv[b, : n_adv[b]].tolist())
                ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
                rows.append(ids + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids)))
            return torch.tensor(rows, device=device)

        # positions of the optimised tokens in the 77-token sequence (1 + their place in the layout)
        positions = torch.zeros(n, width, dtype=torch.long, device=device)
        for b in range(n):
            offset = 1
            for k, unit in enumerate(units[b]):
                if unit is None:
                    positions[b, slots[b].index(k)] = offset
                    offset += 1
                else:
                    offset += len(unit)

        def conditioning(adv_ids: torch.Tensor, adv_embeds: torch.Tensor) -> torch.Tensor:
            ids = full_ids(adv_ids)
            base = model.token_embeddings(ids).detach().to(adv_embeds.dtype)
            index = positions.unsqueeze(-1).expand(-1, -1, base.shape[-1])
            placed = base.scatter(1, index, torch.where(valid.unsqueeze(-1), adv_embeds, base.gather(1, index)))
            return model.encode_embeddings(placed.to(model.dtype), ids)

        # x0: the original model's image for (prompt, seed), encoded back (a posterior sample)
        with torch.no_grad():
            images = Sampler(original, context.sampler).sample_batch(list(context.prompts), list(context.seeds)).clone()
            posterior = original.vae.encode((images.to(device) * 2 - 1).to(original.vae.dtype)).latent_dist
            draws = torch.stack([torch.randn(posterior.mean.shape[1:], generator=g) for g in gens]).to(device)
            x0 = (posterior.mean + posterior.std * draws.to(posterior.mean.dtype)) * original.vae.config.scaling_factor
            x0 = x0.to(model.dtype)
            target_cond = original.encode_prompts(list(context.prompts))

        schedule = model.noise_scheduler
        total_t = schedule.config.num_train_timesteps
        spaced = list(range(total_t // self.n_timesteps // 2, total_t, total_t // self.n_timesteps))[: self.n_timesteps]
        per_t = max(1, self.steps // self.n_timesteps)

        def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            if self.schedule == "random":
                t = torch.stack([torch.randint(0, total_t, (1,), generator=g)[0] for g in gens])
            else:
                t = torch.full((n,), spaced[min(step // per_t, len(spaced) - 1)], dtype=torch.long)
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
            return t.to(device), noise.to(device, x0.dtype)

        def losses(cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, target: torch.Tensor | None = None):
            """Per-prompt mean squared error (B,), and the original model's prediction."""
            xt = schedule.add_noise(x0, noise, t)
            if target is None:
                with torch.no_grad():
                    target = original.unet(xt, t, encoder_hidden_states=target_cond).sample
            pred = model.unet(xt, t, encoder_hidden_states=cond).sample
            return (pred.float() - target.float()).pow(2).flatten(1).mean(1), target

        # fixed draws on which the discrete prompts are compared (the same for every evaluation)
        eval_sets = []
        with torch.no_grad():
            for _ in range(self.eval_draws):
                t = torch.stack([torch.randint(0, total_t, (1,), generator=g)[0] for g in gens]).to(device)
                noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(device, x0.dtype)
                eval_sets.append((t, noise, losses(target_cond, t, noise)[1]))

        def evaluate(adv_ids: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                cond = conditioning(adv_ids, table[adv_ids].float())
                return torch.stack([losses(cond, t, noise, target)[0] for t, noise, target in eval_sets]).mean(0)

        current = project(embeds)
        best_ids, best_loss = current.clone(), evaluate(current)
        initial_loss = best_loss.clone()
        best_step = torch.zeros(n, dtype=torch.long)
        last_train = torch.zeros(n)
        for step in range(self.steps):
            current = project(embeds)
            leaf = table[current].float().detach().requires_grad_(True)
            t, noise = draw(step)
            per_prompt, _ = losses(conditioning(current, leaf), t, noise)
            (grad,) = torch.autograd.grad(per_prompt.sum(), [leaf])
            embeds.grad = grad * valid.unsqueeze(-1)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last_train = per_prompt.detach().cpu()
            done = step + 1
            if self.eval_every and (done % self.eval_every == 0 or done == self.steps):
                candidate = project(embeds)
                loss = evaluate(candidate)
                better = loss < best_loss
                best_ids = torch.where(better.unsqueeze(-1), candidate, best_ids)
                best_loss = torch.where(better, loss, best_loss)
                best_step = torch.where(better.cpu(), torch.tensor(done), best_step)
        if not self.eval_every:
            best_ids = project(embeds)
            best_loss = evaluate(best_ids)
            best_step[:] = self.steps

        prompts, details = [], []
        for b in range(n):
            adv = best_ids[b, : n_adv[b]].tolist()
            ids, text = self.compose(tokenizer, units[b], adv)
            prompts.append(text)
            details.append({
                "loss_initial": float(initial_loss[b]), "loss_final": float(best_loss[b]),
                "loss_last_step": float(last_train[b]), "best_step": int(best_step[b]), "steps": self.steps,
                "tokens": adv, "token_ids": ids,
                "retokenizes": tokenizer(text, add_special_tokens=False).input_ids == ids,
            })  # fmt: skip
        return AttackResult(prompts=prompts, details=details, seconds=time.perf_counter() - start)
