"""Training loaders that a killed run resumes exactly: Lightning stores the loader's state (its
position in the epoch, the shuffle's seed, the process's random-number state) in every checkpoint,
and a resumed run skips the batches already trained on and draws the same random numbers from there.

The random-number state is put back just before the first batch after the resume is fetched:
that is where the uninterrupted run stood when the checkpoint was written (sized loaders are not
prefetched by Lightning), so data-side draws (random flips) and the model's draws both match."""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Sampler


def rng_state() -> dict:
    """The process's torch (CPU and CUDA), NumPy and Python random states, as plain data (loadable
    with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},  # fmt: skip
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    """Put back what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


class ShuffleSampler(Sampler[int]):
    """``RandomSampler``'s order and its one draw from the global torch RNG per pass, but the pass's
    seed is kept, so a resumed run replays the interrupted pass's order (and skips its start)."""

    def __init__(self, n: int) -> None:
        self.n, self.seed, self.skip = n, None, 0
        self._replay: int | None = None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self._replay is not None:  # the interrupted pass: its seed, not a new draw
            seed, self._replay = self._replay, None
        else:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())  # as RandomSampler draws it
        self.seed = seed
        skip, self.skip = self.skip, 0
        yield from torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist()[skip:]

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self._replay = state.get("seed")


class ResumableLoader(DataLoader):
    """A ``DataLoader`` with Lightning's ``state_dict`` / ``load_state_dict`` interface. Its sampler
    must have ``skip`` (items to leave out of its next pass) and ``state_dict`` / ``load_state_dict``
    (``ShuffleSampler``, ``PairSampler``); with another sampler (e.g. a distributed one put in by
    Lightning) the interrupted epoch restarts from its start, as before."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = 0  # batches handed out by the iterator advanced last (the training one)
        self._resume: dict | None = None

    def _sampler_resumes(self) -> bool:
        return all(hasattr(self.sampler, a) for a in ("skip", "state_dict", "load_state_dict")) and self.batch_size

    def state_dict(self) -> dict:
        sampler = self.sampler.state_dict() if self._sampler_resumes() else None
        return {"consumed": self._consumed, "sampler": sampler, "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state

    def __iter__(self):
        resume, self._resume = self._resume, None
        start, rng = 0, resume["rng"] if resume else None
        if resume is not None and resume["consumed"] >= len(self):
            set_rng_state(rng)  # the epoch had ended: the next one starts afresh, from here (its first draws)
            rng = None
        elif resume is not None and self._sampler_resumes() and resume.get("sampler") is not None:
            start = resume["consumed"]
            self.sampler.load_state_dict(resume["sampler"])
            self.sampler.skip = start * self.batch_size
        elif resume is not None:
            rank_zero_warn(f"the data order of the interrupted epoch is not restored under {type(self.sampler).__name__}: "
                           "it restarts from its first batch")  # fmt: skip
        return self._counted(super().__iter__(), start, rng)

    def _counted(self, iterator, position: int, rng: dict | None):
        if rng is not None:  # before the first fetch: where the uninterrupted run stood
            set_rng_state(rng)
        for batch in iterator:
            position += 1
            self._consumed = position
            yield batch
