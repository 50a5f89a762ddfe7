"""The genetic algorithm's inner loops, written once for two runtimes.

Every function here is plain Python over flat integer sequences (no numpy calls, no slices, no
allocation, no floats): run as it is on lists, it is the fallback; compiled by numba over int64
arrays (maestro/jit.py), it is the same algorithm ~30x faster. Same inputs give the same
schedules either way (tests/maestro/test_kernels.py checks it with hypothesis), so a
deterministic solve does not depend on whether the compiled code was ready.

Shapes (n tasks, R resources, H periods of the time-indexed profile, P population):
  net = (dur[n], dem[n*R], caps[R], pptr[n+1], pidx[m], plag[m], sptr[n+1], sidx[m], slag[m],
         topo[n], lft[n])  -- predecessor and successor lists in CSR form, a topological order,
         the latest finish per task (the sampling priority)
  ws  = (usage[R*H], cnt[H+2], s1[n], s2[n], s3[n], back[n], fwd[n], key[n], seen[n], child[n])
  pop = (orders[2P*n], starts[2P*n], span[2P], hsh[2P], slot[2P], best[n], meta[4])
        rows are physical; slot[k] names the row of the k-th individual (0..P-1 the population,
        P..2P-1 this generation's children); meta = (best span, pair mother, pair father, P)
  rng = xorshift128 state, four 32-bit words
"""

# Positional parameters throughout: numba compiles neither keyword-only arguments nor generators.
# ruff: noqa: PLR0917, SIM110

from __future__ import annotations

from collections.abc import MutableSequence, Sequence

__all__ = [
    "M32",
    "breed",
    "evaluate_into",
    "next32",
    "order_by",
    "sample_into",
    "sgs",
    "survive",
]

M32 = 0xFFFFFFFF
# Chance per adjacent pair that mutation swaps it (unless an arc joins them), in 1/1000.
MUTATION_PER_MILLE = 50

Ints = Sequence[int]
Buf = MutableSequence[int]
Net = tuple[Ints, Ints, Ints, Ints, Ints, Ints, Ints, Ints, Ints, Ints, Ints]
Work = tuple[Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf]
Pop = tuple[Buf, Buf, Buf, Buf, Buf, Buf, Buf]


def next32(st: Buf) -> int:
    """Marsaglia's xorshift128: the next 32-bit word (every value stays below 2**43)."""
    t = st[0] ^ ((st[0] << 11) & M32)
    st[0] = st[1]
    st[1] = st[2]
    st[2] = st[3]
    w = st[3]
    w = w ^ (w >> 19) ^ t ^ (t >> 8)
    st[3] = w
    return w


def sgs(order: Ints, dur: Ints, dem: Ints, caps: Ints, ptr: Ints, idx: Ints, lag: Ints,
        usage: Buf, start: Buf) -> int:
    """Serial SGS: each task of `order` at its earliest start after its (ptr, idx, lag) arcs
    that fits the capacities; returns the makespan and leaves `usage` zeroed. With the successor
    arcs it is the backward pass (times then count from the end)."""
    n = len(dur)
    r_count = len(caps)
    h = len(usage) // r_count if r_count else 0
    top = 0
    for k in range(n):
        j = order[k]
        t = 0
        for e in range(ptr[j], ptr[j + 1]):
            p = idx[e]
            t = max(t, start[p] + dur[p] + lag[e])
        d = dur[j]
        if d > 0:
            moved = True
            while moved:
                moved = False
                for r in range(r_count):
                    q = dem[j * r_count + r]
                    if q == 0:
                        continue
                    lim = caps[r] - q
                    base = r * h
                    # the latest clash in [t, t + d): the next try starts after it
                    c = t + d - 1
                    while c >= t and usage[base + c] <= lim:
                        c -= 1
                    if c >= t:
                        t = c + 1
                        moved = True
                        break
            for r in range(r_count):
                q = dem[j * r_count + r]
                if q:
                    base = r * h
                    for c in range(t, t + d):
                        usage[base + c] += q
        start[j] = t
        top = max(top, t + d)
    for r in range(r_count):
        base = r * h
        for c in range(top):
            usage[base + c] = 0
    return top


def order_by(key: Ints, topo: Ints, top: int, ties_down: int, cnt: Buf, out: Buf) -> None:
    """`out` = the tasks by `key` (each in 0..top), ties by topological rank (reversed when
    `ties_down`): a counting sort, so both runtimes do the same few passes."""
    n = len(key)
    for v in range(top + 2):
        cnt[v] = 0
    for i in range(n):
        cnt[key[i] + 1] += 1
    for v in range(top + 1):
        cnt[v + 1] += cnt[v]
    for k in range(n):
        i = topo[n - 1 - k] if ties_down else topo[k]
        out[cnt[key[i]]] = i
        cnt[key[i]] += 1


def evaluate_into(net: Net, ws: Work, pop: Pop, row: int) -> int:
    """Schedule ws.child by the serial SGS, justify it once (right, then left), keep the best of
    the three schedules in `row` with its start order as the row's list; returns its makespan.
    Updates the best schedule so far (pop.best, meta[0])."""
    dur, _dem, _caps, pptr, pidx, plag, sptr, sidx, slag, topo, _lft = net
    usage, cnt, s1, s2, s3, back, fwd, key, _seen, child = ws
    orders, starts, span, hsh, _slot, best, meta = pop
    dem, caps = net[1], net[2]
    n = len(dur)
    value = sgs(child, dur, dem, caps, pptr, pidx, plag, usage, s1)
    for i in range(n):
        key[i] = value - s1[i] - dur[i]  # latest finish first
    order_by(key, topo, value, 1, cnt, back)
    top = sgs(back, dur, dem, caps, sptr, sidx, slag, usage, s2)
    for i in range(n):
        s2[i] = top - s2[i] - dur[i]  # the backward schedule, as forward start times
    order_by(s2, topo, top, 0, cnt, fwd)
    again = sgs(fwd, dur, dem, caps, pptr, pidx, plag, usage, s3)
    chosen = 1
    if again <= value:
        chosen, value = 3, again
    if top < value:  # the right-justified schedule is itself a valid one
        chosen, value = 2, top
    base = row * n
    h = 0
    for i in range(n):
        s = s1[i] if chosen == 1 else (s3[i] if chosen == 3 else s2[i])
        starts[base + i] = s
        key[i] = s
        h = (h * 1000003 + s + 1) & 0x7FFFFFFF
    span[row] = value
    hsh[row] = h
    order_by(key, topo, value, 0, cnt, fwd)
    for k in range(n):
        orders[base + k] = fwd[k]
    if value < meta[0]:
        meta[0] = value
        for i in range(n):
            best[i] = starts[base + i]
    return value


def sample_into(net: Net, ws: Work, rng: Buf) -> None:
    """ws.child = an activity list by regret-biased sampling on latest finish (Kolisch 1996):
    weight (worst - lft + 1)**2 among the eligible tasks."""
    dur, _dem, _caps, pptr, _pidx, _plag, sptr, sidx, _slag, _topo, lft = net
    indegree, eligible, child = ws[5], ws[6], ws[9]  # back and fwd serve as scratch here
    n = len(dur)
    m = 0
    for i in range(n):
        indegree[i] = pptr[i + 1] - pptr[i]
        if indegree[i] == 0:
            eligible[m] = i
            m += 1
    for k in range(n):
        worst = lft[eligible[0]]
        for e in range(1, m):
            worst = max(worst, lft[eligible[e]])
        total = 0
        for e in range(m):
            w = worst - lft[eligible[e]] + 1
            total += w * w
        hi = next32(rng) >> 2
        x = ((hi << 32) | next32(rng)) % total
        pick = 0
        while pick < m - 1:
            w = worst - lft[eligible[pick]] + 1
            if x < w * w:
                break
            x -= w * w
            pick += 1
        i = eligible[pick]
        for e in range(pick, m - 1):
            eligible[e] = eligible[e + 1]
        m -= 1
        child[k] = i
        for e in range(sptr[i], sptr[i + 1]):
            j = sidx[e]
            indegree[j] -= 1
            if indegree[j] == 0:
                eligible[m] = j
                m += 1


def _tournament(pop: Pop, npop: int, rng: Buf) -> int:
    span, slot = pop[2], pop[4]
    a = slot[next32(rng) % npop]
    b = slot[next32(rng) % npop]
    return a if span[a] <= span[b] else b


def _arc(net: Net, a: int, b: int) -> bool:
    sptr, sidx = net[6], net[7]
    for e in range(sptr[a], sptr[a + 1]):
        if sidx[e] == b:
            return True
    return False


def breed(net: Net, ws: Work, pop: Pop, rng: Buf, npop: int, c0: int, c1: int,
          target: int) -> int:
    """Children c0..c1-1 of this generation into their slots (P + c): tournament pairs,
    two-point crossover each way, adjacent swaps, then `evaluate_into`. Stops once the best
    reaches `target`; returns the children made."""
    orders, slot, meta = pop[0], pop[4], pop[6]
    seen, child = ws[8], ws[9]
    n = len(net[0])
    size = meta[3]
    made = 0
    for c in range(c0, c1):
        if meta[0] <= target:
            break
        if c % 2 == 0:
            meta[1] = _tournament(pop, npop, rng)
            meta[2] = _tournament(pop, npop, rng)
        mother, father = (meta[1], meta[2]) if c % 2 == 0 else (meta[2], meta[1])
        q1 = next32(rng) % (n + 1)
        q2 = q1 + next32(rng) % (n + 1 - q1)
        for i in range(n):
            seen[i] = 0
        k = 0
        for p in range(q1):
            i = orders[mother * n + p]
            child[k] = i
            seen[i] = 1
            k += 1
        p = 0
        while k < q2 and p < n:
            i = orders[father * n + p]
            if not seen[i]:
                child[k] = i
                seen[i] = 1
                k += 1
            p += 1
        for p in range(n):
            i = orders[mother * n + p]
            if not seen[i]:
                child[k] = i
                k += 1
        for p in range(n - 1):
            if next32(rng) % 1000 < MUTATION_PER_MILLE and not _arc(net, child[p], child[p + 1]):
                child[p], child[p + 1] = child[p + 1], child[p]
        evaluate_into(net, ws, pop, slot[size + c])
        made += 1
    return made


def survive(pop: Pop, npop: int, nchild: int) -> int:
    """The best P distinct schedules of population and children (stable: parents first among
    equals) become the population, slot[0:kept]; returns `kept`."""
    starts, span, hsh, slot, meta = pop[1], pop[2], pop[3], pop[4], pop[6]
    return _survive_rows(starts, span, hsh, slot, len(pop[5]), npop, nchild, meta[3])


def _survive_rows(starts: Buf, span: Buf, hsh: Buf, slot: Buf, n: int, npop: int, nchild: int,
                  size: int) -> int:
    total = npop + nchild
    # move the children next to the population, so slot[0:total] is the pool
    for c in range(nchild):
        slot[npop + c], slot[size + c] = slot[size + c], slot[npop + c]
    for a in range(1, total):
        row = slot[a]
        b = a - 1
        while b >= 0 and span[slot[b]] > span[row]:
            slot[b + 1] = slot[b]
            b -= 1
        slot[b + 1] = row
    kept = 0
    for a in range(total):
        row = slot[a]
        dup = False
        for b in range(kept):
            other = slot[b]
            if hsh[other] == hsh[row] and span[other] == span[row]:
                same = True
                for i in range(n):
                    if starts[other * n + i] != starts[row * n + i]:
                        same = False
                        break
                if same:
                    dup = True
                    break
        if dup:
            continue
        if kept < size:
            slot[a], slot[kept] = slot[kept], slot[a]
            kept += 1
    return kept
