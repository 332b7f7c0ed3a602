"""Evaluate the embedded (or any) model on the held-out shapes prompts with the pixel checker.

Prints, per condition scale, the accuracy of the first sample, of the CLIP-ranked best sample
and the mean over all samples, for single-object colour+shape, with position, and two-object
relation; plus the wall time. Targets (issue 4): ≥95% colour+shape, ≥90% with position, ≥80%
two-object relation; CLIP re-ranking better than the first sample.

    python benchmarks/eval_embedded.py                           # dalle_core/embedded, n=4, scales 1,3,10
    python benchmarks/eval_embedded.py runs/embedded/model --n 8 --scales 3,10 --out runs/eval.json
    python benchmarks/eval_embedded.py --split train             # the same kinds over training combinations
"""

from __future__ import annotations

import sys
import time

from dalle_core.train.evaluate import main

if __name__ == "__main__":
    t0 = time.time()
    code = main(sys.argv[1:])
    print(f"total wall time {time.time() - t0:.0f}s")
    sys.exit(code)
