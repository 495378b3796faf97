"""One rule for "a number" in JSON input (metrics, policy thresholds and hours, host timeouts)."""

import math


def finite_number(value) -> bool:
    """An int or float finite as a double. Booleans are not numbers here, and neither is an int too large for
    a double (10**400 is valid JSON; math.isfinite raises OverflowError on it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
