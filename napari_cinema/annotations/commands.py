"""``napari-cinema corrections``: the store browser on the command line.

``corrections list [--store DIR] [--json]`` lists every stored study with its corrected and
uncorrected frames (what the Corrections dock's browser shows); ``corrections show KEY`` prints one
study's provenance and version history. Training and evaluation take the store as a dataset
(``napari-cinema finetune --store DIR``, ``napari-cinema evaluate DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys

from .store import CorrectionStore, StoreError


def _frames(frames) -> str:
    frames = [int(t) + 1 for t in frames]
    return ",".join(map(str, frames)) if len(frames) <= 12 else f"{len(frames)} frames"


def _cmd_list(args: argparse.Namespace) -> int:
    store = CorrectionStore(args.store)
    entries = store.entries() if store.root.is_dir() else []
    if args.json:
        print(json.dumps([{"key": e.key, "source": e.source, "view": e.view, "n_frames": e.n_frames,
                           "edited_frames": e.edited_frames, "uncorrected_frames": e.uncorrected_frames,
                           "changed_frames": e.changed_frames, "version": e.version, "saved_at": e.saved_at,
                           "saved_by": e.saved_by, "model_id": e.model_id, "autosave": e.autosave,
                           "folder": str(e.folder)} for e in entries], indent=1))
        return 0
    print(f"correction store {store.root}: {len(entries)} studies")
    for e in entries:
        print(f"  {e.key}  {e.view}  corrected {len(e.edited_frames)}/{e.n_frames} "
              f"(frames {_frames(e.edited_frames) or '-'})  v{e.version} {e.saved_at[:16]} by {e.saved_by}"
              f"{' (autosave)' if e.autosave else ''}  model {e.model_id}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    store = CorrectionStore(args.store)
    stored = store.load(args.key)
    if stored is None:
        print(f"napari-cinema corrections: no study {args.key!r} in {store.root}", file=sys.stderr)
        return 2
    print(json.dumps(stored.provenance, indent=1, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("corrections", help="list the correction store (studies, corrected frames)")
    csub = p.add_subparsers(dest="corrections_command", required=True, metavar="ACTION")
    lp = csub.add_parser("list", help="every stored study with its corrected and uncorrected frames")
    lp.add_argument("--store", help="store folder (default: the user's, as the Corrections dock uses)")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(handler=_guard(_cmd_list))
    sp = csub.add_parser("show", help="one study's provenance and version history")
    sp.add_argument("key")
    sp.add_argument("--store")
    sp.set_defaults(handler=_guard(_cmd_show))
    return p


def _guard(handler):
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except StoreError as exc:
            print(f"napari-cinema corrections: {exc}", file=sys.stderr)
            return 2
    return run
