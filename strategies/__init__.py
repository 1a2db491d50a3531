"""Project-local strategies: one package each, whose `__init__.py` defines `STRATEGY` (a core.registry.Strategy).
The registry (`core.registry`) finds them by themselves; `tradeflow new-strategy NAME` writes one."""
