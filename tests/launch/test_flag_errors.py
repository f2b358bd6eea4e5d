"""launch/flag_errors.py: an override of a key the config lacks is named with its full path,
the closest keys and the keys that exist there (the CLI itself: tests/launch/test_train_cli.py)."""

import ml_collections

from launch.flag_errors import unknown_override


def _config():
    return ml_collections.ConfigDict({"train": {"steps": 10, "seed": 0},
                                      "stages": {"sft_1": {"steps": 5}, "sft_2": {"steps": 3}},
                                      "stage_order": ("sft_1", "sft_2")})


def test_every_existing_path_passes():
    argv = ["prog", "--config=x.py", "--config.train.steps=3", "--config.stages.sft_2.steps=1", "--workdir=w"]
    assert unknown_override(argv, _config()) is None


def test_a_misspelt_leaf_names_its_path_and_the_closest_key():
    msg = unknown_override(["prog", "--config.train.stepz=3"], _config())
    assert msg == ("--config.train.stepz=3: unknown config key 'train.stepz'; did you mean 'train.steps'? "
                   "(config.train has the keys: seed, steps)")


def test_a_missing_branch_is_named_where_it_leaves_the_config():
    msg = unknown_override(["prog", "--config.train.steps=3", "--config.stages.sft_9.steps=1"], _config())
    assert msg.startswith("--config.stages.sft_9.steps=1: unknown config key 'stages.sft_9'; did you mean ")
    assert "'stages.sft_1'" in msg and "'stages.sft_2'" in msg  # equally close: in difflib's order
    assert msg.endswith("(config.stages has the keys: sft_1, sft_2)")
    assert unknown_override(["prog", "--config.zzz=1"], _config()) == (
        "--config.zzz=1: unknown config key 'zzz' (the config has the keys: stage_order, stages, train)")


def test_a_path_through_a_value_that_is_not_a_dict_is_not_judged():
    assert unknown_override(["prog", "--config.stage_order.0=sft_2"], _config()) is None
