"""Test support: :class:`LocalNetwork`, a whole CryptoRAT network in this process.

A real dispatcher (SQLite ledger in a temporary directory) and ``nodes`` real compute nodes
running models on the CPU (tract), talking QUIC on 127.0.0.1, so that a notebook or a test
can try the whole flow offline::

    from cryptorat.testing import LocalNetwork

    with LocalNetwork(nodes=2, credits=1_000_000) as net:
        client = net.connect()            # or cryptorat.connect(net.addr, net.dispatcher_id, net.key)
        model = client.upload_model(open("model.onnx", "rb").read())
        ...

The network runs on its own threads (a tokio runtime owned by the object) until
``close()`` (or the end of the ``with`` block). Nodes here prove only their CPU: what they
declare of GPUs is not proven, and nothing is paid for real.
"""

from __future__ import annotations

from ._cryptorat import LocalNetwork, rust_infer_many_seconds

__all__ = ["LocalNetwork", "rust_infer_many_seconds"]
