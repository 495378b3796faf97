"""The reference model server: one ONNX model behind the KServe Open Inference Protocol v2 (REST).

    python -m governance.hosts.model_server --model-dir DIR --name NAME --port P [--version-label L]

Routes (errors answer `{"error": "..."}`):

    GET  /v2                                   server metadata
    GET  /v2/health/live                       200 once the socket is bound
    GET  /v2/health/ready                      200 once the model is loaded; 503 while loading or stopping
    GET  /v2/models/{name}[/versions/{v}]      model metadata: name, versions [label], platform, inputs, outputs
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
         {"id"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}]}
         → {"model_name", "model_version", "id", "outputs": [{"name", "shape", "datatype", "data"}]}

The model is the one `*.onnx` file in DIR (`model.onnx` if there are several), loaded with
onnxruntime: a protobuf graph, never pickle. A threaded HTTP/1.1 server with keep-alive; on SIGTERM
it reports not-ready, stops accepting, closes idle keep-alive connections, lets requests in flight
finish (up to --grace seconds) and exits 0. Stdlib + numpy + onnxruntime only; no Django.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SERVER_NAME = "registry-model-server"
PROTOCOL_VERSION = "2"
MAX_BODY = 64 * 1024 * 1024
IDLE_TIMEOUT = 75.0  # longer than a load balancer's idle server connections, so it closes them first

# KServe v2 datatype <-> numpy dtype name <-> ONNX tensor type
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def find_model_file(model_dir: Path) -> Path:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    preferred = model_dir / "model.onnx"
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in model_dir.rglob("*.onnx") if p.is_file())
    if not candidates:
        raise FileNotFoundError(f"no .onnx file in {model_dir}")
    if len(candidates) > 1:
        raise FileNotFoundError(f"several .onnx files in {model_dir} and none is model.onnx: {candidates}")
    return candidates[0]


def _shape(dims) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


class OnnxModel:
    """An onnxruntime session plus its KServe metadata. `infer` is thread-safe (onnxruntime's run is)."""

    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, *, name: str, version: str):
        import numpy as np
        import onnxruntime as ort

        self.np = np
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.name = name
        self.version = version
        self.inputs = [self._meta(arg) for arg in self.session.get_inputs()]
        self.outputs = [self._meta(arg) for arg in self.session.get_outputs()]
        self._input_types = {meta["name"]: meta["datatype"] for meta in self.inputs}

    @staticmethod
    def _meta(arg) -> dict:
        return {"name": arg.name, "datatype": ONNX_TYPES.get(arg.type, arg.type), "shape": _shape(arg.shape)}

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": self.inputs,
            "outputs": self.outputs,
        }

    def infer(self, body: dict) -> dict:
        np = self.np
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(400, "'inputs' must be a non-empty list")
        feed = {}
        for item in inputs:
            if not isinstance(item, dict):
                raise RequestError(400, "each input must be an object with name, shape, datatype, data")
            name, shape, datatype, data = (item.get(k) for k in ("name", "shape", "datatype", "data"))
            if name not in self._input_types:
                raise RequestError(400, f"unknown input {name!r}; the model takes {sorted(self._input_types)}")
            if datatype not in DATATYPES:
                raise RequestError(400, f"input {name!r}: unsupported datatype {datatype!r}")
            if datatype != self._input_types[name]:
                raise RequestError(
                    400, f"input {name!r}: datatype {datatype} given, the model takes {self._input_types[name]}"
                )
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
            try:
                feed[name] = np.asarray(data, dtype=DATATYPES[datatype]).reshape(shape)
            except (TypeError, ValueError) as exc:
                raise RequestError(400, f"input {name!r}: data does not match shape {shape}: {exc}") from exc
        missing = sorted(set(self._input_types) - set(feed))
        if missing:
            raise RequestError(400, f"missing inputs {missing}")
        wanted = None
        if body.get("outputs") is not None:
            requested = body["outputs"]
            if not isinstance(requested, list) or not all(isinstance(o, dict) and "name" in o for o in requested):
                raise RequestError(400, "'outputs' must be a list of {\"name\": ...}")
            wanted = [o["name"] for o in requested]
            known = {meta["name"] for meta in self.outputs}
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise RequestError(400, f"unknown outputs {unknown}")
        try:
            results = self.session.run(wanted, feed)
        except Exception as exc:  # onnxruntime: InvalidArgument is the request's fault, the rest the model's
            client_fault = exc.__class__.__name__ == "InvalidArgument"
            raise RequestError(400 if client_fault else 500, f"inference failed: {exc}") from exc
        names = wanted or [meta["name"] for meta in self.outputs]
        outputs = []
        for out_name, value in zip(names, results, strict=True):
            array = np.asarray(value)
            datatype = next((k for k, v in DATATYPES.items() if v == array.dtype.name), array.dtype.name)
            outputs.append(
                {"name": out_name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}
            )
        answer = {"model_name": self.name, "model_version": self.version, "outputs": outputs}
        if "id" in body:
            answer["id"] = body["id"]
        return answer


class ModelHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, *, name: str, version: str):
        self.model_name = name
        self.version = version
        self.model: OnnxModel | None = None
        self.load_error = ""
        self.stopping = False
        self.handlers: set = set()
        self.lock = threading.Lock()
        super().__init__(address, Handler)

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.stopping

    def handle_error(self, request, client_address):
        # Health checkers and clients that hang up early are not errors worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)

    def busy_count(self) -> int:
        with self.lock:
            return sum(1 for h in self.handlers if h.busy)

    def close_idle(self) -> None:
        """Close keep-alive connections waiting for their next request (their threads then exit)."""
        with self.lock:
            idle = [h for h in self.handlers if not h.busy]
        for handler in idle:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    timeout = IDLE_TIMEOUT
    server: ModelHTTPServer
    busy = False

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.handlers.add(self)

    def finish(self):
        with self.server.lock:
            self.server.handlers.discard(self)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        if os.environ.get("MODEL_SERVER_ACCESS_LOG"):
            super().log_message(format, *args)

    def parse_request(self) -> bool:
        # A request line has arrived: from here on the connection is busy until the answer is written.
        self.busy = True
        return super().parse_request()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        finally:
            self.busy = False
        if self.server.stopping:
            self.close_connection = True

    # --- routing ----------------------------------------------------------------------------------

    def do_GET(self):  # noqa: N802 - the stdlib's naming
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            status, body = self._route(method, self.path.split("?", 1)[0].rstrip("/"))
        except RequestError as exc:
            status, body = exc.status, {"error": str(exc)}
        except Exception as exc:  # never leave a client without an answer
            status, body = 500, {"error": f"internal error: {exc.__class__.__name__}: {exc}"}
        self._send(status, body)

    def _route(self, method: str, path: str) -> tuple[int, dict]:
        server = self.server
        if method == "POST":
            self._body = self._read_body()
        if path == "/v2" and method == "GET":
            return 200, {"name": SERVER_NAME, "version": PROTOCOL_VERSION, "extensions": []}
        if path == "/v2/health/live" and method == "GET":
            return 200, {"live": True}
        if path == "/v2/health/ready" and method == "GET":
            if server.ready:
                return 200, {"ready": True}
            return 503, {"ready": False, "error": server.load_error or ("stopping" if server.stopping else "loading")}
        parts = path.split("/")
        # ["", "v2", "models", name, ("versions", v)?, action?]
        if len(parts) < 4 or parts[1] != "v2" or parts[2] != "models":
            raise RequestError(404, f"no route for {method} {path}")
        name, rest = parts[3], parts[4:]
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        else:
            version = None
        if name != server.model_name or (version is not None and version != server.version):
            label = name if version is None else f"{name} version {version}"
            raise RequestError(
                404, f"model {label} is not served here (serving {server.model_name} version {server.version})"
            )
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "ready", "infer"):
            raise RequestError(404, f"no route for {method} {path}")
        if action == "infer":
            if method != "POST":
                raise RequestError(405, "infer takes POST")
            if not server.ready:
                raise RequestError(503, "model not ready")
            return 200, server.model.infer(self._body)
        if method != "GET":
            raise RequestError(405, f"{method} not allowed here")
        if action == "ready":
            return (200 if server.ready else 503), {"name": name, "ready": server.ready}
        if server.model is None:
            raise RequestError(503, "model not loaded yet")
        return 200, server.model.metadata()

    def _read_body(self) -> dict:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise RequestError(411, "send a Content-Length, not a chunked body")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError as exc:
            raise RequestError(400, "bad Content-Length") from exc
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise RequestError(413, f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise RequestError(400, f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise RequestError(400, "body must be a JSON object")
        return body

    def _send(self, status: int, body: dict) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection or self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)


def serve(args: argparse.Namespace) -> int:
    server = ModelHTTPServer((args.host, args.port), name=args.name, version=args.version_label)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    loop.start()
    try:
        model_file = find_model_file(Path(args.model_dir))
        server.model = OnnxModel(model_file, name=args.name, version=args.version_label)
        print(
            f"{SERVER_NAME}: serving {args.name} version {args.version_label} from {model_file} on "
            f"http://{args.host}:{args.port}",
            flush=True,
        )
    except Exception as exc:
        server.load_error = f"{exc.__class__.__name__}: {exc}"
        print(f"{SERVER_NAME}: cannot load the model: {server.load_error}", file=sys.stderr, flush=True)
        server.shutdown()
        server.server_close()
        return 2
    stop.wait()
    # Graceful stop: not ready, no new connections, idle keep-alives closed, requests in flight finish.
    server.stopping = True
    server.shutdown()
    server.server_close()
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline:
        server.close_idle()
        if not server.busy_count():
            break
        time.sleep(0.02)
    print(f"{SERVER_NAME}: stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="KServe v2 (REST) server for one ONNX model.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--name", required=True, help="the model name in /v2/models/{name}")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--version-label", default="1", help="the version reported in metadata and answers")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds requests in flight get on SIGTERM")
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
