"""TLS settings for a cluster: certificate files, or a temporary self-signed setup.

``Security`` says which certificate, key and CA the processes of a cluster use for ``tls://``
addresses, and whether encryption is required (then plain ``tcp://`` is refused). The token
(authentication) is separate and always on; TLS adds encryption and server identity.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from dataclasses import dataclass, field


@dataclass
class Security:
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    require_encryption: bool = False
    _tempdir: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("tls_ca_file", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(f"Security({name}=...): no such file {path!r}")
        if self.require_encryption and not (self.tls_cert and self.tls_key and self.tls_ca_file):
            raise ValueError("require_encryption needs tls_ca_file, tls_cert and tls_key")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key and self.tls_ca_file)

    def _tls_files(self) -> tuple[str, str, str]:
        """CA, certificate and key, when ``tls``."""
        if not (self.tls_ca_file and self.tls_cert and self.tls_key):
            raise ValueError("TLS needs tls_ca_file, tls_cert and tls_key")
        return self.tls_ca_file, self.tls_cert, self.tls_key

    @classmethod
    def temporary(cls, require_encryption: bool = True) -> "Security":
        """A throwaway CA and a certificate for 127.0.0.1/localhost, valid for a day."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        import ipaddress

        tmp = tempfile.TemporaryDirectory(prefix="nbcluster-tls-")
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nbcluster temporary CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              # Python 3.13's strict verification (VERIFY_X509_STRICT) wants a CA to say what
              # its key signs, and to identify that key
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                           key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, key_cert_sign=True, crl_sign=True,
                                           encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nbcluster")])
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        paths = {}
        for fname, data in (
            ("ca.pem", ca.public_bytes(pem)),
            ("cert.pem", cert.public_bytes(pem)),
            ("key.pem", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())),
        ):
            path = os.path.join(tmp.name, fname)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths[fname] = path
        return cls(paths["ca.pem"], paths["cert.pem"], paths["key.pem"], require_encryption,
                   _tempdir=tmp)

    def server_context(self) -> ssl.SSLContext:
        ca, cert, key = self._tls_files()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
        ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_REQUIRED      # peers present a certificate of the same CA
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ca, cert, key = self._tls_files()
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        ctx.load_cert_chain(cert, key)
        ctx.check_hostname = False   # identity is the CA: cluster hosts rarely have DNS names
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def to_env(self) -> dict[str, str]:
        """Settings for child processes of a LocalCluster."""
        if not self.tls:
            return {}
        ca, cert, key = self._tls_files()
        return {"NBCLUSTER_TLS_CA": ca, "NBCLUSTER_TLS_CERT": cert, "NBCLUSTER_TLS_KEY": key,
                "NBCLUSTER_REQUIRE_ENCRYPTION": "1" if self.require_encryption else ""}

    @classmethod
    def from_env(cls) -> "Security | None":
        ca = os.environ.get("NBCLUSTER_TLS_CA")
        if not ca:
            return None
        return cls(ca, os.environ.get("NBCLUSTER_TLS_CERT"), os.environ.get("NBCLUSTER_TLS_KEY"),
                   bool(os.environ.get("NBCLUSTER_REQUIRE_ENCRYPTION")))
