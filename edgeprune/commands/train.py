"""``edgeprune train``: train a model and save its state_dict, for trying edgeprune without one of your own."""

from __future__ import annotations

import argparse

from edgeprune.commands.args import add_data_args, add_model_args, add_progress_args, check_num_classes, from_args


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model on a dataset and save its state_dict (for trying edgeprune without your own model)")
    add_model_args(t)
    add_data_args(t)
    t.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")
    t.add_argument("--lr", type=float, default=0.05, help="peak learning rate, cosine schedule (default 0.05)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--freeze-backbone", action="store_true", help="transfer learning: keep the --weights backbone frozen (BatchNorm statistics too) and train a freshly initialised head, the fully-connected layers after the last convolution")
    t.add_argument("--out", required=True, help="state_dict file to write (use it with --weights)")
    add_progress_args(t)


def run(args: argparse.Namespace) -> int:
    from edgeprune.api.settings import parse_shape
    from edgeprune.jobs.demo import train_and_save

    check_num_classes(args.num_classes)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    from_args(train_and_save, args, spec=args.model, input_shape=shape, progress=not args.no_progress)
    return 0
