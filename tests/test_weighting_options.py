"""The loss-level balancers' options: aliases, configs, errors at
construction, and the docstrings' examples."""

import re
import textwrap

import keras
import pytest

import multiloss
from multiloss import weighting as W

CLASSES = [getattr(W, name) for name in W.__all__ if name != "Weighting"]

NON_DEFAULT = {
    W.Static: {},
    W.Uncertainty: {"variant": "regression", "initial_log_variance": -0.5},
    W.IMTLL: {"initial_log_scale": 0.25},
    W.DWA: {"temperature": 3.0, "epsilon": 1e-6},
    W.RLW: {"seed": 42},
    W.GeometricMean: {"min_losses": [0.0, -1.0], "epsilon": 1e-6},
    W.ScaleNormalized: {"decay": 0.9, "warmup_steps": 7, "epsilon": 1e-6},
    W.FAMO: {"w_lr": 0.01, "gamma": 0.001, "min_losses": -1.0, "epsilon": 1e-7},
    W.STCH: {"mu": 0.5, "warmup_epochs": 2, "min_losses": [0.0, 0.1], "epsilon": 1e-12},
    W.MetricDriven: {"monitor": {"a": "val_a_acc", "b": "val_b_acc"}, "epsilon": 1e-4},
}


@keras.saving.register_keras_serializable(package="multiloss_tests")
def favour_b(scores, epoch):
    return {"b": 2.0}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_alias_config_round_trip(cls):
    assert isinstance(multiloss.balancer.get(cls.alias), cls)
    balancer = cls(**NON_DEFAULT[cls])
    config = balancer.get_config()
    for key, value in NON_DEFAULT[cls].items():
        assert config[key] == value
    again = cls.from_config(config)
    assert again.get_config() == config
    restored = multiloss.balancer.get(keras.saving.serialize_keras_object(balancer))
    assert type(restored) is cls and restored.get_config() == config


def test_metric_driven_rule_round_trips_when_registered():
    balancer = W.MetricDriven(rule=favour_b)
    again = W.MetricDriven.from_config(balancer.get_config())
    assert again.rule is favour_b


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_unknown_options_are_named_with_the_valid_ones(cls):
    if cls is W.Static:  # no options of its own: Keras's Layer names the bad one
        with pytest.raises(ValueError, match="tempreature"):
            cls(tempreature=2.0)
        return
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['tempreature'\]; valid options: \[.*'name'"):
        cls(tempreature=2.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: W.Uncertainty(variant="classification"), r"variant='classification'.*\['standard', 'regression'\]"),
        (lambda: W.Uncertainty(initial_log_variance=float("nan")), r"initial_log_variance.*finite"),
        (lambda: W.IMTLL(initial_log_scale="zero"), r"initial_log_scale.*number"),
        (lambda: W.DWA(temperature=0.0), r"temperature.*> 0"),
        (lambda: W.DWA(epsilon=-1.0), r"epsilon.*>= 0"),
        (lambda: W.RLW(seed=1.5), r"seed.*int"),
        (lambda: W.RLW(seed=-1), r"seed.*>= 0"),
        (lambda: W.GeometricMean(min_losses="low"), r"min_losses.*sequence"),
        (lambda: W.GeometricMean(epsilon=0.0), r"epsilon.*> 0"),
        (lambda: W.ScaleNormalized(decay=1.0), r"decay.*< 1"),
        (lambda: W.ScaleNormalized(warmup_steps=-1), r"warmup_steps.*>= 0"),
        (lambda: W.ScaleNormalized(warmup_steps=2.5), r"warmup_steps.*integer"),
        (lambda: W.ScaleNormalized(warmup_steps=2**24), r"warmup_steps.*<= 16777215"),
        (lambda: W.FAMO(w_lr=0.0), r"w_lr.*> 0"),
        (lambda: W.FAMO(gamma=-0.1), r"gamma.*>= 0"),
        (lambda: W.FAMO(min_losses=[0.0, float("inf")]), r"min_losses.*finite"),
        (lambda: W.STCH(mu=0.0), r"mu.*> 0"),
        (lambda: W.STCH(warmup_epochs=-2), r"warmup_epochs.*>= 0"),
        (lambda: W.MetricDriven(rule="inverse"), r"rule.*callable"),
        (lambda: W.MetricDriven(monitor="val_loss"), r"monitor.*\{task\}"),
        (lambda: W.MetricDriven(monitor=["val_a_loss"]), r"monitor.*dict"),
    ],
)
def test_invalid_options_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_per_task_options_are_checked_against_the_number_of_tasks():
    balancer = W.FAMO(min_losses=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"min_losses.*3 entries for 2 tasks"):
        balancer.setup(["a", "b"])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_docstring_documents_the_method_and_its_example_runs(cls):
    doc = cls.__doc__
    assert "scale of the update" in " ".join(doc.split()).lower()
    example = re.search(r"```python\n(.*?)```", doc, re.S)
    assert example, f"{cls.__name__} has no example"
    exec(compile(textwrap.dedent(example.group(1)), f"<{cls.__name__} example>", "exec"), {})
