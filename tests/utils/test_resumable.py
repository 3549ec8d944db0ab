import torch
from torch.utils.data import RandomSampler

from igmu_lightning.data.forget_retain import PairSampler
from igmu_lightning.utils.resumable import ResumableLoader, ShuffleSampler


def test_shuffle_sampler_draws_as_random_sampler_does():
    torch.manual_seed(3)
    expected = [list(RandomSampler(range(10))) for _ in range(2)], torch.rand(())
    torch.manual_seed(3)
    sampler = ShuffleSampler(10)
    assert ([list(sampler) for _ in range(2)], torch.rand(())) == expected  # same orders, same global draws


def test_loader_state_replays_the_interrupted_pass_and_skips_what_was_consumed():
    data = list(range(12))
    torch.manual_seed(0)
    loader = ResumableLoader(data, 3, sampler=ShuffleSampler(12))
    it = iter(loader)
    seen = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    rest = [b.tolist() for b in it]
    assert state["consumed"] == 2

    torch.manual_seed(99)  # another process: another global state
    again = ResumableLoader(data, 3, sampler=ShuffleSampler(12))
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == rest
    assert sorted(sum(seen + rest, [])) == data


def test_pair_sampler_skip_leaves_out_the_first_pairs_of_its_epoch():
    sampler = PairSampler(5, 4, 9, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip = 4
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the skip applies to one pass only
