"""Push a finished run's student to the Hugging Face Hub, with a model card of its robust metrics.

    hf auth login                # or export HF_TOKEN=...; the token is read by huggingface_hub, never written by us
    derd-scale push --model runs/cifar10_local --repo-id me/derd-resnet20-cifar10 [--private] [--revision main]
    derd-scale push --model runs/cifar10_local --repo-id me/x --dry-run /tmp/upload   # write what would be uploaded

Uploads, in one commit: config.json + model.safetensors (timm format, from RUN/student/),
derd_config.yaml (RUN/config.yaml), eval_report.json (RUN/eval/report.json, when the run
was evaluated) and a README.md model card (library_name, tags, datasets, license,
base_model, model-index with every evaluation column). See docs/models.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from derd_scale.commands import OneLineParser


def build_parser(prog: str = "derd-scale push") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", required=True, help="finished run folder (config.yaml, student/, and eval/report.json if evaluated)"
    )
    p.add_argument("--repo-id", required=True, help="ORG/NAME of the model repository on the Hub (created if missing)")
    p.add_argument(
        "--private", action="store_true", help="create the repository as private (no effect on an existing one)"
    )
    p.add_argument("--revision", default=None, help="branch to push to (created from main if missing); default: main")
    p.add_argument(
        "--license",
        default="apache-2.0",
        help="license identifier in the model card (check your teachers' and data's licenses)",
    )
    p.add_argument("--commit-message", default=None, help="commit message (default: names the uploaded files)")
    p.add_argument(
        "--dry-run",
        metavar="DIR",
        default=None,
        help="write exactly the files that would be uploaded to DIR (new or empty) and stop",
    )
    return p


def main(argv=None, prog: str = "derd-scale push") -> int:
    args = build_parser(prog).parse_args(argv)
    from derd_scale.errors import RunError
    from derd_scale.hub import RunFolderError, push_to_hub, stage_upload

    parts = args.repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        print(f"--repo-id: expected ORG/NAME, got {args.repo_id!r}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            files = stage_upload(Path(args.model), args.repo_id, Path(args.dry_run), args.license)
            print(f"dry run: wrote {', '.join(files)} to {args.dry_run}")
            return 0
        url = push_to_hub(
            Path(args.model), args.repo_id, args.private, args.revision, args.license, args.commit_message
        )
    except (RunFolderError, RunError) as err:  # RunError: a DONE that is not JSON (RunDir.summary)
        print(str(err), file=sys.stderr)
        return 2
    print(f"pushed: {url}")
    return 0


if __name__ == "__main__":  # python -m derd_scale.commands.push: what accelerate launch -m runs
    sys.exit(main())
