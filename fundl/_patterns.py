"""Path patterns: the one matching rule for parameter labels, frozen parts and train modes.

A path joins dict keys (layer names, then a leaf name) with ``/``, relative to
the model: ``'conv1/w'``, ``'layer4/block2/body/bn1'``. A pattern matches a
path if it is an ``fnmatch`` glob of the whole path (``'*/w'``, ``'head/*'``;
``*`` also matches ``/``) or a prefix made of whole path components
(``'conv1'`` matches ``'conv1/w'`` and ``'conv1'``, not ``'conv10/w'``).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ._errors import ConfigError


def matches(path: str, pattern: str) -> bool:
    """Whether ``pattern`` matches ``path`` (see the module docstring).

    Example:
      >>> matches('layer4/block2/bn1', 'layer4'), matches('conv10/w', 'conv1')
      (True, False)
    """
    prefix = pattern.rstrip("/")
    return (fnmatch.fnmatchcase(path, pattern) or path == prefix
            or (bool(prefix) and path.startswith(prefix + "/")))


def check_patterns(patterns, where: str, arg: str) -> tuple[str, ...]:
    """``patterns`` as a tuple of strings: one string or an iterable of them."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not isinstance(patterns, Iterable) or isinstance(patterns, dict):
        raise ConfigError(f"{where}: {arg} must be a path pattern or a sequence of them (e.g. "
                          f"'backbone' or ('conv1', 'layer1')); got {patterns!r}")
    patterns = tuple(patterns)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{where}: {arg} entries must be non-empty path patterns such as "
                              f"'layer4/block2' or '*/bn*'; got {p!r}")
    return patterns


def any_match(path: str, patterns: Iterable[str]) -> bool:
    """Whether one of ``patterns`` matches ``path``."""
    return any(matches(path, p) for p in patterns)
