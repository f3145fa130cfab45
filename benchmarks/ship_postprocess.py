"""Fit the shipped post-processing statistics and record them in ``kvembed_rag/data/postprocess/index.json``.

    python benchmarks/ship_postprocess.py --model default --setting kv --spec '{"kind": "center"}'

The statistics are fitted on the setting's document-prompted vectors of the 222 shipped calibration texts
(read from the evaluation cache when ``postprocess_study.py`` computed them), saved as safetensors with the
embedder key (:func:`kvembed_rag.postprocess.stats_key`) in the header, and listed in the index with their
key, spec, fingerprint and size. Re-running with the same arguments rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from postprocess_study import SETTINGS, make_embedder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--setting", default="kv", help=f"one of {sorted(SETTINGS)}")
    parser.add_argument("--spec", default='{"kind": "center"}', help="PostprocessSpec as JSON")
    parser.add_argument("--half", action="store_true", help="store a projection in float16")
    parser.add_argument(
        "--default", action="store_true", help="mark it what postprocess='auto' picks for this configuration"
    )
    args = parser.parse_args(argv)

    from kvembed_rag import KVEmbedder
    from kvembed_rag.eval.cache import EmbeddingCache
    from kvembed_rag.layer_selection import load_calibration
    from kvembed_rag.postprocess import SHIPPED_DIR, PostprocessSpec, fit, save, stats_key

    spec = PostprocessSpec.from_dict(json.loads(args.spec))
    # postprocess="none": the statistics are fitted on raw vectors ("auto" would hand the setting the shipped ones)
    base = KVEmbedder.from_pretrained(args.model, max_length=512, dtype="float32", layers="id", postprocess="none")
    embedder = make_embedder(base, args.setting)
    vectors, _ = EmbeddingCache("default").encode(embedder, load_calibration(), "document")
    stats = fit(vectors, spec)
    description = embedder.describe()
    key = stats_key(description)
    model_name = Path(str(description["model"]["spec"])).stem.lower().replace(".", "-")
    spec_name = str(spec).replace(" ", "-").replace("=", "")
    name = f"{model_name}-{description['method']}-{key['model'][:8]}-{embedder.fingerprint[:8]}-{spec_name}.safetensors"
    path = save(SHIPPED_DIR / name, stats, key=key, half=args.half)
    index_path = SHIPPED_DIR / "index.json"
    entries = json.loads(index_path.read_text()) if index_path.is_file() else []
    replaced = [e for e in entries if e["key"] == key and e["spec"] == spec.to_dict()]
    entries = [e for e in entries if e not in replaced]
    if args.default:  # one default per configuration
        for entry in entries:
            if entry["key"] == key:
                entry["default"] = False
    from kvembed_rag.postprocess import load

    stored = load(path, key=key, spec=spec)
    entries.append(
        {
            "file": name,
            "model": description["model"]["spec"],
            "setting": args.setting,
            "key": key,
            "spec": spec.to_dict(),
            "fingerprint": stored.fingerprint,
            "n": stats.n,
            "bytes": path.stat().st_size,
            "default": args.default or any(e.get("default") for e in replaced),
        }
    )
    entries.sort(key=lambda e: e["file"])
    index_path.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    print(f"{path} ({path.stat().st_size} bytes), fingerprint {stored.fingerprint}, key {json.dumps(key)[:200]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
