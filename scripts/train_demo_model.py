"""Train the embedded demo model and write it, with its sample videos, into vivit_deploy/assets/.

    python scripts/train_demo_model.py            # about 2.5 minutes on 2 CPU cores

Deterministic: fixed seeds, one torch thread, deterministic algorithms; the data set is generated
(vivit_deploy.demo.motion), the label being the direction a textured square moves. Training and
validation videos never pass through a codec; the shipped sample videos are H.264 mp4 files
decoded back with PyAV, like any user video, and are held out (their own seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vivit_deploy.model.checkpoint import save_pretrained
from vivit_deploy.model.config import VivitConfig
from vivit_deploy.model.modeling import VivitForVideoClassification, count_parameters
from vivit_deploy.video.preprocessing import PreprocessorConfig, VideoPreprocessor
from vivit_deploy.demo.motion import DISTRACTOR_SHARE, LABELS, NOISE, SPEED_RANGE, VIDEO_FRAMES, make_dataset
from vivit_deploy.video.reading import read_video, sample_indices, write_video

ASSETS = Path(__file__).resolve().parents[1] / "vivit_deploy" / "assets"

MODEL_CONFIG = dict(
    image_size=32, num_frames=8, tubelet_size=(2, 8, 8), hidden_size=64, num_hidden_layers=4,
    num_attention_heads=4, intermediate_size=128, hidden_act="gelu_fast", layer_norm_eps=1e-6,
)
# transformers' ViViT preprocessing (rescale to [-1, 1] then normalise with 0.5/0.5), scaled to 32 px.
PREPROCESSOR_CONFIG = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def preprocess(videos: np.ndarray, pre: VideoPreprocessor, num_frames: int) -> np.ndarray:
    idx = sample_indices(VIDEO_FRAMES, num_frames, sampling="uniform")[0]
    return pre(videos[:, idx])


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = torch.cat([model(torch.from_numpy(x[i : i + 256])).logits for i in range(0, len(x), 256)])
    return float((logits.argmax(-1).numpy() == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--train", type=int, default=6000, help="training videos")
    parser.add_argument("--val", type=int, default=1000, help="held-out validation videos")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples-per-class", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # reductions in one fixed order: the same weights on every run
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()

    config = VivitConfig(**MODEL_CONFIG, id2label=dict(enumerate(LABELS)))
    pre = VideoPreprocessor(PreprocessorConfig(**PREPROCESSOR_CONFIG))
    train_videos, train_y = make_dataset(args.train, seed=args.seed + 1, noise=NOISE)
    val_videos, val_y = make_dataset(args.val, seed=args.seed + 2, noise=NOISE)
    train_x = preprocess(train_videos, pre, config.num_frames)
    val_x = preprocess(val_videos, pre, config.num_frames)
    print(f"data: {len(train_x)} train, {len(val_x)} held-out clips of shape {train_x.shape[1:]}")

    model = VivitForVideoClassification(config)
    print(f"model: {count_parameters(model):,} parameters")
    batch = 64
    steps = args.epochs * (len(train_x) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    xt, yt = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for i in range(len(xt) // batch):
            sel = order[i * batch : (i + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(xt[sel]).logits, yt[sel])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        val_acc = accuracy(model, val_x, val_y)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / (len(xt) // batch):.4f}  held-out accuracy {val_acc:.4f}")

    model.eval()
    model_dir = args.out / "demo-model"
    save_pretrained(model, model_dir, preprocessor=pre)

    # Held-out sample videos, through a real codec: encode, decode, preprocess, classify.
    samples_dir = args.out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    n = args.samples_per_class * len(LABELS)
    videos, labels = make_dataset(n, seed=args.seed + 3, noise=NOISE)
    names: dict[str, str] = {}
    counters = {label: 0 for label in LABELS}
    correct = 0
    for video, y in zip(videos, labels):
        label = LABELS[int(y)]
        name = f"{label.replace(' ', '_')}_{counters[label]}.mp4"
        counters[label] += 1
        write_video(samples_dir / name, video, fps=8)
        names[name] = label
        clip = read_video(samples_dir / name, config.num_frames, sampling="uniform")
        with torch.no_grad():
            predicted = int(model(torch.from_numpy(pre(clip))).logits.argmax())
        correct += predicted == int(y)
    (samples_dir / "labels.json").write_text(json.dumps(dict(sorted(names.items())), indent=2) + "\n")

    val_acc = accuracy(model, val_x, val_y)
    # A model that ignores time can at best tell the axis of motion: 50%. Shuffling the frames of the
    # held-out clips shows how much the trained model relies on their order.
    shuffled = val_x[:, np.random.default_rng(0).permutation(config.num_frames)]
    shuffled_acc = accuracy(model, shuffled, val_y)
    card = {
        "task": "direction of motion of a bordered square, at a speed drawn from speed_range pixels per frame, most "
                "clips with a distractor square moving its own way (vivit_deploy.demo.motion)",
        "speed_range": list(SPEED_RANGE),
        "distractor_share": DISTRACTOR_SHARE,
        "noise": NOISE,
        "labels": list(LABELS),
        "train_clips": len(train_x),
        "heldout_clips": len(val_x),
        "heldout_accuracy": round(val_acc, 4),
        "heldout_accuracy_frames_shuffled": round(shuffled_acc, 4),
        "sample_videos": n,
        "sample_video_accuracy": round(correct / n, 4),
        "parameters": count_parameters(model),
        "epochs": args.epochs,
        "seed": args.seed,
        "torch": torch.__version__,
        "command": "python scripts/train_demo_model.py",
    }
    (model_dir / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    print(f"wrote {model_dir} and {n} sample videos in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
