"""Frozen parts of a model: no update, no optimizer state, eval mode.

``frozen`` is a path pattern or a sequence of them (the rule of
:func:`fundl.train.param_labels`: an ``fnmatch`` glob of the whole path or a
prefix of whole components, relative to the model: ``'backbone'``,
``'layer4/block2'``, ``'*/bn*'``). A parameter is frozen when its path
(``'backbone/conv1/w'``) matches a pattern; a layer runs in eval mode
(batch-norm running statistics used and not updated, dropout off) when its
path (``'backbone/bn1'``) matches one, as ``module.eval()`` plus
``requires_grad_(False)`` in PyTorch.

The trainable parameters are the params tree with every frozen leaf replaced
by ``None`` (an empty subtree for JAX and Optax), so the optimizer keeps no
state for frozen leaves and their gradients are never formed.
"""
from __future__ import annotations

import jax

from ._errors import ConfigError
from ._patterns import any_match, check_patterns


def _path(kp) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in kp)


def patterns(frozen, where: str) -> tuple[str, ...]:
    """``frozen`` as a tuple of patterns (``()`` for ``None``), validated."""
    if frozen is None:
        return ()
    return check_patterns(frozen, where, "frozen")


def trainable(params, frozen):
    """``params`` with every leaf matching a ``frozen`` pattern replaced by ``None``.

    Args:
      params: a parameter tree (nested dicts).
      frozen: a path pattern or a sequence of them.

    Returns:
      A tree of the same structure; feed it to ``optimizer.init`` for a step
      built with ``make_train_step(..., frozen=frozen)``.

    Raises:
      ConfigError: for a pattern matching no parameter (a typo would freeze nothing), as
        ``fit(frozen=...)`` does.

    Example:
      >>> import jax.numpy as jnp
      >>> p = {'backbone': {'w': jnp.ones(2)}, 'head': {'w': jnp.ones(3)}}
      >>> trainable(p, 'backbone')
      {'backbone': {'w': None}, 'head': {'w': Array([1., 1., 1.], dtype=float32)}}
    """
    pats = patterns(frozen, "trainable")
    check_matches(params, pats, "trainable")
    return mask(params, pats)


def mask(params, pats: tuple[str, ...]):
    """:func:`trainable` for checked patterns (the steps check them, naming themselves)."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, a: None if any_match(_path(kp), pats) else a, params)


def merge(trainable_params, params):
    """The full tree: trainable leaves from ``trainable_params``, frozen ones from ``params``."""
    return jax.tree_util.tree_map(lambda t, p: p if t is None else t, trainable_params, params,
                                  is_leaf=lambda v: v is None)


def train_modes(pats: tuple[str, ...]):
    """``apply``'s ``train`` argument for a train step: frozen layer paths evaluate."""
    if not pats:
        return True
    return {**{p: False for p in pats}, "*": True}


def check_matches(params, pats, where: str) -> None:
    """Every pattern must freeze something (a typo would silently train everything)."""
    paths = [_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for p in pats:
        if not any(any_match(s, (p,)) for s in paths):
            tops = sorted({s.split("/")[0] for s in paths})
            raise ConfigError(f"{where}: frozen pattern {p!r} matches no parameter (a typo "
                              f"would train everything); parameter paths start with {tops} "
                              f"(e.g. {paths[:3]}). Layers without parameters need no freezing")


def check_opt_state(optimizer, opt_state, params, pats, where: str) -> None:
    """``opt_state`` must have the structure ``optimizer.init`` gives for the trainable params."""
    want = jax.tree_util.tree_structure(jax.eval_shape(optimizer.init, params))
    got = jax.tree_util.tree_structure(opt_state)
    if got == want:
        return
    if pats:
        fix = (f"with frozen={list(pats)} the optimizer state covers the trainable params "
               "only: opt_state = step.init_opt_state(params) (or optimizer.init("
               "fundl.train.trainable(params, frozen)))")
    else:
        fix = "use opt_state = optimizer.init(params) with this step's optimizer and params"
    raise ConfigError(f"{where}: opt_state does not have the structure optimizer.init gives "
                      f"({got.num_leaves} leaves vs {want.num_leaves} expected); {fix}")
