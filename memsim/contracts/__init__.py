"""The contracts between the stages: data every stage reads or writes and none owns.

``plan.Plan`` (what a planner writes and the simulator executes) and ``result.Result`` (what a
simulation reports) live here, outside ``planners/`` and ``sim/``, so each stage imports the
contract and not the other stage: importing the simulator never loads the MIP solver.
"""
