"""Root pytest configuration: runs before anything imports jax.

Eight virtual CPU devices let the scale-out tests (sharded jit, pmap,
shard_map) run on any machine; single-device code is unaffected (it runs on
device 0).
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
