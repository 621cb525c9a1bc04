"""The Grafana dashboard names only metrics the live server exports: every series it plots appears on the
metrics port once traffic of each kind (scored, best-of-N, invalid, refused) has passed."""

import json
import re
import urllib.error
import urllib.request

import pytest

from armorm.serving import metrics
from armorm_client import InvalidConversationError
from tests.conversations import varied_conversations
from tests.test_helm import DASHBOARD, dashboard_metrics

pytestmark = pytest.mark.integration
# Series that exist only after their event, which a healthy default server never has: a conversation truncated
# (truncate="true" servers; tests/test_truncation.py) or an admitted request aborted by a later step.
EVENT_ONLY = {metrics.TRUNCATED, metrics.ABORTED}


def exported_names(metrics_url: str) -> set[str]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()  # noqa: S310 - loopback
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and line[0] != "#"}


def test_every_dashboard_metric_is_exported_by_the_server(server, client):
    conversations = varied_conversations()
    client.score(conversations[0])
    prompt = conversations[0][:-1]
    client.score_responses(prompt, ["One answer.", "Another answer."])  # shared prompt: saved tokens
    with pytest.raises(InvalidConversationError):
        client.score([{"role": "user", "content": "no response"}])
    refused = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as denied:  # the gateway refuses it: a refusal series appears
        urllib.request.urlopen(refused, timeout=10)  # noqa: S310 - loopback
    assert denied.value.code == 401
    names = exported_names(server.metrics_url)
    plotted = dashboard_metrics(json.loads(DASHBOARD.read_text()))
    missing = plotted - names - EVENT_ONLY
    assert not missing, f"the dashboard plots metrics the server does not export: {sorted(missing)}"
    assert EVENT_ONLY <= plotted, "the dashboard shows truncations and aborted requests"
