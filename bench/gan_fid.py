"""FID of a GAN run on the project's classifier features, beside the real-vs-real floor.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/gan_fid.py RUN_DIR_OR_CKPT [--num 10000]

FID: 10,000 generated images (labels from the learned prior, EMA generator) against the 10,000
MNIST test images. Floor: 10,000 random real training images against the same test images.
Coverage: share of samples the classifier labels with probability >= 0.9, and the class histogram.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
from aigc_lab.data.mnist import load_mnist, to_unit_range
from aigc_lab.metrics.fid import ClassifierFeatures, load_classifier, make_fid
from aigc_lab.sample import load_generator, sample_images
from aigc_lab.utils.hardware import machine_line


def fid(extractor: ClassifierFeatures, real: torch.Tensor, fake: torch.Tensor, batch: int = 1000) -> float:
    metric = make_fid(extractor)
    for i in range(0, len(real), batch):
        metric.update(to_unit_range(real[i:i + batch]), real=True)
    for i in range(0, len(fake), batch):
        metric.update(to_unit_range(fake[i:i + batch]), real=False)
    return float(metric.compute())


def coverage(extractor: ClassifierFeatures, images: torch.Tensor, threshold: float = 0.9) -> tuple[float, list[float]]:
    probs = torch.cat([extractor.class_probs(to_unit_range(images[i:i + 1000])) for i in range(0, len(images), 1000)])
    confidence, preds = probs.max(dim=1)
    hist = torch.bincount(preds, minlength=probs.shape[1]).float() / len(images)
    return float(confidence.ge(threshold).float().mean()), hist.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a GAN run dir (its best checkpoint) or a .ckpt file")
    parser.add_argument("--num", type=int, default=10_000)
    parser.add_argument("--data-dir", default=os.environ.get("AIGC_DATA_DIR", "data"))
    parser.add_argument("--classifier", default=os.path.join(os.environ.get("AIGC_CACHE_DIR", ".cache"),
                                                             "mnist_classifier.pt"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    print(machine_line())

    root = Path(args.data_dir) / "mnist"
    train_images, _ = load_mnist(root, train=True, download=False)
    test_images, test_labels = load_mnist(root, train=False, download=False)
    extractor = ClassifierFeatures(load_classifier(args.classifier))
    real = test_images[: args.num].unsqueeze(1)
    train_pick = train_images[torch.randperm(len(train_images))[: args.num]].unsqueeze(1)

    ckpt_path = resolve_checkpoint(args.run)
    generator, prior = load_generator(load_checkpoint(ckpt_path))
    fake = sample_images(generator, prior, args.num, seed=args.seed)

    floor = fid(extractor, real, train_pick)
    score = fid(extractor, real, fake)
    confident, hist = coverage(extractor, fake)
    real_confident, _ = coverage(extractor, real)
    print(f"checkpoint: {ckpt_path}")
    print("| FID (10k gen vs 10k test) | floor (10k train vs 10k test) | confident share (real) "
          "| class share min / max |")
    print("|---|---|---|---|")
    print(f"| {score:.2f} | {floor:.2f} | {confident:.3f} ({real_confident:.3f}) | {min(hist):.3f} / {max(hist):.3f} |")
    print("class histogram:", " ".join(f"{c}:{s:.3f}" for c, s in enumerate(hist)))


if __name__ == "__main__":
    main()
