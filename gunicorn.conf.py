"""gunicorn's settings wherever the registry runs under it (Dockerfile, docker-compose.yml, scripts/dev.py, the
tests, bench/): gunicorn reads ./gunicorn.conf.py from the directory it starts in; command-line flags override it.

Threaded workers. An artifact upload (`PUT …/artifacts/sha256:…`) is one request that lasts as long as the
client takes to send the file. A sync worker cannot report to the arbiter while it serves, so every upload
slower than `timeout` (30 s) was killed with a 500, and each slow client held a whole worker. A gthread
worker's main loop keeps reporting while its threads serve; a slow upload holds one thread.
"""

import os

worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
