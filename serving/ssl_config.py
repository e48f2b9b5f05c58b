"""`--ssl_config_file`: TF Serving's SSLConfig text proto (config/ssl_config.proto), checked
at start-up so that a file name where PEM text belongs is refused with `file:line: reason`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from serving.protos import SSLConfig
from serving.text_proto import ConfigError, line_of, parse_text_proto, read_config_file


@dataclass(frozen=True)
class SSLOptions:
    """SSLConfig as server.cc's BuildServerCredentialsFromSSLConfigFile uses it: the fields hold
    PEM text (not file names); client_verify requires a client certificate signed by custom_ca."""

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None
    client_verify: bool


def load_ssl_file(path: str) -> SSLOptions:
    text = read_config_file(path, "SSLConfig")
    proto = parse_text_proto(text, SSLConfig(), path)

    def pem(name: str, kind: str) -> bytes | None:
        value = getattr(proto, name)
        if not value:
            return None
        if f"-----BEGIN {kind}" not in value and not (
            kind == "PRIVATE KEY" and re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY", value)
        ):
            raise ConfigError(
                f"{path}:{line_of(text, name)}: {name} must hold the PEM text itself "
                f"(-----BEGIN {kind}-----...), not a file name"
            )
        return value.encode("utf-8")

    key = pem("server_key", "PRIVATE KEY")
    cert = pem("server_cert", "CERTIFICATE")
    for name, value in (("server_key", key), ("server_cert", cert)):
        if value is None:
            raise ConfigError(f"{path}:1: {name} is empty")
    ca = pem("custom_ca", "CERTIFICATE")
    if proto.client_verify and ca is None:
        raise ConfigError(
            f"{path}:{line_of(text, 'client_verify')}: client_verify needs custom_ca (the CA "
            "that signs client certificates)"
        )
    return SSLOptions(key, cert, ca, bool(proto.client_verify))
