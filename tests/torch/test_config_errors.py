"""Bad configuration fails where it is written: every config and ``RobustLoss`` check the
ambiguity set and its size at construction, with ``robust_weights``' own errors, and the
trainers check their datasets' columns when they are given them."""

from __future__ import annotations

import pytest
from tiny_models import PAIRS, PROMPTS, tiny_llama, tiny_reward_model

import dro_rebel
from dro_rebel.torch import (
    DroRebelConfig,
    DroRebelTrainer,
    RobustDPOConfig,
    RobustDPOTrainer,
    RobustLoss,
    RobustRewardConfig,
    RobustRewardTrainer,
)

CONFIGS = [RobustDPOConfig, DroRebelConfig, RobustRewardConfig]
try:
    from dro_rebel.integrations.trl import DRODPOConfig, DRORewardConfig

    CONFIGS += [DRODPOConfig, DRORewardConfig]
except ImportError:  # TRL is an extra
    pass

BAD_SETS = [
    ("chi-square", {"radius": 0.1}),
    ("chi2", {"radius": -1.0}),
    ("chi2", {}),
    ("kl", {}),
    ("tv", {}),
    ("tv", {"penalty": 1.0}),
    ("cvar", {}),
    ("cvar", {"alpha": 1.5}),
    ("kl", {"penalty": -1.0}),
    ("tv", {"radius": "calibrated"}),
    ("chi2", {"radius": "big"}),
    ("chi2", {"radius": 0.1, "confidence": 0.9}),
    ("kl", {"radius": "calibrated", "confidence": 1.5}),
]


def _function_error(ambiguity, size):
    with pytest.raises(dro_rebel.DroRebelError) as raised:
        dro_rebel.robust_weights([1.0, 2.0], ambiguity, **size)
    return type(raised.value), str(raised.value)


def _config(config_cls, tmp_path, **fields):
    if config_cls.__name__.startswith("DRO"):
        fields = {"use_cpu": True, "report_to": [], **fields}  # TRL's, on any machine
    return config_cls(output_dir=str(tmp_path), **fields)


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("ambiguity, size", BAD_SETS)
def test_a_config_raises_the_functions_error_when_built(config_cls, ambiguity, size, tmp_path):
    kind, message = _function_error(ambiguity, size)
    with pytest.raises(kind) as raised:
        _config(config_cls, tmp_path, ambiguity=ambiguity, **size)
    assert str(raised.value) == message


@pytest.mark.parametrize("ambiguity, size", BAD_SETS)
def test_robust_loss_raises_the_functions_error_when_built(ambiguity, size):
    kind, message = _function_error(ambiguity, size)
    with pytest.raises(kind) as raised:
        RobustLoss(ambiguity, **size)
    assert str(raised.value) == message


def test_robust_loss_checks_the_rest_of_its_arguments_when_built():
    with pytest.raises(dro_rebel.BudgetError, match="tol must be positive"):
        RobustLoss("chi2", radius=0.1, tol=-1.0)
    with pytest.raises(dro_rebel.GeometryError, match="p must be a finite number >= 1"):
        RobustLoss("wasserstein", radius=0.1, p=0.5)


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_a_set_without_its_size_is_an_error_not_the_plain_loss(config_cls, tmp_path):
    # The case: DRODPOConfig(ambiguity="chi2") trained plain DPO without a word.
    with pytest.raises(dro_rebel.BudgetError, match="^chi2 needs a radius"):
        _config(config_cls, tmp_path, ambiguity="chi2")
    # The default is no set at all, the nominal loss; radius 0 is the nominal loss too.
    assert _config(config_cls, tmp_path).ambiguity == "none"
    _config(config_cls, tmp_path, radius=0.0)
    with pytest.raises(dro_rebel.BudgetError, match='radius=0.3 sizes an ambiguity set, but ambiguity is "none"'):
        _config(config_cls, tmp_path, radius=0.3)


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_ambiguity_none_is_a_dro_rebel_error(config_cls, tmp_path):
    with pytest.raises(dro_rebel.AmbiguityError, match="ambiguity must be one of .*got None"):
        _config(config_cls, tmp_path, ambiguity=None, radius=0.1)
    with pytest.raises(dro_rebel.AmbiguityError, match="got None"):
        RobustLoss(None, radius=0.1)


def test_the_nominal_config_trains_on_uniform_weights(tokenizer, tmp_path):
    config = RobustDPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, disable_tqdm=True)
    trainer = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS)
    trainer.train_step(trainer.next_batch(1))
    assert trainer.robust_loss.last.max_weight == pytest.approx(1 / 4)
    assert trainer.robust_loss.last.ess == pytest.approx(4)


def test_the_trl_config_reads_a_numeric_radius_from_the_command_line(tmp_path):
    trl = pytest.importorskip("dro_rebel.integrations.trl")
    assert _config(trl.DRODPOConfig, tmp_path, ambiguity="kl", radius="0.5").radius == 0.5
    with pytest.raises(dro_rebel.BudgetError, match="radius must be a number or \"calibrated\", got 'big'"):
        _config(trl.DRODPOConfig, tmp_path, ambiguity="kl", radius="big")


# -- dataset columns ----------------------------------------------------------------------


def _drop(rows, column):
    return [{key: value for key, value in row.items() if key != column} for row in rows]


def _dpo(tokenizer, tmp_path, train, eval_dataset=None, **fields):
    config = RobustDPOConfig(output_dir=str(tmp_path), disable_tqdm=True, **fields)
    return RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, train, eval_dataset)


def test_a_missing_column_is_named_with_the_columns_present_when_the_trainer_is_built(tokenizer, tmp_path):
    message = (
        r"^'chosen' is not a column of train_dataset \(columns: \['prompt', 'rejected', 'group'\]\); "
        r"RobustDPOTrainer needs 'prompt', 'chosen', 'rejected'$"
    )
    with pytest.raises(ValueError, match=message):
        _dpo(tokenizer, tmp_path, _drop(PAIRS, "chosen"))
    with pytest.raises(ValueError, match="'rejected' is not a column of eval_dataset"):
        _dpo(tokenizer, tmp_path, PAIRS, _drop(PAIRS, "rejected"))
    with pytest.raises(ValueError, match=r"group_column='kind' is not a column of train_dataset \(columns: "):
        _dpo(tokenizer, tmp_path, PAIRS, group_column="kind")
    # A row of a list that lacks a column the others have.
    with pytest.raises(ValueError, match="'chosen' is not a column of train_dataset"):
        _dpo(tokenizer, tmp_path, PAIRS[:3] + _drop(PAIRS[3:4], "chosen"))


def test_a_missing_column_of_a_datasets_dataset_is_named(tokenizer, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_list(_drop(PAIRS, "prompt"))
    with pytest.raises(ValueError, match=r"'prompt' is not a column of train_dataset \(columns: \['chosen'"):
        _dpo(tokenizer, tmp_path, rows)


def test_each_trainer_names_the_columns_it_reads(tokenizer, tmp_path):
    prompts = [{"text": prompt} for prompt in PROMPTS]
    config = DroRebelConfig(output_dir=str(tmp_path), disable_tqdm=True)
    with pytest.raises(ValueError, match=r"'prompt' is not a column of train_dataset \(columns: \['text'\]\)"):
        DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, lambda p, c: [0.0] * len(c))
    with pytest.raises(TypeError, match="train_dataset must be a datasets.Dataset or a list of dicts .* type str"):
        DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, PROMPTS, lambda p, c: [0.0] * len(c))
    config = RobustRewardConfig(output_dir=str(tmp_path), disable_tqdm=True)
    # The reward model's prompt column is optional.
    RobustRewardTrainer(tiny_reward_model(tokenizer), tokenizer, config, _drop(PAIRS, "prompt"))
    with pytest.raises(ValueError, match="'rejected' is not a column of train_dataset"):
        RobustRewardTrainer(tiny_reward_model(tokenizer), tokenizer, config, _drop(PAIRS, "rejected"))
