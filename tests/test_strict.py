"""Strict dataclasses: values are coerced/checked against type hints and unknown keys are refused."""
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from tuneforge.strict import ConfigError, build_dataclass, positive


@dataclass
class Inner:
    rate: float = 0.1


@dataclass
class Empty:
    pass


@dataclass
class Outer:
    name: str = "x"
    kind: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=list)
    limit: int | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    empty: Empty = field(default_factory=Empty)


def test_values_are_coerced_to_their_hints():
    out = build_dataclass(Outer, {"name": 3, "sizes": "1, 2", "inner": {"rate": "1e-3"}, "limit": None})
    assert out == Outer(name="3", sizes=[1, 2], inner=Inner(rate=1e-3), limit=None)
    assert build_dataclass(Outer, {"sizes": 4}).sizes == [4]  # a scalar becomes a one-item list


@pytest.mark.parametrize("data,message", [
    ({"nmae": "x"}, "unknown config key 'nmae' (did you mean 'name'?); valid keys under 'top level': empty, flag, "
                    "inner, kind, limit, name"),
    ({"empty": {"rank": 4}}, "unknown config key 'empty.rank'; valid keys under 'empty': none (it takes no settings)"),
    ({"inner": {"rte": 1}}, "unknown config key 'inner.rte' (did you mean 'inner.rate'?); valid keys under 'inner': "
                            "rate"),
    ({"zzz": 1}, "unknown config key 'zzz'; valid keys"),  # nothing near: no guess
    ({"kind": "c"}, "kind: 'c' is not allowed; choose one of a, b"),
    ({"flag": "yes"}, "flag: expected true/false, got 'yes'"),
    ({"limit": 1.5}, "limit: expected an integer, got 1.5"),
    ({"sizes": ["one"]}, "sizes[0]: expected an integer, got 'one'"),
    ({"inner": 3}, "inner: expected a mapping, got 3"),
])
def test_bad_values_name_the_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_dataclass(Outer, data)


def test_positive():
    positive("train.lr", None)
    positive("train.lr", 1e-5)
    with pytest.raises(ConfigError, match="train.lr must be positive, got 0"):
        positive("train.lr", 0)


def test_a_comma_list_override_fills_a_list_of_integers():
    """`method.layer_indices=0,1` on the command line arrives as the string "0,1"."""
    from tuneforge.config import parse_overrides
    from tuneforge.methods import registry
    options = parse_overrides(["method.layer_indices=0,-1"])["method"]
    assert registry.make_config("freeze", options).layer_indices == [0, -1]


def test_field_comments_read_each_fields_comment_and_its_continuation_lines():
    import dataclasses

    from tuneforge.strict import field_comments

    @dataclasses.dataclass
    class Example:
        a: int = 1  # the first
        b: list[int] = dataclasses.field(default_factory=list)  # the second,
        # continued here
        c: str = "x"

    assert field_comments(Example) == {"a": "the first", "b": "the second, continued here", "c": ""}


def test_non_finite_numbers_are_refused_where_a_float_is_expected():
    from tuneforge.config import load_config
    for override in ({"train": {"lr": float("inf")}}, {"train": {"weight_decay": "nan"}},
                     {"data": {"split": [float("nan"), 0.5, 0.5]}}, {"train": {"epochs": "inf"}}):
        with pytest.raises(ConfigError, match="expected a finite number"):
            load_config(None, override)


def test_positive_refuses_infinity_and_nan():
    for value in (float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="train.epochs must be"):
            positive("train.epochs", value)


def test_field_hint_finds_the_declared_type_of_a_dotted_key():
    from tuneforge.strict import field_hint, is_text
    assert field_hint(Outer, ["inner", "rate"]) is float and field_hint(Outer, ["name"]) is str
    assert field_hint(Outer, ["nosuch"]) is None and field_hint(Outer, ["name", "deeper"]) is None
    assert is_text(str) and is_text(str | None) and not is_text(int | None) and not is_text(list[str])
