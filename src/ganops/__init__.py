"""ganops: train GANs, judge them, promote the good ones and serve them safely.

Layers (docs/architecture.md; `make lint` enforces them with import-linter, lazy imports included):

    app          cli, local                       composes everything below
    components   trainer | serving | operator     never import each other
    promotion                                     imports no component
    generator, models                             torch: the networks and sampling from a checkpoint
    contracts    api, contracts, checkpoints, memorization, storage, tracking, retry, logs, cost, images, home
"""

__version__ = "0.1.0"
