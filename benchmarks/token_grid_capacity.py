"""How much of a pictogram a token grid can carry, before any VQGAN is trained.

    pip install scikit-learn
    python benchmarks/token_grid_capacity.py ART_DIR [--grid 8:1024 --grid 4:1024 ...]

Each ``F:K`` quantises the images' F×F pixel patches to K codes (k-means on training scenes, one
code per patch). That is a VQ model with an identity encoder and a lookup decoder, and it sits on the
same token grid as an fF VQGAN with K codes. Held-out scenes are encoded and decoded this way, then
read by the pictogram checker (``dalle_core.train.pictograms.check``). It prints how often the drawn
concept is among the checker's top 5 and top 1, and how often the background is right.

A grid that loses the concepts here cannot carry them after training either. A trained decoder
smooths the patches but has the same bits to work with. ART_DIR is a folder written by
``dalle_core.train.pictograms.fetch_sources`` (``concepts.json`` + ``art.npz``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dalle_core.train.pictograms import Concepts, check, make_dataset


def patches(images: np.ndarray, f: int) -> np.ndarray:
    n, h, w, c = images.shape
    x = images.reshape(n, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, f * f * c).astype(np.float32) / 255.0


def unpatch(p: np.ndarray, n: int, size: int, f: int) -> np.ndarray:
    g = size // f
    x = p.reshape(n, g, g, f, f, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, size, size, 3)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("art_dir")
    ap.add_argument("--grid", action="append", metavar="F:K",
                    help="patch size : codes (repeatable; default 8:1024 4:1024)")
    ap.add_argument("--train", type=int, default=6000, help="training scenes for k-means")
    ap.add_argument("--test", type=int, default=300, help="held-out scenes checked")
    args = ap.parse_args(argv)
    try:
        from sklearn.cluster import MiniBatchKMeans
    except ImportError:
        print("error: this benchmark needs scikit-learn (pip install scikit-learn)")
        return 2
    concepts = Concepts.load(args.art_dir)
    train = make_dataset(concepts, args.train, seed=1)
    test = make_dataset(concepts, args.test, seed=2)
    size = test.images.shape[1]
    print(f"{len(concepts)} concepts, {size}x{size} images; k-means on {args.train} scenes, "
          f"{args.test} held-out scenes checked")
    print(f"{'grid':>10s} {'tokens':>7s} {'top-5':>6s} {'top-1':>6s} {'bg':>6s} {'L1':>6s} {'s':>5s}")
    for spec in args.grid or ["8:1024", "4:1024"]:
        f, k = (int(v) for v in spec.split(":"))
        t0 = time.perf_counter()
        km = MiniBatchKMeans(n_clusters=k, batch_size=8192, n_init=1, max_iter=30, random_state=0)
        km.fit(patches(train.images, f))
        rec = unpatch(km.cluster_centers_[km.predict(patches(test.images, f))], len(test), size, f)
        res = [check(img, scene, concepts) for img, scene in zip(rec, test.scenes, strict=True)]
        l1 = np.abs(rec.astype(np.float32) - test.images).mean() / 255
        print(f"{f'f{f} K={k}':>10s} {(size // f) ** 2:7d} {np.mean([r['concepts'] for r in res]):6.3f} "
              f"{np.mean([r['top1'] for r in res]):6.3f} {np.mean([r['background'] for r in res]):6.3f} "
              f"{l1:6.3f} {time.perf_counter() - t0:5.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
