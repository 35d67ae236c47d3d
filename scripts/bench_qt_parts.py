"""What each Quantum-Train part costs: trainable parameters and the time of one generator step
(forward and backward of all the target's weights) for the ten-class CNN target (6,690 weights,
13 qubits), per setting of issue 27, beside the target's own training step on a batch of 100.

    python scripts/bench_qt_parts.py [--repeats 5] [--threads 1]

Prints one line per setting: qt_params, its share of the target's weights, and the median step
time after one untimed call. DIFFQAS_NATIVE_KERNEL decides the simulator's path (default: auto).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffqas_runner.config import search_space_file
    from diffqas_runner.nets import ToolkitCNN
    from diffqas_runner.qt.generator import Generator, GeneratorOptions
    from diffqas_runner.quantum import kernel

    net = ToolkitCNN(10)
    shapes = {name: p.shape for name, p in net.named_parameters()}
    total = sum(s.numel() for s in shapes.values())
    paper12 = search_space_file("paper12")
    settings = {  # label: (depth, options)
        "DiffQAS paper12 L=15, Linear mapping (today's)": (15, {}),
        "  + qt.tensor_affine=true": (15, {"tensor_affine": True}),
        "  + qt.mapping_hidden=[4,20,4] (toolkit MLP)": (15, {"mapping_hidden": (4, 20, 4)}),
        "  + qt.mapping_hidden=[4]": (15, {"mapping_hidden": (4,)}),
        "fixed Cyc-Ry (11) L=15": (15, {"mode": "fixed", "arch": 11}),
        "toolkit_u3 L=2, toolkit MLP": (
            2,
            {"mode": "fixed", "arch": 1, "space": search_space_file("toolkit_u3"), "mapping_hidden": (4, 20, 4)},
        ),
        "toolkit_u3 L=4, toolkit MLP": (
            4,
            {"mode": "fixed", "arch": 1, "space": search_space_file("toolkit_u3"), "mapping_hidden": (4, 20, 4)},
        ),
        "DiffQAS controlled16 L=3": (3, {"space": search_space_file("controlled16")}),
    }
    path = "C++ kernel" if kernel.load() is not None else "pure torch"
    print(f"# target: the toolkit CNN, {total:,} weights; {torch.get_num_threads()} thread(s), {path}, load {os.getloadavg()}")
    for label, (depth, opts) in settings.items():
        opts = {"space": paper12, **opts}
        torch.manual_seed(0)
        gen = Generator(shapes, depth, GeneratorOptions(**opts))
        times = []
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            sum(w.square().sum() for w in gen().values()).backward()
            if i:
                times.append(time.perf_counter() - start)
        count = gen.trainable_parameters()
        print(f"{label:>48} qt_params {count:4d} ({100 * count / total:4.1f}%)  step {1e3 * statistics.median(times):7.1f} ms")
    x, y = torch.randn(100, 784), torch.randint(0, 10, (100,))
    times = []
    for i in range(args.repeats + 1):
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        if i:
            times.append(time.perf_counter() - start)
    print(f"{'the CNN itself, batch 100':>48} {'':>20}  step {1e3 * statistics.median(times):7.1f} ms")


if __name__ == "__main__":
    main()
