"""Loss ablations: K variants of one config trained at once in one compiled program.

`variants` expands `config.ablation` into members, `strategies` runs the member axis
(`vmap`, `unroll`, sharded over a `member` mesh axis), `report` writes `ablation.md` and
`ablation.png` from the logs. The training loop (`jaxseg.train.loop`) does the rest.
"""
