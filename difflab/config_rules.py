"""The value rules of config fields: a :class:`Rule` per field, attached by :func:`checked` and checked by
:func:`difflab.config.from_dict` where a config is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# -- value rules, attached to the fields -------------------------------------------------------
RULE = "rule"  # dataclasses.field metadata: the Rule a field's value must satisfy
EXAMPLE = "example"  # and a valid value to suggest where the default is None


@dataclass(frozen=True)
class Rule:
    """A range for a config value: ``test`` says whether a value is in it, ``text`` ends "must be ..."."""

    text: str
    test: Callable[[Any], bool]


POSITIVE = Rule("positive", lambda v: v > 0)
NON_NEGATIVE = Rule("zero or more", lambda v: v >= 0)
UNIT_INTERVAL = Rule("in [0, 1]", lambda v: 0 <= v <= 1)
HALF_OPEN = Rule("in [0, 1)", lambda v: 0 <= v < 1)
OPEN_UNIT = Rule("in (0, 1)", lambda v: 0 < v < 1)
PERCENTILE = Rule("a percentile in (0, 100]", lambda v: 0 < v <= 100)


def at_least(n: int) -> Rule:
    """Values >= ``n``."""
    return Rule(f"at least {n}", lambda v: v >= n)


def one_of(*choices: Any) -> Rule:
    """Values among ``choices``."""
    return Rule(f"one of {', '.join(map(str, choices))}", lambda v: v in choices)


def each(rule: Rule, non_empty: bool = False) -> Rule:
    """Lists whose every item satisfies ``rule`` (and that have one, with ``non_empty``)."""
    return Rule(f"a {'non-empty ' if non_empty else ''}list of values {rule.text}",
                lambda v: (len(v) > 0 or not non_empty) and all(rule.test(x) for x in v))


def checked(default: Any, rule: Rule, example: Any = None) -> Any:
    """A dataclass field with ``default`` whose values :func:`from_dict` checks against ``rule``;
    ``example`` is the valid value its errors suggest when the default is None. None always passes."""
    return field(default=default, metadata={RULE: rule, EXAMPLE: example})
