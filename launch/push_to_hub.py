"""Push a finished run's student to the Hugging Face Hub, with a model card of its robust metrics.

    huggingface-cli login        # or export HF_TOKEN=...; the token is never written anywhere by us
    python launch/push_to_hub.py --model runs/cifar10_local --repo-id me/derd-resnet20-cifar10 [--private] [--revision main]
    python launch/push_to_hub.py --model runs/cifar10_local --repo-id me/x --dry-run /tmp/upload   # write what would be uploaded

Uploads config.json + model.safetensors (timm format), derd_config.yaml, eval_report.json
and a README.md model card (library_name, tags, datasets, base_model, model-index).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="finished run folder (with student/ and eval/report.json)")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--license", default="apache-2.0", help="license in the model card")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--dry-run", metavar="DIR", default=None, help="write the files that would be uploaded to DIR and stop")
    args = p.parse_args(argv)
    from derd_scale.hub import push_to_hub, stage_upload

    if "/" not in args.repo_id:
        print(f"--repo-id: expected ORG/NAME, got {args.repo_id!r}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            files = stage_upload(Path(args.model), args.repo_id, Path(args.dry_run), args.license)
            print(f"dry run: wrote {', '.join(files)} to {args.dry_run}")
            return 0
        url = push_to_hub(Path(args.model), args.repo_id, args.private, args.revision, args.license, args.commit_message)
    except FileNotFoundError as err:
        print(str(err), file=sys.stderr)
        return 2
    print(f"pushed: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
