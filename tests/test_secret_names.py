"""One rule for which keys name secrets (audit.services.secret_name), used by the audit log's redaction and by
lineage facets: a '.' separates words as '_' does (property names such as spark.hadoop.fs.s3a.secret.key)."""

import pytest

from audit.services import REDACTED, redact, secret_name


@pytest.mark.parametrize(
    "key", ["password", "api_key", "spark.hadoop.fs.s3a.secret.key", "spark.ssl.keyStorePassword", "github.token"]
)
def test_secret_names(key):
    assert secret_name(key)
    assert redact({key: "hunter2hunter2"}) == {key: REDACTED}


@pytest.mark.parametrize("key", ["tokenizer", "keyboard", "spark.executor.memory", "sha256", "max_tokens"])
def test_ordinary_names(key):
    assert not secret_name(key)
    assert redact({key: "v"}) == {key: "v"}
