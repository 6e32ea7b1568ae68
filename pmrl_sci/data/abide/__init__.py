"""ABIDE (autism; fMRI, sMRI, text): readers of ABIDE Preprocessed, a simulated cohort, the cohort loader.

Modules: ``phenotype`` (CSV and nilearn's quality filter), ``timeseries`` (atlases, ``.1D``
files in three layouts), ``connectivity`` (Pearson / partial correlation, dead-ROI policy),
``freesurfer`` (reading FreeSurfer tables), ``freesurfer_writers`` (writing them, for the generator
and the tests), ``generator`` (simulated cohort in the real formats) and ``cohort``
(``load_abide_cohort``, ``fetch_abide``).
"""

from pmrl_sci.extras import require

for _package in ("pandas", "nilearn", "threadpoolctl"):  # imported at the top of the modules below
    require(_package, "neuro", "the ABIDE data readers")

from pmrl_sci.data.abide.cohort import AbideCohort, fetch_abide, load_abide_cohort  # noqa: E402
from pmrl_sci.data.abide.connectivity import compute_connectivity  # noqa: E402
from pmrl_sci.data.abide.generator import generate_abide_like  # noqa: E402
from pmrl_sci.data.abide.phenotype import quality_filter, read_phenotype  # noqa: E402
from pmrl_sci.data.abide.timeseries import ATLAS_ROIS, find_roi_files, read_roi_timeseries  # noqa: E402

__all__ = [
    "ATLAS_ROIS",
    "AbideCohort",
    "compute_connectivity",
    "fetch_abide",
    "find_roi_files",
    "generate_abide_like",
    "load_abide_cohort",
    "quality_filter",
    "read_phenotype",
    "read_roi_timeseries",
]
