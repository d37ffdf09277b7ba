"""Client registry foundations: the normalisation and field comparisons that record linkage
uses to find the person behind Patient records in Arabic, Persian and Latin script.
"""

from takamul.registry.arabic import fold_arabic
from takamul.registry.blocking import DEFAULT_RULES, BlockingRule, candidate_pairs
from takamul.registry.dates import birth_date_candidates, compare_birth_dates
from takamul.registry.evaluate import Scores, compare_files, score_clusterings
from takamul.registry.identifiers import (
    NationalId,
    compare_ids,
    ids_shared_across_generations,
    national_id,
    valid_iran_national_code,
    valid_saudi_id,
)
from takamul.registry.levels import Level
from takamul.registry.linking import (
    DEFAULT_FIELDS,
    DEFAULT_THRESHOLD,
    ComparisonField,
    LinkageModel,
    LinkResult,
    link_records,
    read_records,
    write_links,
)
from takamul.registry.names import (
    NameChain,
    NameToken,
    best_name_similarity,
    compare_family,
    compare_father,
    compare_given,
    name_similarity,
    parse_human_name,
)
from takamul.registry.phones import compare_phones, normalize_phone
from takamul.registry.record import RegistryRecord, from_patient
from takamul.registry.transliterate import normalize_name, skeleton

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_RULES",
    "DEFAULT_THRESHOLD",
    "BlockingRule",
    "ComparisonField",
    "Level",
    "LinkResult",
    "LinkageModel",
    "NameChain",
    "NameToken",
    "NationalId",
    "RegistryRecord",
    "Scores",
    "best_name_similarity",
    "birth_date_candidates",
    "candidate_pairs",
    "compare_birth_dates",
    "compare_family",
    "compare_father",
    "compare_files",
    "compare_given",
    "compare_ids",
    "compare_phones",
    "fold_arabic",
    "from_patient",
    "ids_shared_across_generations",
    "link_records",
    "name_similarity",
    "national_id",
    "normalize_name",
    "normalize_phone",
    "parse_human_name",
    "read_records",
    "score_clusterings",
    "skeleton",
    "valid_iran_national_code",
    "valid_saudi_id",
    "write_links",
]
