"""The command layer: every verb's --help works without torch, gate runs without it, and the
parsed options reach the configs under their own names."""

import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

from tiny_models import TinyCNN
from torch_block import BLOCK_TORCH

from edgeprune.cli import VERBS, build_parser
from edgeprune.exporters.onnx import export_onnx

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")

# Runs `edgeprune ARGV...` (one argv per line of stdin) in-process with torch blocked, printing
# "exit-code torch-loaded" per argv: CI runners and devices have onnxruntime but no torch.
_BLOCKED_TORCH = BLOCK_TORCH + textwrap.dedent(
    """
    import shlex, sys

    from edgeprune.cli import main
    for line in sys.stdin.read().splitlines():
        try:
            code = main(shlex.split(line))
        except SystemExit as exc:
            code = exc.code
        print("RESULT", code, "torch" in sys.modules, file=sys.stderr)
    """
)


def _without_torch(*argvs: str) -> list[tuple[str, str]]:
    done = subprocess.run([sys.executable, "-c", _BLOCKED_TORCH], input="\n".join(argvs), capture_output=True, text=True, timeout=120)
    results = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("RESULT ")]
    assert len(results) == len(argvs), done.stderr
    return [tuple(r) for r in results]


def test_every_verb_help_exits_0_without_torch():
    """`--help` of every verb stays fast: building the parser imports no torch (and gate's and
    agent's must not, their machines lack it)."""
    argvs = ["--help", *(f"{verb} --help" for verb in VERBS), "cache stats --help"]
    assert _without_torch(*argvs) == [("0", "False")] * len(argvs)


def test_gate_runs_without_torch(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(export_onnx(TinyCNN().eval(), (1, 1, 8, 8), 17))
    argv = f"gate {model} --budget-ms 10000 --target {PROFILE} --no-cache --no-progress --json {tmp_path / 'g.json'}"
    assert _without_torch(argv) == [("0", "False")]
    assert (tmp_path / "g.json").is_file()


def _option_dests(verb: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest for a in sub.choices[verb]._actions if a.dest != "help"}


def test_every_prune_option_reaches_the_config():
    """The mapping is by name: an option that is not a PruneOptions field would be dropped silently."""
    from edgeprune.commands.prune import config
    from edgeprune.api.settings import PruneOptions
    from edgeprune.jobs.settings import PruneConfig

    command_line_only = {"resume", "trust_model_code", "no_progress", "no_screen"}
    assert _option_dests("prune") - command_line_only <= {f.name for f in fields(PruneOptions)}
    args = build_parser().parse_args(["prune", "torchvision:resnet18", "--no-screen", "--no-progress", "--mean", "0.5", "--refine-top", "2"])
    cfg = config(args)
    assert (cfg.model, cfg.task.mean, cfg.recipe.refine_top) == ("torchvision:resnet18", (0.5,), 2)
    assert (cfg.search.screen, cfg.output.progress, cfg.output.resume) == (False, False, False)
    assert config(build_parser().parse_args(["prune", "m.pt"])) == PruneConfig(model="m.pt")


def test_every_export_option_reaches_the_config():
    from edgeprune.commands.export import config
    from edgeprune.jobs.export import ExportConfig

    assert _option_dests("export") - {"no_progress"} <= {f.name for f in fields(ExportConfig)}
    cfg = config(build_parser().parse_args(["export", "out", "--int8", "--opset", "17", "--no-progress"]))
    assert cfg == ExportConfig(out_dir="out", int8=True, opset=17, progress=False)


def test_resume_refuses_options_it_would_ignore(tmp_path, capsys):
    from edgeprune.cli import main

    assert main(["--resume", str(tmp_path / "out"), "--population", "9", "--seed", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "drop --population, --seed" in err and "--no-progress" not in err.split("(")[0] and len(err.splitlines()) == 1
    # the options a resumed run does use pass the check (and then the missing checkpoint is the error)
    assert main(["--resume", str(tmp_path / "out"), "--no-progress", "--trust-model-code"]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
