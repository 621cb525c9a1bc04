"""Steerable ArmoRM (armorm_client.steering): weights by objective name → Σ wᵢ·rewardᵢ. Pure: no server."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armorm_client.contract import OBJECTIVES
from armorm_client.rlhf import Settings
from armorm_client.steering import ObjectiveWeights


def test_weights_by_name_give_the_weighted_sum_of_the_rewards():
    rewards = np.arange(len(OBJECTIVES), dtype=np.float32) / 10
    weights = ObjectiveWeights.parse("helpsteer-helpfulness=0.97, helpsteer-verbosity:-0.26")
    assert weights.score(rewards) == pytest.approx(0.97 * 0.0 - 0.26 * 0.4)
    assert ObjectiveWeights.of({"code-style": 2}).score(rewards) == pytest.approx(2 * rewards[OBJECTIVES.index(
        "code-style")])
    assert str(weights) == "helpsteer-helpfulness=0.97,helpsteer-verbosity=-0.26"


def test_the_dpa_direction_is_a_unit_vector_over_helpfulness_and_verbosity():
    weights = dict(ObjectiveWeights.direction(-15).pairs)
    assert weights["helpsteer-helpfulness"] == pytest.approx(math.cos(math.radians(-15)))
    assert weights["helpsteer-verbosity"] == pytest.approx(-0.2588, abs=1e-4)
    assert math.hypot(*weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "at least one"),
    ("helpfulness=1", "not one of ArmoRM's objectives"),
    ("helpsteer-helpfulness", "name=weight pairs"),
    ("helpsteer-helpfulness=x", "is not a number"),
    ("helpsteer-helpfulness=nan", "finite"),
    ("helpsteer-helpfulness=1,helpsteer-helpfulness=2", "weighted twice"),
])
def test_bad_weights_say_what_to_fix(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        ObjectiveWeights.parse(text)


def test_trainer_settings_read_the_weights_from_the_environment():
    settings = Settings.from_env({"ARMORM_OBJECTIVE_WEIGHTS": "helpsteer-helpfulness=1"})
    assert settings.objective_weights == ObjectiveWeights((("helpsteer-helpfulness", 1.0),))
    assert Settings.from_env({}).objective_weights is None
    with pytest.raises(ValueError, match="ARMORM_OBJECTIVE_WEIGHTS: .*not one of"):
        Settings.from_env({"ARMORM_OBJECTIVE_WEIGHTS": "verbosity=1"})


def test_objective_weights_are_refused_for_a_model_without_armorms_objectives():
    with pytest.raises(ValueError, match="has none"):
        Settings.from_env({"ARMORM_OBJECTIVE_WEIGHTS": "helpsteer-helpfulness=1", "ARMORM_MODEL": "fsfairx"})
