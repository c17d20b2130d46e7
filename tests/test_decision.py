"""The one decision rule (scans_guard.sigma.decision): label, band, grey zone, out of domain, steering coefficient."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scans_guard.config import SafetyVerdict, SteeringRecipe
from scans_guard.sigma.decision import DecisionPolicy, band, coefficient, flags, is_harmful, label, steering_coefficient


def test_threshold_is_harmful_and_nan_fails_closed():
    assert is_harmful(0.5, 0.5) and not is_harmful(0.4999, 0.5)
    for bad in (math.nan, math.inf, -math.inf):
        assert is_harmful(bad, 0.5) and label(bad, 0.5) == "harmful" and band(bad, 0.5, 0.2) == "harmful"
    assert flags([0.1, 0.5, math.nan, 0.9], 0.5).tolist() == [False, True, True, True]


def test_one_grey_zone_convention():
    # a single width g: [T - g, T) grey; a pair (below, above): [T - below, T + above) grey
    assert [band(s, 0.5, 0.1) for s in (0.39, 0.4, 0.49, 0.5)] == ["benign", "grey", "grey", "harmful"]
    assert [band(s, 0.5, (0.1, 0.2)) for s in (0.39, 0.4, 0.69, 0.7)] == ["benign", "grey", "grey", "harmful"]
    with pytest.raises(ValueError):
        band(0.1, 0.5, -0.1)
    with pytest.raises(ValueError):
        DecisionPolicy(grey_zone=(0.1, -1.0))


def test_out_of_domain_is_at_least_its_floor():
    assert band(-5.0, 0.5, in_domain=False) == "grey"
    assert band(-5.0, 0.5, in_domain=False, out_of_domain="harmful") == "harmful"
    assert band(0.9, 0.5, in_domain=False, out_of_domain="benign") == "harmful"  # a floor never lowers a band


def test_coefficient_follows_the_band():
    assert coefficient("harmful", 1.0, 0.0) == 0.0 and coefficient("benign", 2.0, 0.0) == -2.0
    assert coefficient("grey", 2.0, 3.0) == 0.0 and coefficient("harmful", 2.0, 3.0) == 3.0


@given(score=st.floats(-3, 3), t=st.floats(-2, 2), g=st.floats(0, 1), in_domain=st.booleans())
def test_recipe_and_policy_use_the_rule(score, t, g, in_domain):
    recipe = SteeringRecipe(
        steer_layers=[1], classify_layers=[1], threshold=t, grey_zone=g, alpha_benign=1.5, alpha_harmful=0.5
    )
    # the rule written out once more, independently, as the recipe documents it
    expected = 0.5 if score >= t else 0.0 if (not in_domain or score >= t - g) else -1.5
    assert recipe.coefficient(score, in_domain) == expected == steering_coefficient(score, t, g, 1.5, 0.5, in_domain)
    assert DecisionPolicy(grey_zone=g).score_band(score, t, in_domain) == band(score, t, g, in_domain=in_domain)
    assert DecisionPolicy(threshold=t + 1).score_band(score, t) == band(score, t + 1)


def test_verdict_record_round_trips():
    v = SafetyVerdict(
        score=0.2,
        label="benign",
        threshold=0.5,
        probability=0.3,
        layer_similarities={3: 0.1},
        renderings={"as_sent": 0.2},
        direction="away_from_refusal",
        coefficient=-1.0,
        latency_s=0.01,
    )
    record = v.record()
    assert record["layer_similarities"] == {"3": 0.1} and record["label"] == "benign"
    assert SafetyVerdict.model_validate(record) == v
    assert json.loads(json.dumps(record)) == record  # plain JSON values only
