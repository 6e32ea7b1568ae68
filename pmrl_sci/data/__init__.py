"""Data pipelines: readers, simulators, caches and splits for the kit's scientific datasets.

``pmrl_sci.data.abide`` reads ABIDE Preprocessed (fMRI ROI time series, phenotype,
FreeSurfer measures) or simulates a cohort in the same formats; ``pmrl_sci.data.splits``
holds the site-stratified train / validation / test splits.
"""
