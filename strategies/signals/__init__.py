"""The signals strategy (seed 004, the multi-ticker framework), added as a unit: signals BUY / SELL / SHORT with a
confidence per ticker from an external prediction source, a YAML rule file, bracket entries whose stop-loss and
take-profit are one OCA group, reversals, per-ticker and per-account limits.

Parts: `rules.py` (pure: the rule file, the rule engine, the limits), `source.py` (the HTTP client, and the local
source the project ships), `settings.py` (TRADEFLOW_SIGNALS_*), `steps.py` (its broker and journal steps),
`flow.py` (the Prefect flow). This module is its registry entry (no Prefect). It runs once named in
TRADEFLOW_STRATEGIES.
"""

from core.registry import DeploymentEntry, Strategy, every

DEPLOYMENT = DeploymentEntry(
    name="signals",
    strategy="signals",
    entrypoint="strategies/signals/flow.py:signals",
    description="Every 15 minutes of each session: the prediction source's signals for the signals tickers, the "
                "rule file's actions; bracket entries (stop-loss and take-profit in one OCA group), reversals, limits.",
    events=(every(15),),
    client_id_offset=110,
    sends_orders=True,
    tags=("signals",),
)

STRATEGY = Strategy(
    name="signals",
    description="Seed 004: external signals per ticker, YAML rules, brackets with OCA stop-loss/take-profit, "
                "reversals, per-ticker and per-account limits.",
    deployments=(DEPLOYMENT,),
    rules="strategies.signals.rules",
    paper_services=(("signal source", ("-m", "strategies.signals.source")),),
)
