#!/usr/bin/env python3
"""Independent implementation of xknock's published dynamic-sequence
derivation (README, "Dynamic sequences"), with the standard library only.
It shares no code with the Rust one: the tests compare the two.

  dynamic_ports.py --secret-file F --steps N --ports LO-HI (--t T | --period P [--time UNIX])
      prints the ports of period T (default: the current one), space-separated
  dynamic_ports.py --vectors FILE
      checks every line "SECRET T STEPS LO-HI P1,P2,..." and exits 1 on a mismatch
  dynamic_ports.py --make-vectors
      prints vectors for the committed fixture
"""
import argparse
import base64
import hashlib
import hmac
import struct
import sys
import time


def decode_secret(text):
    clean = "".join(text.split()).upper().rstrip("=")
    return base64.b32decode(clean + "=" * (-len(clean) % 8))


def derive(key, t, steps, lo, hi):
    span = hi - lo + 1
    ports = []
    for k in range(256):
        if len(ports) == steps:
            break
        block = hmac.new(key, struct.pack(">QB", t, k), hashlib.sha256).digest()
        for (w,) in struct.iter_unpack(">I", block):
            port = lo + w % span
            if len(ports) < steps and port not in ports:
                ports.append(port)
    return ports


def parse_range(text):
    lo, hi = text.split("-")
    return int(lo), int(hi)


def check_vectors(path):
    bad = 0
    count = 0
    for line in open(path):
        if not line.strip() or line.startswith("#"):
            continue
        secret, t, steps, rng, want = line.split()
        lo, hi = parse_range(rng)
        got = derive(decode_secret(secret), int(t), int(steps), lo, hi)
        count += 1
        if got != [int(p) for p in want.split(",")]:
            print(f"MISMATCH {line.strip()}: got {got}", file=sys.stderr)
            bad += 1
    print(f"{count} vectors, {bad} mismatches")
    return 1 if bad or count == 0 else 0


VECTOR_INPUTS = [
    ("JBSWY3DPEHPK3PXP", 0, 3, (20000, 40000)),
    ("JBSWY3DPEHPK3PXP", 56666666, 3, (20000, 40000)),
    ("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 37037036, 8, (1, 65535)),
    ("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 2**40 + 7, 1, (0, 65535)),
    ("KRUGKIDROVUWG2ZAMJZG653OEBTG66BA", 1234567, 8, (1000, 1009)),
    ("KRUGKIDROVUWG2ZAMJZG653OEBTG66BA", 1234568, 5, (7000, 7004)),
]


def make_vectors():
    print("# SECRET(base32) T STEPS LO-HI PORTS (README, Dynamic sequences)")
    for secret, t, steps, (lo, hi) in VECTOR_INPUTS:
        ports = derive(decode_secret(secret), t, steps, lo, hi)
        print(f"{secret} {t} {steps} {lo}-{hi} {','.join(map(str, ports))}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors")
    ap.add_argument("--make-vectors", action="store_true")
    ap.add_argument("--secret-file")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--ports")
    ap.add_argument("--t", type=int)
    ap.add_argument("--period", type=int)
    ap.add_argument("--time", type=int, help="unix seconds (default: now)")
    a = ap.parse_args()
    if a.vectors:
        return check_vectors(a.vectors)
    if a.make_vectors:
        make_vectors()
        return 0
    key = decode_secret(open(a.secret_file).read())
    t = a.t if a.t is not None else (a.time if a.time is not None else int(time.time())) // a.period
    lo, hi = parse_range(a.ports)
    print(" ".join(map(str, derive(key, t, a.steps, lo, hi))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
