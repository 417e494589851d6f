"""A Pushgateway URL with credentials never reaches the logs."""

from __future__ import annotations

import logging
import socket

from helical_runner import metrics


def test_push_failure_log_redacts_user_and_password(caplog):
    with socket.socket() as sock:  # a loopback port nothing listens on: the push fails
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://pusher:s3cr3t-pw@127.0.0.1:{port}"
    with caplog.at_level(logging.DEBUG):
        metrics.push_failure(url, {"model": "geneformer", "run_id": "r1"}, "bad_input")
    records = [r for r in caplog.records if r.getMessage() == "could not push metrics"]
    assert records, "the failed push is logged"
    logged = " ".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "s3cr3t-pw" not in logged and "pusher" not in logged
    assert records[0].pushgateway == f"http://***@127.0.0.1:{port}"


def test_redact_url_leaves_plain_urls_alone():
    assert metrics.redact_url("http://127.0.0.1:9091") == "http://127.0.0.1:9091"
    assert metrics.redact_url("https://u:p@gw.example:9091/x") == "https://***@gw.example:9091/x"
