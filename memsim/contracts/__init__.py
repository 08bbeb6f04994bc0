"""The contracts between the stages: data every stage reads or writes and none owns.

``plan.Plan`` (what a planner writes and the simulator executes), ``result.Result`` (what a
simulation reports), ``names`` (how tensor and instance names are spelled) and ``spec.Spec`` (the
base of every YAML model) live here, outside ``planners/`` and ``sim/``, so each stage imports the
contract and not the other stage: importing the simulator never loads the MIP solver.
"""
