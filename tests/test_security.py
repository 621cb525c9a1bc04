"""Restricted APIs, API-key protected inference and gRPC TLS, against real servers."""

import subprocess

import pytest
from tritonclient.utils import InferenceServerException

from armorm.server import TlsFiles, TritonServer
from armorm_client import ArmoRMClient, PermissionDeniedError
from tests.conversations import varied_conversations

pytestmark = pytest.mark.integration


def test_admin_apis_are_closed_and_inference_health_stay_open(server, client):
    raw = server.grpc_client()
    assert raw.is_server_live() and raw.is_server_ready()
    assert client.score(varied_conversations()[0]).num_tokens > 0
    # Read-only and open: perf_analyzer and generic clients need them.
    raw.get_model_metadata("armorm")
    raw.get_model_config("armorm")
    raw.get_inference_statistics("armorm")
    for call in (lambda h: raw.get_model_repository_index(headers=h),
                 lambda h: raw.get_log_settings(headers=h),
                 lambda h: raw.get_system_shared_memory_status(headers=h)):
        with pytest.raises(InferenceServerException, match="restricted|header"):
            call(None)
        call(server.admin_headers)
    with pytest.raises(InferenceServerException):
        raw.load_model("armorm", headers=server.admin_headers)  # model control mode stays "none"


def make_certificate(directory):
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return TlsFiles(cert, key)


@pytest.fixture(scope="module")
def secured_server(exported_repository, tmp_path_factory):
    directory = tmp_path_factory.mktemp("secured")
    tls = make_certificate(directory)
    with TritonServer(exported_repository, log_path=directory / "server.log", api_key="s3cret", tls=tls) as running:
        yield running


def test_inference_needs_the_api_key(secured_server):
    cert = str(secured_server.tls.cert)
    with ArmoRMClient(secured_server.grpc_url, ssl=True, root_certificates=cert) as anonymous:
        assert anonymous.is_ready(), "health stays open without the key"
        with pytest.raises(PermissionDeniedError):
            anonymous.score(varied_conversations()[0])
    with ArmoRMClient(secured_server.grpc_url, ssl=True, root_certificates=cert, api_key="wrong") as wrong:
        with pytest.raises(PermissionDeniedError):
            wrong.score(varied_conversations()[0])
    with ArmoRMClient(secured_server.grpc_url, ssl=True, root_certificates=cert, api_key="s3cret") as keyed:
        assert keyed.score(varied_conversations()[0]).num_tokens > 0


def test_plaintext_client_cannot_talk_to_a_tls_server(secured_server):
    from armorm_client import NO_RETRIES, ServerUnavailableError

    with ArmoRMClient(secured_server.grpc_url, api_key="s3cret", timeout_s=5, retry=NO_RETRIES) as plaintext:
        with pytest.raises(ServerUnavailableError):
            plaintext.score(varied_conversations()[0])


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


def test_mutual_tls_requires_a_client_certificate(exported_repository, tmp_path):
    from armorm_client import NO_RETRIES, ServerUnavailableError

    certs = make_ca_signed(tmp_path)
    tls = TlsFiles(certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem")
    with TritonServer(exported_repository, log_path=tmp_path / "server.log", tls=tls) as server:
        ca = str(certs / "ca.pem")
        with ArmoRMClient(server.grpc_url, ssl=True, root_certificates=ca, private_key=str(certs / "client.key"),
                          certificate_chain=str(certs / "client.pem")) as trusted:
            assert trusted.score(varied_conversations()[0]).num_tokens > 0
        with ArmoRMClient(server.grpc_url, ssl=True, root_certificates=ca, retry=NO_RETRIES, timeout_s=5) as anonymous:
            with pytest.raises(ServerUnavailableError):
                anonymous.score(varied_conversations()[0])
