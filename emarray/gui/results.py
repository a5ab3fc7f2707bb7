"""What the Evaluate page shows: sweep, match and objects results, read from their files."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .catalog import Catalog


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_table(path: Path, limit: int = 2000) -> dict[str, Any]:
    """A CSV or Parquet table's columns and first ``limit`` rows (JSON-safe)."""
    import pandas as pd
    df = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    rows = [[_clean(v.item() if hasattr(v, "item") else v) for v in r]
            for r in df.head(limit).itertuples(index=False)]
    return {"path": str(path), "columns": [str(c) for c in df.columns], "rows": rows,
            "count": int(len(df))}


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _f1_at(matching: Path, at: float = 0.5) -> float | None:
    try:
        t = read_table(matching)
    except Exception:
        return None
    cols = t["columns"]
    if "threshold" not in cols or "f1" not in cols:
        return None
    for r in t["rows"]:
        if abs(float(r[cols.index("threshold")]) - at) < 1e-9:
            return r[cols.index("f1")]
    return None


def results(cat: Catalog) -> dict[str, Any]:
    """Every sweep (its best thresholds), every match (scores side by side, the best named
    per ground truth) and every objects table (its summary)."""
    sweeps, matches = [], []
    for r in cat.results:
        folder = Path(r["path"])
        if r["kind"] == "sweep":
            doc = _json(folder / "sweep.json")
            sweeps.append({"path": r["path"], "prob": doc.get("probability_map"),
                           "truth": doc.get("truth"), "best": doc.get("best"),
                           "table": str(folder / "sweep.csv"),
                           "plot": str(folder / "sweep.png") if (folder / "sweep.png").is_file()
                           else None})
        else:
            doc = _json(folder / "match.json")
            matches.append({"path": r["path"], "prediction": doc.get("prediction"),
                            "truth": doc.get("truth"), "voi": _clean(doc.get("voi")),
                            "voi_split": _clean(doc.get("voi_split")),
                            "voi_merge": _clean(doc.get("voi_merge")),
                            "adapted_rand_error": _clean(doc.get("adapted_rand_error")),
                            "f1_at_0.5": _f1_at(folder / "matching.csv"),
                            "n_pred": doc.get("n_pred"), "n_true": doc.get("n_true"),
                            "table": str(folder / "matching.csv"),
                            "plot": str(folder / "match.png") if (folder / "match.png").is_file()
                            else None})
    best: dict[str, str] = {}
    for truth in {m["truth"] for m in matches if m["voi"] is not None}:
        same = [m for m in matches if m["truth"] == truth and m["voi"] is not None]
        best[str(truth)] = min(same, key=lambda m: m["voi"])["path"]
    for m in matches:
        m["best"] = best.get(str(m["truth"])) == m["path"]
    objects = []
    for t in cat.tables:
        if t.get("kind") != "objects":
            continue
        p = Path(t["path"])
        doc = _json(p.with_suffix(".json"))
        objects.append({"path": t["path"], "labels": doc.get("labels"), "count": doc.get("count"),
                        "total_volume_um3": doc.get("total_volume_um3"),
                        "volume_um3": doc.get("volume_um3"),
                        "plot": str(p.with_suffix(".png")) if p.with_suffix(".png").is_file()
                        else None})
    return {"sweeps": sweeps, "matches": matches, "objects": objects}
