"""A local server speaking the Hugging Face Inference Endpoints API (the part huggingface_hub uses).

Routes (base `{url}/v2`, to put in `huggingface_hub.constants.INFERENCE_ENDPOINTS_ENDPOINT`):
`GET|POST /v2/endpoint/{namespace}`, `GET|PUT|DELETE /v2/endpoint/{namespace}/{name}`,
`POST /v2/endpoint/{namespace}/{name}/pause|resume|scale-to-zero`. Endpoint objects carry what the
client reads (name, type, healthRoute, model.{repository, revision, task, framework, image},
status.{state, message, url, readyReplica, targetReplica, createdAt, createdBy, updatedAt, updatedBy})
plus provider and compute as sent. Errors are `{"error": "..."}` (what `hf_raise_for_status` reads).

State machine, driven by the clock: create → pending → (`pending_delay`) initializing → (`init_delay`)
running, or failed if the revision is in `bad_revisions`; a PUT that changes the model → updating →
(`update_delay`) running, or updateFailed. `status.url` appears once the endpoint first runs, and the
endpoint answers its health route there (`GET {status.url}{healthRoute}`, Bearer token required):
200 when running and `healthy`, 503 otherwise.

A PUT to a `failed` endpoint is refused (400): HF's docs say a failed endpoint must be created anew; the
platform's exact answer to such a PUT (status, words) is not documented, so this one is assumed. DELETE removes
an endpoint at once (the platform's may take a while).

Repositories and commits must be registered (`add_revision("acme/clf", "<40 hex>")`). `releases_created`
counts creates plus model changes. Faults (see httpfake.py) apply to the API routes, not the health route.
"""

import copy
import re
import time

from tests.fakes.httpfake import FakeServer, Reply, bearer_token, now_iso, run_main

COLLECTION = re.compile(r"/v2/endpoint/(?P<ns>[^/]+)/?")
ITEM = re.compile(r"/v2/endpoint/(?P<ns>[^/]+)/(?P<name>[^/]+)(?:/(?P<action>pause|resume|scale-to-zero))?/?")
HEALTH = re.compile(r"/_ep/(?P<ns>[^/]+)/(?P<name>[^/]+)(?P<route>/.*)")
NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


class HFEndpointsServer(FakeServer):
    name = "hf-endpoints"

    def __init__(self, *, token: str = "hf_test-token", namespaces=("acme",), port: int = 0, seed: int = 0):  # noqa: S107 - a test token
        self.tokens = {token: set(namespaces)}
        self.pending_delay = 0.1
        self.init_delay = 0.3
        self.update_delay = 0.3
        self.health_route = "/health"
        self.healthy = True
        super().__init__(port=port, seed=seed)
        self.reset_state()

    def reset_state(self) -> None:
        self.revisions: dict[str, set[str]] = {}
        self.tasks: dict[str, str] = {}
        self.bad_revisions: set[str] = set()
        self.endpoints: dict[tuple[str, str], dict] = {}
        self.releases_created = 0
        self.health_checks = 0

    @property
    def api_url(self) -> str:
        return f"{self.url}/v2"

    def add_revision(self, repository: str, commit: str, *, task: str = "text-classification") -> None:
        with self.lock:
            self.revisions.setdefault(repository, set()).add(commit)
            self.tasks[repository] = task

    def extra_fake_route(self, method, path, body):
        if path == "/_fake/revisions" and method == "POST":  # {"repository": "acme/clf", "commit": "<40 hex>"}
            self.add_revision(body["repository"], body["commit"])
            if body.get("bad"):
                self.bad_revisions.add(body["commit"])
            return 200, {"revisions": {r: sorted(c) for r, c in self.revisions.items()}}
        return None

    def faults_apply(self, path: str) -> bool:
        return path.startswith("/v2/")

    def snapshot(self) -> dict:
        return {
            "releases_created": self.releases_created,
            "endpoints": [self.render(e) for e in self.endpoints.values()],
        }

    def endpoint(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            record = self.endpoints.get((namespace, name))
            return self.render(record) if record else None

    # -- state -------------------------------------------------------------------------------------

    def _state(self, record: dict) -> tuple[str, str]:
        now = time.monotonic()
        state, message = "pending", ""
        for at, next_state, next_message in record["transitions"]:
            if at <= now:
                state, message = next_state, next_message
        if state == "running" and record.get("url") is None:
            record["url"] = f"{self.url}/_ep/{record['namespace']}/{record['name']}"
        return state, message

    def render(self, record: dict) -> dict:
        state, message = self._state(record)
        body = copy.deepcopy(record["body"])
        running = state in ("running", "updating", "updateFailed", "scaledToZero")
        body["status"] = {
            "state": state,
            "message": message,
            "url": record.get("url"),
            "readyReplica": body["compute"]["scaling"]["minReplica"] if running else 0,
            "targetReplica": body["compute"]["scaling"]["minReplica"],
            "createdAt": record["created_at"],
            "createdBy": {"id": "u-1", "name": record["namespace"]},
            "updatedAt": record["updated_at"],
            "updatedBy": {"id": "u-1", "name": record["namespace"]},
            "private": None,
        }
        if record.get("url") is None:
            body["status"].pop("url")
        return body

    # -- the API -----------------------------------------------------------------------------------

    def error_body(self, status: int, detail: str) -> dict:
        return {"error": detail}

    def fail(self, status: int, detail: str):
        raise Reply(status, {"error": detail})

    def _namespaces(self, headers) -> set[str]:
        token = bearer_token(headers)
        if not token or token not in self.tokens:
            self.fail(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def route(self, method, path, body, headers):
        match = HEALTH.fullmatch(path)
        if match:
            return self.health(match, headers)
        allowed = self._namespaces(headers)
        with self.lock:
            match = ITEM.fullmatch(path)
            if match:
                if match["ns"] not in allowed:
                    self.fail(403, f"You don't have access to namespace {match['ns']}")
                record = self.endpoints.get((match["ns"], match["name"]))
                if record is None:
                    self.fail(404, f"Endpoint {match['name']} not found")
                if match["action"]:
                    if method != "POST":
                        self.fail(405, "Method not allowed")
                    return 200, self.act(record, match["action"])
                if method == "GET":
                    return 200, self.render(record)
                if method == "PUT":
                    return 200, self.update(record, body or {})
                if method == "DELETE":
                    del self.endpoints[(match["ns"], match["name"])]
                    return 200, {}
                self.fail(405, "Method not allowed")
            match = COLLECTION.fullmatch(path)
            if match:
                if match["ns"] not in allowed:
                    self.fail(403, f"You don't have access to namespace {match['ns']}")
                if method == "GET":
                    mine = [self.render(r) for (ns, _), r in sorted(self.endpoints.items()) if ns == match["ns"]]
                    return 200, {"items": mine}
                if method == "POST":
                    return 200, self.create(match["ns"], body or {})
                self.fail(405, "Method not allowed")
            self.fail(404, "Not Found")

    def health(self, match, headers):
        self._namespaces(headers)
        with self.lock:
            self.health_checks += 1
            record = self.endpoints.get((match["ns"], match["name"]))
            if record is None or record.get("url") is None:
                raise Reply(404, {"error": "not found"})
            state, _ = self._state(record)
            if match["route"] != record["body"]["healthRoute"]:
                raise Reply(404, {"error": "not found"})
            if state == "running" and self.healthy:
                return 200, {"status": "ok", "revision": record["serving_revision"]}
            raise Reply(503, {"error": f"endpoint is {state}"})

    def _check_model(self, model: dict) -> None:
        repo, revision = model.get("repository"), model.get("revision")
        if repo not in self.revisions:
            self.fail(400, f"Repository {repo} not found or not accessible")
        if revision not in self.revisions[repo]:
            self.fail(400, f"Revision {revision} not found in {repo}")

    def create(self, namespace: str, body: dict) -> dict:
        for path in (
            "name",
            "type",
            "provider.vendor",
            "provider.region",
            "compute.accelerator",
            "compute.instanceSize",
            "compute.instanceType",
            "compute.scaling.minReplica",
            "compute.scaling.maxReplica",
            "model.repository",
            "model.framework",
            "model.image",
        ):
            node = body
            for part in path.split("."):
                if not isinstance(node, dict) or node.get(part) is None:
                    self.fail(400, f"Missing field: {path}")
                node = node[part]
        name = body["name"]
        if not NAME.fullmatch(name):
            self.fail(400, "Endpoint name must be lowercase alphanumeric with dashes, at most 32 characters")
        if body["type"] not in ("public", "authenticated", "private"):
            self.fail(400, f"Invalid type {body['type']}")
        scaling = body["compute"]["scaling"]
        if scaling["minReplica"] > scaling["maxReplica"]:
            self.fail(400, "minReplica must be lower than or equal to maxReplica")
        self._check_model(body["model"])
        if (namespace, name) in self.endpoints:
            self.fail(409, f"Endpoint {name} already exists")
        stored = copy.deepcopy(body)
        stored["model"].setdefault("task", self.tasks.get(body["model"]["repository"], "custom"))
        stored["model"].setdefault("env", {})
        stored["model"].pop("secrets", None)  # never echoed back
        stored["healthRoute"] = self.health_route
        now = time.monotonic()
        record = {
            "namespace": namespace,
            "name": name,
            "body": stored,
            "created_at": now_iso(),
            "updated_at": now_iso(),
            "transitions": [(now, "pending", "")],
            "serving_revision": None,
        }
        revision = stored["model"]["revision"]
        bad = revision in self.bad_revisions
        record["transitions"].append((now + self.pending_delay, "initializing", ""))
        end_at = now + self.pending_delay + self.init_delay
        if bad:
            record["transitions"].append((end_at, "failed", f"Container failed to start with revision {revision[:7]}"))
        else:
            record["transitions"].append((end_at, "running", ""))
            record["serving_revision"] = revision
        self.endpoints[(namespace, name)] = record
        self.releases_created += 1
        return self.render(record)

    def update(self, record: dict, body: dict) -> dict:
        unknown = set(body) - {"compute", "model", "route", "tags", "cacheHttpResponses"}
        if unknown:
            self.fail(400, f"Unknown field(s): {', '.join(sorted(unknown))}")
        state, _ = self._state(record)
        if state == "paused":
            self.fail(400, "Endpoint is paused: resume it first")
        if state == "failed":
            self.fail(400, "Endpoint is in a failed state and cannot be updated: delete it and create a new one")
        stored = record["body"]
        model_change = {k: v for k, v in (body.get("model") or {}).items() if stored["model"].get(k) != v}
        if model_change:
            self._check_model({**stored["model"], **model_change})
        for section in ("compute", "model"):
            for key, value in (body.get(section) or {}).items():
                if isinstance(value, dict) and isinstance(stored[section].get(key), dict):
                    stored[section][key].update(value)
                else:
                    stored[section][key] = value
        record["updated_at"] = now_iso()
        if model_change or body.get("compute"):
            now = time.monotonic()
            revision = stored["model"]["revision"]
            bad = revision in self.bad_revisions
            record["transitions"] = [(now, "updating", "")]
            end = (
                ("updateFailed", f"Update failed: container crashed with revision {revision[:7]}")
                if bad
                else ("running", "")
            )
            record["transitions"].append((now + self.update_delay, *end))
            if not bad:
                record["serving_revision"] = revision
            if model_change:
                self.releases_created += 1
        return self.render(record)

    def act(self, record: dict, action: str) -> dict:
        now = time.monotonic()
        if action == "pause":
            record["transitions"] = [(now, "paused", "")]
        elif action == "scale-to-zero":
            record["transitions"] = [(now, "scaledToZero", "")]
        else:
            record["transitions"] = [(now, "initializing", ""), (now + self.init_delay, "running", "")]
        return self.render(record)


def main() -> None:
    run_main(HFEndpointsServer, "Local Hugging Face Inference Endpoints API")


if __name__ == "__main__":
    main()
