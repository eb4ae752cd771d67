"""``poster models``: the architectures and the official releases this version knows."""

from __future__ import annotations



def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list architectures and official releases")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..models.registry import get_arch, list_models
    from ..checkpoint.releases import BUNDLED_MODEL, BUNDLED_RELEASE, RELEASES, weights_dir

    print("Architectures (poster.create_model):")
    for name in list_models():
        print(f"  {name:18s} {get_arch(name).description}")
    print(f"\nOfficial releases (poster.load_model; fetched into {weights_dir()} on first use, "
          "see poster weights list):")
    for r in RELEASES.values():
        accuracy = f"paper {r.paper_accuracy:.2f}%" if r.paper_accuracy is not None else "backbone"
        print(f"  {r.name:28s} {r.dataset:11s} {accuracy:13s} file {' or '.join(r.file_names)}")
    state = "installed" if BUNDLED_MODEL.is_file() else "MISSING from this install"
    print(f"\nBundled (the default of poster predict; a FER2013 demonstration model, see docs/results.md):\n"
          f"  {BUNDLED_RELEASE:28s} fer2013     {state}: {BUNDLED_MODEL}")
    return 0
