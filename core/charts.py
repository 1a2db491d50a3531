"""The charts a trader looks at, as PNG bytes (matplotlib, Agg backend): in the flows' Prefect artifacts (inline,
`png_markdown`) and from `tradeflow plot ...`. Each takes plain frames (the journal's rows), so the same chart
comes from a flow run and from the command. Prices and amounts USD, times America/New_York.

- `ema_chart_png`: the EMA symbol's daily closes with EMA fast/slow over the last months, the strategy's entries
  and exits (fills) and its protective stop levels;
- `mtf_chart_png`: one session's P(up) per symbol against the entry and exit thresholds, with entries and exits;
- `retrain_chart_png`: champion against challenger on the evaluation window (ROC curve and calibration);
- `equity_chart_png`: the account's equity at each snapshot (day start, end of day) and its drawdown, and each
  strategy's net P&L, with axes fitted to the data (a one-session journal shows that day, not years of axis).
"""

from __future__ import annotations

import base64
import datetime as dt
import io

import pandas as pd

from core.calendar import NY


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown showing `png` inline (a base64 data URI, which the Prefect UI renders in a markdown artifact)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _ny_naive(values) -> pd.DatetimeIndex:
    """Aware times (or dates) as naive New York wall-clock times, for matplotlib's date axis."""
    idx = pd.DatetimeIndex(pd.to_datetime(values))
    return idx.tz_convert(NY).tz_localize(None) if idx.tz is not None else idx


def ema_chart_png(state: pd.DataFrame, fills: pd.DataFrame, stops: pd.DataFrame, *, symbol: str,
                  fast_span: int, slow_span: int, months: int = 6) -> bytes:
    """Daily closes of `symbol` with EMA fast and slow over the last `months` months of `state`, the fills of
    the strategy (entries up-triangles, exits down-triangles) and its stop orders' levels.

    Args:
        state: `ema_state` rows: session (date), close, ema_fast, ema_slow (USD).
        fills: executions: exec_time (aware), side ('BOT'/'SLD'), shares, price (USD).
        stops: stop orders: as_of (aware), stop_price (USD), status.

    Raises:
        ValueError: `state` is empty.
    """
    if state.empty:
        raise ValueError("EMA chart: no EMA state in the journal yet")
    state = state.sort_values("session")
    x = _ny_naive(state["session"])
    start = x.max() - pd.DateOffset(months=months)
    keep = x >= start
    state, x = state[keep], x[keep]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.8), constrained_layout=True)
    ax.plot(x, state["close"], color="0.35", lw=1.1, label=f"{symbol} close")
    ax.plot(x, state["ema_fast"], color="tab:blue", lw=1.4, label=f"EMA {fast_span}")
    ax.plot(x, state["ema_slow"], color="tab:orange", lw=1.4, label=f"EMA {slow_span}")
    if len(fills):
        fx = _ny_naive(fills["exec_time"])
        buy = (fills["side"] == "BOT").to_numpy()
        if buy.any():
            ax.scatter(fx[buy], fills["price"][buy], marker="^", s=70, color="tab:green", zorder=5,
                       label="entry (fill)")
        if (~buy).any():
            ax.scatter(fx[~buy], fills["price"][~buy], marker="v", s=70, color="tab:red", zorder=5,
                       label="exit (fill)")
    stops = stops[stops["as_of"].notna()] if len(stops) else stops
    if len(stops):
        sx = _ny_naive(stops["as_of"])
        working = ~stops["status"].isin(["Filled", "Cancelled", "ApiCancelled", "Inactive"]).to_numpy()
        end = x[-1] + pd.Timedelta(days=4)
        for t, price, live in zip(sx, stops["stop_price"], working, strict=True):
            ax.hlines(price, t, end if live else t + pd.Timedelta(days=1), color="tab:red", lw=2 if live else 1,
                      ls="-" if live else ":")
            if live:
                ax.annotate(f"stop {price:.2f}", (end, price), xytext=(4, -4), textcoords="offset points",
                            color="tab:red", fontsize=8)
        ax.plot([], [], color="tab:red", lw=2, label="stop level (working; dotted: ended)")
    signal = "BULL" if state["ema_fast"].iloc[-1] > state["ema_slow"].iloc[-1] else "BEAR"
    ax.set_title(f"{symbol} EMA {fast_span}/{slow_span}: {signal} after {x[-1]:%Y-%m-%d} (close "
                 f"{state['close'].iloc[-1]:.2f}, EMA {state['ema_fast'].iloc[-1]:.2f} / "
                 f"{state['ema_slow'].iloc[-1]:.2f})")
    ax.set_ylabel("USD")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(x[0], x[-1] + pd.Timedelta(days=20))  # room for the working stop's label
    return _png(fig)


def mtf_chart_png(signals: pd.DataFrame, fills: pd.DataFrame, *, entry_threshold: float, exit_threshold: float,
                  session: dt.date) -> bytes:
    """P(up) of each symbol through `session` against the entry and exit thresholds, with its fills.

    Args:
        signals: `signals` rows of strategy 'mtf': symbol, as_of (aware), probability (NaN when none).
        fills: executions of strategy 'mtf': symbol, exec_time, side ('BOT'/'SLD').

    Raises:
        ValueError: no P(up) in `signals`.
    """
    signals = signals.dropna(subset=["probability"])
    if signals.empty:
        raise ValueError(f"MTF chart: no P(up) journaled on {session}")
    symbols = sorted(signals["symbol"].unique())
    plt = _plt()
    fig, axes = plt.subplots(len(symbols), 1, figsize=(10, 2.6 * len(symbols) + 0.6), sharex=True,
                             constrained_layout=True, squeeze=False)
    for ax, sym in zip(axes[:, 0], symbols, strict=True):
        s = signals[signals["symbol"] == sym].sort_values("as_of")
        x = _ny_naive(s["as_of"])
        ax.plot(x, s["probability"], color="tab:blue", lw=1.3, marker="o", ms=3, label="P(up)")
        ax.axhline(entry_threshold, color="tab:green", ls="--", lw=1, label=f"entry {entry_threshold:g}")
        ax.axhline(exit_threshold, color="tab:red", ls="--", lw=1, label=f"exit {exit_threshold:g}")
        f = fills[fills["symbol"] == sym] if len(fills) else fills
        if len(f):
            fx = _ny_naive(f["exec_time"])
            buy = (f["side"] == "BOT").to_numpy()
            p_at = pd.Series(s["probability"].to_numpy(), index=x)
            y = [float(p_at.asof(t)) if t >= x[0] else entry_threshold for t in fx]
            ys = pd.Series(y)
            ax.scatter(fx[buy], ys[buy], marker="^", s=80, color="tab:green", zorder=5, label="entry")
            ax.scatter(fx[~buy], ys[~buy], marker="v", s=80, color="tab:red", zorder=5, label="exit")
        lo = min(float(s["probability"].min()), exit_threshold) - 0.02
        hi = max(float(s["probability"].max()), entry_threshold) + 0.02
        ax.set_ylim(lo, hi)
        ax.set_ylabel(f"{sym} P(up)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=5)
    import matplotlib.dates as mdates

    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    axes[0, 0].set_title(f"MTF P(up) on {session} (New York time) against the thresholds")
    return _png(fig)


def equity_chart_png(points: pd.DataFrame, pnl: pd.DataFrame | None = None,
                     title: str = "Equity (NetLiquidation) and drawdown") -> bytes:
    """Equity (USD) at every snapshot (the day's start and its end) with its drawdown from the running peak (%)
    below, and, when `pnl` is given, each strategy's net P&L: a bar per session while there are few sessions,
    else the cumulative line. Axes are fitted to the data.

    Args:
        points: equity snapshots: as_of (aware), net_liquidation (USD), in time order.
        pnl: `daily_pnl` rows: session, strategy, net_pnl (the 'account' row included or not).

    Raises:
        ValueError: `points` has no rows or lacks a column.
    """
    missing = {"as_of", "net_liquidation"} - set(points.columns)
    if missing or points.empty:
        raise ValueError(f"equity curve: no equity recorded or missing columns {sorted(missing)}")
    import matplotlib.dates as mdates
    import matplotlib.ticker

    plt = _plt()
    x = _ny_naive(points["as_of"])
    equity = points["net_liquidation"].astype(float).to_numpy()
    dd = 100 * (equity / pd.Series(equity).cummax().to_numpy() - 1)
    panels = 3 if pnl is not None and len(pnl) else 2
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.2 * panels + 1), constrained_layout=True,
                             gridspec_kw={"height_ratios": [3, 1] + ([2] if panels == 3 else [])})
    ax1, ax2 = axes[0], axes[1]
    few = len(points) < 60
    ax1.plot(x, equity, color="tab:blue", lw=1.3, marker="o" if few else None, ms=4)
    ax1.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax1.set_ylabel("equity, USD")
    ax1.grid(True, alpha=0.3)
    span = f"{x[0]:%Y-%m-%d}" + ("" if x[0].date() == x[-1].date() else f" .. {x[-1]:%Y-%m-%d}")
    ax1.set_title(f"{title}, {span}: {equity[-1]:,.0f} USD, max drawdown {-dd.min():.2f} %")
    ax2.fill_between(x, dd, 0, color="tab:red", alpha=0.4, lw=0)
    ax2.plot(x, dd, color="tab:red", lw=1, marker="o" if few else None, ms=3)
    ax2.set_ylabel("drawdown, %")
    ax2.set_ylim(min(float(dd.min()) * 1.3, -0.05), 0.02)
    ax2.grid(True, alpha=0.3)
    pad = max((x[-1] - x[0]) * 0.04, pd.Timedelta(hours=1))
    days = (x[-1] - x[0]) < pd.Timedelta(days=2)
    for ax in (ax1, ax2):
        ax.set_xlim(x[0] - pad, x[-1] + pad)
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=8))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if days else "%Y-%m-%d"))
    if days:
        ax2.set_xlabel(f"{x[0]:%Y-%m-%d}, New York time")
    if panels == 3:
        ax3 = axes[2]
        sessions_ = sorted(pnl["session"].unique())
        traded = pnl.groupby("strategy")["net_pnl"].apply(lambda v: bool((v.abs() > 0.005).any()))
        strategies = sorted(traded[traded].index) or sorted(pnl["strategy"].unique())  # no flat-zero bars
        pnl = pnl[pnl["strategy"].isin(strategies)]
        if len(sessions_) <= 10:
            width = 0.8 / len(strategies)
            for k, strategy in enumerate(strategies):
                rows = pnl[pnl["strategy"] == strategy].set_index("session")["net_pnl"]
                vals = [float(rows.get(d, 0.0)) for d in sessions_]
                ax3.bar([i + k * width for i in range(len(sessions_))], vals, width=width,
                        label=f"{strategy} {sum(vals):+,.0f}")
            ax3.set_xticks([i + 0.4 - width / 2 for i in range(len(sessions_))],
                           [pd.Timestamp(d).strftime("%Y-%m-%d") for d in sessions_])
            ax3.set_ylabel("net P&L of the session, USD")
            ax3.set_xlim(-0.5 - 0.5 * max(0, 3 - len(sessions_)), len(sessions_) - 0.1 + 0.5 * max(0, 3 - len(sessions_)))
        else:
            for strategy, rows in pnl.sort_values("session").groupby("strategy"):
                ax3.plot(_ny_naive(rows["session"]), rows["net_pnl"].cumsum(), lw=1.3,
                         label=f"{strategy} {rows['net_pnl'].sum():+,.0f}")
            ax3.set_ylabel("cumulative net P&L, USD")
        ax3.axhline(0, color="0.5", lw=0.8)
        ax3.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax3.grid(True, alpha=0.3)
        ax3.legend(loc="best", fontsize=8, ncol=4)
    return _png(fig)


def retrain_chart_png(symbol: str, window: str, challenger: tuple[str, dict], champion: tuple[str, dict] | None
                      ) -> bytes:
    """Champion against challenger on the evaluation window: ROC curves (left) and calibration (right: mean
    P(up) against the share of bars that went up, in 10 bins of P(up)).

    Args:
        challenger, champion: (version, {"y": labels 0/1, "p_up": P(up)}) (`models.evaluate.evaluate_window`'s
            "curve"); champion None when there is none.

    Raises:
        ValueError: the challenger's curve has no labelled bar.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, (roc, cal) = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    drawn = 0
    for (version, curve), color in ((challenger, "tab:orange"), (champion or (None, None), "tab:blue")):
        if version is None or not curve or not curve.get("y"):
            continue
        y, p = np.asarray(curve["y"]), np.asarray(curve["p_up"])
        role = "challenger" if color == "tab:orange" else "champion"
        if len(set(y.tolist())) == 2:
            fpr, tpr, _ = roc_curve(y, p)
            roc.plot(fpr, tpr, color=color, lw=1.5, label=f"{role} {version}: AUC {roc_auc_score(y, p):.3f}")
        edges = np.linspace(min(p.min(), 0.3), max(p.max(), 0.7), 11)
        which = np.clip(np.digitize(p, edges) - 1, 0, 9)
        xs = [p[which == k].mean() for k in range(10) if (which == k).sum() >= 5]
        ys = [y[which == k].mean() for k in range(10) if (which == k).sum() >= 5]
        cal.plot(xs, ys, color=color, marker="o", lw=1.3, label=f"{role} {version} ({len(y)} bars)")
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"retrain chart: no labelled bar for {symbol} in {window}")
    roc.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="chance")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.set_title(f"{symbol} ROC on {window}")
    roc.legend(loc="lower right", fontsize=8)
    lo = max(0.0, min(cal.get_xlim()[0], cal.get_ylim()[0]))
    hi = min(1.0, max(cal.get_xlim()[1], cal.get_ylim()[1]))
    cal.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfectly calibrated")
    cal.set_xlim(lo, hi)
    cal.set_ylim(lo, hi)
    cal.set_aspect("equal")
    cal.set_xlabel("mean P(up) in the bin")
    cal.set_ylabel("share of bars that went up")
    cal.set_title(f"{symbol} calibration on {window}")
    cal.legend(loc="upper left", fontsize=8)
    for ax in (roc, cal):
        ax.grid(True, alpha=0.3)
    return _png(fig)


# --- from the journal (the flows' artifacts and `tradeflow plot` draw the same) ---------------------------------

def ema_chart(journal, settings, months: int = 6) -> bytes:
    """`ema_chart_png` of the journal's EMA state, fills and stop orders of `settings.ema_symbol`.

    Raises:
        ValueError: no EMA state in the journal.
    """
    from core import journal as jr

    symbol = settings.ema_symbol.upper()
    state = jr.chart_ema_state(journal, symbol)
    if state.empty:
        raise ValueError("EMA chart: no EMA state in the journal yet (ema-entry or ema-update builds it)")
    since = pd.Timestamp(state["session"].max()).tz_localize(NY) - pd.DateOffset(months=months)
    fills = jr.chart_fills(journal, "ema", since.to_pydatetime())
    fills = fills[fills["symbol"] == symbol]
    stops = jr.chart_stop_orders(journal, "ema", symbol)
    return ema_chart_png(state, fills, stops, symbol=symbol, fast_span=int(state["fast_span"].iloc[-1]),
                         slow_span=int(state["slow_span"].iloc[-1]), months=months)


def mtf_chart(journal, settings, session: dt.date) -> bytes:
    """`mtf_chart_png` of the MTF decisions and fills of `session`.

    Raises:
        ValueError: no P(up) journaled that session.
    """
    from core import journal as jr

    start = dt.datetime.combine(session, dt.time(0, 0), NY)
    fills = jr.chart_fills(journal, "mtf", start, start + dt.timedelta(days=1))
    return mtf_chart_png(jr.chart_session_signals(journal, "mtf", session), fills,
                         entry_threshold=settings.mtf_entry_threshold, exit_threshold=settings.mtf_exit_threshold,
                         session=session)


def equity_chart(journal, until: dt.date | None = None) -> bytes:
    """`equity_chart_png` of the journal's equity curve and daily P&L per strategy, up to `until`.

    Raises:
        ValueError: no equity recorded.
    """
    from core import journal as jr

    points, pnl = jr.chart_equity(journal, until)
    return equity_chart_png(points, pnl)
