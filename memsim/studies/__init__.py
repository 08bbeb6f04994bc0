"""What-if studies: a base case, axes to vary, run on a local pool or Ray, a table, plots, a report.

    run = memsim.run_study("studies/cxl-llama70b-finetune.yaml", "out/cxl", jobs=4)
    run.best, run.rows  # also written: out/cxl/results.csv, report.md, plot*.png, points/*.json
"""

from memsim.studies.grid import Point, expand
from memsim.studies.runner import StudyRun, run_study
from memsim.studies.spec import Study, load_study

__all__ = ["Point", "Study", "StudyRun", "expand", "load_study", "run_study"]
