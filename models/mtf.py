"""The MTF LSTM model: data set, chronological splits, scaler, Keras model, training (strategies.md, "MTF").

Shapes: the feature matrix is (n_rows, 45) in :data:`core.features.FEATURES` order; a sample is the window of
the last L rows ending at row i, shape (L, 45); a batch is (n, L, 45); the model outputs P(up), shape (n, 1).

Label: ``y_i = 1`` when close[i + H] > close[i], i.e. the close H base (hourly) bars ahead is above the close
now, else 0. Default H = 4 (``settings.mtf_horizon``): a half session ahead. Why 4: one or two hourly bars
ahead is mostly noise (the up/down split is close to a coin flip and a move of one bar is about the size of the
round-trip cost of a 10,000 USD position), while four bars still lies within the same or next session, so the
label is about the intraday drift the strategy trades (positions are held at most 2 hours: the model ranks the
direction of the coming half session, and the 2-hour exit takes the first part of it). H is a setting; the
metadata records the H a model was trained with.

Splits: sample end rows are the rows with a full look-back (i >= L - 1) and a label (i + H < n). They are split
in time order into train / validation / test (default 70 / 15 / 15 % of the samples), with H sample rows left
out between consecutive splits, so no training label (which reads close[i + H]) reaches into the validation
period and none of those into the test period. The scaler (scikit-learn StandardScaler) is fitted on the feature
rows of the training window only (rows 0 … last training end row). Early stopping watches the validation loss;
the test window is touched only for the final report (no tuning on it).

TensorFlow is imported inside functions only (``import tensorflow`` takes about 8 s here), so importing this
module is cheap. Nothing here reads the clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from core.features import FEATURES, compute_features, first_complete_row


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (fixed before looking at any test result)."""

    lookback: int = 24  # L: feature rows per sample
    horizon: int = 4  # H: base bars ahead for the label
    train_frac: float = 0.70
    val_frac: float = 0.15  # the test window is the rest (about 15 %)
    lstm_units: tuple[int, ...] = (32,)  # one LSTM layer of 32 units
    dropout: float = 0.2
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 30
    patience: int = 5  # early stopping on validation loss, best weights restored
    seed: int = 42


@dataclass
class Split:
    """Sample end rows (positions in the feature matrix) of each window, ascending; see the module docstring."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    gap: int

    def describe(self) -> dict[str, Any]:
        return {
            name: {"first_row": int(a[0]), "last_row": int(a[-1]), "n": int(len(a))}
            for name, a in (("train", self.train), ("val", self.val), ("test", self.test))
        } | {"gap_rows": self.gap}


@dataclass
class Dataset:
    """One symbol's features and labels after the feature warm-up.

    features: (n, 45) float64, rows = bars from the first complete feature row on; index: their bar start times
    (America/New_York); close: (n,) USD; labels: (n,) float64, 1.0 / 0.0, NaN for the last H rows (no future).
    """

    features: np.ndarray
    index: pd.DatetimeIndex
    close: np.ndarray
    labels: np.ndarray
    lookback: int
    horizon: int
    fingerprint: str
    bars_first: pd.Timestamp
    bars_last: pd.Timestamp
    n_bars: int


def bars_fingerprint(bars: pd.DataFrame) -> str:
    """SHA-256 (hex) of the bars: bar start times (UTC ns) and open, high, low, close, volume as float64."""
    h = hashlib.sha256()
    h.update(np.asarray(bars.index.tz_convert("UTC").as_unit("ns").asi8, dtype="<i8").tobytes())
    for col in ("open", "high", "low", "close", "volume"):
        h.update(np.ascontiguousarray(bars[col].to_numpy(dtype="<f8")).tobytes())
    return h.hexdigest()


def make_labels(close: np.ndarray, horizon: int) -> np.ndarray:
    """(n,) labels: 1.0 when close[i + horizon] > close[i], 0.0 otherwise, NaN for the last ``horizon`` rows."""
    close = np.asarray(close, dtype="float64")
    y = np.full(len(close), np.nan)
    if len(close) > horizon:
        y[: len(close) - horizon] = (close[horizon:] > close[:-horizon]).astype(float)
    return y


def build_dataset(bars: pd.DataFrame, lookback: int, horizon: int) -> Dataset:
    """Features (:func:`core.features.compute_features`) and labels of one symbol's hourly bars.

    Raises:
        core.features.FeatureInputError: bad bars.
        ValueError: too few bars left after the warm-up for one sample.
    """
    feats = compute_features(bars)
    start = first_complete_row(feats)
    x = feats.to_numpy()[start:]
    close = bars["close"].to_numpy(dtype="float64")[start:]
    if len(x) < lookback + horizon + 1:
        raise ValueError(f"{len(x)} feature rows after the warm-up; need more than L + H = {lookback + horizon}")
    return Dataset(
        features=x,
        index=feats.index[start:],
        close=close,
        labels=make_labels(close, horizon),
        lookback=lookback,
        horizon=horizon,
        fingerprint=bars_fingerprint(bars),
        bars_first=bars.index[0],
        bars_last=bars.index[-1],
        n_bars=len(bars),
    )


def chronological_split(n_rows: int, lookback: int, horizon: int, train_frac: float = 0.7,
                        val_frac: float = 0.15) -> Split:
    """Train / validation / test sample end rows in time order, ``horizon`` rows left out between them.

    Raises:
        ValueError: a window would be empty.
    """
    cand = np.arange(lookback - 1, n_rows - horizon)
    m = len(cand)
    n_train = int(m * train_frac)
    n_val = int(m * val_frac)
    train = cand[:n_train]
    val = cand[n_train + horizon : n_train + horizon + n_val]
    test = cand[n_train + 2 * horizon + n_val :]
    if min(len(train), len(val), len(test)) == 0:
        raise ValueError(f"{m} samples are too few for train/val/test with gaps of {horizon}")
    return Split(train=train, val=val, test=test, gap=horizon)


def fit_scaler(features: np.ndarray, split: Split) -> StandardScaler:
    """StandardScaler fitted on the feature rows of the training window only: rows 0 … split.train[-1]."""
    return StandardScaler().fit(features[: int(split.train[-1]) + 1])


def windows(scaled: np.ndarray, end_rows: np.ndarray, lookback: int) -> np.ndarray:
    """(len(end_rows), L, n_features) float32: for each end row i the rows i - L + 1 … i."""
    view = np.lib.stride_tricks.sliding_window_view(scaled, (lookback, scaled.shape[1]))[:, 0]
    return np.ascontiguousarray(view[np.asarray(end_rows) - (lookback - 1)], dtype=np.float32)


def build_model(lookback: int, n_features: int, config: TrainConfig):
    """Keras model: LSTM layer(s) (tanh / sigmoid gates) -> Dropout -> Dense(1, sigmoid) = P(up).

    Input (batch, L, n_features) float32, output (batch, 1).
    """
    import keras

    layers: list[Any] = [keras.Input((lookback, n_features))]
    for k, units in enumerate(config.lstm_units):
        last = k == len(config.lstm_units) - 1
        layers.append(keras.layers.LSTM(units, return_sequences=not last))
        layers.append(keras.layers.Dropout(config.dropout))
    layers.append(keras.layers.Dense(1, activation="sigmoid"))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="binary_crossentropy")
    return model


@dataclass
class TrainResult:
    """A trained model with everything needed to register and report it.

    p_val, p_test: P(up) on the validation / test samples, shapes (n_val,), (n_test,).
    """

    symbol: str
    model: Any
    scaler: StandardScaler
    dataset: Dataset
    split: Split
    config: TrainConfig
    p_val: np.ndarray
    p_test: np.ndarray
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0


ProgressFn = Callable[[str, int, int, dict[str, float]], None]
"""progress(symbol, epoch (1-based), max epochs, logs {'loss', 'val_loss'})."""


def train_model(symbol: str, bars: pd.DataFrame, config: TrainConfig = TrainConfig(),
                progress: ProgressFn | None = None) -> TrainResult:
    """Train one symbol's model on its hourly bars (fixed seeds; early stopping on validation loss).

    Args:
        bars: hourly bars as for :func:`core.features.compute_features`.
        progress: called after each epoch.

    Raises:
        core.features.FeatureInputError, ValueError: bad or too few bars.
    """
    ds = build_dataset(bars, config.lookback, config.horizon)
    split = chronological_split(len(ds.features), config.lookback, config.horizon, config.train_frac,
                                config.val_frac)
    return fit_split(symbol, ds, split, config, progress)


def fit_split(symbol: str, ds: Dataset, split: Split, config: TrainConfig,
              progress: ProgressFn | None = None) -> TrainResult:
    """Fit the scaler (training rows only) and a new model on ``split.train``, early-stopped on ``split.val``;
    P(up) of the validation and test samples. The walk-forward evaluation (:mod:`models.walkforward`) calls it
    once per fold with the fold's split, ``tradeflow train`` once with the chronological split.

    Raises:
        ValueError: an empty window in ``split``.
    """
    import keras

    if min(len(split.train), len(split.val), len(split.test)) == 0:
        raise ValueError("train, validation and test windows must all hold samples")
    keras.utils.set_random_seed(config.seed)
    scaler = fit_scaler(ds.features, split)
    scaled = scaler.transform(ds.features)
    x_tr, x_va, x_te = (windows(scaled, s, config.lookback) for s in (split.train, split.val, split.test))
    y_tr, y_va = ds.labels[split.train].astype(np.float32), ds.labels[split.val].astype(np.float32)

    model = build_model(config.lookback, ds.features.shape[1], config)

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if progress is not None:
                progress(symbol, epoch + 1, config.epochs, {k: float(v) for k, v in (logs or {}).items()})

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    hist = model.fit(x_tr, y_tr, validation_data=(x_va, y_va), epochs=config.epochs, batch_size=config.batch_size,
                     shuffle=True, verbose=0, callbacks=[stop, _Progress()])
    p_val = model.predict(x_va, verbose=0, batch_size=1024).reshape(-1)
    p_test = model.predict(x_te, verbose=0, batch_size=1024).reshape(-1)
    return TrainResult(symbol=symbol, model=model, scaler=scaler, dataset=ds, split=split, config=config,
                       p_val=p_val, p_test=p_test,
                       history={k: [float(v) for v in vals] for k, vals in hist.history.items()},
                       epochs_run=len(hist.history.get("loss", [])))


def export_weights(model, scaler: StandardScaler, lookback: int, features: list[str] = FEATURES) -> dict[str, np.ndarray]:
    """The arrays that :mod:`models.inference` needs to reproduce ``model``'s P(up) without TensorFlow.

    Keys: ``layers`` (kinds in order: "lstm" / "dense"), ``activations`` (dense activation per dense layer),
    ``w{k}_kernel``, ``w{k}_recurrent`` (LSTM only), ``w{k}_bias`` for layer k, ``scaler_mean``,
    ``scaler_scale`` (45,), ``features`` (names), ``lookback``. Keras LSTM weights are stored as Keras keeps
    them: kernel (in, 4u), recurrent (u, 4u), bias (4u), gate blocks in the order i, f, c, o.

    Raises:
        ValueError: a layer kind or activation the numpy forward pass does not implement.
    """
    out: dict[str, np.ndarray] = {}
    kinds: list[str] = []
    acts: list[str] = []
    k = 0
    for layer in model.layers:
        kind = type(layer).__name__
        cfg = layer.get_config()
        if kind == "Dropout":
            continue  # identity at inference
        if kind == "LSTM":
            if cfg.get("activation") != "tanh" or cfg.get("recurrent_activation") != "sigmoid":
                raise ValueError(f"LSTM activations {cfg.get('activation')}/{cfg.get('recurrent_activation')} "
                                 "not supported (need tanh/sigmoid)")
            if not cfg.get("use_bias", True):
                raise ValueError("LSTM without bias not supported")
            kernel, recurrent, bias = layer.get_weights()
            out[f"w{k}_kernel"], out[f"w{k}_recurrent"], out[f"w{k}_bias"] = kernel, recurrent, bias
            kinds.append("lstm_seq" if cfg.get("return_sequences") else "lstm")
        elif kind == "Dense":
            act = cfg.get("activation")
            if act not in ("sigmoid", "linear", "relu", "tanh"):
                raise ValueError(f"Dense activation {act!r} not supported")
            kernel, bias = layer.get_weights()
            out[f"w{k}_kernel"], out[f"w{k}_bias"] = kernel, bias
            kinds.append("dense")
            acts.append(act)
        else:
            raise ValueError(f"layer {kind} not supported by the numpy forward pass")
        k += 1
    out["layers"] = np.array(kinds)
    out["activations"] = np.array(acts)
    out["scaler_mean"] = np.asarray(scaler.mean_, dtype="float64")
    out["scaler_scale"] = np.asarray(scaler.scale_, dtype="float64")
    out["features"] = np.array(list(features))
    out["lookback"] = np.array(lookback)
    return out


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as JSON-able data."""
    d = asdict(config)
    d["lstm_units"] = list(config.lstm_units)
    return d
