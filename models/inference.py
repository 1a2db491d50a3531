"""Fast P(up) without TensorFlow: the trained Keras LSTM's forward pass in numpy.

A 5-minute signal run cannot wait about 8 s for ``import tensorflow``. At registration the model's weights and
the scaler's mean/scale are exported to ``weights.npz`` (:func:`models.mtf.export_weights`); this module loads
that file with numpy only (importing it imports neither TensorFlow nor Keras nor scikit-learn) and computes the
same P(up) as ``keras_model.predict`` to within float32 round-off (tests: |diff| <= 1e-5).

Keras LSTM (keras.layers.LSTM, defaults activation="tanh", recurrent_activation="sigmoid"), per time step t with
input x_t (in,), state h, c (u,):

    z = x_t @ kernel + h @ recurrent_kernel + bias        # (4u,), kernel (in, 4u), recurrent (u, 4u)
    i, f, g, o = z[:u], z[u:2u], z[2u:3u], z[3u:]           # Keras gate order: input, forget, cell, output
    i, f, o = sigmoid(i), sigmoid(f), sigmoid(o)
    c = f * c + i * tanh(g)
    h = o * tanh(c)

starting from h = c = 0; a layer with return_sequences=False passes the last h on. Dropout is the identity at
inference. Dense: ``act(h @ kernel + bias)``; the last Dense has 1 unit and a sigmoid: P(up).
Arithmetic is float32 like Keras on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_ACT = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "linear": lambda x: x,
}


def lstm_forward(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray,
                 return_sequences: bool = False) -> np.ndarray:
    """One Keras LSTM layer over a batch.

    Args:
        x: (batch, T, in) inputs.
        kernel: (in, 4u); recurrent: (u, 4u); bias: (4u,), gate blocks i, f, c, o.
        return_sequences: return every step's h (batch, T, u) instead of the last (batch, u).
    """
    dt = np.float32
    x = np.asarray(x, dtype=dt)
    kernel, recurrent, bias = (np.asarray(a, dtype=dt) for a in (kernel, recurrent, bias))
    batch, steps, _ = x.shape
    u = recurrent.shape[0]
    zx = x @ kernel + bias  # (batch, T, 4u): the input part of every step at once
    h = np.zeros((batch, u), dtype=dt)
    c = np.zeros((batch, u), dtype=dt)
    seq = np.empty((batch, steps, u), dtype=dt) if return_sequences else None
    for t in range(steps):
        z = zx[:, t] + h @ recurrent
        i = _sigmoid(z[:, :u])
        f = _sigmoid(z[:, u : 2 * u])
        g = np.tanh(z[:, 2 * u : 3 * u])
        o = _sigmoid(z[:, 3 * u :])
        c = f * c + i * g
        h = o * np.tanh(c)
        if seq is not None:
            seq[:, t] = h
    return seq if seq is not None else h


class NumpyLSTMModel:
    """P(up) from an exported weights file (see the module docstring).

    Attributes: ``features`` (the 45 names, model column order), ``lookback`` (L), ``scaler_mean`` /
    ``scaler_scale`` (45,).
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.layers = [str(s) for s in self.arrays["layers"]]
        self.activations = [str(s) for s in self.arrays["activations"]]
        self.features = [str(s) for s in self.arrays["features"]]
        self.lookback = int(self.arrays["lookback"])
        self.scaler_mean = self.arrays["scaler_mean"].astype("float64")
        self.scaler_scale = self.arrays["scaler_scale"].astype("float64")

    @classmethod
    def load(cls, path: str | Path) -> "NumpyLSTMModel":
        """Load ``weights.npz``. Raises FileNotFoundError, KeyError (not an exported model file)."""
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    def scale(self, features: np.ndarray) -> np.ndarray:
        """StandardScaler transform with the training window's mean/scale: (..., 45) -> same shape."""
        return (np.asarray(features, dtype="float64") - self.scaler_mean) / self.scaler_scale

    def predict_scaled(self, x: np.ndarray) -> np.ndarray:
        """P(up), shape (batch,), from already scaled windows x of shape (batch, L, 45)."""
        h = np.asarray(x, dtype=np.float32)
        dense_i = 0
        for k, kind in enumerate(self.layers):
            if kind in ("lstm", "lstm_seq"):
                h = lstm_forward(h, self.arrays[f"w{k}_kernel"], self.arrays[f"w{k}_recurrent"],
                                 self.arrays[f"w{k}_bias"], return_sequences=kind == "lstm_seq")
            else:
                act = _ACT[self.activations[dense_i]]
                dense_i += 1
                h = act(h @ self.arrays[f"w{k}_kernel"].astype(np.float32) + self.arrays[f"w{k}_bias"].astype(np.float32))
        return np.asarray(h, dtype="float64").reshape(len(h), -1)[:, 0]

    def predict_windows(self, features: np.ndarray) -> np.ndarray:
        """P(up), shape (batch,), from raw (unscaled) feature windows of shape (batch, L, 45).

        Raises:
            ValueError: wrong shape or NaN in the windows (e.g. still in the feature warm-up).
        """
        f = np.asarray(features, dtype="float64")
        if f.ndim != 3 or f.shape[1:] != (self.lookback, len(self.features)):
            raise ValueError(f"windows must have shape (n, {self.lookback}, {len(self.features)}), got {f.shape}")
        if np.isnan(f).any():
            raise ValueError("feature windows contain NaN (not enough history after the warm-up?)")
        return self.predict_scaled(self.scale(f).astype(np.float32))

    def predict_latest(self, feature_frame) -> float:
        """P(up) for the last row of a feature DataFrame (columns = :attr:`features`, at least L rows).

        Raises:
            ValueError: fewer than L rows, missing columns or NaN in the last L rows.
        """
        missing = [c for c in self.features if c not in feature_frame.columns]
        if missing:
            raise ValueError(f"feature frame lacks {missing}")
        if len(feature_frame) < self.lookback:
            raise ValueError(f"need at least {self.lookback} feature rows, got {len(feature_frame)}")
        window = feature_frame[self.features].to_numpy(dtype="float64")[-self.lookback :]
        return float(self.predict_windows(window[None])[0])
