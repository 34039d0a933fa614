"""Choose the semantic cache's similarity threshold on the labelled paraphrase set.

Embeds both texts of every pair in `sluicegate/cache/data/paraphrases.jsonl` with the local
embedder, and for thresholds 0.80 .. 0.98 counts hits (cosine >= threshold) with and without the
signature check (`cache.salient`): precision, recall and false hits by kind of near miss. The
default is the lowest threshold at which, with the signature check, no pair that differs hits.
A 2-fold split (even / odd lines) chooses on one half and measures on the other, so the figure is
not only what the threshold was fitted to. Then times the embedder on this machine.

    .venv/bin/python bench/semantic_threshold.py [--json] [--latency-runs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sluicegate.cache import embed
from sluicegate.cache.embed import DEFAULT_THRESHOLD, LocalEmbedder
from sluicegate.cache.salient import signature

PAIRS = Path(embed.__file__).parent / "data" / "paraphrases.jsonl"
THRESHOLDS = [round(0.80 + i / 100, 2) for i in range(19)]
SIDES = ("cosine_only", "with_signature")


@dataclass
class Pair:
    a: str
    b: str
    same: bool
    kind: str
    cosine: float = 0.0
    same_signature: bool = False


@dataclass
class Score:
    threshold: float
    precision: float
    recall: float
    hits: int
    false_hits: dict[str, int] = field(default_factory=dict)


def load_pairs(path: Path = PAIRS) -> list[Pair]:
    return [Pair(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def measure(pairs: list[Pair], embedder: LocalEmbedder) -> None:
    """Fill in each pair's cosine similarity and whether the signatures agree."""
    a = embedder.embed_many([p.a for p in pairs])
    b = embedder.embed_many([p.b for p in pairs])
    for pair, cosine in zip(pairs, (a * b).sum(axis=1), strict=True):
        pair.cosine = float(cosine)
        pair.same_signature = signature(pair.a) == signature(pair.b)


def score(pairs: list[Pair], threshold: float, check_signature: bool) -> Score:
    hits = [p for p in pairs if p.cosine >= threshold and (p.same_signature or not check_signature)]
    true_hits = sum(p.same for p in hits)
    false_hits: dict[str, int] = {}
    for p in hits:
        if not p.same:
            false_hits[p.kind] = false_hits.get(p.kind, 0) + 1
    positives = sum(p.same for p in pairs)
    return Score(
        threshold=threshold,
        precision=true_hits / len(hits) if hits else 1.0,
        recall=true_hits / positives if positives else 0.0,
        hits=len(hits),
        false_hits=false_hits,
    )


def choose(pairs: list[Pair]) -> float | None:
    """The lowest threshold at which, with the signature check, no differing pair hits."""
    return next((t for t in THRESHOLDS if not score(pairs, t, check_signature=True).false_hits), None)


@dataclass
class Fold:
    fit_on: str
    tested_on: str
    threshold: float | None
    scores: dict[str, Score] = field(default_factory=dict)


def cross_validate(pairs: list[Pair]) -> list[Fold]:
    """Choose on the even lines and measure on the odd ones, then the other way round."""
    halves = {"even": pairs[0::2], "odd": pairs[1::2]}
    folds = []
    for fit, test in (("even", "odd"), ("odd", "even")):
        fold = Fold(fit, test, choose(halves[fit]))
        if fold.threshold is not None:
            fold.scores = {side: score(halves[test], fold.threshold, side == "with_signature") for side in SIDES}
        folds.append(fold)
    return folds


def latency(embedder: LocalEmbedder, texts: list[str], batch: int, runs: int) -> dict[str, float]:
    timings = []
    for i in range(runs):
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        start = time.perf_counter()
        embedder.embed_many(chunk)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return {
        "p50_ms": round(statistics.median(timings), 2),
        "p99_ms": round(timings[min(len(timings) - 1, int(len(timings) * 0.99))], 2),
    }


def pct(value: float) -> str:
    return f"{value * 100:5.1f}"


def describe(s: Score) -> str:
    return f"precision {pct(s.precision)} %, recall {pct(s.recall)} %, false hits {s.false_hits or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--latency-runs", type=int, default=200)
    args = parser.parse_args()

    pairs = load_pairs()
    embedder = LocalEmbedder(batch_size=16, timeout_ms=10_000)
    measure(pairs, embedder)
    kinds = sorted({p.kind for p in pairs if not p.same})
    table = {t: {side: score(pairs, t, side == "with_signature") for side in SIDES} for t in THRESHOLDS}
    chosen = choose(pairs)
    texts = [p.a for p in pairs]
    at_default = {side: score(pairs, DEFAULT_THRESHOLD, side == "with_signature") for side in SIDES}
    by_kind = {k: sum(p.kind == k for p in pairs) for k in sorted({p.kind for p in pairs})}
    folds = cross_validate(pairs)
    latencies = {
        "latency_batch_1": latency(embedder, texts, 1, args.latency_runs),
        "latency_batch_16": latency(embedder, texts, 16, max(20, args.latency_runs // 4)),
    }
    if args.json:
        result = {
            "pairs": len(pairs),
            "by_kind": by_kind,
            "table": [{"threshold": t, **{side: asdict(s) for side, s in row.items()}} for t, row in table.items()],
            "chosen_threshold": chosen,
            "default_threshold": DEFAULT_THRESHOLD,
            "at_default": {side: asdict(s) for side, s in at_default.items()},
            "paraphrases_with_other_signature": sum(p.same and not p.same_signature for p in pairs),
            "cross_validation": [asdict(fold) for fold in folds],
            **latencies,
        }
        print(json.dumps(result, indent=2))
        return

    print(f"{len(pairs)} pairs: " + ", ".join(f"{k} {n}" for k, n in by_kind.items()))
    print(f"paraphrases whose signatures differ: {sum(p.same and not p.same_signature for p in pairs)}")
    head = " ".join(f"{k[:5]:>5}" for k in kinds)
    width = 19 + 6 * len(kinds)
    print(f"\n       {'cosine only':^{width}} | {'cosine and signature':^{width}}")
    print(f"thresh  prec recall {head} |  prec recall {head}")
    for t, row in table.items():
        cells = [
            f"{pct(s.precision)} {pct(s.recall)}  " + " ".join(f"{s.false_hits.get(k, 0):>5}" for k in kinds)
            for s in row.values()
        ]
        print(f"{t:.2f}  " + " | ".join(cells))
    print(f"\nchosen (lowest threshold without a false hit, signature checked): {chosen}")
    for side, s in at_default.items():
        print(f"at DEFAULT_THRESHOLD {DEFAULT_THRESHOLD} {side}: {describe(s)}")
    for fold in folds:
        print(f"2-fold: chosen on {fold.fit_on} lines: {fold.threshold}")
        for side, s in fold.scores.items():
            print(f"    on {fold.tested_on} lines, {side}: {describe(s)}")
    for name, figures in latencies.items():
        print(f"{name}: {figures}")


if __name__ == "__main__":
    main()
