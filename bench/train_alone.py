"""Training steps of one implementation alone in this process, calls back to back: lstmrs or
PyTorch (never both in one process), each step as the benchmark's training rows run it
(``impls.lstmrs_fns`` / ``impls.torch_fns``: forward + backward of ``output.sum()``). Prints per
case the median and fastest wall time and the median CPU time of all threads. For A/B
comparisons of builds, run it in turns with each build's extension module in place (see the
helpers' brief on timing); torch's row is the reference the ratios of issue 16 divide by.

    python bench/train_alone.py lstmrs --threads 2 --repeats 15
    python bench/train_alone.py torch --threads 2 --cases lstm:32,100,8,64 lstm:64,64,512,1024
"""

from __future__ import annotations

import alone
import impls


def callable_for(which: str, cell: str, b, t, i, h, layers, threads):
    """The timed training step of ``which`` on the case's input and seed-0 weights."""
    x = impls.make_input(b, t, i)
    if which == "lstmrs":
        import lstmrs  # only the library timed is imported: no second thread pool

        lstmrs.set_num_threads(threads)
        layer = impls.lstmrs_layer(lstmrs, cell, i, h, layers)
        return impls.lstmrs_fns(layer, x)[1]
    import torch  # only the library timed is imported: no second thread pool

    torch.set_num_threads(threads)
    module = impls.torch_module(torch, cell, i, h, layers)
    return impls.torch_fns(torch, module, x)[1]


if __name__ == "__main__":
    alone.main(__doc__, ["lstmrs", "torch"], callable_for)
