"""Restricted APIs, API-key protected inference, gRPC TLS and where the keys live, against real servers.

Every refusal is checked by its exact status and followed by the same call succeeding with the right key.
"""

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from armorm.gateway import TlsFiles
from armorm.testing.processes import descendants
from armorm.testing.serve_process import ServeProcess
from armorm_client import ArmoRMClient, PermissionDeniedError
from tests.conversations import varied_conversations

pytestmark = pytest.mark.integration
# Distinct enough to be searched for in /proc: where keys live is checked on the server that holds these.
ADMIN_KEY, API_KEY = "admin-1c9f4e7a2b", "api-83d02f6e51"


def grpc_status(call, *args) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call(*args)
    return caught.value.status()


def http_status(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None,
                context=None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_admin_apis_need_the_admin_key_and_inference_health_stay_open(server, client):
    raw = server.grpc_client()
    assert raw.is_server_live() and raw.is_server_ready()
    assert client.score(varied_conversations()[0]).num_tokens > 0
    # Read-only and open: perf_analyzer and generic clients need them.
    assert raw.get_model_metadata("armorm").name == "armorm"
    assert raw.get_model_config("armorm").config.name == "armorm"
    assert raw.get_inference_statistics("armorm").model_stats[0].name == "armorm"
    wrong = {"triton-grpc-protocol-armorm-admin-key": "not-the-key"}
    for call in (lambda h: raw.get_model_repository_index(headers=h),
                 lambda h: raw.get_log_settings(headers=h),
                 lambda h: raw.get_system_shared_memory_status(headers=h),
                 lambda h: raw.get_trace_settings(headers=h)):
        assert grpc_status(call, None) == "StatusCode.UNAUTHENTICATED"
        assert grpc_status(call, wrong) == "StatusCode.PERMISSION_DENIED"
        assert call(server.admin_headers) is not None
    assert [m.name for m in raw.get_model_repository_index(headers=server.admin_headers).models]
    # Model control mode stays "none": even the admin cannot load models.
    with pytest.raises(InferenceServerException) as refused:  # past the key check, Triton itself refuses
        raw.load_model("armorm", headers=server.admin_headers)
    assert refused.value.status() == "StatusCode.UNAVAILABLE" and "not allowed" in refused.value.message()
    base = f"http://{server.http_url}/v2"
    assert http_status(base + "/repository/index", "POST", body=b"{}") == 401
    assert http_status(base + "/repository/index", "POST", {"armorm-admin-key": "nope"}, b"{}") == 403
    assert http_status(base + "/repository/index", "POST", {"armorm-admin-key": server.admin_key}, b"{}") == 200
    assert http_status(base + "/logging") == 401
    assert http_status(base + "/logging", headers={"armorm-admin-key": server.admin_key}) == 200
    assert http_status(base + "/health/ready") == 200


def test_without_an_admin_key_the_admin_apis_are_closed_to_everyone(mutual_tls_server):
    """The mutual-TLS server has no admin key: not even a caller with a trusted client certificate gets in."""
    import tritonclient.grpc as grpcclient

    server, certs = mutual_tls_server, mutual_tls_server.tls.cert.parent
    raw = grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(certs / "ca.pem"),
                                           private_key=str(certs / "client.key"),
                                           certificate_chain=str(certs / "client.pem"))
    guess = {"triton-grpc-protocol-armorm-admin-key": ""}
    assert grpc_status(lambda: raw.get_model_repository_index()) == "StatusCode.PERMISSION_DENIED"
    assert grpc_status(lambda: raw.get_model_repository_index(headers=guess)) == "StatusCode.PERMISSION_DENIED"
    assert http_status(f"{server.http_base}/v2/logging", headers={"armorm-admin-key": ""},
                       context=server.http_ssl_context()) == 403
    assert raw.get_model_metadata("armorm").name == "armorm"


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def test_no_key_is_on_any_command_line_or_in_a_child_environment(secured_server):
    """Keys given as files (a mounted Secret, ARMORM_*_KEY_FILE) and as variables both stay in armorm-serve:
    no command line shows them and neither tritonserver nor a model process inherits them."""
    server, admin, api, cert = secured_server, ADMIN_KEY, API_KEY, str(secured_server.tls.cert)
    processes = {server.process.pid: "armorm-serve", **descendants(server.process.pid)}
    assert len(processes) >= 7, processes  # armorm-serve, tritonserver, five model processes
    for pid in processes:
        line = cmdline(pid)
        assert admin.encode() not in line and api.encode() not in line, f"a key is readable in ps: {line[:200]!r}"
    for pid in descendants(server.process.pid):
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert admin.encode() not in environment and api.encode() not in environment, f"pid {pid} inherited a key"
        assert b"ARMORM_API_KEY_FILE" not in environment
    # Triton itself listens only on Unix sockets in a directory that only this user can open.
    triton = cmdline(server.triton_pid()).decode().split("\0")
    addresses = [arg.split("=", 1)[1] for arg in triton if arg.startswith(("--grpc-address", "--http-address",
                                                                            "--metrics-address"))]
    assert len(addresses) == 3 and all(a.startswith("unix:") for a in addresses), addresses
    directory = Path(addresses[0].removeprefix("unix:")).parent
    assert directory.stat().st_mode & 0o077 == 0, oct(directory.stat().st_mode)
    with ArmoRMClient(server.grpc_url, ssl=True, root_certificates=cert, api_key=api) as keyed:
        assert keyed.score(varied_conversations()[0]).num_tokens > 0
    with (ArmoRMClient(server.grpc_url, ssl=True, root_certificates=cert, api_key="wrong") as wrong,
          pytest.raises(PermissionDeniedError)):
        wrong.score(varied_conversations()[0])


def make_certificate(directory):
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return TlsFiles(cert, key)


@pytest.fixture(scope="module")
def secured_server(exported_repository, tmp_path_factory):
    """TLS on both ports, an API key for inference and an admin key: the API key from a file (ARMORM_API_KEY_FILE,
    as a mounted Secret gives it), the admin key from a variable, so that where keys live is checked on it too."""
    directory = tmp_path_factory.mktemp("secured")
    tls = make_certificate(directory)
    (directory / "api-key").write_text(API_KEY + "\n")
    with ServeProcess(exported_repository, directory, admin_key=ADMIN_KEY, tls=tls,
                      extra_env={"ARMORM_API_KEY_FILE": str(directory / "api-key")}) as running:
        yield running


def test_inference_needs_the_api_key(secured_server):
    cert = str(secured_server.tls.cert)
    with ArmoRMClient(secured_server.grpc_url, ssl=True, root_certificates=cert) as anonymous:
        assert anonymous.is_ready(), "health stays open without the key"
        with pytest.raises(PermissionDeniedError) as missing:
            anonymous.score(varied_conversations()[0])
        assert missing.value.status == "StatusCode.UNAUTHENTICATED"
    with ArmoRMClient(secured_server.grpc_url, ssl=True, root_certificates=cert, api_key="wrong") as wrong:
        with pytest.raises(PermissionDeniedError) as denied:
            wrong.score(varied_conversations()[0])
        assert denied.value.status == "StatusCode.PERMISSION_DENIED"
    body = json.dumps({"inputs": [{"name": "messages", "shape": [1, 1], "datatype": "BYTES",
                                   "data": [json.dumps(varied_conversations()[0])]}]}).encode()
    url = f"{secured_server.http_base}/v2/models/armorm/infer"
    tls = secured_server.http_ssl_context()
    assert http_status(url, "POST", body=body, context=tls) == 401
    assert http_status(url, "POST", {"armorm-api-key": "wrong"}, body, tls) == 403
    assert http_status(url, "POST", {"armorm-api-key": API_KEY}, body, tls) == 200
    with ArmoRMClient(secured_server.grpc_url, ssl=True, root_certificates=cert, api_key=API_KEY) as keyed:
        assert keyed.score(varied_conversations()[0]).num_tokens > 0


def test_plaintext_client_cannot_talk_to_a_tls_server(secured_server):
    from armorm_client import NO_RETRIES, ServerUnavailableError

    with ArmoRMClient(secured_server.grpc_url, api_key=API_KEY, timeout_s=5, retry=NO_RETRIES) as plaintext:
        with pytest.raises(ServerUnavailableError):
            plaintext.score(varied_conversations()[0])


def test_http_is_served_over_tls_too(secured_server):
    """With --tls-cert the HTTP port speaks only HTTPS: the key never crosses the network in plaintext."""
    import ssl

    plain = f"http://{secured_server.http_url}/v2/health/ready"
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(plain, timeout=10)  # noqa: S310 - loopback test server
    verified = ssl.create_default_context(cafile=str(secured_server.tls.cert))
    assert http_status(f"https://{secured_server.http_url}/v2/health/ready", context=verified) == 200
    untrusted = ssl.create_default_context()  # the system's CAs do not know this certificate
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"https://{secured_server.http_url}/v2/health/ready", timeout=10,  # noqa: S310
                               context=untrusted)


def make_ca_signed(directory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (directory / f"{name}.ext").write_text(extension + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return directory


@pytest.fixture(scope="module")
def mutual_tls_server(exported_repository, tmp_path_factory):
    """TLS that requires a client certificate signed by the CA; no keys."""
    certs = make_ca_signed(tmp_path_factory.mktemp("mutual-tls"))
    tls = TlsFiles(certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem")
    client = (certs / "client.pem", certs / "client.key")
    with ServeProcess(exported_repository, certs / "logs", tls=tls, client_certificate=client) as running:
        yield running


def test_mutual_tls_requires_a_client_certificate(mutual_tls_server):
    from armorm_client import NO_RETRIES, ServerUnavailableError

    server, certs = mutual_tls_server, mutual_tls_server.tls.cert.parent
    ca = str(certs / "ca.pem")
    with ArmoRMClient(server.grpc_url, ssl=True, root_certificates=ca, private_key=str(certs / "client.key"),
                      certificate_chain=str(certs / "client.pem")) as trusted:
        assert trusted.score(varied_conversations()[0]).num_tokens > 0
    with ArmoRMClient(server.grpc_url, ssl=True, root_certificates=ca, retry=NO_RETRIES, timeout_s=5) as anonymous:
        with pytest.raises(ServerUnavailableError):
            anonymous.score(varied_conversations()[0])
    import ssl

    no_certificate = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        urllib.request.urlopen(f"{server.http_base}/v2/health/ready", timeout=10,  # noqa: S310 - loopback
                               context=no_certificate).read()
    assert http_status(f"{server.http_base}/v2/health/ready", context=server.http_ssl_context()) == 200
