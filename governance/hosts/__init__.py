"""Deployment hosts, one module per kind behind one small interface. No Django models here.

This package is what governance knows about hosts: for each kind, how its target configuration is
validated (`validate_config`) and what it can do (`capabilities`). The deploy/status/traffic side
of the interface arrives with the deployment engine.
"""

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class HostSpec:
    """A host kind. Its module (and the platform's client library) is imported on first use, so a
    web worker that never touches Replicate does not carry its client (and numpy) in memory."""

    kind: str

    @property
    def module(self):
        return importlib.import_module(f"governance.hosts.{self.kind}")

    def validate_config(self, config: dict) -> dict:
        return self.module.validate_config(config)

    def resources(self, config: dict, credentials_ref: str = "") -> frozenset[str]:
        """What a target with this (validated) config controls on its host; no two targets may share any."""
        return self.module.resources(config, credentials_ref)

    @property
    def capabilities(self) -> frozenset[str]:
        return self.module.CAPABILITIES

    def adapter(self):
        """The module's Host implementation (see base.Host)."""
        return getattr(self.module, ADAPTERS[self.kind])()


ADAPTERS = {
    "replicate": "ReplicateHost",
    "hf_endpoint": "HFEndpointHost",
    "modal": "ModalHost",
    "self_hosted": "SelfHostedHost",
}
HOSTS = {kind: HostSpec(kind) for kind in ADAPTERS}


def host(kind: str) -> HostSpec:
    return HOSTS[kind]
