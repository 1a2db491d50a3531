"""`tradeflow alerts test`: send one notification through the configured target (TRADEFLOW_ALERT_URL) and say
which kind of target it went to, never printing the URL (a secret)."""

from __future__ import annotations

import argparse
import sys


def register_alerts(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alerts", help="try the alert target", description=__doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    t = verbs.add_parser("test", help="send one test notification through TRADEFLOW_ALERT_URL")
    t.set_defaults(handler=_test)


def send_test(url: str, out=sys.stdout) -> int:
    """Send one test notification to `url`; print the kind of target (not the URL). Exit code 0 when it was
    delivered, 1 when delivery failed (the error's type and HTTP status only), 2 for an URL of no known kind."""
    import logging

    from deployments.alerts import AlertConfigError, notification_block, target_kind

    try:
        kind, block = target_kind(url), notification_block(url)
    except AlertConfigError as exc:
        print(f"alerts test: {exc}", file=out)
        return 2
    logging.getLogger("apprise").disabled = True  # its messages can carry the URL
    try:
        result = block.notify(subject="tradeflow: alert test",
                              body="A test notification from `tradeflow alerts test`: alerts reach you.", _sync=True)
    except Exception as exc:  # noqa: BLE001 - say it failed without the URL the error may carry
        status = getattr(getattr(exc, "response", None), "status_code", None)
        print(f"alerts test: delivery to the {kind} target failed: {type(exc).__name__}"
              + (f" (HTTP {status})" if status else ""), file=out)
        return 1
    if result is False:
        print(f"alerts test: delivery to the {kind} target failed (Apprise reported no success)", file=out)
        return 1
    print(f"alerts test: one notification sent to the {kind} target", file=out)
    return 0


def _test(args: argparse.Namespace) -> int:
    from core.settings import get_settings

    settings = get_settings()
    if settings.alert_url is None:
        print("alerts test: TRADEFLOW_ALERT_URL is not set (see README, Alerts)")
        return 2
    return send_test(settings.alert_url.get_secret_value())
