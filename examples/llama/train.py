r"""Trains the LLaMA-style example model with Adam-mini or AdamW.

Runs offline on a CPU in a few minutes with no arguments::

  python examples/llama/train.py                      # Adam-mini, tiny preset
  python examples/llama/train.py --optimizer adamw    # the baseline
  python examples/llama/train.py --preset paper_39m --steps 20000 \
      --batch-size 64 --seq-len 512 --out runs/39m    # with an accelerator

Writes ``OUT/metrics.jsonl`` (one JSON object per logged step),
``OUT/summary.json``, ``OUT/config.json`` and orbax checkpoints under
``OUT/checkpoints``. ``--resume`` continues from the latest checkpoint and
produces bit-identical parameters and losses to an uninterrupted run: the
data of step ``k`` is a function of ``(seed, k)`` alone and the learning-rate
schedule reads the step count stored in the optimizer state.

``main(argv)`` runs the same thing in-process and returns the summary dict.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

if __package__ in (None, ""):
  # Run as a script: make `examples.llama` (and a source checkout's
  # `optax_mini`) importable without installing anything.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import tqdm  # noqa: E402
from flax import nnx  # noqa: E402

from examples.llama import data  # noqa: E402
from examples.llama import model as model_lib  # noqa: E402
from optax_mini import quantize  # noqa: E402

OPTIMIZERS = ("adam_mini", "adamw")
# --per-element: the parameter groups an ablation can hand back to plain Adam
# (one v per element), by the path components that name them in this model.
PER_ELEMENT_GROUPS = {
  "heads": ("q_proj", "k_proj"),
  "value": ("v_proj",),
  "attn_out": ("o_proj",),
  "mlp": ("mlp",),
  "embed": ("embed_tokens",),
  "lm_head": ("lm_head",),
}
# --per-head: the groups a variant can give one v per attention head instead
# of one per output neuron; the rule each gets, as (path, role, layout).
PER_HEAD_GROUPS = {
  "value": ("v_proj", "heads", None),  # [in, (kv_heads head_dim)] -> [kv_heads]
  "attn_out": ("o_proj", "heads", "(n h) i"),  # [(heads head_dim), out] -> [heads]
}
# --per-neuron: query/key kernels with one v per output neuron instead of one
# per head (more blocks, still a negligible share of the state), the
# library's BlockRules(query_key_per_neuron=True).
PER_NEURON_GROUPS = {"heads": "query_key_per_neuron"}  # [in, H*D] -> [H*D]
_MU_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "int8": jnp.int8}
# Flags that may change between a run and its --resume without changing
# what is computed.
# The mesh is among them: a sharded checkpoint restores onto another mesh.
_RESUME_FREE_FLAGS = frozenset(
  {"resume", "stop_at", "quiet", "explain", "checkpoint_every", "out", "fsdp", "tp"}
)
Params = dict[str, Any]


def build_parser() -> argparse.ArgumentParser:
  """The command-line flags of ``train.py`` (``compare.py`` passes its own through)."""
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam_mini")
  p.add_argument(
    "--preset",
    choices=sorted(model_lib.PRESETS),
    default="tiny",
    help="model shapes (model.PRESETS)",
  )
  p.add_argument(
    "--steps", type=int, default=1000, help="optimizer steps; the cosine schedule spans them"
  )
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
  p.add_argument(
    "--warmup",
    type=int,
    default=None,
    help="linear warmup steps from 0 to --lr (default: 10%% of --steps, 100 at 1000: the "
    "learning-rate study's best for both optimizers on both corpora)",
  )
  p.add_argument(
    "--min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of --lr"
  )
  p.add_argument("--b1", type=float, default=0.9)
  p.add_argument(
    "--b2", type=float, default=0.95, help="0.95 as in the paper's Llama pre-training runs"
  )
  p.add_argument("--eps", type=float, default=1e-8)
  p.add_argument(
    "--weight-decay",
    type=float,
    default=0.1,
    help="decoupled; matrices only (not norm scales), as the "
    "official Adam-mini does, for both optimizers",
  )
  p.add_argument(
    "--clip-norm", type=float, default=1.0, help="global gradient-norm clip; 0 disables"
  )
  p.add_argument(
    "--value-as-one-block",
    action=argparse.BooleanOptionalAction,
    default=False,
    help="Adam-mini: one v per value projection instead of one "
    "per output neuron (advised by the authors for short runs)",
  )
  p.add_argument(
    "--per-element",
    default="",
    help="Adam-mini ablation: comma-separated groups that get plain Adam's one v per element "
    f"({','.join(PER_ELEMENT_GROUPS)})",
  )
  p.add_argument(
    "--mu-dtype",
    choices=("float32", "bfloat16", "int8"),
    default="float32",
    help="Adam-mini: the first moment's storage (int8: block-quantized, an eighth of AdamW's state)",
  )
  p.add_argument(
    "--mu-code",
    choices=quantize.CODES,
    default=quantize.DEFAULT_CODE,
    help="Adam-mini with --mu-dtype int8: the code map (see optax_mini.quantize)",
  )
  p.add_argument(
    "--per-head",
    default="",
    help="Adam-mini variant: comma-separated groups that get one v per attention head instead "
    f"of one per output neuron ({','.join(PER_HEAD_GROUPS)})",
  )
  p.add_argument(
    "--per-neuron",
    default="",
    help="Adam-mini variant: comma-separated groups that get one v per output neuron instead "
    f"of one per head ({','.join(PER_NEURON_GROUPS)})",
  )
  p.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the batch order")
  p.add_argument(
    "--corpus",
    choices=data.CORPORA,
    default="pydoc",
    help="built-in text: 'pydoc' (CPython's docs, 0.47 MB: long runs repeat it) or 'stdlib' "
    "(the standard library's sources, ~12 MB: does not run out; whole files held out)",
  )
  p.add_argument(
    "--text",
    default=None,
    help="UTF-8 file to train on instead of --corpus",
  )
  p.add_argument(
    "--out", default="runs/llama", help="directory for metrics, summary and checkpoints"
  )
  p.add_argument("--log-every", type=int, default=10)
  p.add_argument(
    "--eval-every",
    type=int,
    default=100,
    help="held-out evaluation interval (and at the last step)",
  )
  p.add_argument("--eval-batches", type=int, default=8, help="held-out batches per evaluation")
  p.add_argument(
    "--checkpoint-every",
    type=int,
    default=200,
    help="checkpoint interval (and at the last step); 0: last step only",
  )
  p.add_argument(
    "--resume", action="store_true", help="continue from the latest checkpoint in --out"
  )
  p.add_argument(
    "--stop-at",
    type=int,
    default=None,
    help="stop (and checkpoint) after this step, as if "
    "interrupted; --resume later finishes the run",
  )
  p.add_argument(
    "--explain", action="store_true", help="print Adam-mini's block table for the model first"
  )
  p.add_argument("--quiet", action="store_true", help="no progress bar and no printed summary")
  p.add_argument(
    "--fsdp",
    type=int,
    default=1,
    help="mesh axis sharding the batch and the parameters' input axis (FSDP); "
    "fsdp*tp devices are used. On a CPU, set "
    "XLA_FLAGS=--xla_force_host_platform_device_count=N before starting",
  )
  p.add_argument(
    "--tp", type=int, default=1, help="mesh axis sharding heads and MLP features (tensor parallel)"
  )
  return p


def decay_mask(params: Params) -> Params:
  """Decays matrices only: norm scales (1-D) are not decayed.

  The official Adam-mini skips names containing ``norm``/``bias``; in this
  model that is exactly the 1-D leaves, and AdamW gets the same mask so that
  the comparison differs in the second moment only.
  """
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def _groups(flag: str, value: str, known: Mapping[str, Any]) -> list[str]:
  groups = [g for g in (value or "").split(",") if g]
  unknown = sorted(set(groups) - set(known))
  if unknown:
    raise ValueError(f"{flag} {unknown}: choose from {','.join(known)}.")
  return groups


def adam_mini_blocks(args: argparse.Namespace) -> Any:
  """Adam-mini's ``blocks=`` for the flags: default rules, value as one block,
  groups switched to per-element ``v`` (``--per-element``), to one ``v``
  per attention head (``--per-head``) or per output neuron (``--per-neuron``)."""
  import optax_mini

  per_element = _groups("--per-element", getattr(args, "per_element", ""), PER_ELEMENT_GROUPS)
  per_head = _groups("--per-head", getattr(args, "per_head", ""), PER_HEAD_GROUPS)
  per_neuron = _groups("--per-neuron", getattr(args, "per_neuron", ""), PER_NEURON_GROUPS)
  for flag, groups in (("--per-head", per_head), ("--per-neuron", per_neuron)):
    both = sorted(set(per_element) & set(groups))
    if both:
      raise ValueError(f"{both} given to both --per-element and {flag}: pick one.")
  rules = [optax_mini.Rule(name, "element") for g in per_element for name in PER_ELEMENT_GROUPS[g]]
  rules += [optax_mini.Rule(*PER_HEAD_GROUPS[g]) for g in per_head]
  switches = {PER_NEURON_GROUPS[g]: True for g in per_neuron}
  # The authors advise one block per value matrix for runs shorter than
  # ~10k steps (Adam-mini README; paper Appendix C.3).
  if args.value_as_one_block or rules or switches:
    return optax_mini.BlockRules(
      rules=rules, value_as_one_block=args.value_as_one_block, **switches
    )
  return None


def make_optimizer(
  name: str,
  learning_rate: optax.ScalarOrSchedule,
  args: argparse.Namespace,
  config: model_lib.Config,
) -> optax.GradientTransformation:
  """The optimizer ``name`` with the run's hyper-parameters, clipping first.

  Args:
    name: ``"adam_mini"`` or ``"adamw"``.
    learning_rate: a float or an optax schedule.
    args: parsed flags (``b1``, ``b2``, ``eps``, ``weight_decay``,
      ``clip_norm``, ``value_as_one_block``).
    config: the model shapes; Adam-mini needs ``head_dim`` to cut the flat
      ``[in, heads * head_dim]`` q/k kernels into heads.

  Returns:
    ``chain(clip_by_global_norm, optimizer)``.
  """
  common = dict(
    b1=args.b1,
    b2=args.b2,
    eps=args.eps,
    weight_decay=args.weight_decay,
    mask=decay_mask,
  )
  if name == "adamw":
    opt = optax.adamw(learning_rate, **common)
  elif name == "adam_mini":
    # Imported here so that --optimizer adamw runs without the package.
    import optax_mini

    opt = optax_mini.adam_mini(
      learning_rate,
      **common,
      head_dim=config.head_dim,
      blocks=adam_mini_blocks(args),
      mu_dtype=_MU_DTYPES[getattr(args, "mu_dtype", "float32")],
      mu_code=getattr(args, "mu_code", quantize.DEFAULT_CODE),
    )
  else:
    raise ValueError(f"--optimizer {name!r}: expected one of {OPTIMIZERS}.")
  if args.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(args.clip_norm), opt)
  return optax.chain(optax.identity(), opt)


def warmup_steps(args: argparse.Namespace) -> int:
  """``--warmup``, or by default 10 % of ``--steps``.

  In the learning-rate study (``benchmarks/study.py``, 1000 steps) 100
  warmup steps beat 30 at lr 2e-3 and 4e-3 for both optimizers on both
  corpora, and for Adam-mini by far at AdamW's learning rate (stdlib corpus, lr 2e-3, seed 0:
  held-out 1.4226 against 1.5909).
  """
  return args.warmup if args.warmup is not None else max(args.steps // 10, 1)


def make_schedule(args: argparse.Namespace) -> optax.Schedule:
  """Linear warmup to ``--lr``, then cosine decay to ``lr * min_lr_ratio``."""
  warmup = min(warmup_steps(args), max(args.steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=args.lr,
    warmup_steps=warmup,
    decay_steps=max(args.steps, warmup + 1),
    end_value=args.lr * args.min_lr_ratio,
  )


def tree_bytes(tree: Any) -> int:
  """Bytes held by the array leaves of ``tree``."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def _bytes_per_device(tree: Any) -> int:
  """Largest per-device share of ``tree``'s bytes (all of it on one device)."""
  per_device: dict[Any, int] = {}
  for x in jax.tree.leaves(tree):
    for shard in getattr(x, "addressable_shards", ()):
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values(), default=0)


def _cross_entropy(
  graphdef: nnx.GraphDef,
  params: Params,
  inputs: jax.Array,
  targets: jax.Array,
) -> jax.Array:
  model = nnx.merge(graphdef, params)
  logits = model(inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def param_shardings(specs: Any, params: Params, mesh: jax.sharding.Mesh) -> Any:
  """``NamedSharding`` per parameter from the model's own annotations.

  ``specs`` is ``nnx.get_partition_spec`` of the model's state as a pure
  dict (the ``nnx.with_partitioning`` annotations in ``model.py``). A mesh
  axis that does not divide its parameter axis is dropped there, so any preset
  runs on any mesh.
  """
  P = jax.sharding.PartitionSpec

  def fit(spec, x):
    entries = tuple(spec) + (None,) * (x.ndim - len(tuple(spec)))
    kept = tuple(a if a is None or x.shape[i] % mesh.shape[a] == 0 else None for i, a in enumerate(entries))
    return jax.sharding.NamedSharding(mesh, P(*kept))

  return jax.tree.map(fit, specs, params, is_leaf=lambda x: isinstance(x, P))


def make_mesh(fsdp: int, tp: int) -> jax.sharding.Mesh | None:
  """An ``("fsdp", "tp")`` mesh, or ``None`` for one device."""
  if fsdp < 1 or tp < 1:
    raise ValueError(f"--fsdp {fsdp} --tp {tp}: both must be at least 1.")
  if fsdp * tp == 1:
    return None
  if fsdp * tp > len(jax.devices()):
    raise ValueError(
      f"--fsdp {fsdp} --tp {tp} needs {fsdp * tp} devices, but jax sees "
      f"{len(jax.devices())}. On a CPU, start with "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={fsdp * tp}."
    )
  # Auto axes: the parameters' shardings come from the model's annotations,
  # and jit's partitioner propagates them and the batch's.
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((fsdp, tp), ("fsdp", "tp"), axis_types=auto, devices=jax.devices()[: fsdp * tp])


def make_steps(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  shardings: tuple[Any, Any, Any] | None = None,
) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """Jitted ``train_step(params, opt_state, inputs, targets)`` and ``eval_step``.

  Parameters travel as a plain nested dict (``nnx.to_pure_dict``) and are
  merged into the module inside the trace: the optimizer then sees paths
  like ``['layers'][0]['self_attn']['q_proj']['kernel']`` with no ``.value``
  suffix, and the whole state checkpoints as an ordinary pytree.

  ``shardings``: ``(params, opt_state, batch)`` shardings on a mesh; jit's
  SPMD partitioner does the rest (no hand-written communication).

  ``train_step`` donates ``params`` and ``opt_state``: the new ones are
  written over the old (one copy of each alive, not two), so the caller
  must not use the arrays it passed in again.
  """

  def loss_fn(params, inputs, targets):
    return _cross_entropy(graphdef, params, inputs, targets).mean()

  def train_step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def eval_step(params, inputs, targets):
    return _cross_entropy(graphdef, params, inputs, targets).sum()

  if shardings is None:
    return jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step)
  param_sh, state_sh, batch_sh = shardings
  replicated = jax.sharding.NamedSharding(batch_sh.mesh, jax.sharding.PartitionSpec())
  return (
    jax.jit(
      train_step,
      in_shardings=(param_sh, state_sh, batch_sh, batch_sh),
      out_shardings=(param_sh, state_sh, replicated),
      donate_argnums=(0, 1),
    ),
    jax.jit(eval_step, in_shardings=(param_sh, batch_sh, batch_sh), out_shardings=replicated),
  )


def evaluate(
  eval_step: Callable[..., Any],
  params: Params,
  batches: Sequence[tuple[np.ndarray, np.ndarray]],
) -> float:
  """Mean held-out cross-entropy (nats per byte) over ``batches``."""
  total = sum(float(eval_step(params, x, y)) for x, y in batches)
  return total / sum(x.size for x, _ in batches)


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
  return {k: v for k, v in sorted(vars(args).items()) if k not in _RESUME_FREE_FLAGS}


def _checkpoint_manager(out: str) -> ocp.CheckpointManager:
  # Synchronous saves: a finished step's checkpoint is complete on disk
  # before the next step runs, so an interrupted run always has one to
  # resume from.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=2,
    enable_async_checkpointing=False,
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(out), "checkpoints"), options=options)


def _read_metrics(path: str, up_to_step: int) -> list[dict[str, Any]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  # Records after the checkpoint were made by the interrupted run and are
  # about to be recomputed.
  return [r for r in records if r["step"] <= up_to_step]


def _restore_or_start(
  args: argparse.Namespace,
  manager: ocp.CheckpointManager,
  state: dict[str, Any],
) -> dict[str, Any]:
  latest = manager.latest_step()
  config_path = os.path.join(args.out, "config.json")
  if latest is None:
    return state
  if not args.resume:
    raise FileExistsError(
      f"--out {args.out} already holds checkpoints (latest step {latest}). "
      "Pass --resume to continue that run, or choose another --out."
    )
  if os.path.exists(config_path):
    with open(config_path) as f:
      saved = json.load(f)
    changed = {k: (saved.get(k), v) for k, v in _run_config(args).items() if saved.get(k) != v}
    if changed:
      raise ValueError(
        f"--resume in {args.out}: flags differ from the checkpointed run "
        f"(saved, now): {changed}. Resume with the same flags, or train "
        "into another --out."
      )
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return manager.restore(latest, args=ocp.args.StandardRestore(abstract))


def _print_summary(summary: dict[str, Any]) -> None:
  width = max(map(len, summary))
  print("\nsummary")
  for key, value in summary.items():
    if isinstance(value, bool) or value is None:
      value = str(value)
    elif isinstance(value, float):
      value = f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"
    elif isinstance(value, int):
      value = f"{value:,}"
    print(f"  {key:<{width}}  {value}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains as the flags in ``argv`` say and returns ``summary.json``'s dict.

  Args:
    argv: command-line flags (``sys.argv[1:]`` when ``None``).

  Returns:
    The summary: ``optimizer``, ``steps``, ``final_eval_loss``,
    ``tokens_per_second``, ``opt_state_bytes``, ``param_count``,
    ``wall_seconds`` and the run's settings.

  Raises:
    data.CorpusError: ``--text`` is missing, not UTF-8 or too small.
    FileExistsError: ``--out`` holds checkpoints and ``--resume`` is absent.
    ValueError: ``--resume`` with flags that differ from the saved run's.
  """
  wall_start = time.perf_counter()
  args = build_parser().parse_args(argv)
  if args.steps < 1:
    raise ValueError(f"--steps {args.steps}: must be at least 1.")
  config = model_lib.PRESETS[args.preset]
  corpus = data.load_corpus(args.text, seq_len=args.seq_len, corpus=args.corpus)
  eval_batches = data.eval_batches(
    corpus.held_out,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    max_batches=args.eval_batches,
  )

  model = model_lib.Llama(config, seed=args.seed)
  graphdef, params = nnx.split(model)
  # The model's sharding annotations (nnx.with_partitioning), for --fsdp/--tp.
  param_specs = nnx.to_pure_dict(nnx.get_partition_spec(params))
  params = nnx.to_pure_dict(params)
  del model  # the arrays live on in `params`; the module is rebuilt in jit
  if args.explain:
    import optax_mini

    print(optax_mini.explain(params, head_dim=config.head_dim, blocks=adam_mini_blocks(args)))
  schedule = make_schedule(args)
  tx = make_optimizer(args.optimizer, schedule, args, config)
  mesh = make_mesh(args.fsdp, args.tp)
  shardings = None
  if mesh is None:
    opt_state = tx.init(params)
  else:
    import optax_mini

    if args.batch_size % args.fsdp:
      raise ValueError(f"--batch-size {args.batch_size} must be divisible by --fsdp {args.fsdp}.")
    param_sh = param_shardings(param_specs, params, mesh)
    params = jax.device_put(params, param_sh)
    # The state's shardings follow from the parameters' (Adam-mini's v: the
    # axes each block keeps); optax_mini works this out for any optimizer.
    state_sh = optax_mini.state_shardings(tx, params)
    opt_state = jax.jit(tx.init, out_shardings=state_sh)(params)
    batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    shardings = (param_sh, state_sh, batch_sh)
  state = {
    "params": params,
    "opt_state": opt_state,
    "step": jnp.zeros((), jnp.int32),
  }

  os.makedirs(args.out, exist_ok=True)
  manager = _checkpoint_manager(args.out)
  state = _restore_or_start(args, manager, state)
  start_step = int(state["step"])
  metrics_path = os.path.join(args.out, "metrics.jsonl")
  records = _read_metrics(metrics_path, start_step) if start_step else []
  with open(metrics_path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  with open(os.path.join(args.out, "config.json"), "w") as f:
    json.dump(_run_config(args), f, indent=2)

  train_step, eval_step = make_steps(graphdef, tx, shardings)
  params, opt_state = state["params"], state["opt_state"]
  last_step = args.steps if args.stop_at is None else min(args.steps, args.stop_at)
  tokens_per_step = args.batch_size * args.seq_len
  eval_loss = next((r["eval_loss"] for r in reversed(records) if "eval_loss" in r), None)
  train_loss = math.nan
  # Throughput excludes the first step of this process (XLA compilation)
  # and evaluation time.
  timed_seconds, timed_steps, first_done = 0.0, 0, False
  interval_start, interval_steps = time.perf_counter(), 0
  bar = tqdm.tqdm(
    total=args.steps,
    initial=start_step,
    disable=args.quiet,
    desc=args.optimizer,
    unit="step",
    dynamic_ncols=True,
  )
  metrics_file = open(metrics_path, "a")
  try:
    for step in range(start_step + 1, last_step + 1):
      inputs, targets = data.train_batch(
        corpus.train,
        seed=args.seed,
        step=step - 1,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
      )
      params, opt_state, loss = train_step(params, opt_state, inputs, targets)
      interval_steps += 1
      bar.update(1)
      if not first_done:
        jax.block_until_ready(loss)
        first_done = True
        interval_start, interval_steps = time.perf_counter(), 0
      is_last = step == last_step
      do_eval = step % args.eval_every == 0 or step == args.steps
      # Step 1 is logged for the initial loss; its tokens_per_second is null
      # (its time is XLA compilation, excluded from throughput).
      # A --stop-at step is not logged unless it is a regular log step: the
      # resumed run's metrics.jsonl must equal an uninterrupted run's.
      do_log = step % args.log_every == 0 or step == 1 or do_eval or step == args.steps
      if do_log:
        train_loss = float(loss)  # waits for the step: timing is honest
        now = time.perf_counter()
        elapsed = now - interval_start
        timed_seconds += elapsed
        timed_steps += interval_steps
        record = {
          "step": step,
          "train_loss": train_loss,
          # The update of step k used schedule(k - 1): optax counts from 0.
          "lr": float(schedule(step - 1)),
          "tokens_per_second": (
            interval_steps * tokens_per_step / elapsed if elapsed > 0 and interval_steps else None
          ),
        }
        if do_eval:
          eval_loss = evaluate(eval_step, params, eval_batches)
          record["eval_loss"] = eval_loss
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        postfix = {"loss": f"{train_loss:.3f}"}
        if record["tokens_per_second"]:
          postfix["tok/s"] = f"{record['tokens_per_second']:,.0f}"
        if eval_loss is not None:
          postfix["eval"] = f"{eval_loss:.3f}"
        bar.set_postfix(postfix)
        interval_start, interval_steps = time.perf_counter(), 0
      if is_last and not do_log:
        train_loss = float(loss)
      if is_last or (args.checkpoint_every and step % args.checkpoint_every == 0):
        manager.save(
          step,
          args=ocp.args.StandardSave(
            {
              "params": params,
              "opt_state": opt_state,
              "step": jnp.asarray(step, jnp.int32),
            }
          ),
        )
        interval_start = time.perf_counter()
  finally:
    bar.close()
    metrics_file.close()
    manager.wait_until_finished()
    manager.close()

  summary = {
    "optimizer": args.optimizer,
    "preset": args.preset,
    "steps": last_step,
    "final_train_loss": train_loss,
    "final_eval_loss": eval_loss if last_step == args.steps else None,
    "tokens_per_second": (
      timed_steps * tokens_per_step / timed_seconds if timed_seconds > 0 else None
    ),
    "opt_state_bytes": tree_bytes(opt_state),
    "param_bytes": tree_bytes(params),
    "param_count": sum(int(x.size) for x in jax.tree.leaves(params)),
    "wall_seconds": time.perf_counter() - wall_start,
    "batch_size": args.batch_size,
    "seq_len": args.seq_len,
    "lr": args.lr,
    "value_as_one_block": args.value_as_one_block,
    "seed": args.seed,
    "corpus": corpus.source,
    "jax_backend": jax.default_backend(),
    "mesh": {"fsdp": args.fsdp, "tp": args.tp},
    # Per device: what one accelerator must hold for the optimizer.
    "opt_state_bytes_per_device": _bytes_per_device(opt_state),
  }
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  if not args.quiet:
    _print_summary(summary)
  return summary


if __name__ == "__main__":
  try:
    main()
  except (data.CorpusError, FileExistsError, ValueError) as error:
    sys.exit(f"error: {error}")
