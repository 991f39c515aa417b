"""Train the bundled digits feature extractor (``ganops.trainer.evaluate.digits.DigitsNet``).

Data: scikit-learn's bundled ``load_digits`` (no download), the fixed stratified split of
``ganops.trainer.evaluate.digits.digits_split`` (25 % held out). Augmentation: each 8×8 training image goes
through a random intermediate resolution (8–32 px, as a GAN for ``builtin:digits`` may produce) and a random
shift of up to one pixel, then the extractor's own preprocessing to 16×16. Deterministic (seeded, one thread,
deterministic algorithms); takes well under a minute on 2 CPU cores.

Writes ``src/ganops/trainer/evaluate/weights/digits_features.safetensors`` and a ``.json`` sidecar with the
held-out accuracy, and fails if that accuracy is below 97 %. The features are finally rescaled so that mean
||f||²/d is 1 on the training digits (logits unchanged), the magnitude the KID kernel is meant for.

    .venv/bin/python scripts/train_digits_features.py [--epochs 40] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ganops.trainer.evaluate.digits import (
    SPLIT_RANDOM_STATE,
    SPLIT_TEST_SIZE,
    DigitsNet,
    digits_split,
    preprocess_digits,
)

MIN_ACCURACY = 0.97
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "ganops" / "trainer" / "evaluate" / "weights"
SIZES = (8, 12, 16, 24, 32)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random intermediate resolution, then the extractor's preprocessing, then a random ±1 px shift."""
    size = SIZES[int(torch.randint(len(SIZES), (1,), generator=generator))]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    x = preprocess_digits(x)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = (int(v) for v in torch.randint(0, 3, (2,), generator=generator))
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def accuracy(net: DigitsNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.inference_mode():
        predicted = net(preprocess_digits(x)).argmax(dim=1)
    return float((predicted == y).float().mean())


def normalise_feature_scale(net: DigitsNet, x_train: torch.Tensor) -> float:
    """Rescale the features so that mean ||f||² / d is 1 on the training digits (the scale the KID kernel
    ``(x·y/d + 1)^3`` assumes). ReLU is positively homogeneous, so scaling fc1 by s and fc2's weight by 1/s
    scales the features by s and leaves the logits unchanged."""
    net.eval()
    with torch.inference_mode():
        f = net.features(preprocess_digits(x_train))
        s = float(1.0 / torch.sqrt((f * f).sum(dim=1).mean() / f.shape[1]))
    with torch.no_grad():
        net.fc1.weight.mul_(s)
        net.fc1.bias.mul_(s)
        net.fc2.weight.div_(s)
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    x_train_np, y_train_np, x_test_np, y_test_np = digits_split()
    x_train, y_train = torch.from_numpy(x_train_np), torch.from_numpy(y_train_np)
    x_test, y_test = torch.from_numpy(x_test_np), torch.from_numpy(y_test_np)

    net = DigitsNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            logits = net(augment(x_train[idx], generator))
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == args.epochs - 1:
            held_out = accuracy(net, x_test, y_test)
            print(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}  held-out acc {held_out:.4f}")
    seconds = time.perf_counter() - start
    feature_scale = normalise_feature_scale(net, x_train)

    train_acc = accuracy(net, x_train, y_train)
    test_acc = accuracy(net, x_test, y_test)
    # Held-out accuracy through other resolutions the extractor accepts (robustness check, reported only).
    by_size = {}
    for size in (16, 32):
        up = F.interpolate(x_test, size=(size, size), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
        by_size[str(size)] = round(accuracy(net, up, y_test), 4)

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "digits_features.safetensors"
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(weights), metadata={"architecture": "ganops.trainer.evaluate.digits.DigitsNet"})
    weights.chmod(0o644)
    sidecar = {
        "architecture": "ganops.trainer.evaluate.digits.DigitsNet",
        "feature_dim": DigitsNet.FEATURE_DIM,
        "input_size": DigitsNet.INPUT_SIZE,
        "dataset": "sklearn.datasets.load_digits",
        "split": {"test_size": SPLIT_TEST_SIZE, "random_state": SPLIT_RANDOM_STATE, "stratify": True},
        "num_train": len(x_train),
        "num_test": len(x_test),
        "heldout_accuracy": round(test_acc, 4),
        "heldout_accuracy_by_input_size": {"8": round(test_acc, 4), **by_size},
        "train_accuracy": round(train_acc, 4),
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "feature_scale_applied": round(feature_scale, 6),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    (args.out / "digits_features.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(json.dumps(sidecar, indent=2))
    if test_acc < MIN_ACCURACY:
        print(f"held-out accuracy {test_acc:.4f} < {MIN_ACCURACY}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
