"""Pipelines: YAML recipes that chain emarray's operators into one resumable job.

``emarray run pipelines/NAME.yaml [--set key=value] [--dry-run] [--resume]``; see
:func:`run_pipeline` and :mod:`emarray.pipeline.recipe` for the format.
"""
from .execute import PipelineResult, describe_plan, plan, run_pipeline
from .ops import step_operators
from .recipe import Recipe, Step, load_recipe

__all__ = ["PipelineResult", "Recipe", "Step", "describe_plan", "load_recipe", "plan",
           "run_pipeline", "step_operators"]
