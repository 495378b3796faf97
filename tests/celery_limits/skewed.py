"""`python -m tests.celery_limits.skewed SECONDS <celery arguments>`: Celery, in a process whose wall clock (time.time,
datetime.now: what Celery compares an `expires` with) runs SECONDS ahead of the machine's and keeps ticking."""

import sys
from datetime import UTC, datetime, timedelta

import time_machine

if __name__ == "__main__":
    time_machine.travel(datetime.now(UTC) + timedelta(seconds=float(sys.argv[1])), tick=True).start()
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[2:]]
    main()
