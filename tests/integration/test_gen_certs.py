"""certs/gen-certs.sh: the files it writes, their modes and contents, and that jobworker.tls accepts them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jobworker import tls
from jobworker.server.policy import Role, UserPolicy
from tests.unit.test_tls import connect

pytestmark = pytest.mark.hierarchy_independent

SCRIPT = Path(__file__).resolve().parents[2] / "certs" / "gen-certs.sh"
MAX_VALIDITY = timedelta(days=365)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def generate(out: Path, *users: str) -> None:
    result = run(out, *users)
    assert result.returncode == 0, result.stderr


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run for the default users (alex betty admin), shared by the read-only checks."""
    directory = tmp_path_factory.mktemp("certs") / "out"
    generate(directory)
    return directory


USERS = ("alex", "betty", "admin")


def keys(out: Path) -> list[Path]:
    return [
        out / "server_key.pem",
        out / "ca" / "server_ca_key.pem",
        out / "ca" / "client_ca_key.pem",
        *(out / user / "client_key.pem" for user in USERS),
    ]


def certificates(out: Path) -> list[Path]:
    return [
        out / "server_ca_cert.pem",
        out / "client_ca_cert.pem",
        out / "server_cert.pem",
        *(out / user / "client_cert.pem" for user in USERS),
    ]


def test_default_run_writes_the_documented_files(out: Path) -> None:
    """Without users the script issues alex, betty and admin, and nothing but the listed files."""
    written = {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()}
    expected = {str(path.relative_to(out)) for path in [*keys(out), *certificates(out)]}
    assert written == expected


def test_private_keys_are_owner_only(out: Path) -> None:
    """Every private key is 0600 and the CA key dir 0700; certificates are world-readable."""
    assert mode(out / "ca") == 0o700
    for key in keys(out):
        assert mode(key) == 0o600, key
    for cert in certificates(out):
        assert mode(cert) == 0o644, cert


def test_every_key_is_ecdsa_p256(out: Path) -> None:
    """All keys, CA keys included, are ECDSA on P-256 and match their certificates."""
    for path in keys(out):
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), path
        assert isinstance(key.curve, ec.SECP256R1), path
    pairs = [
        ("server_cert.pem", "server_key.pem"),
        ("server_ca_cert.pem", "ca/server_ca_key.pem"),
        ("client_ca_cert.pem", "ca/client_ca_key.pem"),
    ]
    for cert_name, key_name in pairs:
        key = serialization.load_pem_private_key((out / key_name).read_bytes(), password=None)
        assert certificate(out / cert_name).public_key() == key.public_key()


def test_certificates_expire_within_a_year(out: Path) -> None:
    """No certificate is valid for more than 365 days, and each is valid now."""
    now = datetime.now(UTC)
    for path in certificates(out):
        cert = certificate(path)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc <= MAX_VALIDITY, path
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc, path
        tls.check_certificate_file(path)


def test_server_certificate_is_for_localhost_and_server_auth_only(out: Path) -> None:
    """CN localhost, SAN DNS:localhost and IP:127.0.0.1, serverAuth, signing only, not a CA,
    issued by the server CA."""
    cert = certificate(out / "server_cert.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(certificate(out / "server_ca_cert.pem"))


@pytest.mark.parametrize("user", USERS)
def test_client_certificate_names_the_user_for_client_auth(out: Path, user: str) -> None:
    """A user's certificate has CN = the user, clientAuth only, from the client CA."""
    cert = certificate(out / user / "client_cert.pem")
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [user]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(certificate(out / "client_ca_cert.pem"))


def test_the_two_cas_are_separate(out: Path) -> None:
    """The server CA and the client CA have different keys and names, and are CAs."""
    server_ca = certificate(out / "server_ca_cert.pem")
    client_ca = certificate(out / "client_ca_cert.pem")
    assert server_ca.public_key() != client_ca.public_key()
    assert server_ca.subject != client_ca.subject
    for ca in (server_ca, client_ca):
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


async def test_generated_files_complete_a_mutual_tls13_handshake(out: Path) -> None:
    """jwsd's files and a user's files, loaded by jobworker.tls, connect on 127.0.0.1 as that user."""
    server = tls.server_context(
        out / "server_cert.pem", out / "server_key.pem", out / "client_ca_cert.pem"
    )
    client = tls.client_context(
        out / "server_ca_cert.pem",
        out / "betty" / "client_cert.pem",
        out / "betty" / "client_key.pem",
    )
    outcome = await connect(server, client, server_hostname="127.0.0.1")
    assert outcome.reply == b"pong:ping"
    assert outcome.version == "TLSv1.3"
    assert outcome.peer_name == "betty"


async def test_client_certificate_from_the_server_ca_is_refused(out: Path, tmp_path: Path) -> None:
    """A clientAuth certificate signed with the server CA's key proves no user identity."""
    ca_key = serialization.load_pem_private_key(
        (out / "ca" / "server_ca_key.pem").read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = certificate(out / "server_ca_cert.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    impostor = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(impostor.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = tls.server_context(
        out / "server_cert.pem", out / "server_key.pem", out / "client_ca_cert.pem"
    )
    client = tls.client_context(
        out / "server_ca_cert.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    )
    outcome = await connect(server, client, server_hostname="localhost")
    assert outcome.both_failed, outcome
    assert outcome.peer_name is None


def test_rerun_adds_a_user_and_keeps_everything_else(tmp_path: Path) -> None:
    """Running again with a new user issues only that user's pair; CAs and other pairs stay."""
    out = tmp_path / "out"
    generate(out, "alex")
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    generate(out, "alex", "dave")
    after = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert set(after) - set(before) == {
        out / "dave" / "client_cert.pem",
        out / "dave" / "client_key.pem",
    }
    assert all(after[path] == data for path, data in before.items())
    certificate(out / "dave" / "client_cert.pem").verify_directly_issued_by(
        certificate(out / "client_ca_cert.pem")
    )


def test_rerun_replaces_a_missing_key_pair(tmp_path: Path) -> None:
    """A user's certificate without its key is issued again, with a key that matches."""
    out = tmp_path / "out"
    generate(out, "alex")
    (out / "alex" / "client_key.pem").unlink()
    generate(out, "alex")
    tls.client_context(
        out / "server_ca_cert.pem",
        out / "alex" / "client_cert.pem",
        out / "alex" / "client_key.pem",
    )


def test_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    """With a CA that ends in 100 days, new certificates end no later than it does."""
    out = tmp_path / "out"
    (out / "ca").mkdir(parents=True)
    for name in ("server", "client"):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-new", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "100",
                "-subj", f"/CN=short {name} CA",
                "-keyout", str(out / "ca" / f"{name}_ca_key.pem"),
                "-out", str(out / f"{name}_ca_cert.pem"),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    generate(out, "alex")
    ca_end = certificate(out / "server_ca_cert.pem").not_valid_after_utc
    leaf_end = certificate(out / "server_cert.pem").not_valid_after_utc
    assert ca_end - timedelta(days=2) <= leaf_end <= ca_end
    client_ca_end = certificate(out / "client_ca_cert.pem").not_valid_after_utc
    assert certificate(out / "alex" / "client_cert.pem").not_valid_after_utc <= client_ca_end


@pytest.mark.parametrize("user", ["Alex", "-rf", "a b", "../x", "ca", "1st"])
def test_bad_user_names_are_refused_before_anything_is_written(tmp_path: Path, user: str) -> None:
    """Names outside [a-z_][a-z0-9_.-]* (and "ca", the key dir) fail with a message, writing nothing."""
    out = tmp_path / "out"
    result = run(out, "alex", user)
    assert result.returncode != 0
    assert "gen-certs.sh:" in result.stderr or "usage:" in result.stderr
    assert not out.exists()


def test_certificates_without_their_ca_are_not_silently_orphaned(tmp_path: Path) -> None:
    """If the CA files are gone but certificates remain, the script stops instead of making a
    new CA that would not vouch for them."""
    out = tmp_path / "out"
    generate(out, "alex")
    (out / "client_ca_cert.pem").unlink()
    (out / "ca" / "client_ca_key.pem").unlink()
    result = run(out, "alex")
    assert result.returncode == 1
    assert "exists but its CA does not" in result.stderr
    assert not (out / "client_ca_cert.pem").exists()


def test_help_says_reruns_keep_the_cas() -> None:
    """-h prints the usage, including that a re-run only issues what is missing."""
    result = run("-h")
    assert result.returncode == 0
    assert "usage: gen-certs.sh OUTDIR [USER...]" in result.stdout
    assert "keeps both CAs and only issues what is missing" in result.stdout


JUST = Path(sys.executable).parent / "just"


def test_the_dev_set_up_makes_admin_an_admin_and_hands_the_files_to_the_sudo_user(
    tmp_path: Path,
) -> None:
    # `sudo ./dev run`: the certificates and the users file must be readable by the user
    # who ran sudo (their `jws` reads the key), and the dev `admin` must be an admin.
    out = tmp_path / "dev"
    env = dict(os.environ, SUDO_UID="4321", SUDO_GID="4322")
    made = subprocess.run(
        [str(JUST), "--set", "tls_dir", str(out), "_dev-certs"],
        cwd=SCRIPT.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    policy = UserPolicy.load(out / "users.toml")
    assert policy.users == {"alex": Role.USER, "betty": Role.USER, "admin": Role.ADMIN}
    if os.geteuid() == 0:
        owners = {(p.stat().st_uid, p.stat().st_gid) for p in [out, *out.rglob("*")]}
        assert owners == {(4321, 4322)}
    tls.check_certificate_file(out / "admin" / "client_cert.pem")
