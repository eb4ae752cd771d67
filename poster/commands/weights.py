"""``poster weights``: the official weight files: list, download, path, verify."""

from __future__ import annotations

import argparse

from ..errors import CheckpointError
from ..checkpoint.releases import BUNDLED_RELEASE, RELEASES, all_releases, bundled_model_path, get_release, \
    local_release_file, release_path, weights_dir


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "weights", help="list, download, locate and verify the official weight files",
        description="The official releases and where their files are. Files are fetched from the authors' "
                    "links into $POSTER_WEIGHTS (default ~/.cache/poster/weights) on first use or with "
                    "'download'; 'poster --offline' (POSTER_OFFLINE=1) forbids any download.")
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every release: dataset, paper accuracy, file present, size, sha256, terms")
    listing.set_defaults(run=run_list)
    download = sub.add_parser("download", help="fetch releases now (with no argument: none; 'all': every one)")
    download.add_argument("names", nargs="+", metavar="NAME")
    download.set_defaults(run=run_download)
    path = sub.add_parser("path", help="the file of a release (where it is, or where it goes)")
    path.add_argument("name", metavar="NAME")
    path.set_defaults(run=run_path)
    verify = sub.add_parser("verify", help="re-hash and re-check every release file present")
    verify.set_defaults(run=run_verify)


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def run_list(args: argparse.Namespace) -> int:
    from ..checkpoint.hub import recorded_hash

    print(f"Official releases (cache: {weights_dir()}):")
    for r in all_releases():
        local = bundled_model_path() if r.name == BUNDLED_RELEASE else local_release_file(r)
        accuracy = f"{r.paper_accuracy:.2f}%" if r.paper_accuracy is not None else "-"
        state = f"present {_size(local.stat().st_size)}" if local else "not downloaded"
        print(f"  {r.name:28s} {r.dataset:10s} {accuracy:7s} {state}")
        print(f"      file    {local or release_path(r)}")
        if local and r.name != BUNDLED_RELEASE:
            print(f"      sha256  {recorded_hash(local) or '(none recorded yet)'}")
        print(f"      from    {r.source.url}")
        print(f"      terms   {r.terms}")
        print(f"      origin  {r.provenance}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from ..checkpoint.hub import ensure_release

    names = list(RELEASES) if args.names == ["all"] else args.names
    releases = [get_release(n) for n in names]  # every name checked before anything is fetched
    for r in releases:
        if r.name == BUNDLED_RELEASE:
            print(f"{r.name}: bundled with the package, nothing to download ({bundled_model_path()})")
            continue
        print(f"{r.name}: {ensure_release(r)}")
    return 0


def run_path(args: argparse.Namespace) -> int:
    r = get_release(args.name)
    if r.name == BUNDLED_RELEASE:
        print(bundled_model_path())
    else:
        print(local_release_file(r) or release_path(r))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from ..checkpoint.hub import check_recorded_hash, verify_file

    failed = checked = 0
    for r in RELEASES.values():
        local = local_release_file(r)
        if local is None:
            continue
        checked += 1
        try:
            digest = check_recorded_hash(local, r)
            verify_file(local, r, fresh=False)
        except CheckpointError as e:
            failed += 1
            print(f"FAILED {r.name}: {e}")
            continue
        print(f"ok     {r.name}: {local} sha256 {digest}")
    if failed:
        raise CheckpointError(f"{failed} of {checked} release files failed verification (listed above)")
    print(f"{checked} release file(s) verified" if checked else f"no release files in {weights_dir()}")
    return 0
