"""TLS contexts for mutual TLS between `jws` and `jwsd`, and checks of certificate files.

Both sides speak TLS 1.3 only and offer ALPN "h2" (gRPC over HTTP/2; grpcio peers
insist on it). The server requires a client certificate issued by the client CA; the
client checks the server's certificate against the server CA and the host name it
dialled. Neither side ever trusts the system's CA store: a certificate from any
public CA proves nothing about who may run jobs here.

Every problem with a file is a `SetupError` whose one-line message names the file
and says what to do, so `jws` and `jwsd` can print it as is.

The CLI imports this module on every run, so it imports only `ssl` and the
standard library at module level; `cryptography` (slow to import) is imported
inside the functions that need it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobworker.errors import SetupError

#: A user name: what a client certificate's Common Name must be to name a caller, and
#: what the users file may list. Letters, digits, '.', '_', '@' and '-', not starting
#: with '.', '@' or '-', at most 64: no spaces, quotes or control characters, so a
#: name is safe in a log line, a path component and a terminal.
USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}")
#: USER_NAME, in words, for error messages.
USER_NAME_RULE = (
    "letters, digits, '.', '_', '@' and '-', at most 64, starting with a letter, digit or '_'"
)

#: Where to get new certificates, for error messages.
_REMEDY = "generate new ones with certs/gen-certs.sh"


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """A server-side context for jwsd.

    cert / key: the server's certificate (PEM, optionally followed by its chain)
        and matching private key (PEM, not encrypted).
    client_ca: the CA certificate(s) (PEM) that issue client certificates; only
        clients with a certificate from it complete a handshake.

    Raises SetupError naming the file when one is missing, unreadable, not a
    certificate or key, or the key does not match the certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _tls13_only(context)
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, client_ca, "client ca certificate")
    _load_pair(context, cert, key, "server")
    return context


def client_context(server_ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client-side context for jws.

    server_ca: the CA certificate(s) (PEM) that issue the server's certificate.
    cert / key: the user's client certificate (PEM) and private key (PEM, not
        encrypted); its Common Name is who the server believes the caller is.

    The host name check is on: the caller passes the host it dials as
    `server_hostname` and the server's certificate must name it.
    Raises SetupError naming the file, as `server_context` does.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _tls13_only(context)
    # PROTOCOL_TLS_CLIENT already sets both; said again because they are the point.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, server_ca, "server ca certificate")
    _load_pair(context, cert, key, "client")
    return context


class ClientCa:
    """The client CA's certificates, to ask again whether it signs a certificate that a
    handshake accepted before this CA was loaded (jwsd's reload of its TLS files).

    `signs` asks whether the certificate was issued directly by one of the CA file's
    certificates (its issuer name and signature): the client CA, or an intermediate
    listed in the same file. That is all a handshake that already happened leaves to
    check (Python 3.11 keeps no verified chain), so it never accepts more than a
    handshake with this CA would.
    """

    def __init__(self, path: Path, certificates: list[Any]) -> None:
        self.path = path
        self._certificates = certificates

    @classmethod
    def load(cls, path: Path) -> ClientCa:
        """The CA certificates in `path` (PEM). Raises SetupError naming the file."""
        from cryptography import x509

        data = _read(path, "client ca certificate")
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise SetupError(
                f"client ca certificate {path} is not a pem certificate; check the path or {_REMEDY}"
            ) from None
        return cls(path, certificates)

    def signs(self, der: bytes) -> bool:
        """Whether this CA issued the certificate `der` (DER bytes): see the class."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature

        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        for ca in self._certificates:
            try:
                leaf.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False


def certificate_serial(path: Path) -> int:
    """The serial number of the (first) certificate in `path`, for the log.
    Raises SetupError naming the file, as `check_certificate_file` does."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(_read(path, "certificate")).serial_number
    except ValueError:
        raise SetupError(
            f"{path} is not a pem x.509 certificate; check the path or {_REMEDY}"
        ) from None


def check_certificate_file(path: Path, *, now: datetime | None = None) -> None:
    """Check that `path` holds PEM X.509 certificates that are valid now.

    now: the moment to check against (an aware datetime); None means the
        current time.

    Every certificate in the file is checked (a chain may follow the leaf).
    Raises SetupError naming the file when it is missing, unreadable, holds no
    PEM certificate, or a certificate in it is not yet valid or has expired.
    """
    from cryptography import x509

    data = _read(path, "certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SetupError(
            f"{path} is not a pem x.509 certificate; check the path or {_REMEDY}"
        ) from None
    moment = now if now is not None else datetime.now(UTC)
    for certificate in certificates:
        if moment < certificate.not_valid_before_utc:
            start = certificate.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
            raise SetupError(
                f"certificate {path} is not valid before {start}; check this host's clock or {_REMEDY}"
            )
        if moment > certificate.not_valid_after_utc:
            end = certificate.not_valid_after_utc.date().isoformat()
            raise SetupError(f"certificate {path} expired on {end}; {_REMEDY}")


def common_name(certificate: Mapping[str, Any] | bytes | None) -> str | None:
    """The Common Name (CN) in the subject of a peer certificate.

    certificate: what Python's ssl gives for the peer: the dict of
        `SSLObject.getpeercert()` (its "subject" is a tuple of relative
        distinguished names, each a tuple of (attribute, value) pairs), or the
        DER bytes of `getpeercert(binary_form=True)`; None when there is none.

    Returns None when there is no certificate, no CN, more than one CN (even
    twice the same: an ambiguous identity is no identity), or a CN that is not a
    `USER_NAME` (control characters, spaces, quotes, too long). This is the only
    place jobworker reads a Common Name. Does not verify anything: pass only a
    certificate the TLS handshake has verified.
    """
    if not certificate:
        return None
    if isinstance(certificate, bytes):
        names = _common_names_from_der(certificate)
    else:
        names = [
            value
            for rdn in certificate.get("subject", ())
            for attribute, value in rdn
            if attribute == "commonName"
        ]
    if len(names) != 1 or not isinstance(names[0], str) or not USER_NAME.fullmatch(names[0]):
        return None
    return names[0]


def _common_names_from_der(der: bytes) -> list[str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        parsed = x509.load_der_x509_certificate(der)
    except ValueError:
        return []
    return [
        str(attribute.value)
        for attribute in parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]


def _tls13_only(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])


def _read(path: Path, what: str) -> bytes:
    """The bytes of `path`; SetupError naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SetupError(f"{what} {path} does not exist; check the path or {_REMEDY}") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise SetupError(f"cannot read {what} {path}: {reason}") from exc


def _load_ca(context: ssl.SSLContext, path: Path, what: str) -> None:
    data = _read(path, what)
    try:
        # cadata, from the bytes already read: one read, and no second chance to fail
        # differently (a file replaced between the check and the load).
        context.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise SetupError(
            f"{what} {path} is not a pem certificate; check the path or {_REMEDY}"
        ) from None


def _load_pair(context: ssl.SSLContext, cert: Path, key: Path, side: str) -> None:
    _check_pem_certificate(cert, f"{side} certificate")
    _read(key, f"{side} private key")

    def refuse_encrypted_key() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal for a passphrase.
        raise SetupError(
            f"{side} private key {key} is encrypted; jobworker needs an unencrypted key (mode 0600)"
        )

    try:
        context.load_cert_chain(cert, key, password=refuse_encrypted_key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise SetupError(
                f"{side} private key {key} does not match certificate {cert}; "
                f"use the key generated with it, or {_REMEDY}"
            ) from None
        raise SetupError(
            f"{side} private key {key} is not a pem private key; check the path or {_REMEDY}"
        ) from None
    except OSError as exc:
        # The files were readable a moment ago; they changed under us.
        raise SetupError(f"cannot load {side} certificate {cert} and key {key}: {exc}") from exc


def _check_pem_certificate(path: Path, what: str) -> None:
    """SetupError naming `path` unless OpenSSL can parse it as PEM certificates.

    Checked on its own so that a bad certificate is not reported as a bad key:
    `load_cert_chain` fails the same way for both.
    """
    data = _read(path, what)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise SetupError(
            f"{what} {path} is not a pem certificate; check the path or {_REMEDY}"
        ) from None
