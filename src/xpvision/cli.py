"""The ``xpvision`` command: ``xpvision <stage> --task <task>`` runs one DVC stage, ``xpvision predict`` runs
a trained model on image files.

Errors a user can cause (:class:`~xpvision.errors.XPVisionError`: bad params, bad files) are printed as one
line without a traceback and exit with status 2. A stage ended by SIGTERM (its MLflow run closed as KILLED)
exits with status 143, as a process killed by the signal would.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from xpvision.config import BASE_TASKS, TASKS, load_params
from xpvision.errors import XPVisionError
from xpvision.tracking import Terminated

EXIT_USER_ERROR = 2

STAGES = {
    "start-run": ("xpvision.stages.start_run", TASKS, "open the task's parent MLflow run"),
    "download": ("xpvision.stages.download", BASE_TASKS, "fetch or generate the dataset, write shards"),
    "augment": ("xpvision.stages.augment", BASE_TASKS, "write the augmented training set"),
    "train": ("xpvision.stages.train", TASKS, "train (resuming from the checkpoint), save the model"),
    "evaluate": ("xpvision.stages.evaluate", TASKS, "test-set metrics and figures"),
    "export": ("xpvision.stages.export", TASKS, "ONNX + MLflow pyfunc model, checked against xpvision"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpvision", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, tasks, help_text) in STAGES.items():
        stage = commands.add_parser(name, help=help_text, description=f"DVC stage: {help_text}.")
        stage.add_argument("--task", required=True, choices=tasks)
        stage.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    report = commands.add_parser("transfer-report", help="transfer learning: fine-tuned vs from scratch",
                                 description="DVC stage: the transfer-learning comparison report.")
    report.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    predict = commands.add_parser("predict", help="run a trained model on image files",
                                  description="Classify, detect or segment image files with a trained model.")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    predict.add_argument("--model", required=True, help="model folder, e.g. models/detection")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    predict.add_argument("--out", default=None, help="folder for the drawn detections / overlays")
    predict.add_argument("--score-threshold", type=float, default=0.3,
                         help="detection only: minimum score of a drawn detection (default: 0.3)")
    predict.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                         help="run the model on this device (default: cpu; gpu needs CuPy and CUDA)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            from xpvision.stages import predict

            predict.run(args.images, args.model, as_json=args.json, out_dir=args.out,
                        score_threshold=args.score_threshold, device=args.device)
        elif args.command == "transfer-report":
            from xpvision.stages import transfer_report

            transfer_report.run(load_params(args.params))
        elif args.command == "train":  # one process, or several under mpiexec (xpvision.distributed)
            from xpvision.distributed.launch import train_command
            from xpvision.stages import train

            return train_command(train.run, load_params(args.params), args.task, args.params)
        else:
            module = importlib.import_module(STAGES[args.command][0])
            module.run(load_params(args.params), args.task)
    except XPVisionError as e:
        print(f"xpvision {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Terminated as e:
        print(f"xpvision {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
