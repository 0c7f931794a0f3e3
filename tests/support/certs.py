"""Throwaway mTLS material with trustme, laid out as certs/gen-certs.sh lays it out:

    TLSDIR/server_ca_cert.pem  server_cert.pem  server_key.pem  client_ca_cert.pem
    TLSDIR/USER/client_cert.pem  TLSDIR/USER/client_key.pem

Two separate CAs, as in production: the server's certificate is checked
against one, the clients' against the other. The one test PKI of the suite: tests
that want files use `write_tls_dir`, tests that want in-memory contexts use
`server_context` / `client_context` with certificates from `client_cert`.
"""

from __future__ import annotations

import datetime
import functools
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

import trustme
from cryptography import x509


class TestPKI:
    """A server CA and a client CA, and a method to write a TLS dir for a set of users."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.server_ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.server_cert = self.server_ca.issue_cert("localhost", "127.0.0.1")
        #: A CA nobody trusts, for certificates that must be refused.
        self.rogue_ca = trustme.CA()

    @functools.cache  # noqa: B019 - one certificate per name for the PKI's life is the point
    def client_cert(self, user: str, *, rogue: bool = False) -> trustme.LeafCert:
        """A client certificate with CN `user`, by the client CA (or by `rogue_ca`)."""
        return (self.rogue_ca if rogue else self.client_ca).issue_cert(common_name=user)

    def server_context(self) -> ssl.SSLContext:
        """A server context as jwsd builds one: TLS 1.3, client certificates required
        (by the client CA), ALPN "h2" for grpcio clients."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        self.client_ca.configure_trust(context)
        self.server_cert.configure_cert(context)
        context.set_alpn_protocols(["h2"])
        return context

    def client_context(self, cert: trustme.LeafCert | None) -> ssl.SSLContext:
        """A TLS 1.3 client context that trusts the server CA and presents `cert` (or none)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.server_ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context

    def write_tls_dir(
        self, tls_dir: Path, users: Iterable[str] = ("alex", "betty", "admin")
    ) -> Path:
        tls_dir.mkdir(parents=True, exist_ok=True)
        self.server_ca.cert_pem.write_to_path(str(tls_dir / "server_ca_cert.pem"))
        self.client_ca.cert_pem.write_to_path(str(tls_dir / "client_ca_cert.pem"))
        self.server_cert.cert_chain_pems[0].write_to_path(str(tls_dir / "server_cert.pem"))
        self.server_cert.private_key_pem.write_to_path(str(tls_dir / "server_key.pem"))
        os.chmod(tls_dir / "server_key.pem", 0o600)
        for user in users:
            self.add_user(tls_dir, user)
        return tls_dir

    def add_user(
        self,
        tls_dir: Path,
        user: str,
        *,
        ca: trustme.CA | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Path:
        """Write TLSDIR/USER/client_{cert,key}.pem for `user` (CN = user), signed by `ca`
        (default: the client CA); `not_after` makes an expired certificate."""
        issuer = ca or self.client_ca
        kwargs = {"not_after": not_after} if not_after else {}
        cert = issuer.issue_cert(common_name=user, **kwargs)
        user_dir = tls_dir / user
        user_dir.mkdir(parents=True, exist_ok=True)
        cert.cert_chain_pems[0].write_to_path(str(user_dir / "client_cert.pem"))
        cert.private_key_pem.write_to_path(str(user_dir / "client_key.pem"))
        os.chmod(user_dir / "client_key.pem", 0o600)
        return user_dir


def issue_with_subject(ca: trustme.CA, subject: x509.Name, user_dir: Path) -> Path:
    """Write USER_DIR/client_{cert,key}.pem: a client certificate signed by `ca` whose
    subject is exactly `subject` (e.g. two Common Names, which trustme cannot make)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / "client_cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = user_dir / "client_key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return user_dir


def server_serial(addr: str, tls_dir: Path, user: str, *, timeout: float = 10) -> int:
    """The serial number of the certificate the server at `addr` ("host:port") shows a
    new connection of `user` (TLSDIR/USER's certificate, TLSDIR/server_ca_cert.pem)."""
    import socket

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls_dir / "server_ca_cert.pem")
    context.load_cert_chain(tls_dir / user / "client_cert.pem", tls_dir / user / "client_key.pem")
    host, port = addr.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
