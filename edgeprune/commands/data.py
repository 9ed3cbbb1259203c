"""``edgeprune data make-detection OUT``: compose a YOLO-format detection set from Fashion-MNIST."""

from __future__ import annotations

import argparse

from edgeprune.commands.args import from_args


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="make data sets edgeprune can prune with offline")
    verbs = d.add_subparsers(dest="data_command", required=True, metavar="{make-detection}")
    m = verbs.add_parser(
        "make-detection",
        help="compose a detection data set in YOLO format: Fashion-MNIST items pasted on noisy canvases, boxes from the paste",
        description="Compose a detection data set in YOLO format (OUT/data.yaml, images/, labels/) from Fashion-MNIST: "
        "items pasted at random scales and places on noisy grey canvases, each box the tight box of its pasted silhouette. "
        "It is composed, not collected (OUT/COMPOSED.txt says how). Use it with: edgeprune prune yolo:yolov8n.yaml "
        "--task detection --data yolo:OUT/data.yaml --input-shape 3xSxS.",
    )
    m.add_argument("out", help="folder to create (must not exist or be empty)")
    m.add_argument("--train", type=int, default=2000, help="train canvases, from Fashion-MNIST's train images (default 2000)")
    m.add_argument("--val", type=int, default=400, help="val canvases, from its test images (default 400)")
    m.add_argument("--size", type=int, default=160, help="canvas side in pixels, a multiple of 32 (default 160)")
    m.add_argument("--min-items", type=int, default=1, help="fewest items per canvas (default 1)")
    m.add_argument("--max-items", type=int, default=3, help="most items per canvas (default 3)")
    m.add_argument("--min-scale", type=float, default=0.15, help="smallest item side as a fraction of the canvas (default 0.15)")
    m.add_argument("--max-scale", type=float, default=0.45, help="largest item side as a fraction of the canvas (default 0.45)")
    m.add_argument("--seed", type=int, default=0, help="seed of the composition (default 0)")


def run(args: argparse.Namespace) -> int:
    from edgeprune.tasks.compose import Composition, make_detection_set
    from edgeprune.progress import console

    counts = make_detection_set(args.out, from_args(Composition, args))
    console.print(
        f"wrote {args.out}: train {counts['train']['images']} images / {counts['train']['boxes']} boxes, "
        f"val {counts['val']['images']} images / {counts['val']['boxes']} boxes; data set file {args.out}/data.yaml"
    )
    return 0
