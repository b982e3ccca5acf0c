"""TAP lines for the client scripts that a .t relays (KimiTest::relay_py_tap)."""

_n = 0


def check(cond, claim):
    """Prints "ok N - claim" or "not ok N - claim"."""
    global _n
    _n += 1
    print(("ok" if cond else "not ok") + " %d - %s" % (_n, claim), flush=True)


def plan():
    """Prints the plan line, the count of checks made."""
    print("1..%d" % _n, flush=True)
