"""What the register-blocked kernels (``dense_kernels``, ``depthwise_kernels``) write their inner
loops with: LLVM vector values inside a Numba intrinsic.

Numba compiles plain loops well where each value is loaded, computed and stored, but a block of
sums carried over a loop stays in memory there: LLVM cannot prove that the arrays do not
overlap, so it reloads and stores the sums at every step, or vectorises the wrong loop. An
intrinsic's code generator builds the loop itself, with each block of sums a loop-carried
vector value (a phi node), which LLVM keeps in a register. One vector is 64 bytes: 16 float32
or 8 float64, one AVX-512 register or two AVX2 ones (LLVM splits it where it must).

    v = Vectors(context, builder, dtype)              # in an intrinsic's codegen
    sums = v.loop(count, [v.zero] * rows, lambda t, sums: [...the new sums...])
    v.store(v.relu(sums[0]), out_pointer, at)

Only this module and the kernels that use it import llvmlite; nothing checks bounds here, so
each kernel's driver keeps every access inside its arrays, and its tests fence the arrays with
NaN to prove it.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types

#: one vector's width in bytes: a 512-bit register (two 256-bit ones on AVX2)
VECTOR_BYTES = 64


class Vectors:
    """LLVM vector operations on one float dtype, for an intrinsic's ``codegen``."""

    def __init__(self, context, builder, dtype):
        self.context, self.builder = context, builder
        self.scalar = context.get_data_type(dtype)
        self.size = context.get_abi_sizeof(self.scalar)
        self.lanes = VECTOR_BYTES // self.size
        self.type = ir.VectorType(self.scalar, self.lanes)
        self.intp = context.get_value_type(types.intp)
        self.zero = ir.Constant(self.type, [0.0] * self.lanes)
        name = f"llvm.fmuladd.v{self.lanes}{'f32' if self.size == 4 else 'f64'}"
        self._fmuladd = builder.module.globals.get(name) or ir.Function(
            builder.module, ir.FunctionType(self.type, [self.type] * 3), name)

    def integer(self, value) -> ir.Constant:
        return ir.Constant(self.intp, value)

    def pointer(self, array_value, array_type):
        """The data pointer of a Numba array argument."""
        return self.context.make_array(array_type)(self.context, self.builder, array_value).data

    def index(self, value, value_type):
        """A Numba integer argument as an ``intp`` value."""
        return self.context.cast(self.builder, value, value_type, types.intp)

    def load_scalar(self, pointer, at):
        return self.builder.load(self.builder.gep(pointer, [at]), align=self.size)

    def load(self, pointer, at):
        """``lanes`` values from ``pointer[at]`` on (any alignment)."""
        address = self.builder.bitcast(self.builder.gep(pointer, [at]), self.type.as_pointer())
        return self.builder.load(address, align=self.size)

    def store(self, value, pointer, at) -> None:
        address = self.builder.bitcast(self.builder.gep(pointer, [at]), self.type.as_pointer())
        self.builder.store(value, address, align=self.size)

    def splat(self, scalar):
        """A vector of ``scalar`` in every lane."""
        empty = ir.Constant(self.type, ir.Undefined)
        first = self.builder.insert_element(empty, scalar, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), self.lanes), [0] * self.lanes)
        return self.builder.shuffle_vector(first, empty, mask)

    def fmuladd(self, a, b, total):
        """``a * b + total``, fused where the CPU has FMA (``llvm.fmuladd``)."""
        return self.builder.call(self._fmuladd, [a, b, total])

    def relu(self, value, on=None):
        """``max(value, 0)`` as ``np.maximum(value, 0)`` gives it (NaN stays, -0 becomes +0);
        ``on``: an i1 value, the ReLU applied only where it is true."""
        kept = self.builder.fcmp_unordered(">", value, self.zero)
        result = self.builder.select(kept, value, self.zero)
        return result if on is None else self.builder.select(on, result, value)

    def loop(self, count, initial: list, body) -> list:
        """``sums = initial``; for t in 0 .. count - 1: ``sums = body(t, sums)``; returns the
        final sums (``initial`` where count <= 0). Each sum is a loop-carried value."""
        builder = self.builder
        start = builder.block
        loop = builder.append_basic_block("vectors_loop")
        done = builder.append_basic_block("vectors_done")
        builder.cbranch(builder.icmp_signed(">", count, self.integer(0)), loop, done)
        builder.position_at_end(loop)
        t = builder.phi(self.intp)
        sums = [builder.phi(value.type) for value in initial]
        updated = body(t, sums)
        t_next = builder.add(t, self.integer(1))
        end = builder.block                    # the body may have added blocks of its own
        t.add_incoming(self.integer(0), start)
        t.add_incoming(t_next, end)
        for total, first, new in zip(sums, initial, updated):
            total.add_incoming(first, start)
            total.add_incoming(new, end)
        builder.cbranch(builder.icmp_signed("<", t_next, count), loop, done)
        builder.position_at_end(done)
        results = []
        for first, new in zip(initial, updated):
            result = builder.phi(first.type)
            result.add_incoming(first, start)
            result.add_incoming(new, end)
            results.append(result)
        return results
