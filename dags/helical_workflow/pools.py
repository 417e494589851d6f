"""The Airflow pools the DAG needs: one per GPU type in the profiles.

A pool's slots are the number of GPUs of that type the platform may use at
once, so GPU jobs never oversubscribe. Print them in ``airflow pools import``
format::

    python -m helical_workflow.pools --slots 2 > pools.json && airflow pools import pools.json
"""

from __future__ import annotations

import argparse
import json

from . import profiles


def pools_document(slots: int) -> dict[str, dict]:
    return {
        pool: {
            "slots": slots,
            "description": f"helical-runner jobs needing {pool.removeprefix('gpu-')} (one slot = one device)",
            "include_deferred": False,
        }
        for pool in profiles.known_pools()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--slots", type=int, default=1, help="concurrent jobs per pool (devices of that type)"
    )
    print(json.dumps(pools_document(parser.parse_args(argv).slots), indent=2))


if __name__ == "__main__":
    main()
