"""Search-step cost of each space: supernet step time ÷ fixed-subnet train-step time.

Both are measured side by side on the same batch in one process: a supernet search step is
first-order DARTS (α step on a val batch + weight step on a train batch); the subnet step is
one SGD step of the supernet's argmax subnet. Prints one JSON line:
``{"cell_step_ratio": float, "width_step_ratio": float, ...}``.

Usage: ``python bench/search_cost.py [--batch 64] [--repeats 5] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from fednas.config.loading import load_config
from fednas.spaces.registry import build_space
from fednas.training.train import make_optimizer


def time_steps(step, repeats: int) -> float:
    """Median seconds of ``step()`` after two warm-up calls."""
    step()
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(space_name: str, options: dict, shape: tuple[int, int, int], batch: int,
            repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = build_space(space_name, input_shape=shape, num_classes=10, **options)
    sub = net.subnet(net.genotype())
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    w_opt = make_optimizer("sgd", net.weights(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-3)
    s_opt = make_optimizer("sgd", sub.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)

    def search_step() -> None:
        for opt in (a_opt, w_opt):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()

    def subnet_step() -> None:
        s_opt.zero_grad(set_to_none=True)
        F.cross_entropy(sub(x), y).backward()
        s_opt.step()

    search, subnet = time_steps(search_step, repeats), time_steps(subnet_step, repeats)
    return {"search_s": search, "subnet_s": subnet, "ratio": search / subnet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config("simulations/quickstart.toml")
    shape = (1, 28, 28)  # Fashion-MNIST
    cell = measure("cell", cfg.space.options(), shape, args.batch, args.repeats)
    width = measure("width", {"depth": 20, "base_channels": 16, "stem_stride": 2}, shape,
                    args.batch, args.repeats)
    print(json.dumps({
        "cell_step_ratio": round(cell["ratio"], 2), "width_step_ratio": round(width["ratio"], 2),
        "cell_search_step_s": round(cell["search_s"], 4),
        "cell_subnet_step_s": round(cell["subnet_s"], 4),
        "width_search_step_s": round(width["search_s"], 4),
        "width_subnet_step_s": round(width["subnet_s"], 4),
        "batch": args.batch, "threads": torch.get_num_threads(),
        "cell_space": "simulations/quickstart.toml", "width_space": "resnet20, stem stride 2",
    }))


if __name__ == "__main__":
    main()
