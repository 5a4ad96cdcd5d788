"""Predicting and screening files of candidates, one module per idea:

    predict.py     predict_file, and the numeric path predict and screen share
    runner.py      screen_file and the notebook API screen()
    objectives.py  what a screen ranks by (minimize, maximize, target value; kappa)
    conditions.py  screen --where "MODEL OP VALUE": conditions on the run's models
    filters.py     element filters, chemical systems, reduced compositions
    topk.py        the running top-K with per-system caps and unique compositions
    state.py       the resume checkpoint, one atomic commit per batch
    hull.py        hull energies of the known phases (batched LP), known/hull columns
    pool.py        pool statistics gathered while streaming, and the shortlist's picture
"""
from irscreen.screening.predict import OUTPUT_COLUMNS, predict_file
from irscreen.screening.runner import ScreenOptions, ScreenResult, screen, screen_file
from irscreen.screening.topk import TopK

__all__ = ["OUTPUT_COLUMNS", "ScreenOptions", "ScreenResult", "TopK",
           "predict_file", "screen", "screen_file"]
