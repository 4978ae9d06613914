"""3. Update speed, interleaved against optax.adamw."""

from __future__ import annotations

import math

import jax
import matplotlib

import optax_mini
from benchmarks import hlo
from benchmarks import shapes as shapes_lib
from benchmarks.common import (
    INT8,
    INT8_DYNAMIC,
    Ratio,
    interleaved,
    log,
    ms,
    table,
    update_contenders,
    update_runs,
)

matplotlib.use("Agg")


# --------------------------------------------------------------------------- 3. update speed


TENSOR_ABLATION = "adam_mini (one v per tensor)"

SPEED_NOTES = """\
What limits it (investigated with `jax.profiler`, ablations and the optimized HLO; not re-run by \
this script). Per leaf the compiled update is three passes: `m` (reads m, g; writes m), the block \
sums of `g*g` (reads g), and the parameter update (reads p, the new m; writes p): 7 words per \
parameter against AdamW's 10 (m, v and p passes), a 1.43x bound. XLA:CPU does no multi-output \
fusion, so the `m` and parameter passes cannot share one read of `m` (6 words, 1.67x), and its \
reductions stream `g` more slowly than fused elementwise passes. What the block structure \
adds over one sum per tensor is the last column's gap; it varies by CPU (on a 2-core AMD EPYC \
the `[640, 32000]` `lm_head` column sum alone was ~9 ms of a ~67 ms update at 102M, where \
AdamW took ~79 ms; the speed ratios there were 1.04x / 1.18x / 1.16x). XLA:CPU sums over a leading axis \
at ~1 GB/s once the kept row passes 64 kB (a plain `jnp.sum(g*g, 0)` of that `lm_head`: 68 ms), \
so on CPU such leaves use pairwise halving (split, add; 4 ms, ~20 GB/s against ~38 GB/s for a \
row sum). Fixed on the way: the overflow prescale's constant, shared by same-shaped leaves, was \
materialised as a full-size array read beside every `g` (7.33 words/param; 102M 0.93x -> 1.16x \
on the AMD machine). Tried and dropped, slower or no better: two-stage head sums with or \
without a fusion barrier (kept: no loss), row-chunked scans fusing m and the sums, k-way slice \
sums, `[1, R] @ g*g` dots (whole or in row chunks: 23-28 ms for the lm_head, the `g*g` \
temporary costs more than the sum saves), column-sliced sums, reshaping the wide axis to \
<= 16384, `einsum('io,io->o')` (68 ms), unrolled tails after halving (16-20 ms), pairwise \
halving for every column sum, disabling YNNPACK.

int8 m (investigated the same way, 2-core AMD EPYC). Per leaf four passes: the block maxima of the \
new `m` (reads the old codes and g), the new codes (the same reads; writes codes in place), the \
block sums of `g*g`, and the parameter update from `m` as stored (reads p and the new codes; \
writes p): 26 bytes per parameter against AdamW's 40, yet not faster, because on CPU it is the \
arithmetic that costs: the new `m` is computed twice (dequantize, fma) and quantized once. The \
dynamic tree map takes ~90 vector operations per element to find a code (seven decades of \
compares and selects; rounded stochastically since 2026-12-02, 14 segments: 13 compares and 26 \
selects where nearest rounding took 6 and 18) where the power map takes two square roots and a \
round; that is the dynamic column's gap (0.37x / 0.39x / 0.36x with nearest rounding, commit \
29b64d8's run). What got the power map from 0.34x to ~1.0x at 35M (commit 969123c -> \
this one; steps ad hoc, 15-20 pairs): the power map itself (0.34x -> 0.58x, the update still \
recomputing `m` from the old codes); updating from the stored `m`, the new codes written out \
first (a one-element dynamic-update-slice that XLA does not fuse into its readers: 0.58x -> \
0.82x, and no copy of the old codes); rounding through float32's mantissa (add 1.5 * 2**23, \
bitcast, subtract: the same codes) instead of a round and a saturating float-to-int8 convert \
(that convert cost as much as the two square roots: the codes of a [32000, 384] leaf 4.7 -> \
2.9 ms; 0.82x -> 0.96x); the codes as `a * g + b * k**4` with per-block factors instead of \
forming `m`, dividing by its maximum and multiplying by 127 (three multiplies per element \
fewer; the codes' pass -12-16 %; 0.96x -> 1.00x, 102M 0.91x -> 0.97x); power-of-two \
blocks (commit 5a5111a; found on a 2-core AVX-512 Xeon, where the update at 35M was 0.49x): \
every pass over the codes multiplies each element by its block's factor, and for a block of 192 \
in a 384-wide row LLVM rewrote the block index as a compare and loaded each vector lane's factor \
on its own (a scalarised gather; the optimized LLVM IR of the fusion shows eight scalar loads per \
vector), where for 64, 128 or 256 the index is a shift and one factor is splatted over the vector. \
Blocks of 128 for 384- and 640-wide leaves, and 64 for the 11M tree's 8000-wide `lm_head` (was \
250, not even a multiple of the vector width: that leaf's update 9.8 -> 3.3 ms), took that Xeon \
from 0.66x / 0.49x / 0.86x to 0.87x / 0.90x / 0.89x at 11M / 35M / 102M (40-60 pairs each, \
ad hoc, one after another). What is left is \
compute: without the two square roots (wrong codes, timed only, before the last step) 11M / \
35M / 102M went 0.77x / 0.93x / 0.91x -> 0.84x / 1.00x / 1.05x, and a polynomial fourth root \
would take more vector operations than the two square roots it replaces (counted, not built). At 11M the leaves (65 k to \
2 M elements) stay in cache, where AdamW's passes are cheap and the int8 passes' arithmetic is \
not hidden. On a Zen 5 EPYC, for 16 leaves of [256, 256] (per leaf: AdamW 34 us, float m 32 \
us, int8 m 51 us), dropping the maxima pass (constant scales: wrong, timed only) gave 41 us \
and dropping the square roots 50 us: about half of the gap there is the maxima pass, the rest \
the codes pass and the small per-leaf instructions (23 in the compiled update against float \
m's 17 and AdamW's 12). Tried and dropped: nearest-value rounding for the power map (a \
midpoint compare: 1.8x the quantize cost for an error equal to three digits), e4m3-style codes \
from the exponent bits (half the power map's quantize cost, twice its error), a float8 convert \
(slower than the power map), `optimization_barrier` to keep the codes (XLA:CPU expands it \
before fusion), every pass written on the blocked view `[..., blocks, block]` (0.96x -> 0.67x at \
35M), the block maxima reduced across rows first or by pairwise halving (1.4-10x \
slower than the two-stage row maximum), the per-block factors folded into the maxima's pass \
too (slower), writing the new `m` out for leaves under 3 M elements (11M: 0.75x -> 0.42x). \
Since 2026-12-02 the update rounds the power map's fourth root stochastically (nearest rounding \
let a dead column's momentum stall while its `v` decayed, its update growing without bound): \
the dither is a Weyl sequence of the element's position and the step (a multiply and an add), \
because the linear map's murmur hash cost more (ad hoc, 40 interleaved pairs, this Zen 5 EPYC: \
nearest 0.93x / 1.16x / 1.13x, Weyl dither 0.90x / 1.08x / 1.08x, murmur 0.84x / 0.96x / 0.98x \
at 11M / 35M / 102M; rounding in the value domain instead of the root's, unbiased in `m` \
itself, was slower still: 0.81x / 0.91x / 0.95x with a constant dither).

Session of 2026-12-02 (#4), another 2-core Zen 5 EPYC host (noisier: AdamW's update at 11M / \
102M ranged 6.4-10.2 / 40-100 ms between runs). Every figure here is an A/B inside one process \
(interleaved, 30-60 pairs), since the host-to-host spread exceeds most of them. Kept (commit \
c634871): four vector operations fewer per element in the codes pass, the same codes but where \
the dither's 24th bit decided (its 23 bits put straight into a float32 mantissa instead of an \
integer-to-float convert and a multiply; the sign put on by flipping the root's sign bit instead \
of compare, negate, select; one cap at 127.25 instead of an integer clip): 1.04x / 1.05x / 1.03x \
faster than the commit before at 11M / 35M / 102M (the previous code itself read 0.76-0.95x / \
0.95-1.08x / 0.77-1.08x AdamW's speed over this session's runs). Timed only, to find what is \
left (wrong or other results; ratios against AdamW, the shipped code first): no maxima pass (the \
old scales kept) 0.91x -> 1.05x at 11M and 0.99x -> 1.23x at 35M, the largest single lever; \
scales from the bound `b1 * old scale + (1 - b1) * max|g|` (a valid scale, one pass over `g` \
alone, but loose by ~1.3x to ~4x on noisy gradients: a quarter to a half bit of the codes) \
0.93x -> 0.98x / 1.08x -> 1.14x / 1.08x -> 1.09x, not enough at 11M for its cost in precision; \
the linear map computed like the power map (per-block factors, the same dither) as fast as the \
power map (0.92x / 1.10x / 1.07x against 0.93x / 1.07x / 1.07x), so the fourth root is not what \
is left; without the square roots 0.91x -> 0.98x at 11M but no faster on 271M's `[1024, 32000]` \
`lm_head` (26.3 against 25.7 ms: bound by memory there); without the dither 0.97x at 11M. \
Built and dropped: a division-free Newton inverse fourth root (2 or 3 iterations from a bit-shift \
guess) instead of the two square roots, slower (30.7 / 34.5 against 25.7 ms on that `lm_head`); \
`(1 - b1)` and `b1` folded into per-block factors in the maxima pass (two multiplies per element \
fewer), slower (0.80x against 0.90x at 11M, 0.82x against 0.95x at 35M). Where the time goes at \
11M (`jax.profiler`, thread time per step, both cores): AdamW's three passes 10.5 ms; int8 `m`'s \
codes 4.3 ms, block sums of `g*g` 2.8 ms (as float `m`'s), parameter update 2.6 ms, block maxima \
2.3 ms, the small per-leaf instructions 0.5 ms. At 271M (`shapes.PAPER`, ad hoc) the whole update \
read 0.78x-1.08x over three runs; by leaf, the `[32000, 1024]` embedding 0.94x, the `[1024, 32000]` \
`lm_head` 0.70-0.80x (its per-token column sums take ~10 of its 26 ms, for float `m` as well: \
float Adam-mini is only 1.02x AdamW there), attention 1.08x, MLP 1.15x.

Sessions of 2026-12-02/03 (#5), 2-core Zen 5 EPYC hosts, the update of commit c634871, unchanged since (A/Bs inside one process, interleaved, 60 pairs). Where the 11M int8 time goes, per step (`jax.profiler`, thread time summed over both cores): AdamW 17.1 ms in 225 fused multiply-adds; int8 `m` the codes 12.3 ms (58 fusions, one per quantized leaf), the block sums of `g*g` 7.1 ms (58 YNNPACK fusions, the same as float `m`'s), the block maxima 6.8 ms (58), the float leaves and the parameter update 4.6 ms (165), 58 copies 1.3 ms, the small per-block instructions ~2 ms. The 58 copies are of the old scales (`[256, 1]` to `[256, 125]` floats: the new scales take the donated buffer while the maxima read the old ones), and a step of 58 or of 464 such tiny instructions timed the same (~300 us): neither they nor the count of per-leaf instructions is the gap. XLA:CPU still forms no multi-output fusion (jax 0.10.2: two outputs of one elementwise chain compile to three loop fusions), so the codes and the parameter update cannot share a pass, nor the maxima and the `g*g` sums (which reduce along other axes anyway). XLA's `--xla_cpu_prefer_vector_width=512` (256 by default here), timed only: 11M Adam-mini 1.04x -> 1.01x and int8 `m` 0.90x -> 0.98x against AdamW at the same width, int8 `m` at 512 against AdamW at 256 0.95x (int8 `m` 6 % faster at 512, AdamW 1 % slower); 35M 1.29x -> 1.17x, 1.05x -> 1.07x, and 1.21x against AdamW at 256. It is a flag of the user's whole program, not something a library sets, and it does not close 11M. Built and dropped: an `optimization_barrier` variant of writing the codes out, and the maxima's first stage across vector lanes or along the second-to-last axis (all slower). 11M stays missed on this CPU.

Session of 2026-12-03 (#6), a 2-core AMD EPYC of family 25 (Zen 4: AVX-512 on 256-bit units; XLA:CPU emits 256-bit vectors here as on Zen 5). Kept (commit e9dec66), every value the same bit for bit (checked against the previous `quantize.py` on the 11M and 35M trees, all three maps, four steps): `sign(k) k**4` as `(k*k)*(k*k)` with `k`'s sign bit xored in (one ternary-logic instruction) in the codes and parameter-update passes (in the maxima pass LLVM then stopped vectorising the loop, 8x the instructions, so there it stays `k*k*k*|k|`); the Weyl dither summed per axis as `seed + index * (stride * phi)` (a multiply and an add per element fewer); the maxima's first stage over 32 elements (half the horizontal maxima; over 64, XLA splits it into a windowed reduction that writes `|m|` out). Against the code before, in one process: 1.02x / 1.03x / 1.04x at 11M / 35M / 102M (IQRs 0.96-1.08 / 0.99-1.08 / 0.99-1.09; 150 / 150 / 80 pairs). Dropped: the codes pass's per-block factors written out first (a one-element dynamic-update-slice; LLVM then emitted a scalar loop). This section's script on that host, int8 `m` against AdamW: 0.87x / 0.89x / 0.83x with the code before, 0.88x / 0.95x / 0.93x and 0.91x / 1.01x / 0.88x with commit e9dec66 (AdamW 10.3-11.5 / 33.6-35.5 / 84-94 ms); in-process A/Bs with fewer contenders read 0.80-0.93x / 0.84-0.99x / 0.88-1.02x. On Zen 4 the int8 update is bound by arithmetic even at 102M (its 26 bytes per parameter in ~99 ms stream at 27 GB/s, AdamW's 40 bytes at 44 GB/s), and the two square roots are about a tenth of it (timed only, codes without them: 11.4 -> 10.3 ms at 11M, 87.6 -> 78.7 ms at 102M). The goal is missed at every size on that CPU but in one of the two runs with e9dec66 at 35M (1.01x, IQR 0.91-1.08).

Session of 2026-12-03 (#7), the same kind of host as #6 (2-core Zen 4 EPYC), no change to the update; what was measured, so that no one builds it again. Where the 11M time goes on Zen 4 (`jax.profiler`, thread time per step, both cores, one run; wall 11.9 / 11.4 / 12.6 ms for AdamW / float `m` / int8 `m`): AdamW 20.2 ms in its 225 fused multiply-adds; int8 `m` 24.0 ms: codes 8.5, block sums of `g*g` 6.2 (float `m`: 7.6), parameter update and float leaves 4.2, block maxima 4.0, the rest under 1. On one core (`taskset -c 0`, 40 pairs) int8 `m` reads 0.71x and 0.76x at 11M (two runs; 0.79x at 35M) where the same runs on both cores read 0.84x and 0.88x (0.92x at 35M): the int8 update gains more from the second core than AdamW does (1.34-1.60x against 1.18-1.36x), as arithmetic-bound code should beside memory-bound code. Built and dropped: a fourth root from the exponent bits and a degree-3 polynomial of the mantissa (relative error 8.2e-5, about 0.01 of a code; it would have changed the codes) instead of the two square roots: 0.92x (IQR 0.85-1.01) at 11M and 0.87x (IQR 0.84-0.93) at 35M the speed of the square roots (60 pairs), which closes the "counted, not built" polynomial above. Quantization blocks down the columns of the `[in, out]` kernels (one scale per 256 rows of a column, the orientation of their `v` blocks, so that the block maxima and the `g*g` sums could share one variadic reduction): a per-leaf step built from the library's pieces, on the 11M tree's column leaves (8 layers of q, k, v, o, gate, up, down and the `lm_head`; 60 steps each, medians): 10.8 ms with today's blocks against 24.4 ms with a column maximum over int32 bits (40.2 ms over floats), 18.6 ms with the variadic reduction, and 34.9 ms with pairwise halving against 13.5 ms in that run (XLA:CPU's own column reductions are slow; only YNNPACK's column sums are fast). The `g*g` column sums themselves are as fast as any other formulation (3.9 ms for those leaves; a reshaped `[rows / 8, 8, cols]` sum 3.8, `einsum` 4.9, halving 5.1-15.7, a `ones @` product 15.3) and as fast as an elementwise pass that writes a new array (4.1 ms). The goal stays missed at 11M on this CPU.\
"""


def section(quick: bool) -> str:
  configs = shapes_lib.SPEED[:2] if quick else shapes_lib.SPEED
  pairs = 20 if quick else 100  # cheap (~1 min), and this shared CPU is noisy
  rows, pass_rows = [], []
  for config in configs:
    shapes = shapes_lib.param_shapes(config)
    txs = update_contenders(config.head_dim)
    # Ablation: the same passes with the simplest sums (one v per tensor),
    # to tell the cost of the block structure from that of reading g.
    txs[TENSOR_ABLATION] = optax_mini.adam_mini(
        1e-3, weight_decay=1e-4, head_dim=config.head_dim,
        blocks=[("kernel", "tensor"), ("embedding", "tensor")])
    leaf_sizes = {math.prod(x.shape) for x in jax.tree.leaves(shapes) if len(x.shape) >= 2}
    runs, compiled_steps = update_runs(shapes, txs)
    passes = {name: hlo.count_passes(compiled.as_text(), leaf_sizes, config.num_params)
              for name, compiled in compiled_steps.items()}
    times = interleaved(runs, pairs)
    ratio = Ratio.of(times["adamw"], times["adam_mini"])
    bound = passes["adamw"].bytes_moved / passes["adam_mini"].bytes_moved
    ablation = Ratio.of(times["adamw"], times[TENSOR_ABLATION])
    int8 = Ratio.of(times["adamw"], times[INT8])
    dynamic = Ratio.of(times["adamw"], times[INT8_DYNAMIC])
    log(f"  speed {config.name}: adamw {ms(times['adamw'])}, adam_mini {ms(times['adam_mini'])}, "
        f"ratio {ratio}; one v per tensor {ablation}; int8 m {ms(times[INT8])}, {int8}; "
        f"dynamic map {dynamic}")
    rows.append([config.name, f"{config.num_params / 1e6:.1f}M", ms(times["adamw"]),
                 ms(times["adam_mini"]), str(ratio), f"{bound:.2f}x", "1.40x",
                 f"{ablation.median:.2f}x", ms(times[INT8]), str(int8), f"{dynamic.median:.2f}x"])
    for name in ("adamw", "adam_mini", INT8):
      p = passes[name]
      pass_rows.append([config.name, name, p.instructions, p.arrays_moved,
                        f"{p.words_per_param:.2f}", f"{p.bytes_moved / 1e6:,.0f}"])
    del runs
  return "\n\n".join([
      "## 3. Update speed (jitted update + apply_updates, params and state donated)",
      f"LLaMA-shaped trees with HF names (`shapes.SPEED`), float32, weight decay 1e-4, "
      f"interleaved, {pairs} pairs after 3 warm-up pairs. Ratio = adamw time / adam_mini "
      "time (> 1: Adam-mini faster). Bound from HLO = AdamW's full-size bytes moved / "
      "Adam-mini's, both counted in the optimized HLO below; naive bound = 7N/5N words.",
      table(["tree", "params", "adamw", "adam_mini", "ratio (median, IQR)",
             "bound (HLO bytes)", "naive bound", "ratio, one v per tensor", "int8 m",
             "ratio, int8 m", "ratio, int8 m (dynamic map)"], rows),
      "One v per tensor: Adam-mini with every kernel and the embedding as one block (the "
      "same passes, the simplest sums), timed in the same interleaved run: what the block "
      "structure itself costs. int8 m: `mu_dtype=jnp.int8` (block-quantized first moment, "
      "dequantized, updated and requantized inside the update; the default power code map), "
      "same run; the last column with the dynamic tree map (`mu_code=\"dynamic\"`). History "
      "of the int8 column: 0.15x / 0.15x at 35M / 102M with a zero-padded last block of 256 "
      "(commit cce07d8); 0.24x / 0.34x / 0.32x with blocks that divide the last axis (dynamic "
      "map, the update recomputing `m` from the old codes: commit 969123c); 0.68x / 0.82x / "
      "0.86x with the power map, updating from `m` as stored (commit 6d32186).",
      "Full-size traffic in the optimized HLO (`compile().as_text()`, ENTRY instructions "
      "reading or writing a parameter-sized array; `benchmarks/hlo.py`):",
      table(["tree", "optimizer", "full-size instructions", "arrays read+written",
             "words / parameter", "MB moved"], pass_rows),
      SPEED_NOTES,
  ])
