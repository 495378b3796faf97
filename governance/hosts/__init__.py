"""Deployment hosts, one module per kind behind one small interface. No Django models here.

This package is what governance knows about hosts: for each kind, how its target configuration is
validated (`validate_config`) and what it can do (`capabilities`). The deploy/status/traffic side
of the interface arrives with the deployment engine.
"""

from dataclasses import dataclass

from governance.hosts import hf_endpoint, modal, replicate, self_hosted


@dataclass(frozen=True)
class HostSpec:
    kind: str
    module: object

    def validate_config(self, config: dict) -> dict:
        return self.module.validate_config(config)

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
HOSTS = {m.KIND: HostSpec(m.KIND, m) for m in (replicate, hf_endpoint, modal, self_hosted)}


def host(kind: str) -> HostSpec:
    return HOSTS[kind]
