"""Phenotype fields the ABIDE text modality may carry: what a clinician has at test time, never the diagnosis.

:data:`TEXT_FIELDS` lists every field a subject's text may include (age, sex, handedness, full-scale,
verbal and performance IQ); :data:`DEFAULT_TEXT_FIELDS` is the text the kit has always built
(``"age: <age>, gender: <gender>"``). :data:`EXCLUDED_FIELDS` names the phenotype columns that are
derived from the diagnosis (ADOS, ADI-R, SRS, SCQ, AQ, DSM-IV-TR, DX_GROUP itself, ...): they are never
put into the text, and asking for one is refused with an :class:`~pmrl_sci.errors.InputError`.
A value of ``-9999`` or an empty cell reads as "not stated".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pmrl_sci.errors import InputError

#: text field -> the phenotype column it is read from
TEXT_FIELDS: dict[str, str] = {"age": "AGE_AT_SCAN", "sex": "SEX", "handedness": "HANDEDNESS_CATEGORY",
                               "fiq": "FIQ", "viq": "VIQ", "piq": "PIQ"}
#: the text of every earlier run: "age: <age>, gender: <gender>"
DEFAULT_TEXT_FIELDS: tuple[str, ...] = ("age", "sex")
#: phenotype columns derived from the diagnosis (or the diagnosis itself): never in the text
EXCLUDED_FIELDS: tuple[str, ...] = (
    "DX_GROUP", "DSM_IV_TR", "ADOS_MODULE", "ADOS_TOTAL", "ADOS_COMM", "ADOS_SOCIAL", "ADOS_STEREO_BEHAV",
    "ADOS_RSRCH_RELIABLE", "ADOS_GOTHAM_SOCAFFECT", "ADOS_GOTHAM_RRB", "ADOS_GOTHAM_TOTAL", "ADOS_GOTHAM_SEVERITY",
    "ADI_R_SOCIAL_TOTAL_A", "ADI_R_VERBAL_TOTAL_BV", "ADI_RRB_TOTAL_C", "ADI_R_ONSET_TOTAL_D",
    "ADI_R_RSRCH_RELIABLE", "ADI_R_NONVERBAL_TOTAL_BV", "SRS_RAW_TOTAL", "SRS_AWARENESS", "SRS_COGNITION",
    "SRS_COMMUNICATION", "SRS_MOTIVATION", "SRS_MANNERISMS", "SCQ_TOTAL", "AQ_TOTAL", "COMORBIDITY",
    "CURRENT_MED_STATUS", "MEDICATION_NAME", "OFF_STIMULANTS_AT_SCAN", "VINELAND_SUM_SCORES")
#: prefixes of diagnosis-derived instruments (a column starting with one is excluded as well)
EXCLUDED_PREFIXES: tuple[str, ...] = ("ADOS", "ADI_R", "ADI_RRB", "SRS_", "SCQ", "AQ_", "DSM", "DX", "VINELAND")
_LABELS = {"age": "age", "sex": "gender", "handedness": "handedness", "fiq": "full-scale IQ", "viq": "verbal IQ",
           "piq": "performance IQ"}
_HANDEDNESS = {"R": "right", "L": "left", "AMBI": "ambidextrous", "MIXED": "mixed", "L->R": "mixed",
               "R->L": "mixed"}
#: numeric code of a stated handedness (for --model logistic-all): right 1, left -1, otherwise 0
_HANDEDNESS_CODE = {"right": 1.0, "left": -1.0, "ambidextrous": 0.0, "mixed": 0.0}


def is_diagnosis_derived(name: str) -> bool:
    """Whether a phenotype column (or a text field name) is derived from the diagnosis."""
    upper = str(name).strip().upper().replace("-", "_")
    return upper in EXCLUDED_FIELDS or upper.startswith(EXCLUDED_PREFIXES)


def check_text_fields(fields: Sequence[str], option: str = "--text-fields") -> list[str]:
    """The requested text fields, lower-cased, in :data:`TEXT_FIELDS` order.

    Raises
    ------
    InputError
        Naming ``option`` and the diagnosis-derived fields asked for, or the unknown ones.
    """
    asked = [str(f).strip().lower() for f in fields]
    derived = [f for f in asked if is_diagnosis_derived(f)]
    if derived:
        raise InputError(f"{option}: {derived} derive from the diagnosis (excluded: {', '.join(EXCLUDED_FIELDS)} "
                         f"and any ADOS/ADI-R/SRS/SCQ/AQ column); choose from {list(TEXT_FIELDS)}")
    unknown = [f for f in asked if f not in TEXT_FIELDS]
    if unknown or not asked:
        raise InputError(f"{option}: unknown or no field(s) {unknown or asked}; choose from {list(TEXT_FIELDS)}")
    return [f for f in TEXT_FIELDS if f in asked]


def _stated(value: object) -> bool:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return False
    text = str(value).strip()
    return text not in ("", "-9999", "-9999.0", "nan", "NaN")


def format_number(value: float) -> str:
    """At most one decimal ("12.7", "24")."""
    text = f"{float(value):.1f}"
    return text[:-2] if text.endswith(".0") else text


def field_text(name: str, value: object) -> str:
    """The readable value of one field ("male", "right", "112"), or "unknown" / "not stated"."""
    if name == "age":
        return format_number(float(value)) if _stated(value) else "unknown"
    if name == "sex":
        return {1: "male", 2: "female"}.get(int(value), "unknown") if _stated(value) else "unknown"
    if not _stated(value):
        return "not stated"
    if name == "handedness":
        return _HANDEDNESS.get(str(value).strip().upper(), "not stated")
    try:
        return format_number(float(value))
    except (TypeError, ValueError):
        return "not stated"


def phenotype_texts(rows: pd.DataFrame, fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> list[str]:
    """One text per row: ``"<label>: <value>"`` for each field, joined by ``", "`` (a missing column: not stated)."""
    fields = check_text_fields(fields)
    texts = []
    for _, row in rows.iterrows():
        texts.append(", ".join(f"{_LABELS[f]}: {field_text(f, row.get(TEXT_FIELDS[f]))}" for f in fields))
    return texts


def phenotype_values(rows: pd.DataFrame, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Each field as numbers (NaN = not stated): age in years, sex 1 male / 0 female, handedness right 1 /
    left -1 / other 0, IQ scores as read."""
    out = {}
    for f in check_text_fields(fields):
        column = rows[TEXT_FIELDS[f]] if TEXT_FIELDS[f] in rows.columns else pd.Series([np.nan] * len(rows))
        values = []
        for value in column:
            text = field_text(f, value)
            if f == "sex":
                values.append({"male": 1.0, "female": 0.0}.get(text, np.nan))
            elif f == "handedness":
                values.append(_HANDEDNESS_CODE.get(text, np.nan))
            else:  # the number as read, not the rounded text
                values.append(float(value) if text not in ("unknown", "not stated") else np.nan)
        out[f] = np.asarray(values, dtype=np.float64)
    return out
