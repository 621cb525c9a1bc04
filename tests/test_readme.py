"""The README's curl line, run as written (only the address changed to the test server's) against the live
server: plain HTTP with KServe v2 JSON answers the reference score."""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_curl() -> str:
    lines = README.read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("<!-- readme-curl:"))
    assert lines[marker + 1] == "```bash" and lines[marker + 3] == "```"
    return lines[marker + 2]


def test_the_readme_curl_line_scores_on_the_live_server(server, reference):
    command = readme_curl()
    assert command.startswith("curl -s localhost:8000/")
    done = subprocess.run(["bash", "-c", command.replace("localhost:8000", server.http_url, 1)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert answer["model_name"] == "armorm" and outputs["score"]["shape"] == [1, 1]
    expected = reference.score([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}])
    assert abs(outputs["score"]["data"][0] - expected.score) <= 1e-4
    assert outputs["num_tokens"]["data"][0] == expected.num_tokens


def test_http_answers_are_compressed_only_for_callers_that_ask(server):
    """curl sends no Accept-Encoding: the answer must be plain JSON, not the gzip the gateway's own HTTP client
    would otherwise have asked Triton for."""
    import gzip
    import http.client

    body = json.dumps({"inputs": [{"name": "messages", "shape": [1, 1], "datatype": "BYTES", "data": [json.dumps(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])]}]})
    host, port = server.http_url.rsplit(":", 1)
    for accept, compressed in ((None, False), ("gzip", True)):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", "/v2/models/armorm/infer", skip_accept_encoding=True)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        if accept:
            connection.putheader("Accept-Encoding", accept)
        connection.endheaders(body.encode())
        response = connection.getresponse()
        raw = response.read()
        assert response.status == 200
        assert (response.getheader("Content-Encoding") == "gzip") is compressed
        answer = json.loads(gzip.decompress(raw) if compressed else raw)
        assert answer["model_name"] == "armorm"
        connection.close()
