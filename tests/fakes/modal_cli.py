"""A stand-in `modal` executable for tests: Modal's real CLI with its gRPC client replaced.

Modal's control plane is gRPC and its test servicer is not shipped, so the adapter is tested at the
boundary Modal's own client exposes: the `modal` command. This stand-in runs the *installed* modal
package's CLI (`modal.__main__.main`: click commands and flags, version parsing, `--json` rendering,
error printing, exit codes, `MODAL_TRACEBACK`) and replaces only what talks to Modal's servers:

- `modal.client._Client.from_env` returns a fake client whose `_stub` answers the RPCs that
  `modal app history|info|rollback` make (AppGetByDeploymentName, AppDeploymentHistory, AppGetInfo,
  AppRollback, ObjectSuggest) with real `modal_proto.api_pb2` messages;
- `modal deploy` still imports the generated app file with the real SDK (so `modal.App`,
  `modal.Image…`, `@app.function`, `@modal.fastapi_endpoint` must accept it), then a fake
  `deploy_app` validates name and tag like `modal.runner._deploy_app` and records a new version. Deploying
  the name of a stopped app makes a new app (another app id, versions from v1 again), as on Modal.

State lives in a JSON file (its path is written into the executable by `install`, else `FAKE_MODAL_STATE`),
locked for the whole invocation, so the adapter's subprocesses and the test see the same apps.
Credentials: `MODAL_TOKEN_ID`/`MODAL_TOKEN_SECRET` must match the state's. Faults (`fail_rate`,
`timeout_rate`, seeded per call) make the first RPC raise `modal.exception.ServiceError` (what the
client raises once its own retries on UNAVAILABLE give up) or sleep `fault_sleep` seconds so the
caller's timeout fires. `rollback_copies_tag` decides whether a rollback's new history row repeats
the tag of the version rolled back to (Modal's real behaviour here is not documented; the adapter
must cope with both).
"""

import contextlib
import fcntl
import json
import os
import random
import stat
import sys
import time
import warnings
from pathlib import Path

STATE_ENV = "FAKE_MODAL_STATE"
DEFAULT_ENV = "main"


def new_state(*, token_id: str, token_secret: str, workspace: str = "acme") -> dict:
    return {
        "token_id": token_id,
        "token_secret": token_secret,
        "workspace": workspace,
        "apps": {},
        "faults": {"fail_rate": 0.0, "timeout_rate": 0.0, "fault_sleep": 5.0, "seed": 0},
        "rolls": 0,
        "rollback_copies_tag": True,
        "calls": [],
        "deploys": 0,
        "rollbacks": 0,
        "faults_injected": {"fail": 0, "timeout": 0},
    }


def install(bin_dir: Path, state_path: Path, **state) -> Path:
    """Write the state file and a `modal` executable in bin_dir (put bin_dir first on PATH)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(new_state(**state)))
    root = Path(__file__).resolve().parents[2]
    exe = bin_dir / "modal"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from tests.fakes.modal_cli import main\n"
        f"main({str(state_path)!r})\n"  # not from the environment: the adapter passes the CLI an allow-list
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


class State:
    """Read/modify the stand-in's state from a test (same lock as the executable)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def edit(self):
        with locked(self.path) as data:
            yield data

    def read(self) -> dict:
        with locked(self.path) as data:
            return json.loads(json.dumps(data))

    def faults(self, **faults) -> None:
        with self.edit() as data:
            data["faults"].update(faults)

    def seed(self, app: str, tags: list[str], env: str = DEFAULT_ENV) -> None:
        """Pretend `modal deploy --tag t` ran once per tag (no CLI run, for tests that start mid-history)."""
        with self.edit() as data:
            record = data["apps"].setdefault(
                f"{env}/{app}", {"app_id": _app_id(env, app), "name": app, "state": "deployed", "history": []}
            )
            for tag in tags:
                record["history"].append(
                    {
                        "version": len(record["history"]) + 1,
                        "deployed_at": time.time(),
                        "client_version": "seeded",
                        "deployed_by": data["workspace"],
                        "tag": tag,
                        "rollback_version": 0,
                        "functions": ["predict", "release"],
                    }
                )
                data["deploys"] += 1

    def history(self, app: str, env: str = DEFAULT_ENV) -> list[dict]:
        return self.read()["apps"].get(f"{env}/{app}", {}).get("history", [])


@contextlib.contextmanager
def locked(path: Path):
    with open(path, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        data = json.load(handle)
        try:
            yield data
        finally:
            handle.seek(0)
            handle.truncate()
            json.dump(data, handle)
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _app_id(env: str, name: str, generation: int = 0) -> str:
    import hashlib

    digest = hashlib.sha256(f"{env}/{name}".encode() + (f"#{generation}".encode() if generation else b"")).hexdigest()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "ap-" + "".join(alphabet[int(digest[i : i + 2], 16) % len(alphabet)] for i in range(0, 44, 2))


class Backend:
    """The server side of the few RPCs the CLI makes, over the state dict."""

    def __init__(self, state: dict):
        self.state = state
        faults = state["faults"]
        state["rolls"] += 1
        roll = random.Random(f"{faults['seed']}:{state['rolls']}").random()
        self.fault = None
        if roll < faults["fail_rate"]:
            self.fault = "fail"
        elif roll < faults["fail_rate"] + faults["timeout_rate"]:
            self.fault = "timeout"

    def gate(self, rpc: str) -> None:
        from modal.exception import AuthError, ServiceError

        if self.fault == "timeout":
            self.state["faults_injected"]["timeout"] += 1
            self.fault = None
            self.state["calls"][-1]["fault"] = "timeout"
            time.sleep(self.state["faults"]["fault_sleep"])
        if self.fault == "fail":
            self.state["faults_injected"]["fail"] += 1
            self.fault = None
            self.state["calls"][-1]["fault"] = "fail"
            raise ServiceError(f"{rpc}: the service is temporarily unavailable (injected fault)")
        token_id, token_secret = os.environ.get("MODAL_TOKEN_ID"), os.environ.get("MODAL_TOKEN_SECRET")
        if token_id != self.state["token_id"] or token_secret != self.state["token_secret"]:
            raise AuthError("Token validation failed: invalid token id or secret (UNAUTHENTICATED)")

    def app(self, env: str, name: str, *, create: bool = False) -> dict | None:
        """The app deployed under a name. `create` (a deploy): a new app if there is none or it was stopped, as on
        Modal, where a stopped app stays stopped and deploying its name again makes another app (a new app id,
        its version history from v1)."""
        key = f"{env or DEFAULT_ENV}/{name}"
        apps = self.state["apps"]
        if create and (key not in apps or apps[key]["state"] != "deployed"):
            generation = apps[key].get("generation", 0) + 1 if key in apps else 0
            app_id = _app_id(env or DEFAULT_ENV, name, generation)
            apps[key] = {"app_id": app_id, "name": name, "state": "deployed", "history": [], "generation": generation}
        return apps.get(key)

    def by_id(self, app_id: str) -> dict:
        from modal.exception import NotFoundError

        for key, app in self.state["apps"].items():
            if app["app_id"] == app_id:
                return {**app, "env": key.split("/", 1)[0]}
        raise NotFoundError(f"App {app_id} not found")

    def lifecycle(self, app: dict):
        from modal_proto import api_pb2

        latest = app["history"][-1] if app["history"] else {}
        state = api_pb2.APP_STATE_DEPLOYED if app["state"] == "deployed" else api_pb2.APP_STATE_STOPPED
        return api_pb2.AppLifecycle(
            app_state=state,
            created_at=app["history"][0]["deployed_at"] if app["history"] else 0,
            deployed_at=latest.get("deployed_at", 0),
            deployed_by=latest.get("deployed_by", ""),
            version=latest.get("version", 0),
        )

    def url(self, env: str, name: str) -> str:
        return f"https://modal.com/apps/{self.state['workspace']}/{env}/deployed/{name}"

    def web_url(self, env: str, app: str, function: str) -> str:
        prefix = self.state["workspace"] if env == DEFAULT_ENV else f"{self.state['workspace']}-{env}"
        return f"https://{prefix}--{app}-{function.replace('_', '-')}.modal.run"

    def entry(self, app: dict, *, tag: str, functions: list, rollback_version: int = 0) -> dict:
        import modal

        version = (app["history"][-1]["version"] if app["history"] else 0) + 1
        row = {
            "version": version,
            "deployed_at": time.time(),
            "client_version": modal.__version__,
            "deployed_by": self.state["workspace"],
            "tag": tag,
            "rollback_version": rollback_version,
            "functions": functions,
        }
        app["history"].append(row)
        app["state"] = "deployed"
        return row


class FakeStub:
    def __init__(self, backend: Backend):
        self.backend = backend

    async def AppGetByDeploymentName(self, request, **kwargs):
        from modal_proto import api_pb2

        self.backend.gate("AppGetByDeploymentName")
        env = request.environment_name or DEFAULT_ENV
        app = self.backend.app(env, request.name)
        if app is None:
            return api_pb2.AppGetByDeploymentNameResponse(environment_name=env)
        if app["state"] != "deployed":
            return api_pb2.AppGetByDeploymentNameResponse(
                previous_app_id=app["app_id"], environment_name=env, lifecycle=self.backend.lifecycle(app)
            )
        return api_pb2.AppGetByDeploymentNameResponse(
            app_id=app["app_id"], environment_name=env, lifecycle=self.backend.lifecycle(app)
        )

    async def ObjectSuggest(self, request, **kwargs):
        from modal_proto import api_pb2

        return api_pb2.ObjectSuggestResponse()

    async def AppDeploymentHistory(self, request, **kwargs):
        from modal_proto import api_pb2

        self.backend.gate("AppDeploymentHistory")
        app = self.backend.by_id(request.app_id)
        rows = [
            api_pb2.AppDeploymentHistory(
                app_id=request.app_id,
                version=row["version"],
                client_version=row["client_version"],
                deployed_at=row["deployed_at"],
                deployed_by=row["deployed_by"],
                tag=row["tag"],
                rollback_version=row["rollback_version"],
                rollback_allowed=True,
            )
            for row in app["history"]
        ]
        return api_pb2.AppDeploymentHistoryResponse(app_deployment_histories=rows)

    async def AppGetInfo(self, request, **kwargs):
        from modal_proto import api_pb2

        self.backend.gate("AppGetInfo")
        app = self.backend.by_id(request.app_id)
        functions = app["history"][-1]["functions"] if app["history"] else []
        ids = {name: f"fu-{app['app_id'][3:11]}{i}" for i, name in enumerate(functions)}
        return api_pb2.AppGetInfoResponse(
            info=api_pb2.AppHandleMetadata(
                description=app["name"],
                app_id=app["app_id"],
                environment_name=app["env"],
                lifecycle=self.backend.lifecycle(app),
                functions=ids,
            ),
            function_info_summaries={
                fid: api_pb2.AppGetInfoResponse.FunctionInfoSummary(web_function=True) for fid in ids.values()
            },
        )

    async def AppRollback(self, request, **kwargs):
        from modal.exception import InvalidError, NotFoundError
        from modal_proto import api_pb2

        self.backend.gate("AppRollback")
        found = self.backend.by_id(request.app_id)
        app = self.backend.state["apps"][f"{found['env']}/{found['name']}"]
        current = app["history"][-1]["version"]
        target = current + request.version if request.version < 0 else request.version
        rows = {row["version"]: row for row in app["history"]}
        if target not in rows:
            raise NotFoundError(f"Version v{target} not found in the deployment history of {found['name']}")
        if target == current:
            raise InvalidError(f"v{target} is already the current version of {found['name']}")
        old = rows[target]
        tag = old["tag"] if self.backend.state["rollback_copies_tag"] else ""
        self.backend.entry(app, tag=tag, functions=old["functions"], rollback_version=target)
        self.backend.state["rollbacks"] += 1
        return api_pb2.AppRollbackResponse(url=self.backend.url(found["env"], found["name"]), deployed_at=time.time())


class FakeClient:
    def __init__(self, backend: Backend):
        self._stub = FakeStub(backend)


def _fake_deploy_app(backend: Backend):
    def deploy_app(app, name=None, *, environment_name=None, tag="", deployment_strategy="rolling", staged=False):
        from modal._utils.name_utils import check_object_name, is_valid_tag
        from modal.exception import InvalidError
        from modal.output import OutputManager
        from modal.runner import DeployResult

        name = name or app.name or ""
        check_object_name(name, "App")  # what modal.runner._deploy_app checks before any RPC
        if tag and not is_valid_tag(tag, max_length=50):
            raise InvalidError(
                f"Deployment tag {tag!r} is invalid."
                "\n\nTags may only contain alphanumeric characters, dashes, periods, and underscores, "
                "and must be 50 characters or less"
            )
        backend.gate("AppPublish")
        env = environment_name or DEFAULT_ENV
        t0 = time.time()
        with warnings.catch_warnings():  # deprecated accessors, still the public view of an App's layout
            warnings.simplefilter("ignore")
            functions = sorted(app.registered_functions)
            web = set(app.registered_web_endpoints)
        record = backend.app(env, name, create=True)
        backend.entry(record, tag=tag, functions=functions)
        backend.state["deploys"] += 1
        output = OutputManager.get()
        output.step_completed("Created objects.")
        for function in functions:
            if function in web:
                output.print(f"├── 🔨 Created web function {function} => {backend.web_url(env, name, function)} 🔑")
            else:
                output.print(f"├── 🔨 Created function {function}.")
        output.step_completed(f"App deployed in {time.time() - t0:.3f}s! 🎉")
        url = backend.url(env, name)
        output.print(f"\nView Deployment: {url}")
        return DeployResult(app_id=record["app_id"], app_page_url=url, app_logs_url=None, warnings=[])

    return deploy_app


def main(state_path: str | None = None) -> None:
    path = Path(state_path or os.environ[STATE_ENV])
    with locked(path) as state:
        # The names (never the values) of the environment the adapter gave the CLI, before modal adds any.
        state["calls"].append(
            {"argv": sys.argv[1:], "token_id": bool(os.environ.get("MODAL_TOKEN_ID")), "env": sorted(os.environ)}
        )
        backend = Backend(state)

        import modal.cli.run
        from modal.client import _Client

        async def from_env(cls, *args, **kwargs):
            from modal.exception import AuthError

            if not os.environ.get("MODAL_TOKEN_ID") or not os.environ.get("MODAL_TOKEN_SECRET"):
                raise AuthError(  # the real client's message when no token is configured
                    "Token missing. Could not authenticate client. If you have token credentials, see "
                    "modal.com/docs/reference/modal.config for setup help. If you are a new user, register an "
                    "account at modal.com, then run `modal token new`."
                )
            return FakeClient(backend)

        _Client.from_env = classmethod(from_env)
        modal.cli.run.deploy_app = _fake_deploy_app(backend)
        sys.argv[0] = "modal"
        from modal.__main__ import main as modal_main

        modal_main()


if __name__ == "__main__":
    main()
