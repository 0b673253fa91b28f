"""An SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it receives, optionally with AUTH."""

from __future__ import annotations

import email
import email.policy
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword

from tests.support.procs import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class _Handler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(self, server: Any, session: Any, envelope: Envelope, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address in self.server.refuse:
            return "550 5.1.1 mailbox unavailable"
        if address in self.server.defer:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
        self.server.messages.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (it is its own CA) and its key, as PEM files in ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class SMTPServer:
    """``with SMTPServer(user="u", password="p") as smtp:`` - ``smtp.port``, ``smtp.messages``. With
    ``tls_dir``, it requires STARTTLS with a self-signed certificate (``smtp.ca_file``) before AUTH and MAIL."""

    def __init__(self, user: str | None = None, password: str | None = None, tls_dir: Path | None = None) -> None:
        self.port = free_port()
        self.messages: list[Received] = []
        self.refuse: set[str] = set()
        self.defer: set[str] = set()
        self.user, self.password = user, password
        self.ca_file = ""
        kwargs: dict[str, Any] = {}
        if user:
            kwargs = {"authenticator": self._authenticate, "auth_required": True, "auth_require_tls": False}
        if tls_dir is not None:
            cert, key = self_signed_cert(tls_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            self.ca_file = str(cert)
            kwargs.update({"tls_context": context, "require_starttls": True, "auth_require_tls": True})
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        return AuthResult(success=ok, handled=False)

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
