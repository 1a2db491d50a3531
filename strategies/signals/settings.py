"""The signals strategy's settings, read from the environment and `.env` (prefix `TRADEFLOW_SIGNALS_`), beside the
system's (`core.settings`). Money is USD, fractions are fractions."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

HERE = Path(__file__).resolve().parent


class SignalsSettings(BaseSettings):
    """Where the signals come from, which tickers, the rule file and the limits."""

    model_config = SettingsConfigDict(env_prefix="TRADEFLOW_SIGNALS_", env_file=".env", env_file_encoding="utf-8",
                                      extra="ignore")

    api_url: str = Field("http://127.0.0.1:7531/signals",
                         description="The prediction source's signals endpoint (GET ?symbols=A,B&as_of=ISO).")
    api_key: SecretStr | None = Field(None, description="The source's key, sent as `Authorization: Bearer` (secret).")
    api_timeout_seconds: float = Field(10.0, gt=0, description="How long a request to the source may take, s.")
    symbols: Annotated[list[str], NoDecode] = Field(default=["AAPL", "TSLA", "SMH"],
                                                    description="The tickers traded (isolated): 'AAPL,TSLA' or JSON.")
    rules_file: Path = Field(HERE / "rules.yaml", description="The YAML rule file (strategies/signals/rules.py).")
    position_usd: float = Field(10_000.0, gt=0, description="Value of a new position, USD.")
    max_position_usd: float = Field(20_000.0, gt=0, description="Largest position value of one ticker, USD.")
    max_positions: int = Field(10, gt=0, description="Most tickers with a position at once (the account).")
    max_daily_loss_usd: float = Field(1_000.0, gt=0, description="Halt for the day at this session loss, USD.")
    fill_timeout_seconds: float = Field(30.0, gt=0, description="How long a market order's fill is awaited, s.")
    atr_bars: int = Field(14, gt=1, description="Bars of the ATR (Wilder's, of the 5-minute bars of 2 sessions).")

    @field_validator("rules_file")
    @classmethod
    def _relative_to_project(cls, path: Path) -> Path:
        """A relative rule file is relative to the project folder, wherever a flow process starts."""
        from core.settings import PROJECT_ROOT

        return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                import json

                value = json.loads(value)
            else:
                return [s.strip().upper() for s in value.split(",") if s.strip()]
        return [str(s).upper() for s in value] if isinstance(value, list) else value


@lru_cache(maxsize=1)
def get_signals_settings() -> SignalsSettings:
    """The process's signals settings, read once (`get_signals_settings.cache_clear()` rereads them)."""
    return SignalsSettings()
