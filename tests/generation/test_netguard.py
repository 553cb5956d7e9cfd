"""Outbound URLs: the address policy (a table of forms, at submit and at delivery), pinning to the
checked address over HTTP and HTTPS, and the caps. No test resolves a real name (``fake_dns``) or
sends a packet off loopback (``loopback_only``)."""

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from generation import netguard
from generation.models import GenerationRequest
from generation.netguard import (
    FetchFailed,
    FetchTimedOut,
    ResponseTooLarge,
    UrlRefused,
    check_public_url,
    is_public_address,
    open_get,
)
from generation.states import Status
from generation.webhooks import deliver_webhook

NAMES = {
    "metadata.example": ["169.254.169.254"],
    "cgnat.example": ["100.64.0.1"],
    "alibaba-metadata.example": ["100.100.100.200"],
    "loopback.example": ["127.0.0.1"],
    "loopback6.example": ["::1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "sixtofour.example": ["2002:7f00:1::"],
    "nat64.example": ["64:ff9b::a9fe:a9fe"],
    "private.example": ["10.0.0.5"],
    "ula.example": ["fd00:ec2::254"],
    "mixed.example": ["93.184.216.34", "10.0.0.1"],  # one private answer among public ones
    "mixed6.example": ["2606:4700::1111", "fe80::1"],
    "public.example": ["93.184.216.34"],
    "public6.example": ["2606:4700::1111"],
}

REFUSED = [
    # the adversarial pass's finds: CGNAT, a cloud metadata address, 6to4 around 127.0.0.1
    "http://100.64.0.1/", "http://100.100.100.200/latest/meta-data/", "http://[2002:7f00:1::]/",
    # IPv4 that is not globally routable
    "http://127.0.0.1/", "http://127.255.255.254:8080/", "http://10.0.0.1/", "http://172.16.0.1/",
    "http://172.31.255.255/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/", "http://0.1.2.3/", "http://255.255.255.255/", "http://224.0.0.1/", "http://239.255.255.250/",
    "http://240.0.0.1/", "http://198.18.0.1/", "http://198.51.100.7/", "http://203.0.113.9/", "http://192.0.2.1/",
    "http://192.0.0.8/", "http://192.0.0.9/", "http://192.88.99.1/", "http://100.127.255.254/",
    # IPv6 that is not globally routable
    "http://[::1]/", "http://[::]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://[fd00:ec2::254]/",
    "http://[ff02::1]/", "http://[ff05::1:3]/", "http://[2001:db8::1]/", "http://[100::1]/", "http://[fec0::1]/",
    "http://[3fff::1]/",
    # IPv4 wrapped in IPv6: mapped, compatible, 6to4, NAT64 (well-known and local-use), Teredo
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/", "http://[::ffff:100.64.0.1]/", "http://[::127.0.0.1]/",
    "http://[::10.0.0.1]/", "http://[2002:a00:1::]/", "http://[2002:a9fe:a9fe::1]/", "http://[2002:6440:1::]/",
    "http://[64:ff9b::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b::a00:1]/",
    "http://[64:ff9b:1::808:808]/", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "http://[2001::1]/",
    # IPv4 in spellings that parsers read differently (refused whatever they would reach)
    "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/", "http://0x7f.0.0.1/",
    "http://017700000001/", "http://127.0.0.1./", "http://1.2.3.4./", "http://8.8.8.8.8/", "http://0x08080808/",
    # names that resolve to non-public addresses (every answer must be public)
    "http://metadata.example/", "https://cgnat.example/", "http://alibaba-metadata.example/",
    "http://loopback.example:8000/", "http://loopback6.example/", "http://mapped.example/",
    "http://sixtofour.example/", "http://nat64.example/", "http://private.example/", "http://ula.example/",
    "http://mixed.example/", "http://mixed6.example/", "http://does-not-resolve.example/",
    # malformed: each a clean refusal, never a crash
    "http://[::1/", "http://[/", "http://]/", "http://[127.0.0.1]/", "http://[fe80::1%25eth0]/",
    "http://exa mple.com/", "http://example.com\n/", "http://:80/", "http://public.example:0/",
    "http://public.example:99999/", "http://user:pw@public.example/", "ftp://public.example/", "//public.example/",
]

ALLOWED = ["http://93.184.216.34/hook", "https://[2606:4700::1111]/hook", "http://[::ffff:93.184.216.34]/",
           "http://[64:ff9b::5db8:d822]/", "http://[2002:5db8:d822::1]/", "https://public.example/hook?x=1",
           "http://public6.example:8443/"]


@pytest.fixture(autouse=True)
def no_network(fake_dns, loopback_only):
    fake_dns.names.update(NAMES)
    return loopback_only


@pytest.fixture
def public_only(settings):
    settings.GENERATION = {**settings.GENERATION, "WEBHOOK_ALLOW_PRIVATE": False}


def test_the_table_is_big_enough():
    assert len(REFUSED) >= 60 and len(set(REFUSED)) == len(REFUSED)


@pytest.mark.parametrize("url", REFUSED)
def test_refused_by_the_check(url):
    with pytest.raises(UrlRefused):
        check_public_url(url)


@pytest.mark.parametrize("url", REFUSED)
def test_refused_at_submit_naming_the_field(url, api, valid_params, public_only):
    response = api.post("/api/v1/comfyui/generate/", {**valid_params, "webhook_url": url}, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == ["webhook_url"]
    assert not GenerationRequest.objects.exists()


@pytest.mark.parametrize("url", REFUSED)
def test_refused_at_delivery_without_a_connection(url, user, make_generation, public_only, no_network):
    request = make_generation(user, Status.COMPLETED)
    GenerationRequest.objects.filter(pk=request.pk).update(webhook_url=url)  # stored before the rules changed
    assert deliver_webhook(str(request.pk)) == "gave_up"
    assert no_network == []


@pytest.mark.parametrize("url", ALLOWED)
def test_public_destinations_pass(url):
    checked = check_public_url(url)
    assert checked.addresses and all(is_public_address(address) for address in checked.addresses)


@pytest.mark.parametrize("url", ALLOWED)
def test_delivery_connects_to_the_checked_address_only(url, user, make_generation, public_only, fake_dns,
                                                       no_network):
    request = make_generation(user, Status.COMPLETED, webhook_url=url)
    assert deliver_webhook(str(request.pk)) == "retry"  # loopback_only refused the connection
    expected = check_public_url(url).addresses
    assert [ipaddress.ip_address(a) for a in no_network] == [ipaddress.ip_address(a) for a in expected]


def test_a_rebinding_name_is_refused_at_delivery(user, make_generation, public_only, fake_dns, no_network):
    """Public when submitted, loopback by the time of delivery: refused, nothing sent."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    fake_dns.names["rebind.example"] = lambda: next(answers)
    check_public_url("http://rebind.example/hook")
    request = make_generation(user, Status.COMPLETED, webhook_url="http://rebind.example/hook")
    assert deliver_webhook(str(request.pk)) == "gave_up"
    assert no_network == []


class Server:
    """A loopback HTTP(S) server whose handler is a function of the request handler."""

    def __init__(self, handle, *, tls=None, family=socket.AF_INET):
        server = self
        self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append({"path": self.path, "host": self.headers["Host"]})
                handle(self)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        class Threading(ThreadingHTTPServer):
            address_family = family

        self.httpd = Threading(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.sni = []
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(status=200, body=b"ok", headers=None):
    def handle(handler):
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return handle


@pytest.fixture
def serve():
    servers = []

    def start(handle, **kwargs):
        servers.append(Server(handle, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_the_connection_is_pinned_and_the_host_header_kept(serve, fake_dns):
    server = serve(answer())
    fake_dns.names["hooks.example"] = ["127.0.0.1"]
    checked = check_public_url(f"http://hooks.example:{server.port}/hook?a=1", allow_private=True)
    fake_dns.names["hooks.example"] = ["192.0.2.99"]  # a second answer would point elsewhere: never asked
    assert netguard.post(checked, body=b"{}") == 200
    assert server.requests == [{"path": "/hook?a=1", "host": f"hooks.example:{server.port}"}]
    assert fake_dns.calls == ["hooks.example"]


def test_ipv6_literals_work(serve):
    server = serve(answer(), family=socket.AF_INET6)
    checked = check_public_url(f"http://[::1]:{server.port}/x", allow_private=True)
    assert netguard.post(checked, body=b"") == 200 and server.requests[0]["host"] == f"[::1]:{server.port}"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA, and a certificate for hooks.example signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject, issuer, key, signer, *, ca, names=()):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                            critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Genonaut test CA")])
    ca_cert = cert(ca_name, ca_name, ca_key, ca_key, ca=True)
    leaf = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example")]), ca_name, key, ca_key,
                ca=False, names=["hooks.example"])
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return folder


def test_https_is_pinned_with_sni_and_verification_by_host_name(serve, fake_dns, tls_files):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "leaf.pem", tls_files / "leaf.key")
    server = serve(answer(204, b""), tls=context)
    fake_dns.names["hooks.example"] = ["127.0.0.1"]
    fake_dns.names["other.example"] = ["127.0.0.1"]
    checked = check_public_url(f"https://hooks.example:{server.port}/hook", allow_private=True)
    assert netguard.post(checked, body=b"{}", ca_certs=str(tls_files / "ca.pem")) == 204
    assert server.sni == ["hooks.example"] and server.requests[0]["host"] == f"hooks.example:{server.port}"
    wrong_name = check_public_url(f"https://other.example:{server.port}/hook", allow_private=True)
    with pytest.raises(FetchFailed):  # the certificate is for hooks.example: verification fails
        netguard.post(wrong_name, body=b"{}", ca_certs=str(tls_files / "ca.pem"))
    with pytest.raises(FetchFailed):  # a CA we do not know
        netguard.post(checked, body=b"{}")


def test_redirects_are_answered_not_followed(serve):
    server = serve(answer(302, b"", {"Location": "http://127.0.0.1:1/elsewhere"}))
    checked = check_public_url(f"http://127.0.0.1:{server.port}/", allow_private=True)
    assert netguard.post(checked, body=b"") == 302 and len(server.requests) == 1


def test_proxies_from_the_environment_are_not_used(serve, monkeypatch):
    server = serve(answer())
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    checked = check_public_url(f"http://127.0.0.1:{server.port}/", allow_private=True)
    assert netguard.post(checked, body=b"") == 200


def test_get_streams_up_to_the_byte_cap(serve):
    small = serve(answer(body=b"x" * 1000))
    checked = check_public_url(f"http://127.0.0.1:{small.port}/image.png", allow_private=True)
    with open_get(checked, max_bytes=1000) as response:
        assert response.status == 200 and response.read() == b"x" * 1000
    with open_get(checked, max_bytes=999) as response, pytest.raises(ResponseTooLarge):
        response.read()  # refused from Content-Length, before reading

    def unannounced(handler):  # no Content-Length: counted while streaming
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(b"y" * 300_000)

    big = serve(unannounced)
    checked = check_public_url(f"http://127.0.0.1:{big.port}/", allow_private=True)
    with open_get(checked, max_bytes=100_000) as response, pytest.raises(ResponseTooLarge):
        for _ in response.iter_bytes(chunk_size=16_384):
            pass


def test_a_dripping_server_is_cut_at_the_total_time_cap(serve):
    stop = threading.Event()

    def drip(handler):
        handler.send_response(200)
        handler.end_headers()
        while not stop.is_set():  # one byte every 50 ms: no single read ever times out
            handler.wfile.write(b".")
            handler.wfile.flush()
            time.sleep(0.05)

    server = serve(drip)
    checked = check_public_url(f"http://127.0.0.1:{server.port}/", allow_private=True)
    started = time.monotonic()
    try:
        with open_get(checked, max_bytes=10_000_000, timeout=1.0, total_seconds=0.5) as response, \
                pytest.raises(FetchTimedOut):
            response.read()
    finally:
        stop.set()
    assert time.monotonic() - started < 2.0


def test_headers_that_never_finish_are_cut_too(serve):
    stop = threading.Event()

    def slow_headers(handler):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        while not stop.is_set():
            handler.wfile.write(b"X: y\r\n")
            handler.wfile.flush()
            time.sleep(0.05)

    server = serve(slow_headers)
    checked = check_public_url(f"http://127.0.0.1:{server.port}/", allow_private=True)
    started = time.monotonic()
    try:
        with pytest.raises(FetchTimedOut):
            netguard.post(checked, body=b"", timeout=1.0, total_seconds=0.5)
    finally:
        stop.set()
    assert time.monotonic() - started < 2.0
