"""Entrypoint `bench/_timed_mtf_signal.py:mtf_signal`: the real `mtf-signal` flow with the timers of
bench/_flow_timing.py (imported first, so that the flow's imports are timed): the decision is the 45 features, the
champion's P(up) (numpy forward pass) and the rule function."""

from bench._flow_timing import instrument  # noqa: I001  (first: it notes when the imports began)

import flows.mtf_signal as _module
import tasks.mtf_signal as _tasks
from models.inference import NumpyLSTMModel

instrument(_module, [(_module, "decide"), (_tasks, "compute_features"), (NumpyLSTMModel, "predict_latest")])
mtf_signal = _module.mtf_signal
