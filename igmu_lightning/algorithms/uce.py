"""UCE, Unified Concept Editing (Gandikota et al., WACV 2024): a closed-form edit of every
cross-attention key and value projection, no gradient steps.

For each W0 in {attn2.to_k, attn2.to_v}:
    W = (lam W0 + s_e sum_i (W0 g_i) c_i^T + s_p sum_j (W0 p_j) p_j^T) (lam I + s_e sum_i c_i c_i^T + s_p sum_j p_j p_j^T)^-1
with c_i the erase texts' token embeddings, g_i the guide texts' at the same positions and p_j the
preserve texts'. Which tokens, by ``tokens``: the paper-era code (``concept_and_after``) takes the
last word and every token after it for erase and guide texts, all 77 tokens of each preserve text,
and always preserves "" (it protects the unconditional branch of CFG); the 2024 code (``concept``)
takes the last word's token of every text, preserve texts included, and adds no "".
Solved in float64 from the unedited weights. Through ``train.py fit`` it is a module whose one
training step applies the edit.

Where its texts come from: the module's ``erase``, ``guide`` and ``preserve`` (and
``preserve_file``), all consumed at once by the one edit, which no batch could split. Its data module
is a plain step counter, ``StepData`` (one step, no prompts): the batch is never read."""

from __future__ import annotations

from typing import Literal

import torch

from igmu_lightning.algorithms.base import UnlearningModule
from igmu_lightning.backbone import BackboneSpec
from igmu_lightning.errors import IGMUError
from igmu_lightning.utils.text import expand_braces, read_texts


def closed_form(w: torch.Tensor, lam: float, vk: list[torch.Tensor], kk: list[torch.Tensor]) -> torch.Tensor:
    """(lam W + sum(vk)) (lam I + sum(kk))^-1 in float64, the terms added in order: the least-squares
    W' = argmin lam ||W' - W||^2 + sum_i ||W' k_i - v_i||^2 when vk holds the sums of v k^T and kk
    those of k k^T (UCE's edit, RECE's, MACE's refinement and fusion)."""
    a = lam * w.double()
    for term in vk:
        a = a + term
    b = lam * torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    for term in kk:
        b = b + term
    return torch.linalg.solve(b, a.T).T  # a b^-1, with b symmetric


def closed_form_edit(
    w0: torch.Tensor, c: torch.Tensor, g: torch.Tensor, p: torch.Tensor, lam: float, s_e: float, s_p: float
) -> torch.Tensor:
    """UCE's closed form for one projection, in float64: values ``w0 g`` for the rows ``c``, ``w0 p``
    (kept) for the rows ``p``, and ``lam`` pulling towards ``w0`` (RECE reuses it with w0 = the edited W)."""
    w0 = w0.double()
    return closed_form(w0, lam, [s_e * (w0 @ g.T) @ c, s_p * (w0 @ p.T) @ p], [s_e * c.T @ c, s_p * p.T @ p])


class UCE(UnlearningModule):
    """Args:
    erase: texts whose tokens are edited (e.g. ["triangle"]).
    guide: what each erase text should map to (one per erase text, or one for all; "" default).
    preserve: texts whose keys and values are kept; "{a,b}" alternatives expand
        ("a {red,blue} {circle,square}" is four texts).
    preserve_file: more preserve texts from a file: a CSV with a ``preserve_column`` header (the
        paper's ``data/artists1734_prompts.csv``, column ``artist``) or one text a line. Entries equal
        to an erase text (any case) are dropped, as the paper-era code drops the erased artist.
    preserve_column: the CSV column ``preserve_file`` is read from.
    lam: weight of staying at W0 (0.5 in both official codes).
    erase_scale: s_e (1).
    preserve_scale: s_p; None means the mode's official default: max(0.1, 1/|P|) (paper-era) or 1 (2024).
    tokens: ``concept_and_after`` (paper-era code: the last word token and every token after it,
        guide tokens aligned from its own last word; all tokens of the preserve texts, "" added) or
        ``concept`` (2024 code: the last word's token of erase, guide and preserve texts; no "").
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        erase: list[str],
        guide: list[str] | None = None,
        preserve: list[str] | None = None,
        preserve_file: str | None = None,
        preserve_column: str = "artist",
        lam: float = 0.5,
        erase_scale: float = 1.0,
        preserve_scale: float | None = None,
        tokens: Literal["concept_and_after", "concept"] = "concept_and_after",
        export_dir: str | None = None,
    ) -> None:
        guide = [""] if guide is None else list(guide)
        if not erase:
            raise IGMUError("UCE needs at least one erase text")
        if tokens not in ("concept_and_after", "concept"):
            raise IGMUError(f"unknown UCE tokens mode '{tokens}': choose concept_and_after (paper-era) or concept (2024)")
        if len(guide) not in (1, len(erase)):
            raise IGMUError(f"{len(erase)} erase texts but {len(guide)} guide texts: give one, or one per erase text")
        super().__init__(backbone, ["xattn_kv"], lr=0.0, export_dir=export_dir)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.erase, self.guide = list(erase), guide * (len(erase) // len(guide))
        self.tokens, self.lam, self.s_e, self.preserve_scale = tokens, lam, erase_scale, preserve_scale
        self.preserve_entries, self.preserve_file, self.preserve_column = list(preserve or []), preserve_file, preserve_column
        self._preserve: list[str] | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.preserve  # a missing or malformed preserve_file stops the run before the edit

    @property
    def preserve(self) -> list[str]:
        """The preserve texts: the listed ones (braces expanded), the file's, and "" (paper-era)."""
        if self._preserve is None:
            texts = [text for entry in self.preserve_entries for text in expand_braces(entry)]
            if self.preserve_file:
                erased = {e.strip().lower() for e in self.erase}
                texts += [t for t in read_texts(self.preserve_file, self.preserve_column) if t.lower() not in erased]
            self._preserve = list(dict.fromkeys(texts + ([""] if self.tokens == "concept_and_after" else [])))
        return self._preserve

    @property
    def s_p(self) -> float:
        if self.preserve_scale is not None:
            return self.preserve_scale
        return 1.0 if self.tokens == "concept" else max(0.1, 1 / max(len(self.preserve), 1))

    @torch.no_grad()
    def _embed(self, text: str) -> tuple[torch.Tensor, int]:
        """All 77 token embeddings of ``text`` and the index of its last word token."""
        ids = self.backbone.tokenizer(text, padding="max_length", max_length=self.backbone.tokenizer.model_max_length,
                                      truncation=True, return_tensors="pt")  # fmt: skip
        last_word = int(ids.attention_mask.sum()) - 2  # before <|endoftext|>; BOS (0) for ""
        return self.backbone.text_encoder(ids.input_ids.to(self.device))[0][0].double(), last_word

    def token_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(C, G, P): erase and guide token vectors aligned row by row, and preserve tokens."""
        erase_rows, guide_rows = [], []
        for text, target in zip(self.erase, self.guide):
            (c, ci), (g, gi) = self._embed(text), self._embed(target)
            if self.tokens == "concept":
                c, g = c[ci : ci + 1], g[gi : gi + 1]
            else:  # from each one's last word to the end, trimmed to the same length
                c, g = c[ci:], g[gi:]
                n = min(len(c), len(g))
                c, g = c[:n], g[:n]
            erase_rows.append(c)
            guide_rows.append(g)
        preserve = [self._embed(text) for text in self.preserve]
        if self.tokens == "concept":
            preserve = [p[i : i + 1] for p, i in preserve]
        else:
            preserve = [p for p, _ in preserve]
        width = erase_rows[0].shape[1]
        p = torch.cat(preserve) if preserve else torch.zeros(0, width, dtype=torch.float64, device=self.device)
        return torch.cat(erase_rows), torch.cat(guide_rows), p

    def edited(self, w0: torch.Tensor, c: torch.Tensor, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The closed-form W for one projection (all float64)."""
        return closed_form_edit(w0, c, g, p, self.lam, self.s_e, self.s_p)

    @torch.no_grad()
    def apply_edit(self) -> int:
        """Edit every attn2 to_k / to_v from its unedited weights; returns how many were edited."""
        c, g, p = self.token_pairs()
        count = 0
        for name, param in self.backbone.unet.named_parameters():
            if name in self.originals:
                param.copy_(self.edited(self.originals[name].to(self.device), c, g, p).to(param.dtype))
                count += 1
        self.log("train/edited_matrices", float(count))
        return count

    def training_step(self, batch: dict, batch_idx: int) -> None:
        # With no optimizer Lightning's global_step never advances: stop after the one edit.
        self.apply_edit()
        self.trainer.should_stop = True

    def configure_optimizers(self):
        return None  # closed form: nothing to optimise
