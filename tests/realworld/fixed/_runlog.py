"""A run logger in the style of `wandb.log`: a history of rows and a summary of the latest values.

Helper module of fixed/wandb_log_tensor.py (the logging library of the reporter's project).
"""
_history = []
_summary = {}


def log(row: dict, step: int | None = None) -> None:
    entry = dict(row)
    entry["_step"] = len(_history) if step is None else step
    _history.append(entry)
    _summary.update(entry)


def summary() -> dict:
    return dict(_summary)
