"""Train/eval mode per layer path: ``apply(..., train={'backbone': False, '*': True})``.

``train`` is a bool for the whole model, or a mapping ``{path pattern: bool}``
(patterns as in :mod:`fundl._patterns`, relative to the model: ``'layer4'``,
``'*/bn*'``; the model itself has the path ``''``). Each layer takes the value
of the first pattern matching its path; a layer no pattern matches evaluates
(``False``), so end with ``'*': True`` to train everything else. A layer in
eval mode uses its running statistics without updating them (BatchNorm) and
does not drop (Dropout), as ``module.eval()`` does in PyTorch.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._errors import ConfigError
from ._patterns import matches


class Modes:
    """The mode of every layer path from ``{pattern: bool}`` rules (first match wins)."""

    def __init__(self, rules: tuple[tuple[str, bool], ...]):
        self.rules = rules

    def mode(self, path: tuple[str, ...]) -> bool:
        """The mode of the layer at ``path`` (names below the model)."""
        s = "/".join(path)
        for pattern, value in self.rules:
            if matches(s, pattern):
                return value
        return False

    def uniform(self) -> bool:
        """Whether every path gets the same mode (a single ``'*'`` rule)."""
        return len(self.rules) == 1 and self.rules[0][0] == "*"

    def __repr__(self):
        return f"Modes({dict(self.rules)!r})"


def from_train(train, layer) -> Modes | None:
    """``None`` for a bool ``train``; :class:`Modes` for a mapping; a clear error otherwise."""
    if isinstance(train, (bool, np.bool_)):
        return None
    if isinstance(train, Mapping):
        rules = []
        for pattern, value in train.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"{layer.label()}: train mapping keys must be path patterns "
                                  f"such as 'backbone' or '*'; got {pattern!r}")
            if not isinstance(value, (bool, np.bool_)):
                raise ConfigError(f"{layer.label()}: train[{pattern!r}] must be True or False; "
                                  f"got {value!r}")
            rules.append((pattern, bool(value)))
        return Modes(tuple(rules))
    raise ConfigError(f"{layer.label()}: train must be True, False or a mapping {{path pattern: "
                      f"bool}} (e.g. {{'backbone': False, '*': True}}), a Python value fixed when "
                      f"the function is traced; got {type(train).__name__} {train!r}")
