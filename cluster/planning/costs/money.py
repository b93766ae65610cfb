"""Money as people read it: small costs stay visible instead of rounding to 0.0000."""

from __future__ import annotations

import math


def format_usd(amount: float | None) -> str:
    """`$1.23` from a dollar up; below it two significant digits (`$0.018`, `$0.000042`, `$0.05`);
    `$0` for nothing."""
    if amount is None:
        return "—"
    if amount == 0:
        return "$0"
    sign = "-" if amount < 0 else ""
    value = abs(amount)
    if value >= 1:
        return f"{sign}${value:,.2f}"
    decimals = max(2, 1 - math.floor(math.log10(value)))
    text = f"{value:.{decimals}f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction[:2] + fraction[2:].rstrip("0")  # cents always shown, no zeros past them
    return f"{sign}${whole}.{fraction}"
