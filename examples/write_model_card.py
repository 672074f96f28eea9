#!/usr/bin/env python
# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Writes hub model cards (README.md with YAML metadata) for specpatch checkpoints.

    # the card of a trained checkpoint, filled with its config, parameter count and training run
    # (all_results.json / run_args.json written by examples/finetune.py), into <checkpoint>/README.md
    python examples/write_model_card.py outputs/fftp-audioset-fftp_ast --checkpoint my-user/fftp-ast-audioset

    # the generic cards of the three models (model_cards/*.md), with the efficiency figures of benchmarks/RESULTS.md
    python examples/write_model_card.py --generic --output_dir model_cards
"""

from __future__ import annotations

import argparse
import os

from specpatch.model_card import CARD_FILES, render_model_card, write_model_card

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "RESULTS.md")


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", nargs="?", help="a save_pretrained directory")
    parser.add_argument("--output", help="card path (default: <model_dir>/README.md)")
    parser.add_argument("--checkpoint", help="folder or hub id the card's code loads (default: model_dir)")
    parser.add_argument("--results", default=RESULTS, help="benchmarks/RESULTS.md for the efficiency section")
    parser.add_argument("--generic", action="store_true", help="write the three generic cards instead")
    parser.add_argument("--output_dir", default=os.path.join(REPO, "model_cards"), help="folder of the generic cards")
    args = parser.parse_args(argv)

    results = None
    if args.results and os.path.isfile(args.results):
        with open(args.results) as handle:
            results = handle.read()
    pretraining_script = os.path.isfile(os.path.join(REPO, "examples", "pretrain_aape.py"))
    written = []
    if args.generic:
        os.makedirs(args.output_dir, exist_ok=True)
        for model_type, name in CARD_FILES.items():
            path = os.path.join(args.output_dir, name)
            card = render_model_card(model_type, results_markdown=results, pretraining_script=pretraining_script)
            with open(path, "w") as handle:
                handle.write(card)
            written.append(path)
    elif args.model_dir:
        written.append(write_model_card(args.model_dir, args.output, args.checkpoint, results, pretraining_script))
    else:
        parser.error("give a checkpoint directory or --generic")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
