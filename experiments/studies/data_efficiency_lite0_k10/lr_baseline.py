"""Check behind experiments/README.md "Research studies": logistic regression on clean pooled Lite0 features.

Step 1 (embed every NEU-DET image once, 224 px, the frozen ImageNet backbone of any frozen-Lite0 checkpoint):
    python experiments/studies/data_efficiency_lite0_k10/lr_baseline.py embed CKPT FEATS.npz
Step 2 (scikit-learn logistic regression, C=1, on the k-per-class subsets that data.samples_per_class=k draws):
    python experiments/studies/data_efficiency_lite0_k10/lr_baseline.py fit FEATS.npz 10
"""
import sys
import time

import numpy as np


def embed(ckpt, out):
    import torch

    from neu_defects.core.checkpoint import load_module
    from neu_defects.data import build_index
    from neu_defects.data.cache import load_images
    from neu_defects.data.transforms import build_transform

    module = load_module(ckpt).eval()
    spec = module.input_spec
    index = build_index(None)
    images, hashes = load_images(index, spec["in_chans"], spec["image_size"])
    transform = build_transform(spec["mean"], spec["std"])
    start, feats = time.time(), []
    with torch.no_grad():
        for i in range(0, len(images), 64):
            feats.append(module.net.embed(torch.stack([transform(image=im)["image"] for im in images[i:i + 64]])))
    print(f"embedded {len(images)} images in {time.time() - start:.0f} s")
    np.savez(out, feats=torch.cat(feats).numpy(), labels=np.array([s.label for s in index.samples]),
             hashes=np.array(hashes))


def fit(feats_file, k):
    from sklearn.linear_model import LogisticRegression

    from neu_defects.data.splits import assign_splits, limit_per_class

    data = np.load(feats_file)
    x, y, groups = data["feats"], data["labels"], list(data["hashes"])
    for split in ("70_15_15", "80_20"):
        accs = []
        for seed in range(10):
            assignment = limit_per_class(assign_splits(list(y), groups, split=split, seed=seed), list(y), k, seed=seed)
            train = np.array([s == "train" for s in assignment])
            test = np.array([s == "test" for s in assignment])
            clf = LogisticRegression(C=1.0, max_iter=5000).fit(x[train], y[train])
            accs.append(float((clf.predict(x[test]) == y[test]).mean()))
        print(f"k={k} split={split} seeds 0-9:", " ".join(f"{a:.4f}" for a in accs),
              f"| seeds 0-2 mean {np.mean(accs[:3]):.4f} | all {np.mean(accs):.4f} ± {np.std(accs, ddof=1):.4f}")


if __name__ == "__main__":
    if sys.argv[1] == "embed":
        embed(sys.argv[2], sys.argv[3])
    else:
        fit(sys.argv[2], int(sys.argv[3]))
