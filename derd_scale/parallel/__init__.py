"""Backend-specific pieces behind ``derd_scale.distributed`` (the only caller).

- ``adapters``: the gradient-adapter interface and the replicated (plain/DDP) adapter.
- ``zero``: DeepSpeed ZeRO-1/2/3 engines and their adapter.
- ``fsdp2``: ``fully_shard`` wrapping and its adapter.
- ``batchnorm``: BatchNorm over the global batch (any device).

Multi-process checks: ``pytest -m slow tests/parallel`` (2 CPU processes per backend).
"""
