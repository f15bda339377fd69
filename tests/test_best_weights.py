import pytest
import torch

from tuneforge.best_weights import BestWeights, best_files, remove_all
from tuneforge.config import ConfigError


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.full((3,), -value)}


def test_a_file_per_best_step_kept_while_the_last_checkpoint_names_it(tmp_path):
    best = BestWeights(tmp_path, main=True)
    best.keep(state(1.0), 10)
    best.checkpoint_written(10)  # a checkpoint now names step 10
    best.keep(state(2.0), 20)
    assert sorted(best_files(tmp_path)) == [10, 20]  # a run killed now resumes from that checkpoint: 10 is needed
    best.keep(state(3.0), 30)
    assert sorted(best_files(tmp_path)) == [10, 30]  # 20 was neither the best nor named by a checkpoint
    best.checkpoint_written(30)
    assert sorted(best_files(tmp_path)) == [30]
    assert torch.equal(best.load(30)["w"], state(3.0)["w"]) and torch.equal(best.load(30)["b"], state(3.0)["b"])
    remove_all(tmp_path)
    assert not best_files(tmp_path)


def test_resuming_keeps_the_named_file_removes_leftovers_and_refuses_a_missing_one(tmp_path):
    killed = BestWeights(tmp_path, main=True)
    killed.keep(state(1.0), 4)
    killed.checkpoint_written(4)
    killed.keep(state(2.0), 6)  # written before the kill, named by no checkpoint
    assert sorted(best_files(tmp_path)) == [4, 6]
    best = BestWeights(tmp_path, main=True)
    best.resumed(4, None)
    assert sorted(best_files(tmp_path)) == [4] and torch.equal(best.load(4)["w"], state(1.0)["w"])
    best.resumed(None, None)  # a checkpoint from before the first evaluation
    assert not best_files(tmp_path)
    with pytest.raises(ConfigError, match="best weights of step 4"):
        BestWeights(tmp_path, main=True).resumed(4, None)


def test_resuming_refuses_damaged_best_weights_before_training(tmp_path):
    """A damaged file was accepted: the resumed run trained to its end, then failed reading it (SafetensorError
    traceback), and every later --resume did the same."""
    BestWeights(tmp_path, main=True).keep(state(1.0), 4)
    path = best_files(tmp_path)[4]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=r"cannot resume: the best weights of step 4 \(.*\) that the checkpoint "
                                          r"names are damaged \(.*\); start the run again with --overwrite"):
        BestWeights(tmp_path, main=True).resumed(4, None)


def test_a_checkpoint_that_held_its_best_weights_inside_resumes_with_them(tmp_path):
    best = BestWeights(tmp_path, main=True)  # checkpoints written before 2026-12-06
    best.resumed(8, state(5.0))
    assert sorted(best_files(tmp_path)) == [8] and torch.equal(best.load(8)["b"], state(5.0)["b"])


def test_other_ranks_write_nothing_and_without_a_run_directory_a_temporary_folder_serves(tmp_path):
    other = BestWeights(tmp_path, main=False)
    other.keep(state(1.0), 3)
    other.checkpoint_written(3)
    assert not any(tmp_path.iterdir())
    alone = BestWeights(None, main=True)
    alone.keep(state(7.0), 2)
    assert alone.folder.is_dir() and alone.folder != tmp_path and torch.equal(alone.load(2)["w"], state(7.0)["w"])
