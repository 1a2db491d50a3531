"""The one settings object of the system, read from the environment and `.env` (in the project folder, or the
file `TRADEFLOW_ENV_FILE` names).

Every setting is documented in `.env.example`. Connection and mode settings use the names traders know from
IB tooling (`IBKR_HOST`, `IBKR_PORT`, `IBKR_CLIENT_ID`, `TRADING_MODE`); everything else is prefixed
`TRADEFLOW_`. Strategy defaults are those of `shared/reference/strategies.md`.

A wrong value (a port that is not a number, an unknown mode) raises :class:`SettingsError` naming the
environment variable; secret values are never echoed in errors, reprs or logs (they are `SecretStr`). So do:
a number that is not finite (`inf`, `nan`); a value beyond the bound where it can only be a typo or a disaster
(leverage above 5x, a position or loss limit beyond what the account could mean, a daily stop above 50 %); a
`TRADEFLOW_*` name no setting has (a misspelling would otherwise be ignored without a word: the error says
which name was probably meant); and a list setting that is not JSON (named in one line, with an example).
"""

from __future__ import annotations

import difflib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The project checkout (the folder holding `pyproject.toml`)."""

DEFAULT_STATE_DIR = PROJECT_ROOT / "state"
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "bars"


class SettingsError(ValueError):
    """A setting has a wrong value; the message names the environment variable(s) and what was wrong."""


MAX_LEVERAGE = 5.0
"""The highest EMA leverage a setting may ask for (strategies.md: 3.0-3.75x; even Portfolio Margin does not carry
much more for a sector ETF held overnight): 30 or 50 is a typo, not a choice."""
MAX_MTF_POSITION_USD = 5_000_000.0
"""The largest MTF position (and daily loss limit) a setting may ask for, USD; the flow checks the size against
the account's funds too."""
STRATEGY_SETTING_PREFIXES = ("TRADEFLOW_SIGNALS_",)
"""Prefixes of settings that a strategy unit reads with its own settings class (strategies/signals/settings.py)."""

OTHER_NAMES = frozenset({"TRADEFLOW_ENV_FILE", "TRADEFLOW_CONFORMANCE_CLIENT", "TRADEFLOW_IBAPI_VENV",
                         "TRADEFLOW_SCREENSHOTS_DIR", "TRADEFLOW_IB_LIBRARY", "TRADEFLOW_SKIP_IB_ASYNC", "TRADEFLOW_IB_ASYNC_VENV",
                         "TRADEFLOW_BENCH_TIMINGS", "TRADEFLOW_WORKER_NAME"})
"""`TRADEFLOW_*` environment names read outside this class (the IB client library switch, test and benchmark
switches): not refused as unknown. A new one read elsewhere must be added here."""


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """All settings. Units are in each field's description; money is USD, fractions are fractions (0.02 = 2 %)."""

    model_config = SettingsConfigDict(
        env_prefix="TRADEFLOW_",
        env_file=PROJECT_ROOT / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
        allow_inf_nan=False,  # `inf` or `nan` in any number setting is refused, naming it
    )

    # --- connection and mode ------------------------------------------------------------------------------
    ibkr_host: str = Field("127.0.0.1", validation_alias=_env("IBKR_HOST"), description="TWS / IB Gateway host.")
    ibkr_port: int = Field(
        7497,
        ge=1,
        le=65535,
        validation_alias=_env("IBKR_PORT"),
        description="TWS 7497 paper / 7496 live; IB Gateway 4002 paper / 4001 live.",
    )
    ibkr_client_id: int = Field(
        1,
        ge=0,
        le=2**31 - 1,
        validation_alias=_env("IBKR_CLIENT_ID"),
        description="Base client id; concurrent connections derive distinct ids from it (IB error 326).",
    )
    trading_mode: Literal["paper", "live"] = Field(
        "paper",
        validation_alias=_env("TRADING_MODE"),
        description="paper (default) or live; live also needs TRADEFLOW_LIVE_ACCOUNT.",
    )
    live_account: str | None = Field(
        None,
        description="The live account id (e.g. U1234567) that live mode may trade; the second explicit opt-in.",
    )
    gateway_restart_time: str = Field(
        "23:45",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="HH:MM New York: when IB Gateway restarts daily (IBC's AutoRestartTime); a failed connection "
        "names it (schedule it outside 09:00-17:30).",
    )
    alert_url: SecretStr | None = Field(
        None, description="Apprise URL or webhook that failure notifications go to (secret: never logged)."
    )
    heartbeat_url: SecretStr | None = Field(
        None, description="Dead-man's switch (healthchecks-style): every completed deployment run GETs it, "
                          "every failed one GETs it + '/fail' (secret: never logged)."
    )
    late_alert_seconds: dict[str, float] = Field(
        default={"default": 120.0, "ema-entry": 30.0, "mtf-signal": 30.0, "equity-snapshot": 30.0,
                 "preflight": 60.0},
        description="Per deployment (key 'default' for the others): a run not started this many seconds after "
                    "its scheduled time notifies (once, until runs are picked up again), seconds, >= 25.",
    )
    alert_window_seconds: float = Field(
        3600.0, gt=0, description="Runs of one deployment cancelled behind a running one notify once per window, s.")
    daily_report: bool = Field(
        True, description="After the evening reconciliation, one notification: P&L, equity, positions, breaks.")
    fill_notifications: bool = Field(False, description="One notification per fill (sent by the reconciliation).")
    preflight_min_free_mb: float = Field(
        500.0, ge=0, description="preflight is red below this much free space in the state directory, MiB.")
    preflight_max_model_age_days: float = Field(
        45.0, gt=0, description="preflight is red when an MTF champion was trained longer ago than this, days.")
    preflight_min_schedule_days: int = Field(
        30, ge=0, description="preflight is red when the deployed schedules end within this many days.")
    no_worker_alert_seconds: float = Field(
        120.0, ge=10, description="The tradeflow work pool without a ready worker this long notifies, once per "
                                  "outage, seconds (counted from the server's not-ready mark, itself 3 missed "
                                  "worker heartbeats, 90 s, after the worker went).")

    strategies: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="The strategies that run (comma-separated or a JSON list of names, `tradeflow strategies` lists "
        "them); unset: every strategy enabled by default (account, ema, mtf). The account strategy always runs.",
    )

    # --- where things live ----------------------------------------------------------------------------------
    state_dir: Path = Field(
        DEFAULT_STATE_DIR, description="Journal, model registry and Prefect home (git ignores the default)."
    )
    data_dir: Path = Field(
        DEFAULT_DATA_DIR, description="Bars in the format of shared/data/bars (daily/, 1h/, 5m/ CSV files)."
    )

    journal_lock_timeout_seconds: float = Field(
        60.0, gt=0, le=3600, description="How long a flow's journal write waits for the journal when another "
        "process holds it, seconds; after an order was sent the write is kept instead and the order path goes on."
    )
    journal_idle_seconds: float = Field(
        60.0, ge=0, le=86400, description="The journal's writer process (core/journal/server.py) exits after this "
        "many seconds without a request; the next write starts it again; 0: it never exits by itself."
    )

    journal_server: str | None = Field(
        None, description="HOST:PORT of the journal server when the system spans several hosts (`tradeflow up --role "
        "server` runs it there; every host's journal, kill switch and position breaks go through it); unset: this "
        "host keeps the journal in the state directory. Read by core/journal/remote.py."
    )
    journal_token: SecretStr | None = Field(
        None, description="The secret every client gives the journal server (the same on every host); required with "
        "TRADEFLOW_JOURNAL_SERVER."
    )
    dask_scheduler: str | None = Field(
        None, description="The Dask scheduler (tcp://HOST:PORT) that `retrain` sends its per-symbol training and "
        "evaluation to (Prefect's DaskTaskRunner; its workers on the worker hosts, `dask_worker_argv`); unset: the "
        "symbols are retrained one after another in the flow's own process."
    )

    # --- the paper exchange (`tradeflow paper-exchange`) -----------------------------------------------------
    paper_port: int = Field(7497, ge=0, le=65535, description="TWS API port on 127.0.0.1 (0: a free one).")
    paper_admin_port: int = Field(7498, ge=0, le=65535, description="Admin port on 127.0.0.1 (0: a free one).")
    paper_initial_cash: float = Field(1_000_000.0, gt=0, le=1e10, description="Starting cash of the account, USD.")
    paper_account: str = Field("DU0000001", description="Account id (IB paper accounts start with DU).")
    paper_account_type: Literal["reg_t_cash", "reg_t_margin", "portfolio_margin"] = Field(
        "portfolio_margin",
        description="Margin rules of the paper account (core/paper_exchange/margin.py): reg_t_cash, reg_t_margin "
        "(4x intraday, 2x overnight) or portfolio_margin (about 15 %: the EMA's 3-3.75x overnight needs it).",
    )
    paper_restart_time: str | None = Field(
        None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="HH:MM New York: the paper exchange's daily gateway restart (default: none).",
    )
    paper_restart_seconds: float = Field(120.0, ge=0, description="How long the daily restart keeps the port closed.")
    paper_admin_token: str | None = Field(
        None, description="Token the paper exchange's admin port requires (default: one kept in the state dir)."
    )
    paper_server_version: Literal[157, 176] = Field(176, description="TWS API server version served.")
    paper_state_file: Path | None = Field(
        None, description="The account's state file (default: <state dir>/paper_exchange.json)."
    )
    paper_realtime: bool = Field(
        True, description="Live market data subscribed; false answers IB 354 so clients use delayed data."
    )

    # --- EMA 25/125 on SMH (strategies.md) ------------------------------------------------------------------
    ema_symbol: str = "SMH"
    ema_fast: int = Field(25, gt=0, le=1000, description="Fast EMA span, sessions.")
    ema_slow: int = Field(125, gt=0, le=5000, description="Slow EMA span, sessions.")
    ema_min_history: int = Field(250, gt=0, le=10_000, description="Sessions of daily closes needed before a decision.")
    ema_entry_minutes_before_close: int = Field(5, gt=0, le=60, description="Entry decision, minutes before the close.")
    daily_stop_fraction: float = Field(
        0.02, gt=0, le=0.5, description="Daily equity stop as a fraction of day-start equity E0 (0.02 = -2 %)."
    )
    vix_leverage: list[tuple[float, float]] = Field(
        default=[(12.0, 3.75), (13.0, 3.5), (14.0, 3.25)],
        description="(VIX upper bound, leverage) pairs, ascending: the first bound above VIX gives L.",
    )
    default_leverage: float = Field(
        3.0, gt=0, le=MAX_LEVERAGE, description="Leverage when VIX >= the last bound or unknown."
    )
    late_run_max_minutes: float = Field(
        3.0, ge=0, le=390, description="An order flow starting later than this after its scheduled time does not trade."
    )
    ema_fill_timeout_seconds: float = Field(
        60.0, gt=0, le=3600, description="How long an EMA flow waits for its market order to fill, seconds."
    )
    ema_close_settle_seconds: float = Field(
        300.0, ge=0, le=4 * 3600,
        description="After the close, seconds before the day's bar counts as final (IB's official close)."
    )
    ema_close_max_wait_seconds: float = Field(
        1800.0, gt=0, le=6 * 3600,
        description="How long ema-update waits for the final daily bar before failing, seconds."
    )
    ema_close_retry_seconds: float = Field(
        30.0, gt=0, le=3600, description="Seconds between ema-update's looks at the daily bar while it is not final."
    )

    # --- MTF LSTM on AAPL and TSLA (strategies.md) ----------------------------------------------------------
    mtf_symbols: list[str] = Field(default=["AAPL", "TSLA"])
    mtf_entry_threshold: float = Field(0.52, ge=0, le=1, description="Enter when flat and P(up) >= this.")
    mtf_exit_threshold: float = Field(0.50, ge=0, le=1, description="Exit when P(up) < this (after min hold).")
    mtf_min_hold_runs: int = Field(2, ge=0, le=78, description="5-minute runs held before a threshold exit.")
    mtf_max_hold_runs: int = Field(24, gt=0, le=78 * 5, description="5-minute runs after which a position exits (2 h).")
    mtf_position_usd: float = Field(
        10_000.0, gt=0, le=MAX_MTF_POSITION_USD,
        description="Position size, USD (at most 5,000,000; the flow also checks it against the funds).",
    )
    mtf_daily_loss_limit_usd: float = Field(
        2_000.0, gt=0, le=MAX_MTF_POSITION_USD,
        description="No new MTF entries once the day's P&L is at or below minus this, USD."
    )
    mtf_lookback: int = Field(24, gt=0, le=1000, description="L: feature rows the LSTM reads.")
    mtf_horizon: int = Field(4, gt=0, le=1000, description="H: base bars ahead that the label looks.")
    mtf_gate_min_auc_low: float = Field(
        0.5, ge=0, le=1, description="Edge gate: the walk-forward ROC AUC 95 % interval's lower bound must exceed this."
    )
    mtf_gate_min_return: float = Field(
        0.0, description="Edge gate: the rules' pooled walk-forward return after costs must exceed this (fraction)."
    )
    mtf_gate_baselines: list[str] = Field(
        default=["majority", "buy_hold"],
        description="Edge gate: that return must also beat these baselines (majority, buy_hold, logistic).",
    )
    mtf_gate_min_trades: int = Field(
        10, ge=0, le=100_000, description="Edge gate: at least this many walk-forward round trips."
    )

    # --- costs and backtests ----------------------------------------------------------------------------------
    commission_per_share: float = Field(0.005, ge=0, le=1, description="IB fixed pricing, USD a share.")
    commission_min: float = Field(1.00, ge=0, le=100, description="IB fixed pricing minimum, USD an order.")
    commission_max_fraction: float = Field(
        0.01, ge=0, le=0.1, description="IB fixed pricing cap, fraction of value."
    )
    backtest_initial_capital: float = Field(1_000_000.0, gt=0, le=1e10, description="USD.")
    backtest_slippage_fraction: float = Field(
        0.0005, ge=0, le=0.1, description="Adverse slippage per simulated fill, fraction (0.0005 = 5 bp; core.costs)."
    )
    margin_benchmark_rate: float = Field(
        0.0458, ge=-1, le=1, description="IB's USD reference benchmark rate, annual fraction (core.costs)."
    )
    margin_spread_tiers: list[tuple[float, float]] = Field(
        default=[(100_000.0, 0.015), (1_000_000.0, 0.01), (50_000_000.0, 0.0075), (200_000_000.0, 0.005)],
        description="IBKR Pro USD margin tiers: (upper bound USD borrowed, spread over the benchmark), ascending; "
        "above the last bound its spread applies.",
    )

    @field_validator("strategies", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        """TRADEFLOW_STRATEGIES as 'ema,mtf,signals' or '["ema", "mtf"]'; empty means unset."""
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("dask_scheduler")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        """TRADEFLOW_DASK_SCHEDULER as tcp://HOST:PORT (a named host or an address, never a wildcard); empty: unset."""
        if value is None or not value.strip():
            return None
        from urllib.parse import urlsplit

        text = value.strip()
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "tcp" or not parts.hostname or port is None or not 0 < port <= 65535 \
                or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"TRADEFLOW_DASK_SCHEDULER {text!r} is not tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786)")
        if parts.hostname in ("0.0.0.0", "::"):
            raise ValueError(f"TRADEFLOW_DASK_SCHEDULER {text!r}: {parts.hostname} is a wildcard, not a host to reach")
        return f"tcp://{parts.netloc}"

    @field_validator("state_dir", "data_dir", "paper_state_file")
    @classmethod
    def _resolve(cls, path: Path | None) -> Path | None:
        """Relative paths are relative to the project folder, wherever a flow process starts."""
        if path is None or path.is_absolute():
            return path
        return (PROJECT_ROOT / path).resolve()

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.journal_server:
            from core.journal.remote import parse_address

            parse_address(self.journal_server)
            if not self.journal_token or not self.journal_token.get_secret_value():
                raise ValueError("TRADEFLOW_JOURNAL_SERVER needs TRADEFLOW_JOURNAL_TOKEN (the journal server's secret)")
        if self.ema_fast >= self.ema_slow:
            raise ValueError("TRADEFLOW_EMA_FAST must be smaller than TRADEFLOW_EMA_SLOW")
        bounds = [b for b, _ in self.vix_leverage]
        if bounds != sorted(bounds):
            raise ValueError("TRADEFLOW_VIX_LEVERAGE bounds must be ascending")
        for bound, leverage in self.vix_leverage:
            if not 0 < bound <= 100:
                raise ValueError(f"TRADEFLOW_VIX_LEVERAGE: VIX bound {bound:g} is not in (0, 100]")
            if not 0 < leverage <= MAX_LEVERAGE:
                raise ValueError(f"TRADEFLOW_VIX_LEVERAGE: leverage {leverage:g} is not in (0, {MAX_LEVERAGE:g}]")
        exposure = self.mtf_position_usd * max(1, len(self.mtf_symbols))
        if self.mtf_daily_loss_limit_usd > exposure:
            raise ValueError(f"TRADEFLOW_MTF_DAILY_LOSS_LIMIT_USD {self.mtf_daily_loss_limit_usd:,.2f} USD exceeds "
                             f"everything the MTF positions hold ({self.mtf_position_usd:,.2f} USD x "
                             f"{len(self.mtf_symbols)} symbols = {exposure:,.2f} USD): it could never stop anything")
        if self.mtf_exit_threshold > self.mtf_entry_threshold:
            raise ValueError("TRADEFLOW_MTF_EXIT_THRESHOLD must not exceed TRADEFLOW_MTF_ENTRY_THRESHOLD")
        return self

    @property
    def journal_path(self) -> Path:
        """The DuckDB journal file."""
        return self.state_dir / "journal.duckdb"

    @property
    def models_dir(self) -> Path:
        """The model registry folder."""
        return self.state_dir / "models"

    @property
    def paper_exchange_state_file(self) -> Path:
        """The paper exchange's state file."""
        return self.paper_state_file or self.state_dir / "paper_exchange.json"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME for the local server that `tradeflow up` starts."""
        return self.state_dir / "prefect"


def _env_name(field_name: str) -> str:
    field = Settings.model_fields.get(field_name)
    if field is None:  # pydantic reports the alias it read, e.g. "IBKR_PORT"
        return field_name.upper()
    if isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    return f"TRADEFLOW_{field_name.upper()}"


def known_names() -> set[str]:
    """Every environment name a setting reads (TRADEFLOW_..., IBKR_..., TRADING_MODE) and `OTHER_NAMES`."""
    names = set(OTHER_NAMES)
    for field_name in Settings.model_fields:
        names.add(_env_name(field_name))
        names.add(f"TRADEFLOW_{field_name.upper()}")
    return names


def _given_names() -> dict[str, str]:
    """TRADEFLOW_* names set in the environment or in `.env` (as the settings read it), with where."""
    given = {k.upper(): "the environment" for k in os.environ if k.upper().startswith("TRADEFLOW_")}
    dotenv = env_file()
    if dotenv.is_file():
        from dotenv import dotenv_values

        for k in dotenv_values(dotenv):
            if k.upper().startswith("TRADEFLOW_"):
                given.setdefault(k.upper(), str(dotenv.resolve()))
    return given


def _unknown_names() -> list[str]:
    known = known_names()
    lines = []
    for name, where in sorted(_given_names().items()):
        if name in known or name.startswith(STRATEGY_SETTING_PREFIXES):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f": did you mean {close[0]}?" if close else " (see .env.example for every setting)"
        lines.append(f"{name} (in {where}) is not a setting{hint}")
    return lines


def _source_error(exc: SourceError) -> str:
    """One line for a value the settings source could not parse (a list setting that is not JSON)."""
    field_name = str(exc).split('"')[1] if '"' in str(exc) else "?"
    name = _env_name(field_name)
    raw = os.environ.get(name, os.environ.get(name.lower()))
    got = f" (got {raw!r})" if raw is not None else ""
    example = json.dumps(Settings.model_fields[field_name].default) if field_name in Settings.model_fields else "[]"
    return f"{name}: not valid JSON{got}: write it as JSON, e.g. {name}='{example}'"
SECRET_FIELDS = frozenset({"alert_url", "tradeflow_alert_url", "heartbeat_url", "tradeflow_heartbeat_url"})
"""Settings whose value is never echoed in an error message."""


def late_alert_seconds_for(settings: "Settings", deployment: str) -> float:
    """`late_alert_seconds` of `deployment` (its own key, else 'default', else 120), seconds."""
    table = settings.late_alert_seconds
    return float(table.get(deployment, table.get("default", 120.0)))


def env_file() -> Path:
    """The `.env` file the settings read: `TRADEFLOW_ENV_FILE` when set, else `.env` in the project folder
    (never the current directory: a command run from elsewhere must act on the same state as the flows)."""
    named = os.environ.get("TRADEFLOW_ENV_FILE")
    return Path(named).expanduser() if named else PROJECT_ROOT / ".env"


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment and the `.env` file of `env_file()` (the environment wins;
    overrides win over both, for tests and commands).

    Raises:
        SettingsError: a value is wrong (not a number, out of bounds, not finite, not JSON where JSON is
            expected), or a TRADEFLOW_* name is no setting's (with the name probably meant); the message names
            each wrong environment variable and why, without echoing secret values.
    """
    unknown = _unknown_names()
    if unknown:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(unknown))
    try:
        return Settings(_env_file=env_file(), **overrides)  # type: ignore[arg-type, call-arg]
    except SourceError as exc:
        raise SettingsError("invalid settings:\n  " + _source_error(exc)) from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            name = _env_name(str(loc[0])) if loc else "settings"
            secret = bool(loc) and str(loc[0]).lower() in SECRET_FIELDS
            got = "" if secret or "input" not in err else f" (got {err['input']!r})"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {msg}{got}" if loc else msg)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests that change the environment call `get_settings.cache_clear()`."""
    return load_settings()


def settings_in_force(settings: Settings) -> list[tuple[str, str, str]]:
    """(environment variable, value, where it came from) of every setting, secrets shown as `***` (set) or
    empty. Where: 'environment', '.env' (the file of `env_file()`) or 'default'."""
    from dotenv import dotenv_values

    path = env_file()
    in_file = {k.upper() for k in dotenv_values(path)} if path.is_file() else set()
    env = {k.upper() for k in os.environ}
    rows = []
    for name in Settings.model_fields:
        var = _env_name(name)
        value = getattr(settings, name)
        shown = ("***" if value.get_secret_value() else "") if isinstance(value, SecretStr) else (
            "" if value is None else str(value))
        where = "environment" if var in env else ".env" if var in in_file else "default"
        rows.append((var, shown, where))
    return rows
