"""API token scopes. A token may do only what its scopes name *and* what its user may do."""

READ = "read"
MODELS_WRITE = "models:write"
VERSIONS_WRITE = "versions:write"
LINEAGE_WRITE = "lineage:write"
PROMOTIONS_WRITE = "promotions:write"
APPROVALS_WRITE = "approvals:write"
DEPLOYMENTS_WRITE = "deployments:write"
AUDIT_READ = "audit:read"
TOKENS_WRITE = "tokens:write"

ALL = (
    READ,
    MODELS_WRITE,
    VERSIONS_WRITE,
    LINEAGE_WRITE,
    PROMOTIONS_WRITE,
    APPROVALS_WRITE,
    DEPLOYMENTS_WRITE,
    AUDIT_READ,
    TOKENS_WRITE,
)
DESCRIPTIONS = {
    READ: "read models, versions, cards, lineage, targets and promotions the user may see",
    MODELS_WRITE: "create and change registered models and aliases",
    VERSIONS_WRITE: "register model versions, upload artifacts, add card revisions",
    LINEAGE_WRITE: "send lineage events (OpenLineage)",
    PROMOTIONS_WRITE: "request, dry-run and cancel promotions",
    APPROVALS_WRITE: "approve or reject promotion requests",
    DEPLOYMENTS_WRITE: "roll back and change deployment targets",
    AUDIT_READ: "export the audit log and lineage trails, and use the webhook API (its deliveries are audit events)",
    TOKENS_WRITE: "create and revoke the user's own API tokens",
}


def parse(text: str | list[str]) -> list[str]:
    """Parse "read,versions:write" into a sorted, de-duplicated list; raise ValueError naming unknown ones."""
    items = text if isinstance(text, list) else text.split(",")
    scopes = sorted({s.strip() for s in items if s and s.strip()})
    unknown = [s for s in scopes if s not in ALL]
    if unknown:
        raise ValueError(f"Unknown scope(s): {', '.join(unknown)}. Known scopes: {', '.join(ALL)}.")
    if not scopes:
        raise ValueError(f"At least one scope is required. Known scopes: {', '.join(ALL)}.")
    return scopes
