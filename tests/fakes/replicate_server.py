"""A local server speaking Replicate's deployments API (the part replicate-python 1.0.x uses).

Routes: `GET /v1/account` (the token's account: `{type, username, name, github_url}`),
`GET /v1/deployments` (`{next, previous, results}`), `POST /v1/deployments`,
`GET|PATCH|DELETE /v1/deployments/{owner}/{name}`. Deployment objects are
`{owner, name, current_release: {number, model, version, created_at, created_by: {type, username, name},
configuration: {hardware, min_instances, max_instances}}}`; every create or update is a new release
(`number` + 1); a deployment deleted and created again starts at 1 again, as on Replicate. Errors are
RFC 7807 `{type, title, status, detail}`. Auth: `Authorization: Bearer <token>`
(or the older `Token <token>`); the token decides the account that owns created deployments.

Model versions must be registered first (`add_version("acme/clf", "<64 hex>")`): an unknown version
is a 404 like on Replicate. `releases_created` counts every release made (the "no duplicate host
release" assertions read it). Faults: see tests/fakes/httpfake.py.
"""

import re

from tests.fakes.httpfake import FakeServer, Reply, bearer_token, now_iso, run_main

HARDWARE = {"cpu", "gpu-t4", "gpu-l40s", "gpu-a40-small", "gpu-a40-large", "gpu-a100-large", "gpu-h100"}
VERSION = re.compile(r"[0-9a-f]{64}")
DEPLOYMENT = re.compile(r"/v1/deployments/(?P<owner>[^/]+)/(?P<name>[^/]+)/?")
TITLES = {
    400: "Bad Request",
    401: "Unauthenticated",
    404: "Not found",
    409: "Conflict",
    422: "Invalid input",
    429: "Too Many Requests",
}


class ReplicateServer(FakeServer):
    name = "replicate"

    def __init__(self, *, token: str = "r8_test-token", username: str = "acme", port: int = 0, seed: int = 0):  # noqa: S107 - a test token
        self.accounts = {token: username}
        super().__init__(port=port, seed=seed)
        self.reset_state()

    def reset_state(self) -> None:
        self.versions: dict[str, set[str]] = {}
        self.deployments: dict[tuple[str, str], dict] = {}
        self.history: dict[tuple[str, str], list[dict]] = {}  # every release of each deployment, in order
        self.releases_created = 0

    def add_version(self, model: str, version: str) -> None:
        with self.lock:
            self.versions.setdefault(model, set()).add(version)

    def extra_fake_route(self, method, path, body):
        if path == "/_fake/versions" and method == "POST":  # {"model": "acme/clf", "version": "<64 hex>"}
            self.add_version(body["model"], body["version"])
            return 200, {"versions": {m: sorted(v) for m, v in self.versions.items()}}
        return None

    def add_account(self, token: str, username: str) -> None:
        self.accounts[token] = username

    def snapshot(self) -> dict:
        return {"releases_created": self.releases_created, "deployments": list(self.deployments.values())}

    def deployment(self, owner: str, name: str) -> dict | None:
        with self.lock:
            return self.deployments.get((owner, name))

    # -- the API -----------------------------------------------------------------------------------

    def error_body(self, status: int, detail: str) -> dict:
        return {
            "type": f"https://replicate.com/docs/reference/http#{status}",
            "title": TITLES.get(status, "Service Unavailable" if status >= 500 else "Error"),
            "status": status,
            "detail": detail,
        }

    def fail(self, status: int, detail: str):
        raise Reply(status, self.error_body(status, detail), {"Content-Type": "application/problem+json"})

    def route(self, method, path, body, headers):
        token = bearer_token(headers)
        user = self.accounts.get(token) if token else None
        if user is None:
            self.fail(401, "You did not pass a valid authentication token")
        with self.lock:
            if path.rstrip("/") == "/v1/account" and method == "GET":
                return 200, {"type": "user", "username": user, "name": user.title(), "github_url": None}
            if path.rstrip("/") == "/v1/deployments":
                if method == "GET":
                    mine = [d for (owner, _), d in sorted(self.deployments.items()) if owner == user]
                    return 200, {"next": None, "previous": None, "results": mine}
                if method == "POST":
                    return 201, self.create(user, body or {})
                self.fail(405, "Method not allowed.")
            match = DEPLOYMENT.fullmatch(path)
            if not match:
                self.fail(404, "Not found.")
            key = (match["owner"], match["name"])
            deployment = self.deployments.get(key)
            if deployment is None or key[0] != user:
                self.fail(404, "Not found.")
            if method == "GET":
                return 200, deployment
            if method == "PATCH":
                return 200, self.update(user, deployment, body or {})
            if method == "DELETE":
                del self.deployments[key]
                return 204, None
            self.fail(405, "Method not allowed.")

    def _check_config(self, config: dict) -> None:
        if config["hardware"] not in HARDWARE:
            self.fail(422, f"Invalid hardware {config['hardware']!r}. Choose one of: {', '.join(sorted(HARDWARE))}.")
        for key in ("min_instances", "max_instances"):
            if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0:
                self.fail(422, f"{key} must be a non-negative integer.")
        if config["min_instances"] > config["max_instances"]:
            self.fail(422, "min_instances must be less than or equal to max_instances.")

    def _check_version(self, model: str, version) -> None:
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            self.fail(422, "version must be a 64-character version id.")
        if version not in self.versions.get(model, set()):
            self.fail(404, f"Version {version} of model {model} does not exist or you do not have access to it.")

    def _release(self, user: str, number: int, model: str, version: str, config: dict) -> dict:
        self.releases_created += 1
        return {
            "number": number,
            "model": model,
            "version": version,
            "created_at": now_iso(),
            "created_by": {"type": "organization", "username": user, "name": user.title(), "github_url": None},
            "configuration": config,
        }

    def create(self, user: str, body: dict) -> dict:
        missing = [
            k for k in ("name", "model", "version", "hardware", "min_instances", "max_instances") if k not in body
        ]
        if missing:
            self.fail(422, f"Missing required field(s): {', '.join(missing)}.")
        name, model = body["name"], body["model"]
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            self.fail(422, "name may contain only lowercase letters, digits, '.', '_' and '-'.")
        if not isinstance(model, str) or model.count("/") != 1:
            self.fail(422, "model must be 'owner/name'.")
        if model not in self.versions:
            self.fail(404, f"Model {model} does not exist or you do not have access to it.")
        self._check_version(model, body["version"])
        config = {k: body[k] for k in ("hardware", "min_instances", "max_instances")}
        self._check_config(config)
        if (user, name) in self.deployments:
            self.fail(409, f"A deployment named {user}/{name} already exists.")
        deployment = {
            "owner": user,
            "name": name,
            "current_release": self._release(user, 1, model, body["version"], config),
        }
        self.deployments[(user, name)] = deployment
        self.history.setdefault((user, name), []).append(deployment["current_release"])
        return deployment

    def update(self, user: str, deployment: dict, body: dict) -> dict:
        allowed = {"version", "hardware", "min_instances", "max_instances"}
        unknown = set(body) - allowed
        if unknown:
            self.fail(422, f"Unknown field(s): {', '.join(sorted(unknown))}.")
        if not body:
            self.fail(422, "Nothing to update: pass version, hardware, min_instances or max_instances.")
        current = deployment["current_release"]
        version = body.get("version", current["version"])
        self._check_version(current["model"], version)
        config = {**current["configuration"], **{k: body[k] for k in body if k != "version"}}
        self._check_config(config)
        deployment["current_release"] = self._release(user, current["number"] + 1, current["model"], version, config)
        self.history.setdefault((user, deployment["name"]), []).append(deployment["current_release"])
        return deployment


def main() -> None:
    run_main(ReplicateServer, "Local Replicate deployments API")


if __name__ == "__main__":
    main()
