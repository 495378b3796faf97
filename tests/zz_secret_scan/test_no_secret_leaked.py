"""The session's secret scan verdict (tests/secret_scan.py). Collected last, whatever ran before it.

Every test before this one had its log records, audit events and API responses searched for every
API token and host credential known at its end; this test adds the log files (DATA_DIR and pytest's
temporary directories, where the suites' servers and workers write theirs) and fails naming each leak.
"""

from pathlib import Path

import pytest
from django.conf import settings

from tests import secret_scan


@pytest.mark.secret_scan_final
def test_no_token_or_host_credential_leaked(secret_scanner, tmp_path_factory, request):
    secret_scanner.flush("the session")
    roots = [Path(settings.DATA_DIR), tmp_path_factory.getbasetemp()]
    secret_scanner.scan_files(roots)
    stats = secret_scanner.stats
    print(f"secret scan: {len(secret_scanner.secrets)} secret values; {stats}")
    secret_scan.verdict(secret_scanner)
    ran_other_tests = request.session.testscollected > 1
    if ran_other_tests:  # not a vacuous pass: the scanner saw the session
        assert stats["tokens"] and stats["responses"] and stats["log_records"], stats
