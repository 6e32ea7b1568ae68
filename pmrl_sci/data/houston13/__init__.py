"""Houston 2013 (GRSS DFC 2013) hyperspectral + LiDAR: readers, synthetic generator and patch datasets.

``pmrl_sci.data.houston13.read_envi_roi(path, shape)`` reads an ENVI ASCII ROI export into a label raster.
"""

from pmrl_sci.data.houston13.patches import (
    BandStats,
    PatchDataset,
    extract_patches,
    fit_band_stats,
    labelled_pixels,
    patch_loader,
    reflect_indices,
    standardize_scene,
    stratified_validation_split,
)
from pmrl_sci.data.houston13.readers import (
    HOUSTON13_BANDS,
    HOUSTON13_CLASSES,
    HOUSTON13_SHAPE,
    Houston13DataError,
    Houston13Files,
    Houston13Scene,
    Raster,
    find_houston13_files,
    load_houston13,
    read_envi_roi,
    read_hsi,
    read_label_raster,
    read_labels,
    read_lidar,
    read_mat_array,
    read_raster,
    write_envi_roi,
)
from pmrl_sci.data.houston13.synthetic import (
    SyntheticSceneConfig,
    class_spectra,
    generate_synthetic_scene,
    write_synthetic_houston13,
)

__all__ = [
    "HOUSTON13_BANDS", "HOUSTON13_CLASSES", "HOUSTON13_SHAPE", "BandStats", "Houston13DataError", "Houston13Files",
    "Houston13Scene", "PatchDataset", "Raster", "SyntheticSceneConfig", "class_spectra", "extract_patches",
    "find_houston13_files", "fit_band_stats", "generate_synthetic_scene", "labelled_pixels", "load_houston13",
    "patch_loader", "read_envi_roi", "read_hsi", "read_label_raster", "read_labels", "read_lidar", "read_mat_array",
    "read_raster", "reflect_indices", "standardize_scene", "stratified_validation_split", "write_envi_roi",
    "write_synthetic_houston13",
]
