"""The spec's reference for Ed25519 verification (docs/wire-format.md, "Signatures").

Pure-Python curve arithmetic after RFC 8032 section 6, with the pinned strict rules
written out one by one, plus a deliberately lax verifier (the checks many libraries skip)
used only to show that each edge-case vector is one some implementation accepts.
Slow (pure Python big integers) and not constant-time: for tests only.
"""

from __future__ import annotations

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def _inv(x: int) -> int:
    return pow(x, P - 2, P)


def add(a, b):
    """Extended twisted Edwards coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z."""
    aa = (a[1] - a[0]) * (b[1] - b[0]) % P
    bb = (a[1] + a[0]) * (b[1] + b[0]) % P
    cc = 2 * a[3] * b[3] * D % P
    dd = 2 * a[2] * b[2] % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def neg(a):
    return ((-a[0]) % P, a[1], a[2], (-a[3]) % P)


def mul(s: int, a):
    q = IDENTITY
    while s > 0:
        if s & 1:
            q = add(q, a)
        a = add(a, a)
        s >>= 1
    return q


def equal(a, b) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def is_identity(a) -> bool:
    return equal(a, IDENTITY)


def recover_x(y: int, sign: int) -> int | None:
    """x with x's low bit = sign on the curve at y (y already reduced), or None."""
    x2 = (y * y - 1) * _inv(D * y * y + 1) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def decode_point(s: bytes, *, canonical: bool = True):
    """The point an encoding names, or None. `canonical`: RFC 8032 (y < p, no x = 0 with
    the sign bit set); otherwise y is reduced mod p and a '-0' is read as x = 0."""
    if len(s) != 32:
        return None
    n = int.from_bytes(s, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= P:
        if canonical:
            return None
        y -= P
    x = recover_x(y, sign)
    if x is None and not canonical:
        x = recover_x(y, 0)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def encode_point(a) -> bytes:
    zi = _inv(a[2])
    x, y = a[0] * zi % P, a[1] * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def small_order(a) -> bool:
    return is_identity(mul(8, a))


B = (
    15112221349535400772501151409588531511454012693041857206046113283949847762202,
    46316835694926478169428394003475163141307993866256225615783033603165251855960,
    1,
    15112221349535400772501151409588531511454012693041857206046113283949847762202
    * 46316835694926478169428394003475163141307993866256225615783033603165251855960
    % P,
)


def challenge(r_bytes: bytes, a_bytes: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r_bytes + a_bytes + message).digest(), "little") % L


def verify_strict(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The pinned rule, step by step (docs/wire-format.md, "Signatures")."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    r_bytes, s = signature[:32], int.from_bytes(signature[32:], "little")
    if s >= L:  # 1. S canonical
        return False
    a = decode_point(public_key)  # 2. A canonical and on the curve
    r = decode_point(r_bytes)  # 3. R canonical and on the curve
    if a is None or r is None:
        return False
    if small_order(a) or small_order(r):  # 4. neither of small order
        return False
    k = challenge(r_bytes, public_key, message)  # 5. cofactorless equation
    return equal(mul(s, B), add(r, mul(k, a)))


def verify_lax(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """What permissive verifiers do: non-canonical encodings reduced, small orders allowed,
    S only below 2^253, and the cofactored equation [8][S]B = [8]R + [8][k]A."""
    r_bytes, s = signature[:32], int.from_bytes(signature[32:], "little")
    if s >= 1 << 253:
        return False
    a = decode_point(public_key, canonical=False)
    r = decode_point(r_bytes, canonical=False)
    if a is None or r is None:
        return False
    k = challenge(r_bytes, public_key, message)
    return equal(mul(8, mul(s, B)), mul(8, add(r, mul(k, a))))


def secret_point(seed: int):
    """(a, A) for a scalar derived from `seed` (not RFC 8032 key derivation: the vectors
    need the scalar itself)."""
    a = int.from_bytes(hashlib.sha512(seed.to_bytes(8, "little")).digest(), "little") % L
    return a, mul(a, B)


def torsion_point_of_order_8():
    """A point of order exactly 8: the libsodium blocklist's first order-8 encoding."""
    t = decode_point(
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    )
    assert t is not None and is_identity(mul(8, t)) and not is_identity(mul(4, t))
    return t


# -- edge-case vectors ("Taming the many EdDSAs", ed25519-speccheck, built here) ---------------

#: name -> the pinned rule's verdict. Every vector except the plain valid ones and the
#: ones marked "both" is accepted by `verify_lax`: a verifier that skips a pinned check.
EXPECTED = {
    "valid": True,
    "valid, mixed-order A, cofactorless holds": True,
    "non-canonical S (S + L)": False,
    "S >= 2^253 (both)": False,
    "small-order R (identity), S = k a": False,
    "small-order R (order 8), mixed-order A": False,
    "small-order A (order 8), S = r": False,
    "small-order A and R, S = 0": False,
    "A = all-zero bytes (order 4), S = 0": False,
    "mixed-order A, only the cofactored equation holds": False,
    "mixed-order R, only the cofactored equation holds": False,
    "non-canonical R (identity as p + 1)": False,
    "R = identity with the sign bit set": False,
    "non-canonical A (identity as p + 1), S = 0": False,
    "A = identity with the sign bit set, S = 0": False,
    "non-canonical A (y = p: the order-4 point), S = 0": False,
    "A not on the curve (both)": False,
    "R not on the curve (both)": False,
    "valid signature, other message (both)": False,
}


def _off_curve() -> bytes:
    y = 2
    while recover_x(y, 0) is not None:
        y += 1
    return y.to_bytes(32, "little")


def build_vectors(message_for):
    """(name, public key, message, signature) for every name in EXPECTED.

    `message_for(public_key, i)` gives candidate message i for a key; the vectors that need
    the challenge k in a residue class mod 8 (or 4) try i = 0, 1, ... until one fits, so a
    caller can make the message a batch's signing bytes with seq = i.
    """
    out = []
    identity = encode_point(IDENTITY)
    t8 = torsion_point_of_order_8()
    a, A = secret_point(1)
    a_bytes = encode_point(A)
    r, R = secret_point(2)
    mixed = add(A, t8)
    mixed_bytes = encode_point(mixed)

    def sig(r_bytes: bytes, s: int) -> bytes:
        return r_bytes + s.to_bytes(32, "little")

    def search(pk: bytes, r_bytes: bytes, fits):
        for i in range(10_000):
            m = message_for(pk, i)
            k = challenge(r_bytes, pk, m)
            if fits(k):
                return m, k
        raise AssertionError("no message fits")

    def add_vec(name, pk, m, s):
        out.append((name, pk, m, s))

    m = message_for(a_bytes, 0)
    rb = encode_point(R)
    k = challenge(rb, a_bytes, m)
    good_s = (r + k * a) % L
    add_vec("valid", a_bytes, m, sig(rb, good_s))
    add_vec("non-canonical S (S + L)", a_bytes, m, sig(rb, good_s + L))
    add_vec("S >= 2^253 (both)", a_bytes, m, sig(rb, good_s + 2**253))
    add_vec(
        "valid signature, other message (both)", a_bytes, message_for(a_bytes, 1), sig(rb, good_s)
    )

    m, k = search(a_bytes, identity, lambda k: True)
    add_vec("small-order R (identity), S = k a", a_bytes, m, sig(identity, k * a % L))

    # Mixed-order A = aB + T: R = -T, [S]B = -T + k(aB + T) holds when k = 1 mod 8.
    rn = encode_point(neg(t8))
    m, k = search(mixed_bytes, rn, lambda k: k % 8 == 1)
    add_vec("small-order R (order 8), mixed-order A", mixed_bytes, m, sig(rn, k * a % L))

    t8_bytes = encode_point(t8)
    m, k = search(t8_bytes, rb, lambda k: k % 8 == 0)
    add_vec("small-order A (order 8), S = r", t8_bytes, m, sig(rb, r))
    m, k = search(t8_bytes, identity, lambda k: k % 8 == 0)
    add_vec("small-order A and R, S = 0", t8_bytes, m, sig(identity, 0))
    zero = bytes(32)
    m, k = search(zero, identity, lambda k: k % 4 == 0)
    add_vec("A = all-zero bytes (order 4), S = 0", zero, m, sig(identity, 0))

    m, k = search(mixed_bytes, rb, lambda k: k % 8 == 0)
    add_vec("valid, mixed-order A, cofactorless holds", mixed_bytes, m, sig(rb, (r + k * a) % L))
    m, k = search(mixed_bytes, rb, lambda k: k % 8 != 0)
    add_vec(
        "mixed-order A, only the cofactored equation holds",
        mixed_bytes,
        m,
        sig(rb, (r + k * a) % L),
    )
    rm = encode_point(add(R, t8))
    m, k = search(a_bytes, rm, lambda k: True)
    add_vec(
        "mixed-order R, only the cofactored equation holds", a_bytes, m, sig(rm, (r + k * a) % L)
    )

    r_nc = (P + 1).to_bytes(32, "little")
    m, k = search(a_bytes, r_nc, lambda k: True)
    add_vec("non-canonical R (identity as p + 1)", a_bytes, m, sig(r_nc, k * a % L))
    r_neg0 = bytes([1]) + bytes(30) + bytes([0x80])
    m, k = search(a_bytes, r_neg0, lambda k: True)
    add_vec("R = identity with the sign bit set", a_bytes, m, sig(r_neg0, k * a % L))

    a_nc = (P + 1).to_bytes(32, "little")
    add_vec(
        "non-canonical A (identity as p + 1), S = 0", a_nc, message_for(a_nc, 0), sig(identity, 0)
    )
    a_neg0 = bytes([1]) + bytes(30) + bytes([0x80])
    add_vec(
        "A = identity with the sign bit set, S = 0",
        a_neg0,
        message_for(a_neg0, 0),
        sig(identity, 0),
    )
    a_p = P.to_bytes(32, "little")
    m, k = search(a_p, identity, lambda k: k % 4 == 0)
    add_vec("non-canonical A (y = p: the order-4 point), S = 0", a_p, m, sig(identity, 0))

    off = _off_curve()
    add_vec("A not on the curve (both)", off, message_for(off, 0), sig(rb, good_s))
    m = message_for(a_bytes, 0)
    add_vec("R not on the curve (both)", a_bytes, m, sig(off, good_s))
    assert [v[0] for v in out] and {v[0] for v in out} == set(EXPECTED)
    return out
