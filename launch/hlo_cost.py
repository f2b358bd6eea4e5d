"""Matmul flops and HBM bytes of a compiled (per-device) HLO module, loops counted by their trip counts.

`compiled.cost_analysis()` counts the body of a while loop once: for a step whose layers run in an
`nn.scan` it misses (layers - 1) / layers of the work. This reads `compiled.as_text()` instead:

* every computation gets a multiplicity: ENTRY 1; a while loop's body its caller's times the trip
  count (XLA's known_trip_count, else the integer the loop condition compares the counter with,
  divided by the body's counter step: jax's scans count 0..n-1, XLA's windowed-einsum loops are
  unrolled by 2; a loop whose count is not found counts once and is reported); a
  fusion / call its caller's; each branch of a conditional its caller's (an upper bound);
* flops = 2 x (output elements) x (contracted size) of every `dot` and `convolution`, times the
  multiplicity of the computation it sits in (elementwise work is not counted);
* bytes = output + operand bytes of every instruction outside fused computations (a fusion reads
  its operands from and writes its outputs to HBM; what happens inside it stays on chip), times the
  multiplicity; tuples, parameters, bitcasts and other aliasing ops count nothing; an async
  `copy-start` counts its source once, and its destination only when that is not on-chip memory
  (a TPU prefetch into VMEM, layout `S(1)`: before 4 Dec 2026 its (destination, source) tuple
  and operand were counted, 3x the HBM traffic);
* collective_bytes: the result bytes of each collective, times the multiplicity.

Conditionals count every branch (an upper bound): the blockwise attention's skip of fully masked
key blocks is a `cond`, so its skipped blocks are counted as if computed.

An estimate, not XLA's cost model: checked on a scan of 8 matmuls (forward and backward), where it
counts exactly 24 matmuls on CPU (tests/launch/test_hlo_cost.py)
and 16 on a TPU topology (gradient to the input only).
"""

from __future__ import annotations

import collections
import math
import re

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_SHAPE = re.compile(r"\b([a-z]\w*?)\[([\d,]*)\]")
_COMP = re.compile(r"^(ENTRY )?%([^\s(]+) \(.*\{\s*$")
_INST = re.compile(r"^\s*(?:ROOT )?%([^\s=]+) = (.*?) ([a-z][\w-]*)\((.*)$")
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_FREE = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "opt-barrier", "iota"}


def _shapes(type_str: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for dt, dims in _SHAPE.findall(type_str):
        if dt in _DTYPE_BYTES:
            out.append((dt, tuple(int(d) for d in dims.split(",") if d)))
    return out


def _nbytes(type_str: str) -> float:
    return sum(_DTYPE_BYTES[dt] * math.prod(d) for dt, d in _shapes(type_str))


def _operands(rest: str) -> tuple[list[str], str]:
    depth, i = 1, 0
    while i < len(rest) and depth:
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    return re.findall(r"%([^\s,()]+)", rest[:i - 1]), rest[i:]


def parse(hlo: str):
    """{computation: [(name, type, opcode, operands, attrs)]}, entry name."""
    comps: dict[str, list] = collections.OrderedDict()
    entry, cur = None, None
    for line in hlo.splitlines():
        m = _COMP.match(line)
        if m:
            cur = m.group(2)
            comps[cur] = []
            if m.group(1):
                entry = cur
            continue
        if cur is None:
            continue
        if line.strip() == "}":  # (a custom call's attributes may continue on lines starting with "}}")
            cur = None
            continue
        m = _INST.match(line)
        if m:
            name, typ, op, rest = m.groups()
            ops, attrs = _operands(rest)
            if op == "parameter":
                attrs = rest.split(")")[0] + " " + attrs  # its index first
            comps[cur].append((name, typ, op, ops, attrs))
    return comps, entry


def _counter_step(cond: list, compare_ops: list, body: list, values: dict) -> int:
    """How much the loop body adds to the counter the condition compares (1 if not found)."""
    by_name = {i[0]: i for i in cond}
    idx = None
    for o in compare_ops:
        inst = by_name.get(o)
        if inst is not None and inst[2] == "get-tuple-element":
            m = re.search(r"index=(\d+)", inst[4])
            idx = int(m.group(1)) if m else None
    if idx is None or not body or body[-1][2] != "tuple" or idx >= len(body[-1][3]):
        return 1
    new = {i[0]: i for i in body}.get(body[-1][3][idx])
    if new is not None and new[2] == "add":
        step = [values[o] for o in new[3] if o in values]
        if len(step) == 1 and step[0] > 0:
            return step[0]
    return 1


def _conv_contracted(attrs: str, lhs: tuple[int, ...], kernel: tuple[int, ...]) -> int:
    """Multiply-adds per output element of a convolution: the kernel's input features times the
    window taps that can meet a real input (at most the input's extent along that dimension, and
    one in every lhs_dilate). TPU writes batched matmuls as convolutions whose batch dims are
    spatial dims padded or dilated so that each output meets one input."""
    labels = re.search(r"dim_labels=([^_]+)_([^-]+)->", attrs)
    if not labels:
        return 1
    k = math.prod(n for c, n in zip(labels.group(2), kernel) if c == "i")
    spatial = {c: n for c, n in zip(labels.group(1), lhs) if c.isdigit()}
    window = re.search(r"window=\{([^}]*)\}", attrs)
    if window:
        w = dict(re.findall(r"(\w+)=(\S+)", window.group(1)))
        size = [int(x) for x in w.get("size", "").split("x") if x]
        dil = [int(x) for x in w.get("lhs_dilate", "").split("x") if x] or [1] * len(size)
        k *= math.prod(min(-(-a // b), spatial.get(str(d), a)) for d, (a, b) in enumerate(zip(size, dil)))
    return k


def costs(hlo: str, top: int = 0) -> dict:
    """{"flops", "bytes", "loops", "loops_unknown_trip_count", "collective_bytes"} of one device's
    compiled program; collective_bytes: {op: result bytes of every all-reduce / all-gather /
    reduce-scatter / all-to-all / collective-permute, times the trips of the loops around it}; with
    `top`, also "top_bytes": the `top` JAX op names (metadata op_name) with the most bytes."""
    comps, entry = parse(hlo)
    # constant values (scalars) per computation, from the raw text
    values = {}
    for m in re.finditer(r"%([^\s=]+) = [su]\d+\[\]\S* constant\((-?\d+)\)", hlo):
        values[m.group(1)] = int(m.group(2))
    shape_of = {}
    for insts in comps.values():
        for name, typ, *_ in insts:
            shape_of[name] = typ
    # call graph: computation -> [(callee, times per call)]
    edges = collections.defaultdict(list)
    fused, loops, unknown = set(), 0, 0
    for comp, insts in comps.items():
        for name, typ, op, ops, attrs in insts:
            called = dict(re.findall(r"\b(calls|to_apply|body|condition)=%([^\s,]+)", attrs))
            if op == "while":
                loops += 1
                known = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
                trip = int(known.group(1)) if known else None
                cond = comps.get(called["condition"], [])
                for cname, ctyp, cop, cops, cattrs in cond if trip is None else ():
                    if cop == "compare" and "direction=LT" in cattrs:
                        trip = next((values[o] for o in cops if o in values), None)
                        if trip is not None:  # a loop unrolled by XLA steps its counter by more than 1
                            trip = -(-trip // _counter_step(cond, cops, comps.get(called["body"], []), values))
                if trip is None:  # the compare sits in a fusion: the condition's one integer constant
                    consts = [values[i[0]] for i in cond if i[0] in values]
                    trip = consts[0] if len(consts) == 1 else None
                if trip is None:
                    unknown += 1
                    trip = 1
                edges[comp] += [(called["body"], trip), (called["condition"], trip + 1)]
            elif op == "conditional":
                for b in re.findall(r"%([^\s,{}]+)", attrs.split("branch_computations=")[-1].split("}")[0]) \
                        if "branch_computations" in attrs else re.findall(r"_computation=%([^\s,]+)", attrs):
                    edges[comp].append((b, 1))
            elif "calls" in called:
                edges[comp].append((called["calls"], 1))
                if op == "fusion":
                    fused.add(called["calls"])
    order, seen = [], set()  # callers before callees (reverse post-order from ENTRY)

    def visit(c):
        seen.add(c)
        for callee, _ in edges.get(c, ()):
            if callee not in seen:
                visit(callee)
        order.append(c)

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    visit(entry)
    mult = collections.Counter({entry: 1})
    for c in reversed(order):
        for callee, times in edges.get(c, ()):
            mult[callee] += mult[c] * times
    memo = {}
    fusion_io = {f: _fusion_io(comps, f, shape_of, memo) for f in fused if f in comps}
    flops = bytes_ = 0.0
    collective = collections.Counter()
    by_op = collections.Counter() if top else None
    for comp, insts in comps.items():
        m = mult.get(comp, 0)
        if not m:
            continue
        for name, typ, op, ops, attrs in insts:
            if op in ("dot", "convolution"):
                out = math.prod(_shapes(typ)[0][1]) if _shapes(typ) else 0
                lhs = _shapes(shape_of.get(ops[0], ""))
                rhs = _shapes(shape_of.get(ops[1], "")) if len(ops) > 1 else []
                k = 1
                if op == "dot" and lhs:
                    cd = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
                    k = math.prod(lhs[0][1][int(i)] for i in cd.group(1).split(",") if i) if cd else 1
                elif op == "convolution" and rhs:
                    k = _conv_contracted(attrs, lhs[0][1] if lhs else (), rhs[0][1])
                flops += m * 2.0 * out * k
            kind = op[:-5] if op.endswith("-done") else op
            if kind in _COLLECTIVES and comp not in fused:  # the result of a sync op or of an async -done
                collective[kind] += m * _nbytes(typ)
            if comp in fused or op in _FREE or op.endswith("-done"):
                continue
            if op == "fusion":
                f = re.search(r"calls=%([^\s,]+)", attrs).group(1)
                reads, written = fusion_io.get(f, ({}, None))
                b = sum(reads.get(i, _nbytes(shape_of.get(o, ""))) for i, o in enumerate(ops))
                b += _nbytes(typ) if written is None else written
            elif op == "dynamic-slice":
                b = 2 * _nbytes(typ)
            elif op == "dynamic-update-slice":
                b = 2 * _nbytes(shape_of.get(ops[1], ""))
            elif op == "copy-start":  # (destination, source, context): read the source; write the
                # destination unless it is on-chip memory (layout S(1): a prefetch into VMEM)
                dest = typ.split("}", 1)[0]
                b = _nbytes(shape_of.get(ops[0], "")) + (0 if "S(1)" in dest else _nbytes(shape_of.get(ops[0], "")))
            else:
                b = _nbytes(typ) + sum(_nbytes(shape_of.get(o, "")) for o in ops)
            bytes_ += m * b
            if by_op is not None:
                where = re.search(r'op_name="([^"]*)"', attrs)
                by_op[where.group(1) if where else f"{op} {name}"] += m * b
    out = {"flops": flops, "bytes": bytes_, "loops": loops, "loops_unknown_trip_count": unknown,
           "collective_bytes": dict(collective)}
    if top:
        out["top_bytes"] = by_op.most_common(top)
    return out


def _fusion_io(comps: dict, f: str, shape_of: dict, memo: dict | None = None) -> tuple[dict[int, float], float | None]:
    """(bytes read per parameter index where it is not the whole operand, bytes written if the fusion
    updates a buffer in place) of fused computation `f`: a parameter used only by dynamic-slice
    (also through nested fusions and bitcasts) reads the slices (a layer of stacked weights); one
    updated by dynamic-update-slice is written in place (only the update moves)."""
    memo = {} if memo is None else memo
    if f in memo:
        return memo[f]
    insts = comps.get(f, [])
    users = collections.defaultdict(list)
    for inst in insts:
        for i, o in enumerate(inst[3]):
            users[o].append((inst, i))

    def read(name):  # bytes read of value `name`, None = all of it
        total = 0.0
        for (uname, utyp, uop, uops, uattrs), i in users.get(name, []):
            if uop == "dynamic-slice" and i == 0:
                total += _nbytes(utyp)
            elif uop == "dynamic-update-slice" and i == 0:
                pass
            elif uop == "bitcast":
                r = read(uname)
                if r is None:
                    return None
                total += r
            elif uop == "fusion":
                callee = re.search(r"calls=%([^\s,]+)", uattrs).group(1)
                r = _fusion_io(comps, callee, shape_of, memo)[0].get(i)
                if r is None:
                    return None
                total += r
            else:
                return None
        return total if users.get(name) else None

    reads = {}
    for name, typ, op, ops, attrs in insts:
        if op == "parameter":
            r = read(name)
            if r is not None:
                reads[int(attrs.split()[0])] = r
    by_name = {i[0]: i for i in insts}

    def update(inst):  # bytes written if `inst` is an in-place update, else None
        while inst is not None and inst[2] == "bitcast":
            inst = by_name.get(inst[3][0])
        if inst is None:
            return None
        if inst[2] == "dynamic-update-slice":
            return _nbytes(shape_of.get(inst[3][1], ""))
        if inst[2] == "fusion":
            return _fusion_io(comps, re.search(r"calls=%([^\s,]+)", inst[4]).group(1), shape_of, memo)[1]
        return None

    written = None
    root = insts[-1] if insts else None
    if root is not None and root[2] == "tuple":
        parts = [update(by_name.get(o)) for o in root[3]]
        if any(p is not None for p in parts):
            written = sum(p if p is not None else _nbytes(shape_of.get(o, "")) for p, o in zip(parts, root[3]))
    elif root is not None:
        written = update(root)
    memo[f] = (reads, written)
    return memo[f]


if __name__ == "__main__":  # python -m launch.hlo_cost <plan>.hlo.txt.gz [top]: the totals and the byte-heaviest ops
    import gzip
    import sys

    path = sys.argv[1]
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as fh:
        c = costs(fh.read(), top=int(sys.argv[2]) if len(sys.argv) > 2 else 20)
    print(f"matmul flops {c['flops']:.3e}, bytes {c['bytes']:.3e}, loops {c['loops']} "
          f"({c['loops_unknown_trip_count']} without a trip count), collectives "
          + ", ".join(f"{k} {v:.3e}" for k, v in c["collective_bytes"].items()))
    for name, b in c["top_bytes"]:
        print(f"{b:10.3e} {b / c['bytes']:6.1%}  {name[:160]}")
