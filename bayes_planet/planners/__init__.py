"""Planners over a world model. All speak one protocol (see `bayes_planet.planners.base`).

The built-in planners are named in `PLANNERS`; `planner_class` also takes ``"package.module:Class"``, the
import path of a user's planner (a frozen dataclass meeting the protocol), so that a config can name it.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import MappingProxyType

from bayes_planet.planners.base import Planner, ScoreFn, world_model_scorer
from bayes_planet.planners.cem import CEM
from bayes_planet.planners.mppi import MPPI
from bayes_planet.planners.random_shooting import RandomShooting

PLANNERS = MappingProxyType({"cem": CEM, "random_shooting": RandomShooting, "mppi": MPPI})
PROTOCOL = ("horizon", "candidates", "initial_plan", "__call__")


def planner_class(name: str) -> type:
    """The planner class `name` refers to: a key of `PLANNERS` or an import path ``module:Class``. Raises a
    ValueError naming what is wrong (unknown name, import failure, not a dataclass meeting the protocol)."""
    if name in PLANNERS:
        return PLANNERS[name]
    module_name, sep, attribute = name.partition(":")
    if not sep:
        raise ValueError(f"planner.name must be one of {tuple(PLANNERS)} or an import path 'package.module:Class', "
                         f"got {name!r}")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"planner.name {name!r} cannot be imported ({type(error).__name__}: {error})") from None
    missing = [part for part in PROTOCOL if not hasattr(cls, part)]
    if not dataclasses.is_dataclass(cls) or missing:
        raise ValueError(f"planner.name {name!r} must name a dataclass with {', '.join(PROTOCOL)} "
                         f"(bayes_planet.planners.base.Planner); missing: {', '.join(missing) or 'the dataclass'}")
    return cls


__all__ = ["CEM", "MPPI", "PLANNERS", "Planner", "RandomShooting", "ScoreFn", "planner_class", "world_model_scorer"]
