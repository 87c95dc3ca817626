"""``loaxa gateway install BUNDLE``: put a commune's bundle (from ``loaxa commune add``) in place on the Pi.

The bundle is checked whole before anything is written: its manifest must list every file with the
right checksum, no path may leave the target root, and it must be for the gateway already installed
there (unless ``--force``: replacing a Pi by another commune's identity is a deliberate act).
With ``--root DIR`` (tests, a staging copy) the files go under DIR and the absolute paths inside the
configs are moved under DIR too; the default root is ``/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path, PurePosixPath

HELP = """\
Install a gateway bundle written by `loaxa commune add` / `loaxa device add` on the server:

  sudo loaxa gateway install bundle-xa-an-binh.tar.gz
  sudo systemctl reload mosquitto && sudo systemctl restart loaxa-gateway

It writes /etc/loaxa/gateway.yaml and its secrets, the LAN broker's config, password file and ACL,
and the speakers' and sensors' passwords (/etc/loaxa/devices.json, to enter into each device).
Installing the same commune's bundle again (a new device, a replaced Pi) is safe; the gateway's
data (/var/lib/loaxa/gateway: spool, plans, media) is never touched.
"""


class BundleError(RuntimeError):
    pass


def register_gateway(gsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = gsub.add_parser("install", help="install a commune bundle from the server", description=HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle-ID.tar.gz (or its unpacked folder)")
    p.add_argument("--root", type=Path, default=Path("/"), help="install under this directory (default /)")
    p.add_argument("--force", action="store_true", help="replace the identity of another gateway installed here")
    p.set_defaults(func=run)


def _read_bundle(bundle: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    from loaxa.provision import BUNDLE_MANIFEST

    files: dict[str, bytes] = {}
    if bundle.is_dir():
        for f in bundle.rglob("*"):
            if f.is_file():
                files[f.relative_to(bundle).as_posix()] = f.read_bytes()
    else:
        try:
            with tarfile.open(bundle, "r:*") as tar:
                for m in tar.getmembers():
                    if m.isdir():
                        continue
                    if not m.isfile():
                        raise BundleError(f"{bundle}: {m.name} is not a plain file")
                    fh = tar.extractfile(m)
                    assert fh is not None
                    files[m.name] = fh.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BundleError(f"{bundle}: not a readable bundle ({exc})") from None
    if BUNDLE_MANIFEST not in files:
        raise BundleError(f"{bundle}: no {BUNDLE_MANIFEST}; is this a bundle from `loaxa commune add`?")
    manifest = json.loads(files.pop(BUNDLE_MANIFEST))
    listed = manifest.get("files", {})
    for rel in files:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts:
            raise BundleError(f"{bundle}: unsafe path {rel!r}")
        if rel not in listed:
            raise BundleError(f"{bundle}: {rel} is not in the manifest")
    for rel, meta in listed.items():
        if rel not in files:
            raise BundleError(f"{bundle}: {rel} is missing")
        if hashlib.sha256(files[rel]).hexdigest() != meta["sha256"]:
            raise BundleError(f"{bundle}: {rel} is damaged (checksum mismatch)")
    return manifest, files


def relocate(text: str, root: Path, prefixes: tuple[str, ...]) -> str:
    """Absolute paths under ``prefixes`` moved under ``root`` (no change for root ``/``)."""
    if root == Path("/"):
        return text
    import re

    for prefix in prefixes:
        text = re.sub(rf"(?<![\w/.-]){re.escape(prefix)}(?=[/\s\"']|$)", str(root) + prefix, text, flags=re.MULTILINE)
    return text


def install(bundle: Path, root: Path = Path("/"), *, force: bool = False) -> tuple[str, list[Path]]:
    from gateway.config import load_gateway_config
    from loaxa.provision import PI_CONFIG_DIR, PI_DATA_DIR, PI_MOSQUITTO_DATA, PI_PATH_PREFIXES, write_atomic
    from loaxa.yamlconf import ConfigError

    manifest, files = _read_bundle(bundle)
    gw = str(manifest["gateway"])
    root = root.resolve()
    current = root / PI_CONFIG_DIR / "gateway.yaml"
    if current.exists() and not force:
        try:
            have = load_gateway_config(current).gateway.id
        except ConfigError:
            have = None
        if have is not None and have != gw:
            raise BundleError(f"{current} is gateway {have!r}; this bundle is {gw!r} (--force to replace it)")
    written: list[Path] = []
    for rel, data in sorted(files.items()):
        meta = manifest["files"][rel]  # type: ignore[index]
        mode = int(meta["mode"], 8) & 0o777
        target = root / rel
        if rel.endswith((".yaml", ".conf")):
            data = relocate(data.decode(), root, PI_PATH_PREFIXES).encode()
        write_atomic(target, data, mode)
        written.append(target)
    for d in (PI_DATA_DIR, PI_MOSQUITTO_DATA):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / PI_CONFIG_DIR / "secrets").chmod(0o700)
    if root == Path("/"):
        _owners(root)
    try:
        load_gateway_config(current)
    except ConfigError as exc:
        raise BundleError("the installed gateway.yaml does not pass `loaxa config check`:\n"
                          + "\n".join(str(p) for p in exc.problems)) from None
    return gw, written


def _owners(root: Path) -> None:
    """On a real Pi: the gateway runs as 'loaxa' and Mosquitto as 'mosquitto'; each reads only its own.

    gateway.yaml root:loaxa 0640, its secrets loaxa 0600, its data dir loaxa; the LAN password file
    root:mosquitto 0640. devices.json stays root 0600 (for the technician setting up the devices).
    """
    import grp
    import pwd

    def ids(user: str, group: str) -> tuple[int, int] | None:
        try:
            return (pwd.getpwnam(user).pw_uid if user != "root" else 0), grp.getgrnam(group).gr_gid
        except KeyError:
            return None

    from loaxa.provision import PI_CONFIG_DIR, PI_DATA_DIR

    conf = root / PI_CONFIG_DIR
    loaxa = ids("loaxa", "loaxa")
    if loaxa is not None:
        os.chown(conf / "gateway.yaml", 0, loaxa[1])
        os.chown(conf / "secrets", *loaxa)
        for f in (conf / "secrets").iterdir():
            os.chown(f, *loaxa)
        for d in (Path(PI_DATA_DIR), Path(PI_DATA_DIR).parent):
            os.chown(root / str(d).lstrip("/"), *loaxa)
    mosq = ids("root", "mosquitto")
    if mosq is not None:
        f = root / "etc/mosquitto/loaxa-lan.passwd"
        os.chown(f, *mosq)
        f.chmod(0o640)


def run(args: argparse.Namespace) -> int:
    try:
        gw, written = install(args.bundle, args.root, force=args.force)
    except (BundleError, OSError, ValueError, KeyError) as exc:
        print(f"loaxa gateway install: {exc}", file=sys.stderr)
        return 2
    print(f"gateway {gw} installed under {args.root} ({len(written)} files)")
    if args.root == Path("/"):
        print("now: systemctl reload mosquitto && systemctl restart loaxa-gateway")
        print("then: loaxa doctor --config /etc/loaxa/gateway.yaml")
    return 0
