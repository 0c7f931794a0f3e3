"""jobworker.tls: the mutual TLS 1.3 contexts, over real loopback handshakes, and certificate checks."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trustme

from jobworker import tls
from jobworker.errors import SetupError
from tests.support.certs import TestPKI


@dataclass
class Files:
    """PEM files of one test deployment: a server CA and a client CA, as gen-certs.sh makes."""

    server_ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    server_authority: trustme.CA


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    pki = TestPKI()
    directory = pki.write_tls_dir(tmp_path_factory.mktemp("tls"), ["alex"])
    return Files(
        server_ca=directory / "server_ca_cert.pem",
        server_cert=directory / "server_cert.pem",
        server_key=directory / "server_key.pem",
        client_ca=directory / "client_ca_cert.pem",
        client_cert=directory / "alex" / "client_cert.pem",
        client_key=directory / "alex" / "client_key.pem",
        server_authority=pki.server_ca,
    )


def server_of(files: Files) -> ssl.SSLContext:
    return tls.server_context(files.server_cert, files.server_key, files.client_ca)


def client_of(files: Files) -> ssl.SSLContext:
    return tls.client_context(files.server_ca, files.client_cert, files.client_key)


@dataclass
class Outcome:
    """What each side of one connection saw."""

    peer_name: str | None = None  # the client's CN, as the server read it after the handshake
    server_error: BaseException | None = None
    reply: bytes | None = None  # what the client received back
    client_error: BaseException | None = None
    version: str | None = None
    alpn: str | None = None

    @property
    def both_failed(self) -> bool:
        return (
            self.server_error is not None
            and self.reply != b"pong:ping"
            and (self.client_error is not None or self.reply == b"")
        )


async def connect(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    *,
    server_hostname: str = "localhost",
) -> Outcome:
    """One TLS connection on 127.0.0.1: handshake, "ping" → "pong:ping", then close."""
    outcome = Outcome()
    listeners = await trio.open_ssl_over_tcp_listeners(0, server_context, host="127.0.0.1")
    listener = listeners[0]
    port = listener.transport_listener.socket.getsockname()[1]

    async def serve() -> None:
        stream = await listener.accept()
        try:
            await stream.do_handshake()
            outcome.peer_name = tls.common_name(stream.getpeercert())
            data = await stream.receive_some()
            await stream.send_all(b"pong:" + data)
        except trio.BrokenResourceError as exc:
            outcome.server_error = exc
        finally:
            await trio.aclose_forcefully(stream)

    async def call() -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_context, server_hostname=server_hostname)
        try:
            await stream.do_handshake()
            outcome.version = stream.version()
            outcome.alpn = stream.selected_alpn_protocol()
            await stream.send_all(b"ping")
            # Under TLS 1.3 the client's handshake ends before the server has checked the
            # client's certificate: a refusal shows up here, on the first read.
            outcome.reply = await stream.receive_some()
        except trio.BrokenResourceError as exc:
            outcome.client_error = exc
        finally:
            await trio.aclose_forcefully(stream)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(call)
    await listener.aclose()
    return outcome


async def test_mutual_tls13_handshake_carries_client_identity(files: Files) -> None:
    """Matching certificates connect with TLS 1.3 and ALPN h2; the server reads the client's CN."""
    outcome = await connect(server_of(files), client_of(files))
    assert outcome.server_error is None
    assert outcome.client_error is None
    assert outcome.reply == b"pong:ping"
    assert outcome.version == "TLSv1.3"
    assert outcome.alpn == "h2"
    assert outcome.peer_name == "alex"


async def test_client_limited_to_tls12_is_refused(files: Files) -> None:
    """A peer that cannot speak TLS 1.3 gets no session."""
    client = client_of(files)
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    outcome = await connect(server_of(files), client)
    assert outcome.both_failed, outcome


async def test_client_without_certificate_is_refused(files: Files) -> None:
    """The server requires a client certificate: a client with none gets no reply."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(files.server_ca)
    outcome = await connect(server_of(files), client)
    assert outcome.both_failed, outcome
    assert outcome.peer_name is None


def write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    """Write a leaf's certificate and key as NAME_cert.pem and NAME_key.pem."""
    cert, key = directory / f"{name}_cert.pem", directory / f"{name}_key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


async def test_client_certificate_from_another_ca_is_refused(files: Files, tmp_path: Path) -> None:
    """Only the client CA vouches for users: a certificate from any other CA is refused."""
    cert, key = write_leaf(trustme.CA().issue_cert(common_name="alex"), tmp_path, "stranger")
    outcome = await connect(server_of(files), tls.client_context(files.server_ca, cert, key))
    assert outcome.both_failed, outcome
    assert outcome.peer_name is None


async def test_client_certificate_from_the_server_ca_is_refused(
    files: Files, tmp_path: Path
) -> None:
    """The two CAs are separate: a certificate from the server CA proves no user identity."""
    impostor = files.server_authority.issue_cert(common_name="admin")
    cert, key = write_leaf(impostor, tmp_path, "impostor")
    outcome = await connect(server_of(files), tls.client_context(files.server_ca, cert, key))
    assert outcome.both_failed, outcome
    assert outcome.peer_name is None


async def test_server_certificate_for_another_host_is_refused(files: Files) -> None:
    """The client checks the server's certificate names the host it dialled."""
    outcome = await connect(server_of(files), client_of(files), server_hostname="jobs.example")
    assert outcome.client_error is not None
    assert outcome.server_error is not None
    assert outcome.reply is None


async def test_server_certificate_from_another_ca_is_refused(files: Files, tmp_path: Path) -> None:
    """The client trusts only the server CA it was given, not any CA the server picks."""
    cert, key = write_leaf(trustme.CA().issue_cert("localhost"), tmp_path, "server")
    server = tls.server_context(cert, key, files.client_ca)
    outcome = await connect(server, client_of(files))
    assert outcome.client_error is not None
    assert outcome.reply is None


def test_contexts_are_tls13_only_and_trust_only_the_given_ca(files: Files) -> None:
    """No TLS 1.2 fallback, certificates always required, and no system CA store."""
    server, client = server_of(files), client_of(files)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.maximum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert len(context.get_ca_certs()) == 1
    assert client.check_hostname


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "broken",
    ["server_cert", "server_key", "client_ca"],
)
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "does not exist"),
        ("garbage", "is not a pem"),
        ("empty", "is not a pem"),
        ("directory", "cannot read"),
    ],
)
def test_server_context_names_the_bad_file(
    files: Files, tmp_path: Path, broken: str, kind: str, message: str
) -> None:
    """Each unusable file gives a SetupError whose message names that file and the problem."""
    bad = tmp_path / f"bad-{broken}.pem"
    if kind == "garbage":
        write(bad, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    elif kind == "empty":
        write(bad, b"")
    elif kind == "directory":
        bad.mkdir()
    paths = {"server_cert": files.server_cert, "server_key": files.server_key}
    paths["client_ca"] = files.client_ca
    paths[broken] = bad
    with pytest.raises(SetupError, match=message) as caught:
        tls.server_context(paths["server_cert"], paths["server_key"], paths["client_ca"])
    assert str(bad) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("broken", ["server_ca", "client_cert", "client_key"])
def test_client_context_names_the_missing_file(files: Files, tmp_path: Path, broken: str) -> None:
    """The client reports a missing file by name, like the server."""
    paths = {"server_ca": files.server_ca, "client_cert": files.client_cert}
    paths["client_key"] = files.client_key
    paths[broken] = tmp_path / "absent.pem"
    with pytest.raises(SetupError, match="absent.pem does not exist"):
        tls.client_context(paths["server_ca"], paths["client_cert"], paths["client_key"])


def test_key_of_another_certificate_is_reported_as_a_mismatch(files: Files) -> None:
    """A certificate with somebody else's key is named as a mismatch, not as a corrupt file."""
    with pytest.raises(SetupError, match="does not match certificate") as caught:
        tls.client_context(files.server_ca, files.client_cert, files.server_key)
    assert str(files.server_key) in str(caught.value)


def test_certificate_given_as_key_is_refused(files: Files) -> None:
    """A certificate file where the key should be is reported as not a private key."""
    with pytest.raises(SetupError, match="is not a pem private key"):
        tls.server_context(files.server_cert, files.server_cert, files.client_ca)


def test_encrypted_key_is_refused_without_prompting(files: Files, tmp_path: Path) -> None:
    """An encrypted key is an error naming it, never a passphrase prompt on the terminal."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    encrypted = write(
        tmp_path / "encrypted.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    )
    with pytest.raises(SetupError, match="encrypted.pem is encrypted"):
        tls.server_context(files.server_cert, encrypted, files.client_ca)


def test_check_certificate_file_accepts_a_valid_certificate(files: Files) -> None:
    """A freshly issued certificate passes, as does a CA certificate."""
    tls.check_certificate_file(files.server_cert)
    tls.check_certificate_file(files.client_ca)


def test_check_certificate_file_refuses_an_expired_certificate(tmp_path: Path) -> None:
    """An expired certificate is refused with its expiry date and how to get new ones."""
    leaf = trustme.CA().issue_cert(
        "localhost",
        not_before=datetime(2025, 1, 1, tzinfo=UTC),
        not_after=datetime(2026, 1, 2, 12, tzinfo=UTC),
    )
    path = tmp_path / "old.pem"
    leaf.cert_chain_pems[0].write_to_path(str(path))
    with pytest.raises(SetupError) as caught:
        tls.check_certificate_file(path)
    assert str(caught.value) == (
        f"certificate {path} expired on 2026-01-02; generate new ones with certs/gen-certs.sh"
    )


def test_check_certificate_file_refuses_a_certificate_not_yet_valid(tmp_path: Path) -> None:
    """A certificate whose validity starts in the future is refused (a wrong clock shows here)."""
    start = datetime.now(UTC) + timedelta(days=2)
    leaf = trustme.CA().issue_cert(
        "localhost", not_before=start, not_after=start + timedelta(days=30)
    )
    path = tmp_path / "future.pem"
    leaf.cert_chain_pems[0].write_to_path(str(path))
    with pytest.raises(SetupError, match=r"future\.pem is not valid before \d{4}-\d\d-\d\d"):
        tls.check_certificate_file(path)


def test_check_certificate_file_uses_the_given_moment(tmp_path: Path) -> None:
    """`now` replaces the clock: a certificate valid today is refused at a moment past its end."""
    end = datetime.now(UTC) + timedelta(days=30)
    leaf = trustme.CA().issue_cert("localhost", not_after=end)
    path = tmp_path / "month.pem"
    leaf.cert_chain_pems[0].write_to_path(str(path))
    tls.check_certificate_file(path)
    with pytest.raises(SetupError, match=f"expired on {end.date().isoformat()}"):
        tls.check_certificate_file(path, now=end + timedelta(days=1))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"hello\n", "is not a pem x.509 certificate"),
        (b"", "is not a pem x.509 certificate"),
    ],
)
def test_check_certificate_file_refuses_missing_and_garbage(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    """A missing or non-certificate file is a SetupError that names it."""
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SetupError, match=message) as caught:
        tls.check_certificate_file(path)
    assert str(path) in str(caught.value)


def test_check_certificate_file_refuses_a_private_key(files: Files) -> None:
    """A key file given as the certificate is refused."""
    with pytest.raises(SetupError, match="is not a pem x.509 certificate"):
        tls.check_certificate_file(files.client_key)


def test_common_name_reads_the_getpeercert_dict() -> None:
    """The CN is found among the subject's RDNs, whatever else they hold."""
    peer = {
        "subject": (
            (("organizationName", "trustme"),),
            (("commonName", "betty"),),
        )
    }
    assert tls.common_name(peer) == "betty"


@pytest.mark.parametrize(
    "peer",
    [
        None,
        {},
        {"subject": ()},
        {"subject": ((("organizationName", "x"),),)},
        {"subject": ((("commonName", "alex"),), (("commonName", "admin"),))},
        {"subject": ((("commonName", "alex"),), (("commonName", "alex"),))},
        {"subject": ((("commonName", "alex"), ("commonName", "admin")),)},
        {"subject": ((("commonName", ""),),)},
        {"subject": ((("commonName", "alex\nbetty"),),)},
        {"subject": ((("commonName", "alex betty"),),)},
        {"subject": ((("commonName", "al\x1bex"),),)},
        {"subject": ((("commonName", "-alex"),),)},
        {"subject": ((("commonName", "x" * 65),),)},
    ],
)
def test_common_name_is_none_without_exactly_one(peer: dict[str, object] | None) -> None:
    """No certificate, no CN, two CNs (even equal ones), or a CN that is not a user
    name (control characters, spaces, too long): no identity."""
    assert tls.common_name(peer) is None


def test_common_name_reads_der_bytes() -> None:
    """The binary form of a peer certificate gives the same CN."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = trustme.CA().issue_cert(common_name="admin")
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    assert tls.common_name(certificate.public_bytes(Encoding.DER)) == "admin"
    assert tls.common_name(b"not der") is None


@pytest.mark.parametrize(
    "name", ["alex", "a", "Betty.Smith", "ci-runner_2", "ops@example.org", "_x"]
)
def test_common_name_takes_every_name_of_the_user_alphabet(name: str) -> None:
    assert tls.common_name({"subject": ((("commonName", name),),)}) == name
    assert tls.common_name({"subject": ((("commonName", "x" * 64),),)}) == "x" * 64
