"""Optional benchmark - ``torch.compile`` of the dense RIGSA training step on CPU (``--compile`` or
``--only compile``).

The model with dense RIGSA adapters (density 1, merged form) is stepped eagerly and through ``torch.compile(model)``
(inductor, default mode; the optimizer step stays eager). Reported: the compilation cost (first compiled step minus
a median eager step), and the steady-state compiled/eager ratio over alternating repetitions. One shape (batch
8 x 200): a new sequence length would recompile (or trigger dynamic shapes) - the train job's padded batches vary.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import alternate, environment, load_smollm2, print_table, random_batch, record, say, summary


def run(
    quick: bool = False, threads: list[int] | None = None, reps: int | None = None, **_: Any
) -> dict[str, Any]:
    """Run the benchmark; returns (and records) its results entry."""
    import torch

    from bench.steps import Host, rigsa_adapters, rigsa_variant, train_step

    n = (threads or [1])[0]
    reps = reps or (2 if quick else 3)
    batch_shape = (2, 64) if quick else (8, 200)
    torch.set_num_threads(n)
    t_start = time.time()
    env = environment()
    model, _ = load_smollm2()
    host = Host(model)
    variant = rigsa_variant(rigsa_adapters(host))
    host.add("rigsa", variant)
    host.activate("rigsa")
    batch = random_batch(int(model.config.vocab_size), *batch_shape, seed=0)
    compiled = torch.compile(model)

    def eager() -> float:
        return train_step(model, batch, variant.optimizer, variant.params)

    def comp() -> float:
        return train_step(compiled, batch, variant.optimizer, variant.params)

    eager()  # AdamW state + kernels
    say(f"[compile] compiling the RIGSA step (batch {batch_shape[0]}x{batch_shape[1]}, {n} thread(s))")
    t0 = time.perf_counter()
    comp()
    first = time.perf_counter() - t0
    times = alternate({"eager": eager, "compiled": comp}, reps=reps, warmup=0, log=say)
    e, c = summary(times["eager"]), summary(times["compiled"])
    ratio = summary([a / b for a, b in zip(times["compiled"], times["eager"])])["median"]
    compile_s = first - e["median"]
    print_table(
        f"torch.compile of the dense RIGSA step, batch {batch_shape[0]}x{batch_shape[1]}, {n} thread(s)",
        ["figure", "value"],
        [
            ["eager s/step (median)", f"{e['median']:.2f}"],
            ["compiled s/step (median)", f"{c['median']:.2f}"],
            ["compiled / eager (paired median)", f"{ratio:.3f}"],
            ["compilation cost s (first step - eager step)", f"{compile_s:.1f}"],
        ],
    )
    entry = {
        "benchmark": "compile",
        "quick": quick,
        "batch": list(batch_shape),
        "threads": n,
        "seconds": times,
        "first_compiled_step_s": first,
        "compile_cost_s": compile_s,
        "compiled_over_eager": ratio,
        "env": env,
        "wall_s": time.time() - t_start,
    }
    record("compile", entry)
    return entry


def headline(entry: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, measured, target, verdict)."""
    return [
        ("compiled / eager RIGSA step", f"{entry['compiled_over_eager']:.3f}x", "(optional)", ""),
        ("compilation cost", f"{entry['compile_cost_s']:.0f} s", "", ""),
    ]
