"""ABIDE benchmark (the paper's Table 4): baselines, VAST, GRAM and PMRL on the same splits and seeds.

Every run starts from the paper's setting (``--setting paper``: BrainNetTF on Pearson and partial correlation,
the text "age, gender", tau1 0.05, tau2 0.4, lambda1 1, threshold 0.5), not the kit's recipe. PMRL runs twice:
with the paper's L_M (the row compared with the paper's number) and with the kit's sign-aware L_M
(``--sign-aware``); each row's label says which.

Runs ``python -m pmrl_sci.abide`` once per method, each in ``<out>/<method>``, with the same
``--seeds`` and ``--seed`` (so the same BrainNetTF 70/10/20 splits), then writes
``<out>/table.md`` and ``<out>/table.csv`` (AUC, accuracy, sensitivity, specificity: mean ± std
over trials; the paper's AUC/ACC alongside) and the spectral analysis figures of the
multimodal methods in ``<out>/figures``. Rerunning with the same ``--out`` resumes.

Example::

    python experiments/abide_table.py --out runs/table4 --data-dir /data/ABIDE --freesurfer-dir /data/fs
    python experiments/abide_table.py --quick --out runs/table4-smoke
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pmrl_sci.tasks.abide_methods import Method, table_experiment_main

#: Row labels of the two forms of PMRL's L_M: the paper's (sign-blind) and the kit's sign-aware one. They differ
#: for k >= 3 even when every cosine is positive, so a table never calls the sign-aware form just "PMRL".
PMRL_PAPER = "PMRL (paper L_M)"
PMRL_SIGN_AWARE = "PMRL (sign-aware L_M)"

#: The paper's Table 4 (AUC / ACC, %), shown next to the measured numbers (its PMRL is the paper's L_M).
PAPER_TABLE4 = {
    "BrainNetTF": {"AUC": "78.7", "ACC": "70.6"},
    "VanillaTF": {"AUC": "76.1", "ACC": "68.2"},
    "BrainNetCNN": {"AUC": "73.6", "ACC": "67.9"},
    "GCN": {"AUC": "60.0", "ACC": "56.8"},
    "VAST": {"AUC": "79.2", "ACC": "71.8"},
    "GRAM": {"AUC": "63.9", "ACC": "60.6"},
    PMRL_PAPER: {"AUC": "80.5", "ACC": "73.2"},
}

_BASELINE = ("--model",)
METHODS = [
    Method("brainnettf", "BrainNetTF", ["--model", "brainnettf", "--objective", "none"], _BASELINE),
    Method("vanillatf", "VanillaTF", ["--model", "vanillatf", "--objective", "none"], _BASELINE),
    Method("brainnetcnn", "BrainNetCNN", ["--model", "brainnetcnn", "--objective", "none"], _BASELINE),
    Method("gcn", "GCN", ["--model", "gcn", "--objective", "none"], _BASELINE),
    Method("logistic", "Logistic regression", ["--model", "logistic", "--objective", "none"], _BASELINE),
    Method("vast", "VAST", ["--objective", "vast"]),
    Method("gram", "GRAM", ["--objective", "gram"]),
    Method("pmrl", PMRL_PAPER, ["--objective", "pmrl", "--no-sign-aware"]),
    Method("pmrl-sign-aware", PMRL_SIGN_AWARE, ["--objective", "pmrl", "--sign-aware"]),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 when a row failed)."""
    return table_experiment_main(METHODS, argv, description=__doc__, default_out="runs/abide-table4",
                                 title="ABIDE: autism vs control (test set)",
                                 reference=PAPER_TABLE4)


if __name__ == "__main__":
    sys.exit(main())
