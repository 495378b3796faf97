"""A model server for the interrupted-deploy tests: `unchecked_server.py <port> <release> <pid dir> [haproxy pid]`.

Release 1 answers every `GET /v2/health/ready` with 200. Any later release answers only the adapter's own probe
(http.client: HTTP/1.1 with a Host header) and never HAProxy's health check (HTTP/1.0, no Host): its deploy finds it
ready, puts it in a slot at weight 0 and then waits for HAProxy's check, the window before traffic moves. With a
HAProxy pid, the adapter's first probe also stops that HAProxy (SIGSTOP): its next runtime API call gets no answer.
Each server writes its pid to <pid dir>/pid-<release>, so a test can tell whether it still runs."""

import http.server
import os
import signal
import sys
from pathlib import Path

port, release, pid_dir = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
haproxy_pid = int(sys.argv[4]) if len(sys.argv) > 4 else None
(pid_dir / f"pid-{release}").write_text(str(os.getpid()))


class Server(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        from_adapter = "Host" in self.headers
        if from_adapter and haproxy_pid:
            os.kill(haproxy_pid, signal.SIGSTOP)
        self.send_response(200 if release == "1" or from_adapter else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Server).serve_forever()
