"""Metrics aggregation in the style of fairseq's `metrics` module: a global registry of named
aggregators (`train`, `valid`, ...), each a dict of meters, fed by `log_scalar`.

Helper module of fixed/fairseq_logging_output.py (the library of the reporter's project).
"""
from collections import OrderedDict

_aggregators = OrderedDict()


class AverageMeter:
    def __init__(self, round=None):
        self.round = round
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.sum = self.sum + val * n
        self.count += n

    @property
    def avg(self):
        return self.sum / self.count if self.count > 0 else self.sum


def log_scalar(key, value, weight=1, aggregator="train", round=None):
    meters = _aggregators.setdefault(aggregator, OrderedDict())
    if key not in meters:
        meters[key] = AverageMeter(round=round)
    meters[key].update(value, weight)


def get_smoothed_values(aggregator="train"):
    return {key: float(meter.avg) for key, meter in _aggregators.get(aggregator, {}).items()}
