"""``loaxa keys``: make an Ed25519 signing key pair for the scheduler."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = """\
Create the scheduler's Ed25519 signing key.

Writes the private key (base64 of the 32-byte seed, mode 0600) to PATH and prints the key id and
public key to put under 'trust.keys' in every gateway's config. An existing file is never overwritten.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("keys", help="create signing keys", description="Signing key tools.")
    ksub = p.add_subparsers(title="keys commands", metavar="ACTION")
    g = ksub.add_parser("generate", help="create a signing key pair", description=HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("path", type=Path, help="where to write the private key")
    g.set_defaults(func=run_generate)
    p.set_defaults(func=lambda _a: (p.print_help(), 2)[1])


def run_generate(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.signing import key_id_for, private_key_b64, public_key_b64

    key = Ed25519PrivateKey.generate()
    try:
        fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"{args.path}: already exists; not overwriting a key")
        return 2
    with os.fdopen(fd, "w") as f:
        f.write(private_key_b64(key) + "\n")
    print(f"private key written to {args.path}")
    print(f"key id:     {key_id_for(key.public_key())}")
    print(f"public key: {public_key_b64(key.public_key())}")
    return 0
