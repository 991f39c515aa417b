"""Move registry models to the tenancy scheme: `<name>` → `<namespace>.<name>` (docs/security.md, "Migration").

    python -m scripts.migrate_model_names --tracking-uri http://mlflow.mlflow.svc:5000            # report only
    python -m scripts.migrate_model_names --tracking-uri http://mlflow.mlflow.svc:5000 --apply    # rename
    python -m scripts.migrate_model_names --tracking-uri … --apply --model digits                  # just one

Run it as the platform admin, with the MLflow credentials in the environment (MLFLOW_TRACKING_TOKEN, …). Before the
operator registered models as `<namespace>.<model>`, a job's model was registered under its bare `modelName`. For
each registered model without a namespace qualifier, the namespace is read from its versions' `ganops.job`
lineage tags (`<namespace>/<job>`):

* every version from one namespace → renamed to `<namespace>.<name>` (MLflow keeps versions, tags and aliases);
* versions from several namespaces → left alone and reported: that is what a cross-tenant takeover looked like
  (issue 13); decide by hand which namespace owns it, and look at who moved its aliases;
* no lineage at all (registered by hand) → left alone and reported.

Then point each server that followed `<name>@<alias>` at `<namespace>.<name>@<alias>` (`serving.model`). Exit 0
when nothing needs a human, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from ganops import tracking
from ganops.contracts import MODEL_NAMESPACE_SEPARATOR, TAG_JOB


@dataclass(frozen=True)
class Plan:
    name: str
    target: str | None  # the new name; None: left alone
    reason: str


def plan(tracking_uri: str, only: list[str] | None = None) -> list[Plan]:
    client: Any = tracking.client(tracking_uri)
    plans = []
    names = only if only else [str(m.name) for m in client.search_registered_models(max_results=100000)]
    for name in names:
        if MODEL_NAMESPACE_SEPARATOR in name:
            continue  # already qualified
        versions = tracking.list_versions(tracking_uri, name)
        owners = sorted({str(v.tags.get(TAG_JOB) or "").partition("/")[0] for v in versions} - {""})
        if len(owners) == 1 and all(v.tags.get(TAG_JOB) for v in versions):
            plans.append(Plan(name, f"{owners[0]}{MODEL_NAMESPACE_SEPARATOR}{name}",
                              f"{len(versions)} version(s), all registered by jobs of namespace {owners[0]}"))
        elif len(owners) > 1:
            plans.append(Plan(name, None, f"versions from namespaces {', '.join(owners)}: decide by hand"))
        else:
            plans.append(Plan(name, None, "versions without ganops.job lineage (registered by hand): decide by hand"))
    return plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--apply", action="store_true", help="rename (default: report only)")
    parser.add_argument("--model", action="append", help="only this registered model (repeatable; default: all)")
    args = parser.parse_args(argv)
    plans = plan(args.tracking_uri, args.model)
    client: Any = tracking.client(args.tracking_uri)
    for item in plans:
        if item.target is None:
            print(f"left   {item.name}: {item.reason}")
            continue
        if args.apply:
            client.rename_registered_model(item.name, item.target)
        print(f"{'renamed' if args.apply else 'rename '} {item.name} → {item.target} ({item.reason})")
    return 1 if any(item.target is None for item in plans) else 0


if __name__ == "__main__":
    sys.exit(main())
