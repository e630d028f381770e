"""Build, on the controller, the wheelhouse each kind of host installs paxmr from.

    python wheelhouse.py --wheel dist/paxmr-0.1.0-py3-none-any.whl --cache DIR cp313-x86_64 ...

A target is a host's CPython version and architecture (`cp313-x86_64`, `cp311-aarch64`). For each
one this downloads, for that target and not for the controller, paxmr's dependencies as binary
wheels (`pip download --platform ... --python-version ... --only-binary=:all:`) plus pip's own wheel
(the hosts have no ensurepip), checks offline with pip's resolver that the wheels in DIR/<target>
install paxmr with nothing missing, and packs exactly the wheels the resolver chose into
DIR/<target>.tar (byte-identical for identical wheels). A target whose tarball was built from the
same paxmr wheel is not downloaded again. Runs on any OS with Python 3.9+ and pip 22.2+; needs a
package index (or --find-links with the wheels) only when a target is new or paxmr changed.

Prints one JSON object: {"changed": [targets built now], "targets": {target: [wheel names]}}.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

# manylinux wheels a host with glibc 2.28 or newer can run (the role's preflight checks that).
GLIBC_MINORS = range(17, 29)
FORMAT = 1  # bump when what goes into a wheelhouse changes: every cached target is rebuilt


class WheelhouseError(RuntimeError):
    pass


def target_args(target: str) -> list[str]:
    """pip's options selecting wheels for a target instead of for this controller."""
    match = re.fullmatch(r"cp(3)(\d+)-(\w+)", target)
    if not match:
        raise WheelhouseError(f"bad target {target!r}: expected e.g. cp313-x86_64")
    major, minor, arch = match.groups()
    platforms = [f"manylinux_2_{m}_{arch}" for m in GLIBC_MINORS] + [f"manylinux2014_{arch}"]
    return [
        "--only-binary=:all:",
        "--implementation=cp",
        f"--python-version={major}.{minor}",
        *(f"--abi={abi}" for abi in (f"cp{major}{minor}", "abi3", "none")),
        *(f"--platform={platform}" for platform in platforms),
    ]


def pip(python: str, *args: str) -> str:
    proc = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise WheelhouseError(f"pip {' '.join(args[:1])} failed:\n{proc.stderr.strip()[-3000:]}")
    return proc.stdout


def resolve_offline(python: str, house: Path, target: str, requirement: str) -> list[Path]:
    """The wheels pip would install on the target from `house` alone; fails if any is missing."""
    with tempfile.TemporaryDirectory() as scratch:
        report = pip(
            python,
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            f"--target={scratch}",
            "--no-index",
            f"--find-links={house}",
            "--report=-",
            *target_args(target),
            requirement,
            "pip",
        )
    chosen = []
    for item in json.loads(report)["install"]:
        path = Path(unquote(urlparse(item["download_info"]["url"]).path))
        if path.parent.resolve() != house.resolve():
            raise WheelhouseError(f"{target}: pip chose {path}, outside {house}")
        chosen.append(path)
    return sorted(chosen)


def pack(wheels: list[Path], tarball: Path) -> None:
    """A tar of the wheels that depends only on their bytes (names sorted, no times, no owners)."""
    partial = tarball.with_name(tarball.name + ".tmp")
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
        for wheel in wheels:
            info = tarfile.TarInfo(wheel.name)
            data = wheel.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    partial.replace(tarball)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(python: str, wheel: Path, cache: Path, target: str, find_links: list[Path]) -> bool:
    """Make cache/<target>.tar current; True if it had to be built."""
    house, tarball = cache / target, cache / f"{target}.tar"
    stamp = house / ".built"
    wanted = f"format {FORMAT}\npaxmr {wheel.name} {sha256(wheel)}\n"
    if stamp.exists() and tarball.exists():
        recorded = stamp.read_text()
        if recorded.startswith(wanted) and recorded == wanted + f"tar {sha256(tarball)}\n":
            return False
    house.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for old in house.glob("paxmr-*.whl"):  # same version, other build: pip would keep the old
        old.unlink()
    (house / wheel.name).write_bytes(wheel.read_bytes())
    pip(
        python,
        "download",
        "--quiet",
        f"--dest={house}",
        f"--find-links={house}",
        *(f"--find-links={links}" for links in find_links),
        *target_args(target),
        str(house / wheel.name),
        "pip",
    )
    version = wheel.name.split("-")[1]
    pack(resolve_offline(python, house, target, f"paxmr=={version}"), tarball)
    stamp.write_text(wanted + f"tar {sha256(tarball)}\n")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help="paxmr's own (pure) wheel")
    parser.add_argument("--cache", type=Path, required=True, help="one wheelhouse per target here")
    parser.add_argument("--find-links", type=Path, action="append", default=[])
    parser.add_argument("--python", default=sys.executable, help="a Python with pip 22.2+")
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="e.g. cp313-x86_64")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"paxmr-[^-]+-py3-none-any\.whl", args.wheel.name):
        parser.error(f"{args.wheel.name} is not a pure paxmr wheel (paxmr-VERSION-py3-none-any)")
    changed, targets = [], {}
    try:
        for target in sorted(set(args.targets)):
            if build(args.python, args.wheel, args.cache, target, args.find_links):
                changed.append(target)
            with tarfile.open(args.cache / f"{target}.tar") as tar:
                targets[target] = tar.getnames()
    except WheelhouseError as err:
        print(f"wheelhouse: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"changed": changed, "targets": targets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
