"""Planners over a world model. All speak one protocol (see `bayes_planet.planners.base`)."""

from bayes_planet.planners.base import Planner, ScoreFn, world_model_scorer
from bayes_planet.planners.cem import CEM
from bayes_planet.planners.random_shooting import RandomShooting

PLANNERS = {"cem": CEM, "random_shooting": RandomShooting}

__all__ = ["CEM", "PLANNERS", "Planner", "RandomShooting", "ScoreFn", "world_model_scorer"]
