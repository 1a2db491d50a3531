"""Settings of the paper exchange (environment variables prefixed TRADEFLOW_PAPER_, or `.env`).

| variable | default | meaning |
|---|---|---|
| TRADEFLOW_PAPER_PORT | 7497 | TWS API port on 127.0.0.1 (0 picks a free one) |
| TRADEFLOW_PAPER_ADMIN_PORT | 7498 | admin interface port on 127.0.0.1 (0 picks a free one) |
| TRADEFLOW_PAPER_INITIAL_CASH | 1000000 | starting cash, USD |
| TRADEFLOW_PAPER_ACCOUNT | DU0000001 | account id (paper ids start with DU) |
| TRADEFLOW_PAPER_MAX_LEVERAGE | 4.0 | gross position value allowed, multiple of net liquidation |
| TRADEFLOW_PAPER_SERVER_VERSION | 176 | 157 or 176 |
| TRADEFLOW_PAPER_STATE_FILE | (state dir)/paper_exchange.json | the account's state file |
| TRADEFLOW_PAPER_REALTIME | true | live market data "subscribed" (false: clients get IB 354 and must use delayed) |
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PaperExchangeSettings(BaseSettings):
    """The paper exchange's settings; see the module docstring for the variables."""

    model_config = SettingsConfigDict(env_prefix="TRADEFLOW_PAPER_", env_file=".env", extra="ignore")

    port: int = Field(7497, ge=0, le=65535)
    admin_port: int = Field(7498, ge=0, le=65535)
    initial_cash: float = Field(1_000_000.0, gt=0, description="USD")
    account: str = "DU0000001"
    max_leverage: float = Field(4.0, gt=0, description="EMA's 3.75x plus the MTF positions fit in 4x")
    server_version: int = Field(176)
    state_file: Path | None = None
    realtime: bool = True
