"""The certificates the egress proxy shows for intercepted hosts: one leaf per host, signed by the
organisation's CA (its certificate and key read through the vault), with its TLS context.

Leaves are kept in a bounded LRU and replaced `renew_before_h` before they expire; concurrent
first connections to a host share one issuance. Key generation, signing and loading the TLS
context run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import secrets
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from sluicegate.egress.config import EgressCAConfig
    from sluicegate.vault import Vault

log = logging.getLogger("sluicegate.egress")

#: a leaf is valid from a little before it is made (clients' clocks drift)
BACKDATE_S = 300


class CAInvalid(ValueError):
    """The CA's certificate or key cannot sign leaves (unreadable, mismatched, not a CA)."""


class CertificateAuthority:
    """The organisation's CA, loaded from PEM: it issues leaf certificates."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        try:
            self.cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise CAInvalid(f"cannot read the CA certificate or key ({exc})") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise CAInvalid("the CA key must be RSA, EC or Ed25519")
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CAInvalid("the CA key does not belong to the CA certificate")
        try:
            constraints = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CAInvalid("the CA certificate is not a CA (basicConstraints CA:TRUE)")
        self.key = key

    def issue(self, host: str, validity_s: float) -> tuple[bytes, bytes, float]:
        """A leaf certificate for `host` (PEM), its key (PEM), and when it expires (epoch seconds)."""
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + dt.timedelta(seconds=validity_s), self.cert.not_valid_after_utc)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(self.cert.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        algorithm = None if isinstance(self.key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
        cert = builder.sign(self.key, algorithm)
        key_pem = leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, not_after.timestamp()


def server_context(cert_pem: bytes, key_pem: bytes, host: str) -> ssl.SSLContext:
    """A server TLS context with this leaf, HTTP/1.1 only, that refuses a client whose SNI names
    another host than `host` (the `CONNECT` target)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    # `load_cert_chain` reads files only: a private temporary file, removed at once.
    fd, path = tempfile.mkstemp(prefix="sluicegate-leaf-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(cert_pem + key_pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    context.sni_callback = _sni_check(host)
    return context


def _sni_check(host: str) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]:
    def check(conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> int | None:
        # No SNI (a client that connects by address) is taken; another name than the target is not.
        if server_name is None or server_name.lower().removesuffix(".") == host:
            return None
        log.info("egress: a client tunnelled to %s sent SNI %r: refused", host, server_name[:253])
        return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME

    return check


@dataclass(slots=True)
class _Leaf:
    context: ssl.SSLContext
    #: when to replace it (epoch seconds)
    renew_at: float


class LeafCache:
    """TLS contexts per intercepted host, issued by the CA the config names (module docstring)."""

    def __init__(self, vault: Vault, config: EgressCAConfig) -> None:
        self.vault = vault
        self.config = config
        self._leaves: OrderedDict[str, _Leaf] = OrderedDict()
        self._pending: dict[str, asyncio.Future[ssl.SSLContext]] = {}
        self._ca: tuple[str, str, CertificateAuthority] | None = None
        #: leaves issued so far (rotations included)
        self.issued = 0

    async def context(self, host: str) -> ssl.SSLContext:
        """The TLS context for `host`; raises `CAInvalid` or `SecretUnavailable`."""
        leaf = self._leaves.get(host)
        if leaf is not None and leaf.renew_at > time.time():
            self._leaves.move_to_end(host)
            return leaf.context
        pending = self._pending.get(host)
        if pending is None:
            pending = asyncio.ensure_future(self._issue(host))
            self._pending[host] = pending
            pending.add_done_callback(lambda _: self._pending.pop(host, None))
        return await asyncio.shield(pending)

    async def _issue(self, host: str) -> ssl.SSLContext:
        cert_pem = await self.vault.aresolve(self.config.cert)
        key_pem = await self.vault.aresolve(self.config.key)
        current = self._ca
        if current is None or current[0] != cert_pem or current[1] != key_pem:
            ca = await asyncio.to_thread(CertificateAuthority, cert_pem.encode(), key_pem.encode())
            if current is not None:
                self._leaves.clear()  # the CA was rotated: every leaf is issued again
            self._ca = current = (cert_pem, key_pem, ca)
        ca = current[2]
        config = self.config
        context, expires = await asyncio.to_thread(self._build, ca, host, config.leaf_validity_h * 3600)
        self.issued += 1
        self._leaves[host] = _Leaf(context, expires - config.renew_before_h * 3600)
        self._leaves.move_to_end(host)
        while len(self._leaves) > config.max_cached:
            self._leaves.popitem(last=False)
        return context

    @staticmethod
    def _build(ca: CertificateAuthority, host: str, validity_s: float) -> tuple[ssl.SSLContext, float]:
        cert_pem, key_pem, expires = ca.issue(host, validity_s)
        return server_context(cert_pem, key_pem, host), expires
