"""Write labelled videos of the demo task: a directory any labelled-clip option reads (its labels.json).

    python scripts/write_demo_videos.py OUT --count 400             # 400 H.264 clips of the task, ~5 MB
    vivit-export vivit_deploy/assets/demo-model -o merged.onnx --merge-tokens auto --videos OUT
    vivit-deploy compare --videos OUT --merge-tokens 16 --gate accuracy:99% --html report.html

The clips are the task's held-out kind (vivit_deploy.demo.motion: random speeds, most with a distractor, noise), from
a seed neither training, its held-out set, the shipped samples nor int8 calibration uses, written at 8 fps like the
shipped samples. An existing OUT/labels.json is refused rather than overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SEED = 5  # training 1, held-out 2, samples 3, calibration 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    from vivit_deploy.demo.motion import LABELS, NOISE, make_dataset
    from vivit_deploy.video.reading import write_video

    labels_file = args.out / "labels.json"
    if labels_file.exists():
        parser.error(f"{labels_file} exists: give an empty directory")
    args.out.mkdir(parents=True, exist_ok=True)
    videos, labels = make_dataset(args.count, seed=args.seed, noise=NOISE)
    names = {}
    for i, (video, label) in enumerate(zip(videos, labels)):
        name = f"clip{i:05d}.mp4"
        write_video(args.out / name, video, fps=8)
        names[name] = LABELS[int(label)]
    labels_file.write_text(json.dumps(names, indent=1) + "\n")
    print(f"wrote {args.count} labelled videos of the demo task to {args.out} (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
